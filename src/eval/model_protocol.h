// The paper's evaluation of the whole model (IAD-GPT / AnomalyGPT tables): every test image of
// every category through model::IadGpt — P(Yes), the answer (generated, or with `fast` the
// one-prefill decision), the map, the position words and the defect type — scored per category
// and as the mean: image AUROC from P(Yes) and from the map score, pixel AUROC and AUPRO, Yes/No
// accuracy and position accuracy. Unsupervised (shots 0) or few-shot (k references per round,
// `rounds` rounds, mean over rounds). Every image-level figure can be recomputed from `answers`.
//
//   eval::ModelProtocol p{.kind = data::Kind::VisA, .root = "visa", .shots = 1, .rounds = 5};
//   auto r = eval::run_model_protocol(iadgpt, p, progress);
//   write r.results (JSON), eval::model_markdown(r.results), eval::write_answers_csv(path, r.answers)
#pragma once
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "eval/protocol.h"
#include "model/pipeline.h"

namespace iadgpt::eval {

struct ModelProtocol {
  data::Kind kind = data::Kind::MVTecAD;
  std::filesystem::path root;
  std::vector<std::string> categories;  // empty: every category found
  int64_t shots = 0, rounds = 5;        // rounds count only with shots > 0
  uint64_t seed = 0;                    // round r draws its references with seed + r
  bool fast = false;                    // the one-prefill decision, no generated answer
  int64_t max_tokens = 64;
  double pro_fpr = 0.3;
};

// One test image's outputs (one row of --save-answers).
struct ModelAnswer {
  std::string category, image, defect;
  int64_t round = 0;
  int label = 0;                 // ground truth: 1 anomalous
  double p_yes = 0;              // after the bundle's decision bias
  float log_odds = 0;            // log P(Yes)/P(No): ranks the images for image_auroc (P(Yes) rounds to 1 first)
  bool said_yes = false;         // the answer's Yes/No (the decision when it says neither)
  float score = 0;               // the map's image score
  std::string answer, position, defect_type;
  std::string truth_cells;       // cells holding the ground-truth defect ("top left, center"), anomalous images
  int position_right = -1;       // the answer names a truth cell: 1 / 0; -1 not scored (see position_accuracy)
};

// One category and round: the answers and the maps at S×S with their masks (for pixel metrics).
struct ModelRun {
  std::vector<ModelAnswer> answers;
  std::vector<float> maps;      // n × S × S
  std::vector<uint8_t> masks;   // n × S × S
  int64_t size = 0;
};

// Called with each image, its inspection and its row (the demo draws its report from these).
using OnInspection = std::function<void(const data::Sample&, const cv::Mat& image, const model::Inspection&,
                                        const ModelAnswer&)>;

// The category's test samples through `iadgpt` (class and references already set).
ModelRun inspect_samples(model::IadGpt& iadgpt, const std::vector<data::Sample>& test, const ModelProtocol& p,
                         int64_t round, const OnInspection& on_image = {}, const std::function<void()>& step = {});

// The figures of one run: image_auroc (from P(Yes)), image_auroc_map (from the map score),
// pixel_auroc, aupro_*, and the rest of compute_metrics, yes_no_accuracy, position_accuracy
// (share of anomalous images answered Yes whose answer names at least one cell that holds the
// defect; absent when there is none) and position_scored. Single-class categories report
// {"error": …} for the AUROCs and keep the accuracies.
nlohmann::ordered_json model_metrics(const ModelRun& run, double pro_fpr);

struct ModelProtocolResult {
  nlohmann::ordered_json results;  // setting, shots, rounds, categories{…}, mean, timing
  std::vector<ModelAnswer> answers;
  int64_t images = 0;
};
// InputError before any inference when the layout, a category or an option is wrong.
ModelProtocolResult run_model_protocol(model::IadGpt& iadgpt, const ModelProtocol& p, const ProgressFn& progress = {});

// Does a sentence name at least one of `truth`'s cells (anomaly::cells_named)? The position check.
bool names_a_cell_of(std::string_view text, const std::vector<std::string>& truth);

// One section per setting, categories as rows, metrics as columns, the mean last.
std::string model_markdown(const nlohmann::ordered_json& results);
// CSV with a header row; fields with commas or quotes are quoted.
void write_answers_csv(const std::filesystem::path& path, std::span<const ModelAnswer> answers);

}  // namespace iadgpt::eval
