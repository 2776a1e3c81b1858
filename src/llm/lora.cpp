#include "llm/lora.h"

#include <fmt/format.h>

#include <fstream>
#include <map>
#include <regex>

#include "io/error.h"
#include "llm/weights.h"

namespace iadgpt::llm {
namespace {

// Key layouts, one row per family: the prefix before `layers.{L}.` and the adapter-name infix.
// PEFT ≥ 0.4 get_peft_model_state_dict:  base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
// PandaGPT (peft 0.3, ModuleDict):       llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
const std::regex kLoraKey(
    R"(^(?:llama_model\.)?base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.lora_(A|B)(?:\.[A-Za-z0-9_]+)?\.weight$)");

struct Target {
  torch::Tensor LayerWeights::*weight;
  LoraPair LayerWeights::*lora;
};
const std::map<std::string, Target> kTargets = {
    {"q_proj", {&LayerWeights::wq, &LayerWeights::lora_q}},
    {"k_proj", {&LayerWeights::wk, &LayerWeights::lora_k}},
    {"v_proj", {&LayerWeights::wv, &LayerWeights::lora_v}},
    {"o_proj", {&LayerWeights::wo, &LayerWeights::lora_o}},
    {"gate_proj", {&LayerWeights::w_gate, &LayerWeights::lora_gate}},
    {"up_proj", {&LayerWeights::w_up, &LayerWeights::lora_up}},
    {"down_proj", {&LayerWeights::w_down, &LayerWeights::lora_down}},
};


// Pairs lora_A / lora_B tensors of `tensors`; everything else goes to `other`.
LoraAdapter collect(const io::TensorMap& tensors, const std::string& source) {
  LoraAdapter adapter;
  adapter.source = source;
  std::map<std::pair<int64_t, std::string>, LoraModule> found;
  for (const auto& [key, t] : tensors) {
    std::smatch m;
    if (!std::regex_match(key, m, kLoraKey)) {
      adapter.other.emplace(key, t);
      continue;
    }
    auto& mod = found[{std::stoll(m[1]), m[3]}];
    mod.layer = std::stoll(m[1]);
    mod.name = m[3];
    if (t.dim() != 2) throw InputError(fmt::format("{}: LoRA tensor '{}' has shape {}, expected a matrix", source, key, shape_text(t.sizes())));
    if (m[4] == "A") {
      mod.a = t.to(torch::kFloat32);
      mod.key = key;
    } else {
      mod.b = t.to(torch::kFloat32);
      if (mod.key.empty()) mod.key = key;
    }
  }
  for (auto& [id, mod] : found) {
    if (!mod.a.defined() || !mod.b.defined())
      throw InputError(fmt::format("{}: LoRA for layer {} {} has only {} (lora_A and lora_B are both needed)", source,
                                   mod.layer, mod.name, mod.a.defined() ? "lora_A" : "lora_B"));
    if (mod.b.size(1) != mod.a.size(0))
      throw InputError(fmt::format("{}: '{}': lora_A {} and lora_B {} disagree on the rank", source, mod.key,
                                   shape_text(mod.a.sizes()), shape_text(mod.b.sizes())));
    if (adapter.rank == 0) adapter.rank = mod.a.size(0);
    adapter.modules.push_back(std::move(mod));
  }
  if (adapter.modules.empty()) throw InputError(fmt::format("{}: no LoRA tensors (lora_A/lora_B) found", source));
  return adapter;
}

nlohmann::json read_json(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) throw InputError(fmt::format("{}: cannot open", file.string()));
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("{}: invalid JSON: {}", file.string(), e.what()));
  }
}

// Checks a module against the model and returns its target (with the base matrix shape).
const Target& check(const LlamaModel& model, const LoraAdapter& adapter, const LoraModule& mod) {
  if (mod.layer >= model.config.num_layers)
    throw InputError(fmt::format("{}: '{}' names layer {}, the model has {} layers", adapter.source, mod.key, mod.layer,
                                 model.config.num_layers));
  const auto& target = kTargets.at(mod.name);
  const auto& w = model.weights.layers[mod.layer].*target.weight;
  if (mod.a.size(1) != w.size(1) || mod.b.size(0) != w.size(0))
    throw InputError(fmt::format("{}: '{}': lora_A {} / lora_B {} do not fit the base weight {} of layer {} {}",
                                 adapter.source, mod.key, shape_text(mod.a.sizes()), shape_text(mod.b.sizes()),
                                 shape_text(w.sizes()), mod.layer, mod.name));
  return target;
}

}  // namespace

LoraAdapter load_peft_adapter(const std::filesystem::path& dir) {
  const auto cfg_file = dir / "adapter_config.json";
  const auto cfg = read_json(cfg_file);
  const auto src = cfg_file.string();
  if (cfg.value("peft_type", std::string("LORA")) != "LORA")
    throw InputError(fmt::format("{}: peft_type '{}' is not supported (expected LORA)", src, cfg.value("peft_type", "")));
  if (cfg.value("use_dora", false)) throw InputError(fmt::format("{}: use_dora true is not supported", src));
  if (cfg.value("fan_in_fan_out", false)) throw InputError(fmt::format("{}: fan_in_fan_out true is not supported", src));
  if (!cfg.contains("r") || !cfg["r"].is_number() || !cfg.contains("lora_alpha") || !cfg["lora_alpha"].is_number())
    throw InputError(fmt::format("{}: 'r' and 'lora_alpha' must be numbers", src));
  const double r = cfg["r"].get<double>(), alpha = cfg["lora_alpha"].get<double>();
  if (r <= 0) throw InputError(fmt::format("{}: r must be positive", src));
  if ((cfg.contains("rank_pattern") && !cfg["rank_pattern"].empty()) ||
      (cfg.contains("alpha_pattern") && !cfg["alpha_pattern"].empty()))
    throw InputError(fmt::format("{}: rank_pattern/alpha_pattern are not supported", src));

  std::filesystem::path weights;
  for (const char* name : {"adapter_model.safetensors", "adapter_model.bin"})
    if (std::filesystem::exists(dir / name)) {
      weights = dir / name;
      break;
    }
  if (weights.empty())
    throw InputError(fmt::format("{}: neither adapter_model.safetensors nor adapter_model.bin found", dir.string()));
  auto adapter = collect(io::load_checkpoint(weights).tensors, weights.string());
  if (adapter.rank != static_cast<int64_t>(r))
    throw InputError(fmt::format("{}: tensors have rank {}, adapter_config.json says r = {}", weights.string(),
                                 adapter.rank, r));
  adapter.scale = cfg.value("use_rslora", false) ? alpha / std::sqrt(r) : alpha / r;
  return adapter;
}

LoraAdapter load_pandagpt_delta(const std::filesystem::path& file, double lora_alpha) {
  auto adapter = collect(io::load_checkpoint(file).tensors, file.string());
  adapter.scale = lora_alpha / static_cast<double>(adapter.rank);
  return adapter;
}

LoraAdapter load_lora(const std::filesystem::path& path, double delta_alpha) {
  if (!std::filesystem::exists(path)) throw InputError(fmt::format("{}: no such LoRA adapter", path.string()));
  if (std::filesystem::is_directory(path)) {
    if (std::filesystem::exists(path / "adapter_config.json")) return load_peft_adapter(path);
    for (const char* name : {"pytorch_model.pt", "pytorch_model.bin"})
      if (std::filesystem::exists(path / name)) return load_pandagpt_delta(path / name, delta_alpha);
    throw InputError(fmt::format("{}: neither adapter_config.json (PEFT) nor pytorch_model.pt (delta) found", path.string()));
  }
  return load_pandagpt_delta(path, delta_alpha);
}

void merge_lora(LlamaModel& model, const LoraAdapter& adapter) {
  if (model.weights.quant != nn::QuantFormat::None)
    throw InputError(fmt::format("{}: the model's weights are quantized ({}); merge LoRA adapters before quantizing",
                                 model.source.string(), nn::quant_format_name(model.weights.quant)));
  for (const auto& mod : adapter.modules) check(model, adapter, mod);
  torch::NoGradGuard no_grad;
  for (const auto& mod : adapter.modules) {
    auto& w = model.weights.layers[mod.layer].*kTargets.at(mod.name).weight;
    // Merge in fp32, then round once to the stored dtype; out of place, so a weight that still
    // maps the checkpoint file is never written.
    w = (w.to(torch::kFloat32) + torch::mm(mod.b, mod.a).mul_(adapter.scale)).to(model.dtype).contiguous();
  }
}

void attach_lora(LlamaModel& model, const LoraAdapter& adapter) {
  for (const auto& mod : adapter.modules) check(model, adapter, mod);
  for (const auto& mod : adapter.modules) {
    auto& pair = model.weights.layers[mod.layer].*kTargets.at(mod.name).lora;
    pair = LoraPair{mod.a.to(model.dtype), mod.b.to(model.dtype), adapter.scale};
  }
}

}  // namespace iadgpt::llm
