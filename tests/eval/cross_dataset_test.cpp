// The paper's cross-dataset few-shot recipe end to end (issue 15; AnomalyGPT's issue #2): train on
// every class of one dataset from its normal images only, then evaluate the whole model few-shot
// on the other dataset, and the reverse. Tiny towers and LLM, the fixtures as the two datasets
// (hazelnut_toy, and the MVTec AD grid fixture); a few steps each: what is checked is the
// recipe's plumbing — tables for every class of the other dataset, one answer per test image.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "common/run.h"
#include "common/shared.h"
#include "common/tiny_training.h"

using namespace iadgpt;
namespace fs = std::filesystem;

namespace {

void train_on(const fs::path& root, const std::string& category, const fs::path& out) {
  auto cfg = test::tiny_training_config(out);
  cfg.update(nlohmann::json{
      {"llm_tuning", "lora"},
      {"lora", {{"rank", 4}, {"alpha", 8}}},
      {"datasets", {{{"kind", "mvtec"}, {"root", root.string()}, {"categories", {category}}}}},
      {"per_image", 1},
      {"holdout", 2},
      {"references", 1},
      {"stages", {{{"stage", 1}, {"steps", 2}}, {{"stage", 2}, {"steps", 2}}, {{"stage", 3}, {"steps", 2}}}},
      {"batch_size", 2},
      {"resume", false}});
  fs::create_directories(out.parent_path());
  const auto file = out.parent_path() / (out.filename().string() + ".json");
  std::ofstream(file) << cfg.dump(1);
  auto r = test::run_iadgpt({"--threads", "2", "train", "--quiet", "--config", file.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

void eval_few_shot_on(const fs::path& bundle, const fs::path& root, const std::string& category, int64_t test_images,
                      const fs::path& out) {
  const auto csv = out.parent_path() / (out.stem().string() + ".csv");
  auto r = test::run_iadgpt({"eval", "--model", bundle.string(), "--dataset", "mvtec:" + root.string(), "--shots", "1",
                             "--rounds", "1", "--fast", "--save-answers", csv.string(), "--out", out.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::ifstream in(out);
  const auto results = nlohmann::json::parse(in);
  ASSERT_EQ(results.at("categories").size(), 1u);
  const auto& metrics = results.at("categories").at(category).at("metrics");
  for (const auto* key : {"image_auroc", "image_auroc_map", "pixel_auroc", "yes_no_accuracy"})
    EXPECT_TRUE(metrics.contains(key)) << category << " " << key << ": " << metrics.dump();
  std::ifstream md(out.parent_path() / (out.stem().string() + ".md"));
  std::stringstream text;
  text << md.rdbuf();
  EXPECT_NE(text.str().find("| " + category + " |"), std::string::npos) << text.str();
  std::ifstream answers(csv);
  int64_t lines = 0;
  for (std::string line; std::getline(answers, line);) ++lines;
  EXPECT_GE(lines, 1 + test_images);  // header + one row per test image (an answer may span lines)
}

}  // namespace

TEST(CrossDataset, TrainOnOneDatasetThenEvaluateFewShotOnTheOtherAndTheReverse) {
  const auto dir = test::scratch("cross-dataset");
  fs::remove_all(dir);
  const auto hazelnut = test::data("hazelnut_toy"), mvtec = test::data("mvtec_ad");
  train_on(hazelnut, "hazelnut", dir / "from_hazelnut");
  eval_few_shot_on(dir / "from_hazelnut", mvtec, "grid", 10, dir / "hazelnut_to_mvtec.json");
  train_on(mvtec, "grid", dir / "from_mvtec");
  eval_few_shot_on(dir / "from_mvtec", hazelnut, "hazelnut", 8, dir / "mvtec_to_hazelnut.json");
}
