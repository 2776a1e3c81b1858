#include "serve/iadgpt_engine.h"

#include "io/error.h"
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

IadGptEngine::IadGptEngine(const model::Bundle& bundle) : model_(std::make_unique<model::IadGpt>(bundle)) {}
IadGptEngine::IadGptEngine(model::IadGpt model) : model_(std::make_unique<model::IadGpt>(std::move(model))) {}
std::unique_ptr<IadGptEngine> IadGptEngine::share() { return std::make_unique<IadGptEngine>(model_->share()); }

EngineFactory shared_weights_factory(const model::Bundle& bundle, bool maps_only) {
  struct First {
    IadGptEngine* full = nullptr;
    MapEngine* maps = nullptr;
  };
  auto first = std::make_shared<First>();
  return [bundle, maps_only, first](int worker) -> std::unique_ptr<Engine> {
    if (maps_only) {
      if (worker > 0 && first->maps) return first->maps->share();
      auto engine = std::make_unique<MapEngine>(map_engine_options(bundle), bundle.threshold);
      first->maps = engine.get();
      return engine;
    }
    if (worker > 0 && first->full) return first->full->share();
    auto engine = std::make_unique<IadGptEngine>(bundle);
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
  model::InspectOptions options;
  options.question = input.question;
  options.max_tokens = input.max_tokens;
  auto r = model_->inspect(input.image, options);
  inspected_ = true;
  return detect_output(r);
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
  o.device = nn::parse_device(b.device, "bundle device");
  return o;
}

}  // namespace iadgpt::serve
