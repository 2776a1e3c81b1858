// `iadgpt eval --model` (issue 15): the whole model on a dataset — tables for every category, and
// every image-level figure recomputed by brute force from the saved answers (--save-answers).
// Tiny towers with random heads (tests/model/tiny_bundle.h) on two real categories: hazelnut_toy
// (8 test images) and the MVTec AD grid fixture (10), few-shot with 1 reference, 2 rounds.
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "common/run.h"
#include "common/shared.h"
#include "model/tiny_bundle.h"

using namespace iadgpt;
namespace fs = std::filesystem;

namespace {

// RFC 4180 rows: quoted fields may hold commas, quotes ("") and newlines.
std::vector<std::vector<std::string>> read_csv(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::vector<std::vector<std::string>> rows(1);
  std::string field;
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') field += '"', ++i;
      else if (c == '"') quoted = false;
      else field += c;
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      rows.back().push_back(field), field.clear();
    } else if (c == '\n') {
      rows.back().push_back(field), field.clear();
      rows.emplace_back();
    } else {
      field += c;
    }
  }
  if (rows.back().empty()) rows.pop_back();
  return rows;
}

// AUROC by comparing every (anomalous, normal) pair, ties counting ½: independent of eval/metrics.
double brute_auroc(const std::vector<double>& scores, const std::vector<int>& labels) {
  double wins = 0;
  int64_t pairs = 0;
  for (size_t i = 0; i < scores.size(); ++i)
    for (size_t j = 0; j < scores.size(); ++j)
      if (labels[i] == 1 && labels[j] == 0) {
        wins += scores[i] > scores[j] ? 1.0 : scores[i] == scores[j] ? 0.5 : 0.0;
        ++pairs;
      }
  return wins / static_cast<double>(pairs);
}

}  // namespace

TEST(EvalModel, TablesHoldEveryClassAndImageFiguresAreRecomputableFromTheAnswers) {
  const auto dir = test::scratch("eval-model");
  fs::remove_all(dir);
  fs::create_directories(dir / "data");
  fs::create_directory_symlink(test::data("hazelnut_toy/hazelnut"), dir / "data" / "hazelnut");
  fs::create_directory_symlink(test::data("mvtec_ad/grid"), dir / "data" / "grid");
  auto fields = test::tiny_bundle_fields("eval-model");
  model::init_random_adapters(fields, 5);
  // A decision bias that makes the random model answer Yes, so its answers name positions (the
  // position accuracy is scored on anomalous parts answered Yes); the log-odds keep their order.
  fields.decision_bias = {{"hazelnut", 40.0}, {"grid", 40.0}};
  model::write_bundle(fields, fields.dir);

  const auto out = dir / "results.json", csv = dir / "answers.csv";
  auto r = test::run_iadgpt({"eval", "--model", fields.dir.string(), "--dataset", "mvtec:" + (dir / "data").string(),
                             "--shots", "1", "--rounds", "2", "--fast", "--save-answers", csv.string(), "--out",
                             out.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::ifstream in(out);
  const auto results = nlohmann::json::parse(in);
  EXPECT_EQ(results.at("setting"), "few-shot, 1 shot");
  std::ifstream md_in(dir / "results.md");
  std::stringstream md;
  md << md_in.rdbuf();
  for (const auto* cls : {"hazelnut", "grid"}) {
    ASSERT_TRUE(results.at("categories").contains(cls)) << cls;
    EXPECT_NE(md.str().find(fmt::format("| {} |", cls)), std::string::npos) << md.str();
  }
  EXPECT_NE(md.str().find("| **mean** |"), std::string::npos);

  // The answers: one row per test image and round.
  const auto rows = read_csv(csv);
  ASSERT_GE(rows.size(), 2u);
  std::map<std::string, size_t> col;
  for (size_t i = 0; i < rows[0].size(); ++i) col[rows[0][i]] = i;
  for (const auto* key : {"category", "round", "label", "log_odds", "said_yes", "score", "position_right"})
    ASSERT_TRUE(col.count(key)) << key;
  EXPECT_EQ(rows.size() - 1, 2u * (8 + 10));
  // Per category and round, then the mean over rounds, as results.json reports.
  std::map<std::string, std::map<std::string, std::vector<double>>> per_round;  // category -> metric -> per round
  for (const auto* cls : {"hazelnut", "grid"})
    for (int round = 0; round < 2; ++round) {
      std::vector<double> odds, scores;
      std::vector<int> labels;
      int right = 0, n = 0, pos_scored = 0, pos_right = 0;
      for (size_t i = 1; i < rows.size(); ++i) {
        const auto& row = rows[i];
        if (row[col["category"]] != cls || std::stoi(row[col["round"]]) != round) continue;
        const int label = std::stoi(row[col["label"]]);
        odds.push_back(std::stod(row[col["log_odds"]]));
        scores.push_back(std::stod(row[col["score"]]));
        labels.push_back(label);
        right += std::stoi(row[col["said_yes"]]) == label, ++n;
        const int pos = std::stoi(row[col["position_right"]]);
        if (pos >= 0) ++pos_scored, pos_right += pos;
      }
      ASSERT_GT(n, 0) << cls << " round " << round;
      per_round[cls]["image_auroc"].push_back(brute_auroc(odds, labels));
      per_round[cls]["image_auroc_map"].push_back(brute_auroc(scores, labels));
      per_round[cls]["yes_no_accuracy"].push_back(static_cast<double>(right) / n);
      if (pos_scored > 0) per_round[cls]["position_accuracy"].push_back(static_cast<double>(pos_right) / pos_scored);
    }
  // Tolerance 1e-6: the CSV holds log-odds and scores as 9 significant digits (float round trip,
  // so ties and order are kept exactly); the means differ only by the rounding of two divisions.
  for (const auto* cls : {"hazelnut", "grid"}) ASSERT_EQ(per_round[cls]["position_accuracy"].size(), 2u) << cls;
  for (const auto& [cls, metrics] : per_round) {
    const auto& reported = results.at("categories").at(cls).at("metrics");
    for (const auto& [key, values] : metrics) {
      if (values.size() < 2) {
        EXPECT_FALSE(reported.contains(key)) << cls << " " << key << ": reported but not in both rounds";
        continue;
      }
      ASSERT_TRUE(reported.contains(key)) << cls << " " << key;
      EXPECT_NEAR(reported.at(key).get<double>(), (values[0] + values[1]) / 2, 1e-6) << cls << " " << key;
    }
  }
}

TEST(EvalModel, AFewShotBundleWithoutShotsIsRefusedBeforeAnyInference) {
  const auto dir = test::scratch("eval-model-fs");
  auto fields = test::tiny_bundle_fields("eval-model-fs");
  model::init_random_adapters(fields, 5);
  fields.mode = "few-shot";
  model::write_bundle(fields, fields.dir);
  auto r = test::run_iadgpt({"eval", "--model", fields.dir.string(), "--dataset",
                             "mvtec:" + test::data("hazelnut_toy").string(), "--out", (dir / "r.json").string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("few-shot: give --shots"), std::string::npos) << r.err;
}
