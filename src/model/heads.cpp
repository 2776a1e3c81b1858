#include "model/heads.h"

#include <fmt/format.h>

#include <string>
#include <utility>

#include "io/checkpoint.h"
#include "io/error.h"
#include "nn/weights.h"

namespace iadgpt::model {

namespace {

using Sources = std::vector<std::pair<const io::TensorMap*, std::string>>;

// Fills every parameter of `module` from the first map that has `prefix + name`; InputError
// naming the key and the files otherwise (load_parameters does the shape check).
void load_from(torch::nn::Module& module, const Sources& sources, const std::string& prefix, const std::string& what) {
  torch::NoGradGuard no_grad;
  for (auto& item : module.named_parameters()) {
    const auto key = prefix + item.key();
    bool found = false;
    for (const auto& [tensors, name] : sources) {
      if (!tensors) continue;
      auto it = tensors->find(key);
      if (it == tensors->end()) continue;
      if (it->second.sizes() != item.value().sizes())
        throw InputError(fmt::format("{}: tensor '{}' has shape {}, expected {} ({})", name, key,
                                     nn::shape_string(it->second.sizes()), nn::shape_string(item.value().sizes()), what));
      item.value().copy_(it->second.to(torch::kFloat32));
      found = true;
      break;
    }
    if (!found) {
      std::string names;
      for (const auto& [tensors, name] : sources)
        if (tensors) names += (names.empty() ? "" : ", ") + name;
      throw InputError(fmt::format("{}: no tensor '{}' in {}", what, key, names.empty() ? "(no file given)" : names));
    }
  }
}

TextGuidedEnhancer load_tge(const Bundle& bundle, const BundleSources& sources, int64_t embed_dim, int64_t hidden) {
  std::optional<io::TensorMap> file;
  if (bundle.tge) file = io::load_checkpoint(*bundle.tge).tensors;
  const std::string name = bundle.tge ? bundle.tge->string() : "";
  const auto* deltas = sources.deltas ? &*sources.deltas : nullptr;
  TextGuidedEnhancer tge(embed_dim, hidden);
  load_from(*tge->llama_proj, {{file ? &*file : nullptr, name}, {deltas, sources.delta_name}}, "llama_proj.",
            "llama_proj (TGE)");
  if (file) {
    load_from(*tge->normal_path, {{&*file, name}}, "normal_path.", "TGE");
    load_from(*tge->abnormal_path, {{&*file, name}}, "abnormal_path.", "TGE");
    auto it = file->find("gate_log_scale");
    if (it == file->end()) throw InputError(fmt::format("{}: no tensor 'gate_log_scale' (TGE)", name));
    torch::NoGradGuard no_grad;
    tge->gate_log_scale.copy_(it->second.to(torch::kFloat32).reshape({}));
  }
  tge->eval();
  return tge;
}

}  // namespace

torch::Tensor mask_stack(const torch::Tensor& layer_maps, const torch::Tensor& text_map, const torch::Tensor& few_shot,
                         bool few_shot_alone) {
  if (layer_maps.dim() != 4 || layer_maps.size(1) != 4)
    throw InputError(fmt::format("multi-mask fusion needs 4 layer maps [B, 4, S, S], got {}", nn::shape_string(layer_maps.sizes())));
  auto fs_map = few_shot.defined() ? few_shot.to(layer_maps.scalar_type()) : torch::zeros_like(text_map);
  if (few_shot_alone && few_shot.defined())
    return torch::cat({torch::zeros_like(layer_maps), torch::zeros_like(text_map).unsqueeze(1),
                       fs_map.reshape_as(text_map).unsqueeze(1)}, 1);
  return torch::cat({layer_maps, text_map.unsqueeze(1), fs_map.reshape_as(text_map).unsqueeze(1)}, 1);
}

torch::Tensor image_token(Heads& heads, const torch::Tensor& embedding, const anomaly::TextFeatures& text) {
  return heads.tge->forward(embedding, text.normal_sentences, text.abnormal_sentences, text.f_text);
}

HeadTokens expert_tokens(Heads& heads, const HeadInputs& in) {
  HeadTokens out;
  // M_text is the mean of the layer maps; the decoder's own (anomaly::LayerMaps::fused) is the same
  // value, and taking it keeps the gradient's summation order of the decoder's graph.
  const auto text_map = in.text_map.defined() ? in.text_map : in.layer_maps.mean(1);
  if (heads.mmf) {
    out.masks = mask_stack(in.layer_maps, text_map, in.few_shot, heads.few_shot_alone);
    out.expert_tokens = heads.mmf->forward(out.masks);
  } else if (heads.prompt_learner) {
    // AnomalyGPT: one map in (the few-shot map when references exist, else M_text).
    const auto& m = in.prompt_map.defined() ? in.prompt_map : in.few_shot.defined() ? in.few_shot : text_map;
    out.masks = m.reshape_as(text_map).unsqueeze(1);
    out.expert_tokens = heads.prompt_learner->forward(out.masks);
  } else {
    throw InputError("the heads have neither a multi-mask fusion nor a prompt learner");
  }
  return out;
}

HeadTokens head_tokens(Heads& heads, const HeadInputs& in, const anomaly::TextFeatures& text) {
  auto out = expert_tokens(heads, in);
  out.image_token = image_token(heads, in.embedding, text);
  return out;
}

HeadOutputs run_heads(Heads& heads, const std::vector<torch::Tensor>& taps, const torch::Tensor& embedding,
                      const torch::Tensor& few_shot, const anomaly::TextFeatures& text, int64_t size) {
  HeadOutputs out;
  auto maps = heads.decoder->forward(taps, text.f_text, size);
  out.layer_probs = maps.layers;
  std::vector<torch::Tensor> abnormal;
  for (const auto& l : maps.layers) abnormal.push_back(l.select(1, 1));
  out.layer_maps = torch::stack(abnormal, 1);  // [B, L, S, S]
  out.text_map = maps.fused.squeeze(1);        // [B, S, S]
  auto tokens = head_tokens(
      heads, {.embedding = embedding, .layer_maps = out.layer_maps, .text_map = out.text_map, .few_shot = few_shot}, text);
  out.image_token = tokens.image_token;
  out.expert_tokens = tokens.expert_tokens;
  out.masks = tokens.masks;
  return out;
}

Heads load_heads(const Bundle& bundle, const BundleSources& sources, int64_t embed_dim, int64_t hidden) {
  Heads heads;
  heads.few_shot_alone = bundle.map == "few-shot";
  heads.tge = load_tge(bundle, sources, embed_dim, hidden);
  const auto* deltas = sources.deltas ? &*sources.deltas : nullptr;
  if (bundle.expert == "mmf") {
    if (!bundle.mmf) throw InputError(fmt::format("{}: missing field 'mmf' (expert is mmf)", (bundle.dir / "iadgpt.json").string()));
    const auto t = io::load_checkpoint(*bundle.mmf).tensors;
    heads.mmf = MultiMaskFusion(hidden);
    load_from(*heads.mmf, {{&t, bundle.mmf->string()}}, "", "MMF");
    heads.mmf->eval();
  } else {
    heads.prompt_learner = PromptLearner(hidden);
    load_from(*heads.prompt_learner, {{deltas, sources.delta_name}}, "prompt_learner.", "prompt learner");
    heads.prompt_learner->eval();
  }
  return heads;
}

void move_heads(Heads& heads, const torch::Device& device) {
  if (heads.decoder) heads.decoder->to(device);
  if (heads.tge) heads.tge->to(device);
  if (heads.mmf) heads.mmf->to(device);
  if (heads.prompt_learner) heads.prompt_learner->to(device);
}

}  // namespace iadgpt::model
