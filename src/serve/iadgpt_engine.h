// The real engine: one model::IadGpt (the whole IAD-GPT pipeline of a bundle) per worker.
// The map-only engine of the same bundle (no LLM) is `map_engine_options(bundle)` + MapEngine.
#pragma once
#include <atomic>
#include <memory>

#include "anomaly/detector.h"
#include "model/bundle.h"
#include "serve/engine.h"

namespace iadgpt::model {
class IadGpt;
}
namespace iadgpt::llm {
class DecodeLoop;
class PrefillBatch;
}

namespace iadgpt::serve {

class IadGptEngine : public Engine {
 public:
  explicit IadGptEngine(const model::Bundle& bundle);
  explicit IadGptEngine(model::IadGpt model);
  ~IadGptEngine() override;
  // An engine on the same weights (model::IadGpt::share): its own KV cache and conversation.
  std::unique_ptr<IadGptEngine> share();
  DetectOutput detect(const DetectInput& input) override;
  std::vector<DetectResult> detect_batch(std::span<const DetectInput* const> inputs) override;  // one tower forward
  std::string ask(std::string_view message, int64_t max_tokens) override;
  Completion complete(const CompletionInput& in, const TextSink& sink) override;
  Reply reply(std::string_view message, const GenerationParams& params, const TextSink& sink) override;
  nlohmann::json describe() const override;
  nlohmann::json shared_stats() const override;  // batched prefills; the decode loop's steps and rows
  // Answers are decoded through `loop` (llm/batch.h), together with other engines' sequences;
  // share() passes it on. detect_batch runs its inspections at once, on shares of its own (one
  // thread each): their prefills run as one forward (llm::PrefillBatch), and with a loop their
  // answers decode together too.
  void set_decode_loop(std::shared_ptr<llm::DecodeLoop> loop);
  std::shared_ptr<llm::DecodeLoop> decode_loop() const { return loop_; }
  // set_decode_loop with a new loop over this engine's LLM: `max_batch` sequences, `threads` torch threads.
  void start_decode_loop(int max_batch, int threads);

 private:
  void prepare(const DetectInput& input);  // class, references, a fresh conversation
  // prefills: the prompt's prefill joins that group's one forward, at `seat`.
  DetectResult detect_encoded(const DetectInput& input, const anomaly::Detector::Encoded& encoded,
                              llm::PrefillBatch* prefills = nullptr, int seat = 0);
  // detect_batch on this engine and shares of it, one thread each; the last input on this one.
  std::vector<DetectResult> detect_concurrently(std::span<const DetectInput* const> inputs,
                                                const anomaly::Detector::Encoded& encoded);
  // Batched prefills of this engine and its shares (shared_stats), counted after each batch.
  struct PrefillCounters {
    std::atomic<uint64_t> batches{0}, sequences{0};
  };
  std::shared_ptr<PrefillCounters> prefills_;
  std::shared_ptr<llm::DecodeLoop> loop_;
  std::vector<std::unique_ptr<IadGptEngine>> helpers_;  // made on first use, up to --batch - 1

  std::unique_ptr<model::IadGpt> model_;
  std::optional<std::string> class_;  // the class set on the model
  bool inspected_ = false;
};

// The engines of a server: the first call (worker 0) loads the bundle; each later call returns
// an engine on the same weights (share()), so N workers hold one copy of the model plus N KV
// caches and scratch. WorkerPool calls it for workers 0..N-1 in order, on one thread, before any
// worker runs; the factory keeps a pointer to worker 0's engine, so it must not be called after
// that engine is gone. maps_only: MapEngine (no LLM), shared the same way.
// decode_batch > 1 (serve --batch) and a bf16 or quantized LLM on the CPU: one llm::DecodeLoop of that many sequences, with
// decode_threads torch threads, shared by every engine (continuous batching of their answers).
EngineFactory shared_weights_factory(const model::Bundle& bundle, bool maps_only, int decode_batch = 1,
                                     int decode_threads = 0);

// The anomaly-map settings of a bundle (vision/text towers, decoder, taps, size, dtype).
anomaly::DetectorOptions map_engine_options(const model::Bundle& bundle);

// What GET /v1/model shows of a bundle: file names and settings, no server-side paths.
nlohmann::json bundle_summary(const model::Bundle& bundle);

}  // namespace iadgpt::serve
