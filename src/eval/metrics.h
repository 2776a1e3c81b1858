// Anomaly-detection metrics computed exactly as the field does (METHOD §4.2):
// image/pixel AUROC, AP, F1-max with scikit-learn's semantics, and AUPRO up to a maximum FPR with
// MVTec AD's official algorithm (8-connected regions, float32 FPRs, trapezoid with interpolation).
//
//   iadgpt::eval::MetricsInput in{scores, labels, maps, masks, n, h, w};
//   auto report = iadgpt::eval::compute_metrics(in);          // throws InputError on bad input
//   std::cout << iadgpt::eval::to_json(report).dump(2);       // {"image_auroc": ..., "aupro_0.3": ...}
//
// Ties: thresholds are the distinct score values (exact float equality, -0 == +0); a sample is
// positive at t iff score >= t, so tied samples switch together (sklearn `_binary_clf_curve`).
// Memory: the pixel metrics sort one 64-bit key per pixel (score | region id) once and sweep it
// once; no per-threshold passes (a 512x512x8 case has 2M thresholds).
// Thread-safety: pure functions over caller-owned spans.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/checkpoint.h"

namespace iadgpt::eval {

// One point per distinct threshold, descending: cumulative counts of samples with score >= threshold.
struct CurvePoint {
  float threshold;
  int64_t tp;
  int64_t fp;
};

struct BinaryScores {
  double auroc = 0;   // sklearn roc_auc_score
  double ap = 0;      // sklearn average_precision_score (step sum, no interpolation)
  double f1_max = 0;  // max F1 over sklearn's precision_recall_curve
};

// Scores must be finite and labels 0/1 with both classes present; `what` names the level
// ("image", "pixel") in InputError messages.
std::vector<CurvePoint> binary_curve(std::span<const float> scores, std::span<const uint8_t> labels,
                                     std::string_view what = "image");
BinaryScores binary_metrics(std::span<const float> scores, std::span<const uint8_t> labels,
                            std::string_view what = "image");

// The threshold of maximal F1 (sklearn precision_recall_curve points); among equal F1 values the
// lowest threshold wins, as torch.argmax over anomalib's ascending thresholds picks it.
struct BestF1 {
  float threshold = 0;
  double f1 = 0;
  int64_t tp = 0, fp = 0;
};
BestF1 best_f1(std::span<const float> scores, std::span<const uint8_t> labels, std::string_view what = "image");

// Yes/No answers of the language model: the first standalone word "yes" or "no" (any case) decides
// ("Yes, there is an anomaly..." -> true, "No." -> false); nullopt when neither word occurs.
std::optional<bool> parse_yes_no(std::string_view answer);
// Accuracy of said_yes (1 = "Yes") against 0/1 labels (lengths must match, non-empty).
double yes_no_accuracy(std::span<const uint8_t> said_yes, std::span<const uint8_t> labels);

// Pixel-level inputs: n maps of h x w, row-major; masks 0/1.
struct PixelInput {
  std::span<const float> maps;
  std::span<const uint8_t> masks;
  int64_t n = 0, h = 0, w = 0;
};

struct PixelScores {
  double auroc = 0, ap = 0, f1_max = 0;  // over all pixels of all maps pooled
  double aupro = 0;                      // MVTec AD official, integrated to max_fpr, / max_fpr
};

// The official compute_pro curve: (0,0), one point per distinct threshold (descending), (1,1).
// FPRs are rounded to float32 as the official code stores them. For tests and plots (O(#thresholds)).
struct ProCurve {
  std::vector<double> fpr, pro;
};
ProCurve pro_curve(const PixelInput& in);

// MVTec's generic_util.trapezoid(x, y, x_max): trapezoid over points with x <= x_max, plus the
// segment to x_max interpolated linearly when x_max is not itself an x value.
double trapezoid(std::span<const double> x, std::span<const double> y, double x_max);

// Pixel AUROC/AP/F1-max and AUPRO in one sort and one sweep.
PixelScores pixel_metrics(const PixelInput& in, double max_fpr = 0.3);

struct MetricsInput {
  std::span<const float> image_scores;
  std::span<const uint8_t> image_labels;
  PixelInput pixels;
};

struct MetricsReport {
  BinaryScores image;
  PixelScores pixel;
  double max_fpr = 0.3;
};

// Checks everything before computing anything: finite scores, 0/1 labels and masks, and that
// both classes exist at image level (labels) and pixel level (mask pixels). InputError otherwise.
void validate(const MetricsInput& in);
MetricsReport compute_metrics(const MetricsInput& in, double max_fpr = 0.3);

// From tensors: `image_scores` F32 [N], `image_labels` U8 [N], `anomaly_maps` F32 [N,H,W],
// `masks` U8 [N,H,W]. `source` (a file name) prefixes error messages.
MetricsReport compute_metrics(const io::TensorMap& tensors, double max_fpr, std::string_view source);

// "aupro_0.3" for the default; otherwise "aupro_<shortest decimal of max_fpr>" (e.g. aupro_0.05).
std::string aupro_key(double max_fpr);
// Keys: image_auroc, image_ap, image_f1_max, pixel_auroc, pixel_ap, pixel_f1_max, aupro_key(max_fpr).
nlohmann::ordered_json to_json(const MetricsReport& report);

}  // namespace iadgpt::eval
