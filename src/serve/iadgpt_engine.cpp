#include "serve/iadgpt_engine.h"

#include <ATen/Parallel.h>

#include <thread>

#include "io/error.h"
#include "llm/batch.h"
#include "model/pipeline.h"
#include "nn/device.h"
#include "serve/map_engine.h"

namespace iadgpt::serve {
namespace {

double total(const model::Timings& t) { return t.encode + t.maps + t.prefill + t.generate; }

// The model keeps answers without surrounding whitespace (llm::clean_answer); the streamed text
// must concatenate to the same: leading whitespace is dropped, whitespace is held back until
// something follows it (so a "\n" before the end-of-turn "###" is never sent).
class TrimmedSink {
 public:
  explicit TrimmedSink(const TextSink& sink) : sink_(sink) {}
  bool operator()(std::string_view text) {
    if (!sink_) return true;
    for (char c : text) {
      if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
        if (started_) held_ += c;
        continue;
      }
      started_ = true;
      pending_ += held_;
      held_.clear();
      pending_ += c;
    }
    if (pending_.empty()) return true;
    const bool more = sink_(pending_);
    pending_.clear();
    return more;
  }

 private:
  const TextSink& sink_;
  bool started_ = false;
  std::string held_, pending_;
};

std::string finish_reason(const std::string& stop_reason) {
  if (stop_reason == "length" || stop_reason == "context") return "length";  // max_tokens, or the context is full
  if (stop_reason == "callback") return "cancelled";
  return "stop";  // "eos", a stop string, or no generation at all
}

model::InspectOptions inspect_options(const GenerationParams& p) {
  model::InspectOptions o;
  o.max_tokens = p.max_tokens;
  o.temperature = p.temperature;
  o.top_p = p.top_p;
  o.seed = p.seed;
  o.stop = p.stop;
  return o;
}

model::InspectOptions detect_options(const DetectInput& input) {
  model::InspectOptions options;
  options.question = input.question;
  options.max_tokens = input.max_tokens;
  return options;
}

DetectOutput detect_output(const model::Inspection& r) {
  DetectOutput out;
  out.pred_score = r.score;
  out.pred_label = r.anomalous;
  out.p_yes = r.p_yes;
  out.answer = r.answer;
  out.position = r.position;
  out.defect_type = r.defect_type;
  out.regions = r.regions;
  out.map = r.map;
  out.generated_tokens = r.generated_tokens;
  out.timings = {{"encode", r.timings.encode}, {"maps", r.timings.maps}, {"prefill", r.timings.prefill},
                 {"generate", r.timings.generate}, {"model", total(r.timings)}};
  return out;
}

}  // namespace

IadGptEngine::IadGptEngine(const model::Bundle& bundle)
    : prefills_(std::make_shared<PrefillCounters>()), model_(std::make_unique<model::IadGpt>(bundle)) {}
IadGptEngine::IadGptEngine(model::IadGpt model)
    : prefills_(std::make_shared<PrefillCounters>()), model_(std::make_unique<model::IadGpt>(std::move(model))) {}
std::unique_ptr<IadGptEngine> IadGptEngine::share() {
  auto engine = std::make_unique<IadGptEngine>(model_->share());  // the model's share keeps the loop
  engine->loop_ = loop_;
  engine->prefills_ = prefills_;
  return engine;
}

EngineFactory shared_weights_factory(const model::Bundle& bundle, bool maps_only, int decode_batch, int decode_threads) {
  struct First {
    IadGptEngine* full = nullptr;
    MapEngine* maps = nullptr;
  };
  auto first = std::make_shared<First>();
  return [bundle, maps_only, first, decode_batch, decode_threads](int worker) -> std::unique_ptr<Engine> {
    if (maps_only) {
      if (worker > 0 && first->maps) return first->maps->share();
      auto engine = std::make_unique<MapEngine>(map_engine_options(bundle), bundle.threshold);
      first->maps = engine.get();
      return engine;
    }
    if (worker > 0 && first->full) return first->full->share();
    auto engine = std::make_unique<IadGptEngine>(bundle);
    // Only bf16 (and q8/q4) LLMs share weight reads between sequences (llm::decode_batch);
    // an fp32 one would step them one by one anyway, with a hand-over to the loop per token. The
    // shared step runs the CPU kernels: a model on another device decodes each sequence alone.
    const bool on_cpu = nn::parse_device(bundle.device, "bundle device").is_cpu();
    // A quantized LLM (field `quant`) runs on bf16 matrices whatever the bundle's dtype.
    const bool bf16_llm = bundle.dtype == "bf16" || bundle.quant != "none";
    if (decode_batch > 1 && bf16_llm && on_cpu) engine->start_decode_loop(decode_batch, decode_threads);
    first->full = engine.get();
    return engine;
  };
}

IadGptEngine::~IadGptEngine() = default;

void IadGptEngine::prepare(const DetectInput& input) {
  const std::string class_name = input.class_name.empty() ? "object" : input.class_name;
  if (class_ != class_name) {
    model_->set_class(class_name);
    class_ = class_name;
  }
  // References always set (an empty list clears the previous request's memory bank).
  model_->set_references(input.references);
  model_->reset_conversation();
}

DetectOutput IadGptEngine::detect(const DetectInput& input) {
  prepare(input);
  auto r = model_->inspect(input.image, detect_options(input));
  inspected_ = true;
  return detect_output(r);
}

std::vector<DetectResult> IadGptEngine::detect_batch(std::span<const DetectInput* const> inputs) {
  std::vector<cv::Mat> images;
  for (const auto* in : inputs) images.push_back(in->image);
  const auto encoded = model_->encode(images);  // class- and reference-independent
  if (inputs.size() > 1) return detect_concurrently(inputs, encoded);
  return {detect_encoded(*inputs[0], encoded.image(0))};
}

DetectResult IadGptEngine::detect_encoded(const DetectInput& input, const anomaly::Detector::Encoded& encoded,
                                          llm::PrefillBatch* prefills, int seat) {
  DetectResult result;
  try {
    prepare(input);
    inspected_ = false;
    auto options = detect_options(input);
    if (prefills)
      options.prefill = [prefills, seat](llm::KvCache& cache, const torch::Tensor& x) { return prefills->forward(seat, cache, x); };
    const auto r = model_->inspect(input.image, encoded, options);
    inspected_ = true;
    result.output = detect_output(r);
  } catch (...) {
    result.error = std::current_exception();
  }
  // An inspection that failed before its prefill must not hold up the others' batch.
  if (prefills) prefills->leave(seat);
  return result;
}

std::vector<DetectResult> IadGptEngine::detect_concurrently(std::span<const DetectInput* const> inputs,
                                                            const anomaly::Detector::Encoded& encoded) {
  const size_t n = inputs.size();
  while (helpers_.size() + 1 < n) {
    helpers_.push_back(share());
    helpers_.back()->loop_ = loop_;
  }
  std::vector<DetectResult> results(n);
  // Their prefills run as one forward, on the thread that completes the group, with this
  // worker's torch threads (the helpers run with one each).
  llm::PrefillBatch prefills(model_->llm(), static_cast<int>(n), at::get_num_threads());
  std::vector<std::thread> running;
  try {
    for (size_t i = 0; i + 1 < n; ++i) {
      running.emplace_back([&, i] {
        torch::NoGradGuard no_grad;  // per thread, as the pool's workers
        // The requests run side by side: one torch thread each, or n × --threads would share the cores.
        torch::set_num_threads(1);
        results[i] = helpers_[i]->detect_encoded(*inputs[i], encoded.image(static_cast<int64_t>(i)), &prefills,
                                                 static_cast<int>(i));
      });
    }
  } catch (...) {
    // A thread that could not start: the seats without one leave (the started ones must not
    // wait for them), those started finish; the pool then runs each inspection alone.
    for (size_t i = running.size(); i < n; ++i) prefills.leave(static_cast<int>(i));
    for (auto& t : running) t.join();
    throw;
  }
  // The last on this engine: the conversation it holds afterwards is the last input's.
  results[n - 1] = detect_encoded(*inputs[n - 1], encoded.image(static_cast<int64_t>(n - 1)), &prefills,
                                  static_cast<int>(n - 1));
  for (auto& t : running) t.join();
  if (const int together = prefills.batched(); together > 1) {
    ++prefills_->batches;
    prefills_->sequences += static_cast<uint64_t>(together);
  }
  return results;
}

void IadGptEngine::start_decode_loop(int max_batch, int threads) {
  set_decode_loop(std::make_shared<llm::DecodeLoop>(model_->llm(), max_batch, threads));
}

void IadGptEngine::set_decode_loop(std::shared_ptr<llm::DecodeLoop> loop) {
  model_->set_decode_loop(loop);
  loop_ = std::move(loop);
  for (auto& h : helpers_) h->set_decode_loop(loop_);
}

Completion IadGptEngine::complete(const CompletionInput& in, const TextSink& sink) {
  prepare(in.detect);
  TrimmedSink trimmed(sink);
  auto options = inspect_options(in.params);
  options.question = in.detect.question;
  Completion c;
  if (in.follow_ups.empty()) {
    // The answer to the inspected question is the reply; its forced prefix (pieces "Yes" and
    // "No" share) is part of it but not generated, so it goes to the sink first.
    trimmed(model_->tokenizer().decode(model_->answer_prefix()));
    options.on_text = std::ref(trimmed);
    const auto r = model_->inspect(in.detect.image, options);
    inspected_ = true;
    c.detect = detect_output(r);
    c.reply = {r.answer, finish_reason(r.stop_reason), r.prompt_tokens, r.generated_tokens};
    return c;
  }
  // A conversation: the fast decision only for the image, then the client's record of the turns.
  options.generate = false;
  c.detect = detect_output(model_->inspect(in.detect.image, options));
  inspected_ = true;
  std::vector<llm::Turn> turns{{model_->history().at(0).user, in.answers.at(0)}};
  for (size_t i = 1; i < in.answers.size(); ++i) turns.push_back({in.follow_ups[i - 1], in.answers[i]});
  model_->set_history(std::move(turns));
  auto follow = inspect_options(in.params);
  follow.on_text = std::ref(trimmed);
  const auto r = model_->reply(in.follow_ups.back(), follow);
  c.reply = {r.text, finish_reason(r.stop_reason), r.prompt_tokens, r.generated_tokens};
  return c;
}

Reply IadGptEngine::reply(std::string_view message, const GenerationParams& params, const TextSink& sink) {
  if (!inspected_) throw InputError("no image has been inspected yet");
  TrimmedSink trimmed(sink);
  auto options = inspect_options(params);
  options.on_text = std::ref(trimmed);
  const auto r = model_->reply(message, options);
  return {r.text, finish_reason(r.stop_reason), r.prompt_tokens, r.generated_tokens};
}

std::string IadGptEngine::ask(std::string_view message, int64_t max_tokens) {
  if (!inspected_) throw InputError("no image has been inspected yet");
  model::InspectOptions options;
  options.max_tokens = max_tokens;
  return model_->ask(message, options);
}

nlohmann::json bundle_summary(const model::Bundle& b) {
  auto name = [](const std::optional<std::filesystem::path>& p) -> nlohmann::json {
    return p ? nlohmann::json(p->filename().string()) : nlohmann::json(nullptr);
  };
  return {{"name", b.dir.filename().empty() ? b.dir.parent_path().filename().string() : b.dir.filename().string()},
          {"vision", b.vision.filename().string()},
          {"llm", b.llm.filename().string()},
          {"lora", name(b.lora)},
          {"delta", name(b.delta)},
          {"decoder", name(b.decoder)},
          {"expert", b.expert},
          {"mode", b.mode},
          {"dtype", b.dtype},
          {"image_size", b.image_size},
          {"taps", b.taps},
          {"threshold", b.threshold}};
}

nlohmann::json IadGptEngine::shared_stats() const {
  nlohmann::json j = {{"prefill_batches", prefills_->batches.load()}, {"prefill_batched", prefills_->sequences.load()}};
  if (!loop_) return j;
  const auto s = loop_->stats();
  j.update({{"decode_batch", loop_->max_batch()}, {"decode_steps", s.steps}, {"decode_rows", s.rows},
            {"decode_sequences", s.sequences}, {"decode_max_seen", s.max_seen}, {"decode_waiting", s.waiting}});
  return j;
}

nlohmann::json IadGptEngine::describe() const {
  auto j = bundle_summary(model_->bundle());
  j["engine"] = "iadgpt";
  return j;
}

anomaly::DetectorOptions map_engine_options(const model::Bundle& b) {
  anomaly::DetectorOptions o;
  o.vision = b.vision;
  o.text = b.text;
  o.vocab = b.vocab;
  o.config = b.vision_config;
  o.decoder = b.decoder ? b.decoder : b.delta;  // an AnomalyGPT delta carries the decoder too
  o.taps = b.taps;
  o.dtype = b.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  o.vision_quant = model::vision_quant_format(b);
  o.device = nn::parse_device(b.device, "bundle device");
  return o;
}

}  // namespace iadgpt::serve
