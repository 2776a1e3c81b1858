// F1-adaptive thresholds and anomalib's min-max normalisation (METHOD §4.3).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "common/shared.h"
#include "eval/postprocess.h"
#include "io/checkpoint.h"
#include "io/error.h"

namespace {

using namespace iadgpt;

template <class T>
std::span<const T> span_of(const torch::Tensor& t) {
  return {t.data_ptr<T>(), static_cast<size_t>(t.numel())};
}

double f1_at(std::span<const float> s, std::span<const uint8_t> y, float thr) {
  int64_t tp = 0, fp = 0, pos = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    pos += y[i];
    if (s[i] >= thr) (y[i] ? tp : fp)++;
  }
  return 2.0 * tp / static_cast<double>(pos + tp + fp);
}

TEST(F1AdaptiveThreshold, PicksTheThresholdOfMaximalF1) {
  // thresholds 0.8: F1 2/3; 0.4: 1/2; 0.35: 4/5 (best); 0.1: 2/3.
  const float s[] = {0.1f, 0.4f, 0.35f, 0.8f};
  const uint8_t y[] = {0, 0, 1, 1};
  EXPECT_EQ(eval::f1_adaptive_threshold(s, y), 0.35f);
}

TEST(F1AdaptiveThreshold, EqualF1KeepsTheLowestThresholdLikeArgmaxOverAscendingThresholds) {
  // 0.9 -> tp1 fp0: 2/3; 0.1 -> tp2 fp2: 4/6 = 2/3 (exact tie, decided without rounding).
  const float s[] = {0.9f, 0.5f, 0.4f, 0.1f};
  const uint8_t y[] = {1, 0, 0, 1};
  EXPECT_EQ(eval::f1_adaptive_threshold(s, y), 0.1f);
}

TEST(F1AdaptiveThreshold, WithoutAnomaliesFallsBackToTheHighestScore) {
  const float s[] = {0.2f, 0.7f, 0.3f};
  const uint8_t y[] = {0, 0, 0};
  EXPECT_EQ(eval::f1_adaptive_threshold(s, y), 0.7f);
}

TEST(F1AdaptiveThreshold, AchievesF1MaxOfTheMetricsFixtures) {
  // The fitted threshold must realise the F1-max that sklearn reports (expected.json).
  for (const std::string c : {"small", "realistic"}) {
    const auto t = io::load_safetensors(test::fixture("metrics/" + c + "/input.safetensors"));
    std::ifstream f(test::fixture("metrics/" + c + "/expected.json"));
    ASSERT_TRUE(f) << c;
    const auto expected = nlohmann::json::parse(f);
    const auto s = span_of<float>(t.at("image_scores"));
    const auto y = span_of<uint8_t>(t.at("image_labels"));
    EXPECT_NEAR(f1_at(s, y, eval::f1_adaptive_threshold(s, y)), expected["image_f1_max"].get<double>(), 1e-12) << c;
    const auto ms = span_of<float>(t.at("anomaly_maps"));
    const auto my = span_of<uint8_t>(t.at("masks"));
    EXPECT_NEAR(f1_at(ms, my, eval::f1_adaptive_threshold(ms, my)), expected["pixel_f1_max"].get<double>(), 1e-12)
        << c;
  }
}

TEST(MinMaxNormalization, MapsTheThresholdToOneHalfAndClamps) {
  EXPECT_FLOAT_EQ(eval::normalize_min_max(0.4f, 0.4f, 0.f, 2.f), 0.5f);
  EXPECT_FLOAT_EQ(eval::normalize_min_max(0.9f, 0.4f, 0.f, 2.f), 0.75f);  // (0.5 / 2) + 0.5
  EXPECT_FLOAT_EQ(eval::normalize_min_max(10.f, 0.4f, 0.f, 2.f), 1.f);
  EXPECT_FLOAT_EQ(eval::normalize_min_max(-10.f, 0.4f, 0.f, 2.f), 0.f);
  const auto m = eval::normalize_min_max(torch::tensor({0.4f, 0.9f, 10.f}), 0.4f, 0.f, 2.f);
  EXPECT_TRUE(torch::allclose(m, torch::tensor({0.5f, 0.75f, 1.f})));
  EXPECT_THROW(eval::normalize_min_max(0.f, 0.f, 1.f, 1.f), InputError);  // zero range
}

TEST(PostProcessor, FitsOnValidationAndPredicts) {
  // Two 1x2 maps; image 1 anomalous with its right pixel.
  const float scores[] = {0.2f, 0.8f};
  const uint8_t labels[] = {0, 1};
  const float maps[] = {0.1f, 0.3f, 0.2f, 0.9f};
  const uint8_t masks[] = {0, 0, 0, 1};
  const auto pp = eval::fit_post_processor(scores, labels, {maps, masks, 2, 1, 2});
  EXPECT_EQ(pp.image_threshold, 0.8f);
  EXPECT_EQ(pp.pixel_threshold, 0.9f);
  EXPECT_EQ(pp.pixel_min, 0.1f);
  EXPECT_EQ(pp.pixel_max, 0.9f);
  const auto p = eval::predict(pp, 0.8f, torch::tensor({{0.5f, 0.95f}}));
  EXPECT_TRUE(p.pred_label);
  EXPECT_FLOAT_EQ(p.pred_score, 0.5f);
  EXPECT_TRUE(torch::equal(p.pred_mask, torch::tensor({{0, 1}}, torch::kUInt8)));
  EXPECT_NEAR(p.anomaly_map[0][1].item<float>(), (0.95f - 0.9f) / 0.8f + 0.5f, 1e-6);
  EXPECT_FALSE(eval::predict(pp, 0.79f, {}).pred_label);

  nlohmann::json j = pp;
  const auto back = j.get<eval::PostProcessor>();
  EXPECT_EQ(back.pixel_threshold, pp.pixel_threshold);
  j.erase("image_max");
  EXPECT_THROW(j.get<eval::PostProcessor>(), InputError);
}

}  // namespace
