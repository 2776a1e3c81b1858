#include "train/trainable.h"

#include <ATen/CPUGeneratorImpl.h>

#include <fmt/format.h>

#include <cmath>

#include "anomaly/maps.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "llm/lora.h"
#include "model/bundle.h"
#include "nn/weights.h"
#include "train/decoder_training.h"
#include "train/seeding.h"

namespace iadgpt::train {

namespace {

// torch.nn defaults (U(±1/√fan_in) for weights and biases), drawn from local generators.
void init_module(torch::nn::Module& m, uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& mod : m.modules(/*include_self=*/true)) {
    auto params = mod->named_parameters(/*recurse=*/false);
    auto w = params.find("weight");
    if (!w || w->dim() < 2) continue;
    const double bound = 1.0 / std::sqrt(static_cast<double>(w->numel() / w->size(0)));
    w->uniform_(-bound, bound, gen);
    if (auto b = params.find("bias")) b->uniform_(-bound, bound, gen);
  }
}

// The MMF for a fresh run (config `mmf_init`). "kaiming": He-uniform convolutions (U(±√(6/fan_in)),
// the bound that keeps the activations' scale through ReLU) with zero biases, and a LeCun-uniform
// cell projection (U(±√(3/fan_in))), so a map's contrast reaches the expert tokens at its own scale.
// With torch's defaults ("torch": U(±1/√fan_in), std 1/√(3·fan_in)) every one of the five conv
// stages shrinks the signal about √6-fold: the expert tokens of a normal and an anomalous part start
// ~200× closer than their maps, and whether the LLM ever learns to read them became a matter of
// luck (the same recipe learned at 2 threads and never at 1, issue 13).
void init_mmf(model::MultiMaskFusion& mmf, const std::string& scheme, uint64_t seed) {
  if (scheme == "torch") return init_module(*mmf, seed);
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& mod : mmf->modules(/*include_self=*/true)) {
    auto params = mod->named_parameters(/*recurse=*/false);
    auto w = params.find("weight");
    if (!w || w->dim() < 2) continue;
    const double fan_in = static_cast<double>(w->numel() / w->size(0));
    const double bound = std::sqrt((w->dim() == 4 ? 6.0 : 3.0) / fan_in);
    w->uniform_(-bound, bound, gen);
    if (auto b = params.find("bias")) b->zero_();
  }
}

// Released weights (config `delta`, `anomalygpt`), found as model::resolve_sources finds them for
// a bundle: the delta's LoRA merged into the LLM, llama_proj and the decoder copied.
void load_released(const TrainConfig& cfg, Trainable& m) {
  if (!cfg.delta && !cfg.anomalygpt) return;
  model::Bundle released;
  released.delta = cfg.delta;
  released.anomalygpt = cfg.anomalygpt;
  const auto sources = model::resolve_sources(released);
  if (sources.lora_delta) llm::merge_lora(m.llm, llm::load_pandagpt_delta(*sources.lora_delta, cfg.delta_lora_alpha));
  const auto& t = *sources.deltas;
  torch::NoGradGuard no_grad;
  if (t.count("llama_proj.weight")) {
    for (auto& p : m.heads.tge->llama_proj->named_parameters()) {
      const auto key = "llama_proj." + p.key();
      auto it = t.find(key);
      if (it == t.end()) throw InputError(fmt::format("{}: no tensor '{}'", sources.delta_name, key));
      if (it->second.sizes() != p.value().sizes())
        throw InputError(fmt::format("{}: tensor '{}' has shape {}, expected {} (llama_proj: vision D → LLM H)",
                                     sources.delta_name, key, nn::shape_string(it->second.sizes()),
                                     nn::shape_string(p.value().sizes())));
      p.value().copy_(it->second.to(torch::kFloat32));
    }
  }
  if (sources.decoder)
    anomaly::load_decoder(m.heads.decoder, io::load_checkpoint(*sources.decoder).tensors, sources.decoder->string());
}

}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> Trainable::named() {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : heads.decoder->named_parameters()) out.emplace_back("decoder." + p.key(), p.value());
  for (const auto& p : heads.tge->named_parameters()) out.emplace_back("tge." + p.key(), p.value());
  for (const auto& p : heads.mmf->named_parameters()) out.emplace_back("mmf." + p.key(), p.value());
  auto llm_named = lora ? llm::lora_weights(llm) : full;
  for (size_t i = 0; i < llm_named.names.size(); ++i)
    out.emplace_back((lora ? "lora." : "llm.") + llm_named.names[i], llm_named.tensors[i]);
  return out;
}

bool Trainable::is_llm(const std::string& name) { return name.rfind("lora.", 0) == 0 || name.rfind("llm.", 0) == 0; }

bool Trainable::trains(const std::string& name, int64_t stage) {
  if (is_llm(name)) return true;
  if (name.rfind("decoder.", 0) == 0) return stage == 2;
  if (name.rfind("tge.", 0) == 0) return stage == 1 || stage == 3;
  if (name.rfind("mmf.", 0) == 0) return stage == 2 || stage == 3;
  return false;
}

Trainable make_trainable(const TrainConfig& cfg, int64_t embed_dim, int64_t vision_width, const torch::Device& device) {
  return make_trainable(cfg, embed_dim, vision_width,
                        llm::load_model(cfg.llm, {.dtype = cfg.llm_dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32}),
                        device);
}

Trainable make_trainable(const TrainConfig& cfg, int64_t embed_dim, int64_t vision_width, llm::LlamaModel llm,
                         const torch::Device& device) {
  Trainable m;
  m.llm = std::move(llm);
  const int64_t hidden = m.llm.config.hidden_size;
  m.heads.decoder = initial_decoder(vision_width, embed_dim, 4, mix({cfg.seed, 11}));
  m.heads.tge = model::TextGuidedEnhancer(embed_dim, hidden);
  init_module(*m.heads.tge->llama_proj, mix({cfg.seed, 12}));
  m.heads.mmf = model::MultiMaskFusion(hidden);
  m.heads.few_shot_alone = cfg.map == "few-shot";
  init_mmf(m.heads.mmf, cfg.mmf_init, mix({cfg.seed, 13}));
  {
    torch::NoGradGuard g;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(mix({cfg.seed, 14}));
    m.heads.mmf->base_tokens.normal_(0, 1, gen);
  }
  load_released(cfg, m);  // over the fresh parts, before a trainable LoRA goes on top
  model::move_heads(m.heads, device);  // Module::to keeps the parameters leaves
  llm::move_model(m.llm, device);
  if (cfg.llm_tuning == "lora") m.lora = llm::add_trainable_lora(m.llm, cfg.lora, mix({cfg.seed, 15}));
  else if (cfg.llm_tuning == "full") m.full = llm::make_trainable(m.llm);
  return m;
}

void move_trainable(Trainable& trained, const torch::Device& device) {
  torch::NoGradGuard g;
  model::move_heads(trained.heads, device);
  llm::move_model(trained.llm, device);
}

}  // namespace iadgpt::train
