#include "serve/iadgpt_engine.h"

#include "io/error.h"
#include "model/pipeline.h"
#include "serve/map_engine.h"

namespace iadgpt::serve {
namespace {

double total(const model::Timings& t) { return t.encode + t.maps + t.prefill + t.generate; }

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

DetectOutput IadGptEngine::detect(const DetectInput& input) {
  const std::string class_name = input.class_name.empty() ? "object" : input.class_name;
  if (class_ != class_name) {
    model_->set_class(class_name);
    class_ = class_name;
  }
  // References always set (an empty list clears the previous request's memory bank).
  model_->set_references(input.references);
  model_->reset_conversation();
  model::InspectOptions options;
  options.question = input.question;
  options.max_tokens = input.max_tokens;
  auto r = model_->inspect(input.image, options);
  inspected_ = true;
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
  return o;
}

}  // namespace iadgpt::serve
