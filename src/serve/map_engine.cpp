#include "serve/map_engine.h"

#include <fmt/format.h>

#include <chrono>

#include "io/error.h"

namespace iadgpt::serve {

MapEngine::MapEngine(const anomaly::DetectorOptions& options, double threshold)
    : detector_(options), vision_name_(options.vision.filename().string()), threshold_(threshold) {}
MapEngine::MapEngine(anomaly::Detector detector, std::string vision_name, double threshold)
    : detector_(std::move(detector)), vision_name_(std::move(vision_name)), threshold_(threshold) {}
std::unique_ptr<MapEngine> MapEngine::share() {
  return std::unique_ptr<MapEngine>(new MapEngine(detector_.share(), vision_name_, threshold_));
}

DetectOutput MapEngine::detect(const DetectInput& input) {
  const auto start = std::chrono::steady_clock::now();
  auto out = detect(input, detector_.encode({input.image}));
  out.timings["maps"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

std::vector<DetectResult> MapEngine::detect_batch(std::span<const DetectInput* const> inputs) {
  std::vector<cv::Mat> images;
  for (const auto* in : inputs) images.push_back(in->image);
  const auto encoded = detector_.encode(images);  // class- and reference-independent
  std::vector<DetectResult> results(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    try {
      const auto start = std::chrono::steady_clock::now();
      results[i].output = detect(*inputs[i], encoded.image(static_cast<int64_t>(i)));
      // The batch's encode is every image's: it waited for it.
      results[i].output.timings["maps"] =
          encoded.seconds + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    } catch (...) {
      results[i].error = std::current_exception();
    }
  }
  return results;
}

DetectOutput MapEngine::detect(const DetectInput& input, const anomaly::Detector::Encoded& encoded) {
  const std::string class_name = input.class_name.empty() ? "object" : input.class_name;
  if (class_ != class_name) {
    detector_.set_class(class_name);
    class_ = class_name;
  }
  detector_.set_references(input.references);
  auto detection = detector_.detect_encoded(encoded).at(0);
  anomaly::to_host(detection);
  DetectOutput out;
  out.map = anomaly::resize_map(detection.map, input.image.rows, input.image.cols);
  out.pred_score = detection.score;
  out.p_yes = detection.score;
  out.pred_label = detection.score > threshold_;
  if (out.pred_label) out.regions = anomaly::find_regions(out.map, threshold_, 16);
  out.answer = anomaly::describe(out.regions);
  if (!out.regions.empty()) out.position = out.regions.front().position;
  last_answer_ = out.answer;
  return out;
}

std::string MapEngine::ask(std::string_view message, int64_t max_tokens) {
  if (last_answer_.empty()) throw InputError("no image has been inspected yet");
  return fmt::format("(This model has no language model; the inspection found:) {}", last_answer_);
}

nlohmann::json MapEngine::describe() const {
  return {{"engine", "maps"}, {"vision", vision_name_}, {"llm", nullptr},
          {"mode", anomaly::map_mode_name(detector_.effective_mode())}, {"map_size", detector_.size()},
          {"threshold", threshold_}};
}

}  // namespace iadgpt::serve
