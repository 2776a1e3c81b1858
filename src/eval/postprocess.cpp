#include "eval/postprocess.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "io/error.h"

namespace iadgpt::eval {
namespace {

void check_range(float min, float max, std::string_view what) {
  if (!std::isfinite(min) || !std::isfinite(max) || !(max > min)) {
    throw InputError(fmt::format("min-max normalisation of {}: needs finite min < max, got min {} max {}", what,
                                 min, max));
  }
}

std::pair<float, float> min_max(std::span<const float> v, std::string_view what) {
  if (v.empty()) throw InputError(fmt::format("post-processing: no {} to fit on", what));
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return {*lo, *hi};
}

}  // namespace

float f1_adaptive_threshold(std::span<const float> scores, std::span<const uint8_t> labels) {
  if (scores.size() != labels.size()) {
    throw InputError(fmt::format("F1-adaptive threshold: {} scores for {} labels", scores.size(), labels.size()));
  }
  if (scores.empty()) throw InputError("F1-adaptive threshold: empty validation set");
  const bool any_anomalous = std::any_of(labels.begin(), labels.end(), [](uint8_t l) { return l != 0; });
  if (!any_anomalous) {
    for (float s : scores) {
      if (!std::isfinite(s)) throw InputError("F1-adaptive threshold: non-finite validation score");
    }
    return *std::max_element(scores.begin(), scores.end());
  }
  const bool any_normal = std::any_of(labels.begin(), labels.end(), [](uint8_t l) { return l == 0; });
  if (!any_normal) {
    // Every sample anomalous: F1 is maximal (1) at the lowest threshold, which flags them all.
    return *std::min_element(scores.begin(), scores.end());
  }
  return best_f1(scores, labels, "validation").threshold;
}

float normalize_min_max(float x, float threshold, float min, float max) {
  check_range(min, max, "a score");
  const float v = ((x - threshold) / (max - min)) + 0.5f;
  return std::clamp(v, 0.0f, 1.0f);
}

torch::Tensor normalize_min_max(const torch::Tensor& x, float threshold, float min, float max) {
  check_range(min, max, "a map");
  return (((x.to(torch::kFloat32) - threshold) / (max - min)) + 0.5f).clamp(0.0, 1.0);
}

PostProcessor fit_post_processor(std::span<const float> image_scores, std::span<const uint8_t> image_labels,
                                 const PixelInput& pixels) {
  if (static_cast<int64_t>(pixels.maps.size()) != pixels.n * pixels.h * pixels.w ||
      pixels.masks.size() != pixels.maps.size()) {
    throw InputError("post-processing: maps and masks differ in size");
  }
  PostProcessor pp;
  pp.image_threshold = f1_adaptive_threshold(image_scores, image_labels);
  pp.pixel_threshold = f1_adaptive_threshold(pixels.maps, pixels.masks);
  std::tie(pp.image_min, pp.image_max) = min_max(image_scores, "image scores");
  std::tie(pp.pixel_min, pp.pixel_max) = min_max(pixels.maps, "anomaly maps");
  return pp;
}

Prediction predict(const PostProcessor& pp, float raw_score, const torch::Tensor& raw_map) {
  Prediction p;
  p.pred_label = raw_score >= pp.image_threshold;
  p.pred_score = normalize_min_max(raw_score, pp.image_threshold, pp.image_min, pp.image_max);
  if (raw_map.defined()) {
    const auto map = raw_map.to(torch::kFloat32);
    p.pred_mask = (map >= pp.pixel_threshold).to(torch::kUInt8);
    p.anomaly_map = normalize_min_max(map, pp.pixel_threshold, pp.pixel_min, pp.pixel_max);
  }
  return p;
}

void to_json(nlohmann::json& j, const PostProcessor& pp) {
  j = nlohmann::json{{"image_threshold", pp.image_threshold}, {"pixel_threshold", pp.pixel_threshold},
                     {"image_min", pp.image_min},             {"image_max", pp.image_max},
                     {"pixel_min", pp.pixel_min},             {"pixel_max", pp.pixel_max}};
}

void from_json(const nlohmann::json& j, PostProcessor& pp) {
  const auto get = [&](const char* key) {
    if (!j.is_object() || !j.contains(key) || !j[key].is_number()) {
      throw InputError(fmt::format("post-processing parameters: missing or non-numeric '{}'", key));
    }
    return j[key].get<float>();
  };
  pp.image_threshold = get("image_threshold");
  pp.pixel_threshold = get("pixel_threshold");
  pp.image_min = get("image_min");
  pp.image_max = get("image_max");
  pp.pixel_min = get("pixel_min");
  pp.pixel_max = get("pixel_max");
  check_range(pp.image_min, pp.image_max, "image scores");
  check_range(pp.pixel_min, pp.pixel_max, "maps");
}

}  // namespace iadgpt::eval
