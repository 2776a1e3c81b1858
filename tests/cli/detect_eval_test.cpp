// `iadgpt detect` and `iadgpt eval` end to end on the real benchmark subsets with the ImageBind
// fixture tower. Metric values are recomputed here, by brute force, from the maps eval saves.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "common/run.h"
#include "common/shared.h"
#include "io/checkpoint.h"

using namespace iadgpt;

namespace {

std::string tiny_flags() {
  return "--vision '" + test::fixture("imagebind_tiny/imagebind_tiny.safetensors").string() + "' --config '" +
         test::fixture("imagebind_tiny/config.json").string() + "' --vocab '" +
         test::data("tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz").string() + "' --taps 1,3";
}

// AUROC by counting every (anomalous, normal) pair, ties counted one half: the definition itself.
double pairwise_auroc(const torch::Tensor& scores, const torch::Tensor& labels) {
  auto s = scores.to(torch::kFloat64).reshape({-1});
  auto l = labels.reshape({-1}).to(torch::kBool);
  auto pos = s.masked_select(l), neg = s.masked_select(~l);
  auto greater = (pos.unsqueeze(1) > neg.unsqueeze(0)).sum().item<double>();
  auto ties = (pos.unsqueeze(1) == neg.unsqueeze(0)).sum().item<double>();
  return (greater + 0.5 * ties) / (pos.numel() * static_cast<double>(neg.numel()));
}

// Pixel AUROC from ranks (Mann–Whitney U with average ranks for ties): a second, independent formula.
double rank_auroc(const torch::Tensor& scores, const torch::Tensor& labels) {
  auto s = scores.to(torch::kFloat64).reshape({-1});
  auto l = labels.reshape({-1}).to(torch::kFloat64);
  auto [sorted, order] = s.sort();
  const int64_t n = s.numel();
  auto sorted_acc = sorted.accessor<double, 1>();
  std::vector<double> ranks(n);
  for (int64_t i = 0; i < n;) {
    int64_t j = i;
    while (j + 1 < n && sorted_acc[j + 1] == sorted_acc[i]) ++j;
    for (int64_t k = i; k <= j; ++k) ranks[k] = 0.5 * (i + j) + 1;
    i = j + 1;
  }
  auto labels_sorted = l.index_select(0, order);
  auto lab = labels_sorted.accessor<double, 1>();
  double rank_sum = 0, positives = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (lab[i] > 0.5) {
      rank_sum += ranks[i];
      positives += 1;
    }
  }
  const double negatives = n - positives;
  return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives);
}

}  // namespace

TEST(EvalCommand, FewShotOnMvtecGridRecomputesFromSavedMaps) {
  const auto dir = test::scratch("eval-grid");
  auto r = test::run_iadgpt("eval " + tiny_flags() + " --dataset 'mvtec:" + test::data("mvtec_ad").string() +
                            "' --category grid --shots 1 --rounds 2 --grids '" + (dir / "grids").string() + "' --save-maps '" + (dir / "maps").string() +
                            "' --out '" + (dir / "results.json").string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto results = nlohmann::json::parse(test::slurp(dir / "results.json"));
  const auto& grid = results["categories"]["grid"];
  EXPECT_EQ(grid["test_images"], 10);
  EXPECT_EQ(grid["anomalous"], 7);
  EXPECT_EQ(grid["mode"], "few-shot");
  EXPECT_EQ(results["rounds"], 2);
  for (const char* res : {"224", "full"}) {
    for (const char* key : {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro_0.3"}) {
      ASSERT_TRUE(grid["metrics"][res].contains(key)) << res << " " << key;
      EXPECT_EQ(grid["metrics"][res][key], results["mean"][res][key]);  // one category: mean = it
    }
  }
  // The metrics reported are the mean over rounds of the metrics of each round's saved maps.
  for (const char* res : {"224", "full"}) {
    double image_auroc = 0, pixel_auroc = 0;
    for (int round = 0; round < 2; ++round) {
      auto saved = io::load_safetensors(dir / "maps" / ("grid_r" + std::to_string(round) + "_" + res + ".safetensors"));
      ASSERT_EQ(saved.at("anomaly_maps").size(0), 10);
      if (std::string(res) == "224") EXPECT_EQ(saved.at("anomaly_maps").size(1), 224);
      else EXPECT_EQ(saved.at("anomaly_maps").size(1), 1024);
      image_auroc += pairwise_auroc(saved.at("image_scores"), saved.at("image_labels")) / 2;
      pixel_auroc += rank_auroc(saved.at("anomaly_maps"), saved.at("masks")) / 2;
    }
    // Integer-exact counts versus double sums of ranks over 10⁶ pixels: 1e-9 absorbs the rounding.
    EXPECT_NEAR(grid["metrics"][res]["image_auroc"].get<double>(), image_auroc, 1e-9);
    EXPECT_NEAR(grid["metrics"][res]["pixel_auroc"].get<double>(), pixel_auroc, 1e-9);
  }
  EXPECT_NE(test::slurp(dir / "results.md").find("| grid |"), std::string::npos);
  // One grid per test image, four tiles wide.
  int grids = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir / "grids" / "grid")) grids += entry.path().extension() == ".png";
  EXPECT_EQ(grids, 10);
  EXPECT_TRUE(std::filesystem::exists(dir / "grids" / "grid" / "bent_000.png"));
  std::filesystem::remove_all(dir);
}

TEST(EvalCommand, ZeroShotOnMvtec3dTireAndHazelnutWithoutMaskSuffix) {
  const auto dir = test::scratch("eval-3d");
  auto r = test::run_iadgpt("eval " + tiny_flags() + " --dataset 'mvtec3d:" + test::data("mvtec3d").string() +
                            "' --category tire --resolution 224 --out '" + (dir / "tire.json").string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto tire = nlohmann::json::parse(test::slurp(dir / "tire.json"));
  EXPECT_EQ(tire["categories"]["tire"]["mode"], "zero-shot");
  EXPECT_EQ(tire["categories"]["tire"]["test_images"], 9);
  EXPECT_TRUE(tire["mean"]["224"].contains("pixel_auroc"));
  EXPECT_FALSE(tire["mean"].contains("full"));

  r = test::run_iadgpt("eval " + tiny_flags() + " --dataset 'mvtec:" + test::data("hazelnut_toy").string() +
                       "' --shots 2 --rounds 1 --out '" + (dir / "hazelnut.json").string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto nut = nlohmann::json::parse(test::slurp(dir / "hazelnut.json"));
  EXPECT_EQ(nut["categories"]["hazelnut"]["test_images"], 8);
  EXPECT_EQ(nut["categories"]["hazelnut"]["anomalous"], 4);
  EXPECT_GT(nut["timing"]["images_per_second"].get<double>(), 0.0);
  // Calibration on 4 held-out normals + 4 CutPaste anomalies; thresholds saved for `detect --post`.
  const auto& calibration = nut["categories"]["hazelnut"]["calibration"];
  EXPECT_EQ(calibration["validation_normals"], 4);
  const auto thresholds_path = dir / "hazelnut.thresholds.json";
  auto thresholds = nlohmann::json::parse(test::slurp(thresholds_path));
  ASSERT_TRUE(thresholds.contains("hazelnut"));
  const double image_threshold = thresholds["hazelnut"]["image_threshold"].get<double>();

  r = test::run_iadgpt("detect " + tiny_flags() + " --class hazelnut --post '" + thresholds_path.string() +
                       "' --reference '" + test::data("hazelnut_toy/hazelnut/train/good/00.jpg").string() +
                       "' --reference '" + test::data("hazelnut_toy/hazelnut/train/good/02.jpg").string() +
                       "' --out '" + (dir / "detect").string() + "' '" +
                       test::data("hazelnut_toy/hazelnut/test/colour/00.jpg").string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(test::slurp(dir / "detect" / "00.json"));
  const double raw = j["raw_score"].get<double>(), normalised = j["pred_score"].get<double>();
  EXPECT_GE(normalised, 0.0);
  EXPECT_LE(normalised, 1.0);
  // anomalib's normalisation puts the fitted threshold at 0.5 and keeps the order.
  EXPECT_EQ(raw >= image_threshold, normalised >= 0.5);
  EXPECT_EQ(j["pred_label"].get<int>(), raw >= image_threshold ? 1 : 0);
  r = test::run_iadgpt("detect " + tiny_flags() + " --class bottle --post '" + thresholds_path.string() + "' --out '" +
                       (dir / "detect2").string() + "' '" + test::data("hazelnut_toy/hazelnut/test/colour/00.jpg").string() + "'");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("no thresholds for class 'bottle'"), std::string::npos) << r.err;
  std::filesystem::remove_all(dir);
}

TEST(EvalCommand, BadDatasetsFailBeforeEncoding) {
  auto r = test::run_iadgpt("eval " + tiny_flags() + " --dataset 'mvtec:/nonexistent' --out /tmp/x.json");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("dataset folder not found"), std::string::npos) << r.err;
  r = test::run_iadgpt("eval " + tiny_flags() + " --dataset 'imagenet:/tmp' --out /tmp/x.json");
  EXPECT_EQ(r.exit_code, 2);
  r = test::run_iadgpt("eval " + tiny_flags() + " --dataset 'mvtec:" + test::data("mvtec_ad").string() +
                       "' --category bottle --out /tmp/x.json");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("bottle"), std::string::npos) << r.err;
}

TEST(DetectCommand, VisionQuantOtherThanNoneOrQ8IsExit2) {
  const auto image = test::data("mvtec_ad/grid/test/good/000.png").string();
  for (const std::string value : {"q4", "int8"}) {
    auto r = test::run_iadgpt("detect " + tiny_flags() + " --vision-quant " + value + " --out '" +
                              test::scratch("detect-vq").string() + "' '" + image + "'");
    EXPECT_EQ(r.exit_code, 2) << value << ": " << r.err;
    EXPECT_NE(r.err.find("--vision-quant"), std::string::npos) << r.err;
    // What the tower takes, not the LLM's list (none, q8 or q4).
    EXPECT_NE(r.err.find("none or q8"), std::string::npos) << r.err;
  }
}

TEST(DetectCommand, WritesResultsPerImageAndSkipsUnreadableFiles) {
  const auto dir = test::scratch("detect");
  std::filesystem::create_directories(dir / "in");
  for (const char* name : {"bent/000.png", "good/000.png"}) {
    std::filesystem::copy_file(test::data("mvtec_ad/grid/test/") / name,
                               dir / "in" / (std::string(name).substr(0, 4) + ".png"));
  }
  std::ofstream(dir / "in" / "broken.png") << "not a png";
  auto r = test::run_iadgpt("detect " + tiny_flags() + " --class grid --reference '" +
                            test::data("mvtec_ad/grid/train/good/000.png").string() + "' --grid --out '" +
                            (dir / "out").string() + "' '" + (dir / "in").string() + "'");
  EXPECT_EQ(r.exit_code, 2) << r.err;  // one unreadable file: reported, the others processed
  EXPECT_NE(r.err.find("broken.png"), std::string::npos) << r.err;
  for (const char* stem : {"bent", "good"}) {
    auto j = nlohmann::json::parse(test::slurp(dir / "out" / (std::string(stem) + ".json")));
    EXPECT_EQ(j["mode"], "few-shot");
    EXPECT_TRUE(j["pred_score"].is_number());
    EXPECT_TRUE(std::filesystem::exists(dir / "out" / (std::string(stem) + "_overlay.png")));
    EXPECT_TRUE(std::filesystem::exists(dir / "out" / (std::string(stem) + "_grid.png")));
    auto maps = io::load_safetensors(dir / "out" / (std::string(stem) + ".safetensors"));
    EXPECT_EQ(maps.at("anomaly_map").sizes(), (std::vector<int64_t>{1024, 1024}));
    EXPECT_NEAR(maps.at("anomaly_map").max().item<double>(), j["pred_score"].get<double>(), 0.05);
  }
  auto summary = test::slurp(dir / "out" / "summary.csv");
  EXPECT_NE(summary.find("broken.png"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(DetectCommand, FailOnAnomalyExitsThreeWithACompleteSummary) {
  const auto dir = test::scratch("detect-fail");
  const auto good = test::data("mvtec_ad/grid/test/good/000.png").string();
  const auto bent = test::data("mvtec_ad/grid/test/bent/000.png").string();
  const std::string common = "detect " + tiny_flags() + " --reference '" +
                             test::data("mvtec_ad/grid/train/good/000.png").string() + "' --fail-on-anomaly ";
  // Threshold 0: any positive few-shot score is an anomaly.
  auto r = test::run_iadgpt(common + "--threshold 0 --out '" + (dir / "a").string() + "' '" + good + "' '" + bent + "'");
  EXPECT_EQ(r.exit_code, 3) << r.err;
  auto summary = test::slurp(dir / "a" / "summary.csv");
  EXPECT_EQ(std::count(summary.begin(), summary.end(), '\n'), 3);  // header + two images
  // Threshold 1: 1 − cosine stays below 1 for these grid images, so nothing is flagged.
  r = test::run_iadgpt(common + "--threshold 1 --out '" + (dir / "b").string() + "' '" + good + "'");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::filesystem::remove_all(dir);
}

TEST(DetectCommand, MissingCheckpointIsExitTwo) {
  auto r = test::run_iadgpt("detect --vision /nonexistent.pth --out /tmp/o " + test::data("mvtec_ad/grid/test/good/000.png").string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("iadgpt: error: vision checkpoint not found"), std::string::npos) << r.err;
}
