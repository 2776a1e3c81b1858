// Post-processing of raw scores into user-facing predictions (METHOD §4.3), following anomalib:
// F1-adaptive thresholds fitted on a validation split (`F1AdaptiveThreshold`), min-max
// normalisation with the threshold mapped to 0.5 (`normalization/min_max_normalization.py`),
// and `pred_score`, `pred_label`, `anomaly_map`, `pred_mask`.
//
//   auto pp = iadgpt::eval::fit_post_processor(val_scores, val_labels, val_maps, val_masks);
//   auto pred = iadgpt::eval::predict(pp, raw_score, raw_map);   // pred.pred_label, pred.pred_mask
//   nlohmann::json j = pp;                                        // saved next to a model
//
// Labels and masks come from the RAW values (score >= threshold), as anomalib computes them before
// normalising; the normalised threshold is exactly 0.5, so `normalised >= 0.5` agrees except where
// float rounding of (x - threshold) / range reaches 0 for x just below the threshold.
// Thread-safety: pure functions; PostProcessor is a value.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <span>

#include "eval/metrics.h"

namespace iadgpt::eval {

// anomalib F1AdaptiveThreshold: the threshold maximising F1 over the validation scores. Without any
// anomalous sample anomalib falls back to the highest score seen (and warns); so do we.
float f1_adaptive_threshold(std::span<const float> scores, std::span<const uint8_t> labels);

// anomalib's min-max normalisation: ((x - threshold) / (max - min)) + 0.5, clamped to [0, 1].
float normalize_min_max(float x, float threshold, float min, float max);
torch::Tensor normalize_min_max(const torch::Tensor& x, float threshold, float min, float max);

struct PostProcessor {
  float image_threshold = 0.5f, pixel_threshold = 0.5f;  // raw-score units
  float image_min = 0.f, image_max = 1.f;                // min/max of validation image scores
  float pixel_min = 0.f, pixel_max = 1.f;                // min/max of validation map values
};

// Fits both thresholds and the min-max statistics on a validation split. maps: [N,H,W] F32,
// masks: [N,H,W] U8 0/1 (pixel threshold pooled over every pixel, as anomalib's pixel metric).
PostProcessor fit_post_processor(std::span<const float> image_scores, std::span<const uint8_t> image_labels,
                                 const PixelInput& pixels);

struct Prediction {
  float pred_score = 0;      // normalised image score in [0,1]; 0.5 = threshold
  bool pred_label = false;   // raw score >= image threshold
  torch::Tensor anomaly_map; // normalised map, F32, same shape as the raw map
  torch::Tensor pred_mask;   // U8 0/1: raw map >= pixel threshold
};

Prediction predict(const PostProcessor& pp, float raw_score, const torch::Tensor& raw_map);

void to_json(nlohmann::json& j, const PostProcessor& pp);
void from_json(const nlohmann::json& j, PostProcessor& pp);  // InputError on missing/invalid fields

}  // namespace iadgpt::eval
