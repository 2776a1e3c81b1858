// What the HTTP server asks of a model, so the server can be built and tested without one.
//
//   class MyEngine : public serve::Engine { ... };                 // detect + ask + describe
//   serve::Server server(options, [](int worker) { return std::make_unique<MyEngine>(); });
//
// The real engine wraps model::IadGpt (iadgpt_engine.h); MapEngine (map_engine.h) wraps the
// anomaly-map pipeline alone (no language model). An engine is used by one worker thread at a
// time and need not be thread-safe; the server makes one per worker.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "anomaly/position.h"

namespace iadgpt::serve {

struct DetectInput {
  cv::Mat image;                    // RGB8, the part to inspect
  std::string class_name;           // "" = "object"
  std::vector<cv::Mat> references;  // RGB8 good parts (few-shot); may be empty
  std::string question;             // "" = the class's standard question
  int64_t max_tokens = 64;
};

struct DetectOutput {
  float pred_score = 0;       // image anomaly score in [0, 1]
  bool pred_label = false;    // anomalous?
  double p_yes = 0;           // P("Yes") of the answer's first token (the score without an LLM)
  std::string answer;         // the model's answer
  std::string position;       // where (one of the nine cell names), "" when nothing was found
  std::string defect_type;    // "" when unknown
  std::vector<anomaly::Region> regions;
  torch::Tensor map;          // [H, W] float in [0, 1] at the image's size
  int64_t generated_tokens = 0;  // answer tokens the LLM generated (0 without an LLM)
  nlohmann::json timings = nlohmann::json::object();  // seconds per stage
};

class Engine {
 public:
  virtual ~Engine() = default;
  // Inspects one image and starts a new conversation about it.
  virtual DetectOutput detect(const DetectInput& input) = 0;
  // A follow-up turn about the last detected image (InputError before any detect).
  virtual std::string ask(std::string_view message, int64_t max_tokens) = 0;
  // What GET /v1/model shows: names and settings, never server-side paths.
  virtual nlohmann::json describe() const = 0;
};

// Builds the engine of worker `worker` (0-based); called once per worker before serving.
using EngineFactory = std::function<std::unique_ptr<Engine>(int worker)>;

}  // namespace iadgpt::serve
