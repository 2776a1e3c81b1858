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
#include <exception>
#include <memory>
#include <span>
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

// Sampling and stopping of one answer (the OpenAI request's fields).
struct GenerationParams {
  int64_t max_tokens = 64;
  double temperature = 0;          // 0 = greedy
  double top_p = 1;                // nucleus; 1 = off
  uint64_t seed = 0;
  std::vector<std::string> stop;   // stop strings besides the model's own end of turn
};

// Receives the answer's text as it is generated (the pieces concatenate to Reply::text); returns
// false to stop generating (the client went away).
using TextSink = std::function<bool(std::string_view)>;

struct Reply {
  std::string text;
  std::string finish_reason = "stop";  // "stop" (end of answer, stop string), "length" (max_tokens or the
                                       // context), "cancelled" (the sink returned false)
  int64_t prompt_tokens = 0;           // prompt positions (image rows count one each); 0 without an LLM
  int64_t completion_tokens = 0;       // generated tokens; 0 without an LLM
};

// An OpenAI-style conversation about one image. The first user turn asks detect.question about
// detect.image; answers[i] is the client's record of the answer to the question before
// follow_ups[i] (answers.size() == follow_ups.size()). The reply answers the last question:
// follow_ups.back(), or detect.question when there are no follow-ups.
struct CompletionInput {
  DetectInput detect;
  std::vector<std::string> answers;
  std::vector<std::string> follow_ups;
  GenerationParams params;
};

struct Completion {
  DetectOutput detect;  // the inspection (its answer is the first turn's, or the map phrasing)
  Reply reply;
};

// One inspection of a batch: the output, or what detect() would have thrown for that input.
struct DetectResult {
  DetectOutput output;
  std::exception_ptr error;
};

class Engine {
 public:
  virtual ~Engine() = default;
  // Inspects one image and starts a new conversation about it.
  virtual DetectOutput detect(const DetectInput& input) = 0;
  // Several inspections at once (serve --batch): engines with a vision tower run it once on all
  // the images; result i is detect(*inputs[i]) up to the batched GEMMs' summation order, and the
  // conversation held afterwards is the last input's. An input's own error lands in its result;
  // an exception thrown out of the call fails the whole batch (the pool then runs each alone).
  // The default: detect() on each in turn.
  virtual std::vector<DetectResult> detect_batch(std::span<const DetectInput* const> inputs);
  // A follow-up turn about the last detected image (InputError before any detect).
  virtual std::string ask(std::string_view message, int64_t max_tokens) = 0;
  // The conversation `in`, answering its last question through `sink` as it is generated. The
  // default (engines without their own): detect, then ask each follow-up (the client's answers
  // unused), the text sent to the sink at once, no token counts.
  virtual Completion complete(const CompletionInput& in, const TextSink& sink);
  // A follow-up turn streamed through `sink`. The default: ask() (greedy), sent to the sink at once.
  virtual Reply reply(std::string_view message, const GenerationParams& params, const TextSink& sink);
  // What GET /v1/model shows: names and settings, never server-side paths.
  virtual nlohmann::json describe() const = 0;
  // Counters of machinery the engines share (the decode loop), for GET /v1/health; called from
  // the server's threads while the engine works, so it must be thread-safe. Default: none.
  virtual nlohmann::json shared_stats() const { return nlohmann::json::object(); }
};

// Builds the engine of worker `worker` (0-based); called once per worker before serving.
using EngineFactory = std::function<std::unique_ptr<Engine>(int worker)>;

}  // namespace iadgpt::serve
