// The demo's HTML report: one self-contained page (pictures beside it under img/) with the
// Yes/No accuracy, the metrics per class, and every held-out part with its overlay, score and answer.
// It states plainly that the model is a demo and where real weights are described.
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "demo/demo.h"

namespace iadgpt::demo {

struct ReportItem {
  std::string class_name, defect;
  std::string picture;  // relative to the report: input | overlay | predicted mask | ground truth
  double score = 0, threshold = 0;
  std::string answer;
  std::string map_position;  // the map's regions in words (Inspection::position)
  double p_yes = 0;          // calibrated P(Yes) of the decision token
  bool anomalous = false, said_yes = false;
  // Defective parts answered "Yes": the cells holding the defect, and whether the answer's and the
  // map's position words name one of them.
  std::string truth_position;
  bool answer_position_right = false, map_position_right = false;
};

struct ReportInput {
  std::vector<ReportItem> items;
  std::vector<ClassResult> classes;
  nlohmann::ordered_json mean_metrics;
  double accuracy = 0;
  int correct = 0, total = 0;
  nlohmann::ordered_json timings;
  int shots = 0;
  int64_t steps = 0;      // map warm-up
  int64_t llm_steps = 0;  // stages 1-3
  uint64_t seed = 0;
  std::map<std::string, double> decision_bias;  // per class, fitted on the validation split
  double validation_before = 0, validation_after = 0;  // validation Yes/No accuracy before / after
  double trainer_pairs = 0, trainer_validation = 0;  // the trainer's own final evaluation
  int positions = 0, answer_position_right = 0, map_position_right = 0;
  // A conversation about one held-out part: first (part, "") then (question, answer) turns.
  std::vector<std::pair<std::string, std::string>> conversation;
};

// HTML-escapes & < > " '.
std::string html_escape(std::string_view text);
void write_report(const std::filesystem::path& path, const ReportInput& report);
// report/summary.json: the figures and every held-out part's result (class, defect, truth, answer,
// decision, p_yes, score), from which the accuracy can be recounted.
void write_summary(const std::filesystem::path& path, const DemoResult& result, const std::vector<ReportItem>& items);

}  // namespace iadgpt::demo
