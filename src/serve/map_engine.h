// An engine from the anomaly-map pipeline alone (anomaly::Detector, METHOD §1.1–1.6, §1.10):
// scores, maps and AnomalyGPT-phrased answers without a language model. Used by the server's
// tests and for serving a vision tower with no LLM; follow-up questions are answered from the
// last result (it says so).
#pragma once
#include <memory>

#include "anomaly/detector.h"
#include "serve/engine.h"

namespace iadgpt::serve {

class MapEngine : public Engine {
 public:
  explicit MapEngine(const anomaly::DetectorOptions& options, double threshold = 0.5);
  // An engine on the same towers and decoder (anomaly::Detector::share): its own class and bank.
  std::unique_ptr<MapEngine> share();
  DetectOutput detect(const DetectInput& input) override;
  std::vector<DetectResult> detect_batch(std::span<const DetectInput* const> inputs) override;  // one tower forward
  std::string ask(std::string_view message, int64_t max_tokens) override;
  nlohmann::json describe() const override;

 private:
  MapEngine(anomaly::Detector detector, std::string vision_name, double threshold);
  // detect() of an image the tower has already encoded (alone: `encoded` holds that image only).
  DetectOutput detect(const DetectInput& input, const anomaly::Detector::Encoded& encoded);
  anomaly::Detector detector_;
  std::string vision_name_;
  double threshold_;
  std::optional<std::string> class_;  // the class whose text features the detector holds
  std::string last_answer_;
};

}  // namespace iadgpt::serve
