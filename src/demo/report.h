// The demo's HTML report: one self-contained page (pictures beside it under img/) with the
// Yes/No accuracy, the metrics per class, and every held-out part with its overlay, score and answer.
// It states plainly that the model is a demo and where real weights are described.
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "demo/demo.h"

namespace iadgpt::demo {

struct ReportItem {
  std::string class_name, defect;
  std::string picture;  // relative to the report: input | overlay | predicted mask | ground truth
  double score = 0, threshold = 0;
  std::string answer;
  bool anomalous = false, said_yes = false;
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
};

// HTML-escapes & < > " '.
std::string html_escape(std::string_view text);
void write_report(const std::filesystem::path& path, const ReportInput& report);

}  // namespace iadgpt::demo
