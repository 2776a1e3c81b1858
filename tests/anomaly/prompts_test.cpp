#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>

#include "anomaly/prompts.h"
#include "io/error.h"

using namespace iadgpt;

TEST(Prompts, AnomalyGptEnsembleHasStatesTimesTemplates) {
  auto p = anomaly::build_prompts("metal_nut", anomaly::TemplateSet::AnomalyGpt);
  EXPECT_EQ(p.class_name, "metal nut");
  EXPECT_EQ(p.normal.size(), 7u * 2u);
  EXPECT_EQ(p.abnormal.size(), 5u * 2u);
  EXPECT_EQ(p.normal[0], "a photo of a metal nut.");
  EXPECT_EQ(p.normal[3], "a photo of the flawless metal nut.");
  EXPECT_EQ(p.abnormal.back(), "a photo of the metal nut with damage.");
}

TEST(Prompts, TemplateSetsHaveTheirPublishedSizes) {
  EXPECT_EQ(anomaly::templates(anomaly::TemplateSet::AprilGan).size(), 35u);
  EXPECT_EQ(anomaly::templates(anomaly::TemplateSet::WinClip).size(), 22u);
  for (auto set : {anomaly::TemplateSet::AnomalyGpt, anomaly::TemplateSet::AprilGan, anomaly::TemplateSet::WinClip}) {
    auto t = anomaly::templates(set);
    std::vector<std::string_view> sorted(t.begin(), t.end());
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end()) << "duplicate template";
    EXPECT_EQ(anomaly::parse_template_set(anomaly::template_set_name(set)), set);
  }
  EXPECT_THROW(anomaly::parse_template_set("clip"), InputError);
}

TEST(Prompts, UnknownClassIsObjectAndApgSentencesJoinAbnormal) {
  std::vector<std::string> apg = {"a photo of an object with a crack."};
  auto p = anomaly::build_prompts("", anomaly::TemplateSet::AnomalyGpt, apg);
  EXPECT_EQ(p.class_name, "object");
  EXPECT_EQ(p.abnormal.size(), 11u);
  EXPECT_EQ(p.abnormal.back(), apg[0]);
}

TEST(TextFeatures, EachSideIsTheNormalisedMeanOfNormalisedRows) {
  torch::manual_seed(0);
  auto normal = torch::randn({5, 8}) * 3;
  auto abnormal = torch::randn({4, 8});
  auto feats = anomaly::reduce_text_features(normal, abnormal);
  ASSERT_EQ(feats.f_text.sizes(), (std::vector<int64_t>{2, 8}));
  auto rows = normal / normal.norm(2, -1, true);
  auto mean = rows.mean(0);
  auto expected = mean / mean.norm();
  EXPECT_LT((feats.f_text[0] - expected).abs().max().item<double>(), 1e-6);
  EXPECT_LT((feats.abnormal_sentences.norm(2, -1) - 1).abs().max().item<double>(), 1e-6);
  EXPECT_THROW(anomaly::reduce_text_features(normal, torch::randn({4, 7})), InputError);
}

#include "common/shared.h"

TEST(PromptCache, EncodesOnceThenServesFromDisk) {
  const auto dir = test::scratch("prompt-cache");
  anomaly::PromptCache cache(dir);
  int calls = 0;
  anomaly::SentenceEncoder encode = [&](const std::vector<std::string>& sentences) {
    ++calls;
    return torch::randn({static_cast<int64_t>(sentences.size()), 6});
  };
  auto prompts = anomaly::build_prompts("grid", anomaly::TemplateSet::AnomalyGpt);
  auto first = cache.get("model-a", prompts, encode);
  EXPECT_EQ(calls, 2);  // normal and abnormal sides
  auto second = cache.get("model-a", prompts, encode);
  EXPECT_EQ(calls, 2);
  EXPECT_TRUE(torch::equal(first.f_text, second.f_text));
  cache.get("model-b", prompts, encode);  // another model identity never shares an entry
  EXPECT_EQ(calls, 4);
  std::vector<std::string> apg = {"a grid with a bent wire."};
  EXPECT_NE(cache.key("model-a", prompts), cache.key("model-a", anomaly::build_prompts("grid", anomaly::TemplateSet::AnomalyGpt, apg)));
  std::filesystem::remove_all(dir);
}
