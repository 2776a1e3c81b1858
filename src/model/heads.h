// The heads of IAD-GPT (METHOD §1.5–§1.8): from the encoder's taps and embedding to the two kinds
// of image tokens the LLM reads, E_img (TGE) and E_expert (MMF, or AnomalyGPT's prompt learner).
// One implementation for inference (model::IadGpt, under NoGradGuard), training (train/step) and
// the tests; the pieces are separate so the trainer can cache what a stage keeps frozen.
//
//   auto heads = model::load_heads(bundle, model::resolve_sources(bundle), /*embed_dim=*/1024, /*hidden=*/4096);
//   auto tokens = model::head_tokens(heads, {.embedding = e, .layer_maps = maps, .few_shot = m_fs}, text);
//   auto out = model::run_heads(heads, taps, e, m_fs, text, 224);   // decoder + head_tokens (training)
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "anomaly/maps.h"
#include "anomaly/prompts.h"
#include "model/adapters.h"
#include "model/bundle.h"

namespace iadgpt::model {

struct Heads {
  anomaly::VisualDecoder decoder{nullptr};  // null at inference (anomaly::Detector runs it)
  TextGuidedEnhancer tge{nullptr};
  MultiMaskFusion mmf{nullptr};
  PromptLearner prompt_learner{nullptr};  // used instead of mmf when mmf is null (AnomalyGPT)
  bool few_shot_alone = false;            // with references the MMF reads M_fs alone (mask_stack)
};

// What the heads read besides the text features.
struct HeadInputs {
  torch::Tensor embedding;   // [B, D] e
  torch::Tensor layer_maps;  // [B, L, S, S] abnormal channel of each decoder layer
  torch::Tensor text_map;    // [B, S, S] M_text, the mean of the layer maps (undefined: computed here)
  torch::Tensor few_shot;    // [B, S, S] M_fs, or undefined (no references)
  // [B, S, S] the prompt learner's one map (AnomalyGPT: the map it draws); undefined: M_fs when
  // defined, else M_text.
  torch::Tensor prompt_map;
};

struct HeadTokens {
  torch::Tensor image_token;    // [B, H] E_img
  torch::Tensor expert_tokens;  // [B, 18, H] E_expert
  torch::Tensor masks;          // what the expert module read: [B, 6, S, S] (MMF) or [B, 1, S, S]
};

// The 6-mask stack of METHOD §1.8 from per-layer abnormal maps [B,L,S,S] (L = 4), the text map
// [B,S,S] and the few-shot map [B,S,S] (undefined → zeros).
// With `few_shot_alone` and a defined few-shot map, the four layer maps and M_text are zeros: the
// MMF reads M = M_fs, METHOD §1.5's few-shot map (the bundle's `map` "few-shot"; a trained
// decoder's maps can mislead on defects unlike its synthetic ones).
torch::Tensor mask_stack(const torch::Tensor& layer_maps, const torch::Tensor& text_map, const torch::Tensor& few_shot,
                         bool few_shot_alone = false);

// E_img = TGE(e) with the class's prompt embeddings (METHOD §1.7).
torch::Tensor image_token(Heads& heads, const torch::Tensor& embedding, const anomaly::TextFeatures& text);
// E_expert from the maps (METHOD §1.8; `image_token` is left undefined).
HeadTokens expert_tokens(Heads& heads, const HeadInputs& in);
// Both: the tokens the LLM reads for an image.
HeadTokens head_tokens(Heads& heads, const HeadInputs& in, const anomaly::TextFeatures& text);

// Differentiable decoder → maps → head_tokens, for training (gradients reach whatever requires
// them) and the tests.
struct HeadOutputs {
  torch::Tensor image_token /*[B,H]*/, expert_tokens /*[B,18,H]*/, layer_maps /*[B,L,S,S] abnormal channel*/,
      text_map /*[B,S,S]*/;
  std::vector<torch::Tensor> layer_probs;  // per layer [B,2,S,S] (both softmax channels, for focal/dice)
  torch::Tensor masks;                     // what the expert module read
};
HeadOutputs run_heads(Heads& heads, const std::vector<torch::Tensor>& taps, const torch::Tensor& embedding /*[B,D]*/,
                      const torch::Tensor& few_shot /*[B,S,S] or undefined*/, const anomaly::TextFeatures& text,
                      int64_t size);

// The bundle's TGE and MMF (or prompt learner), in eval mode, without a decoder (the detector
// holds it). llama_proj comes from the bundle's TGE file when it has one, else from the delta
// (PandaGPT's); the TGE pathways and gate only from our file (none: zero pathways, i.e. PandaGPT's
// E_img exactly). InputError names the missing key and the files searched.
Heads load_heads(const Bundle& bundle, const BundleSources& sources, int64_t embed_dim, int64_t hidden);
// Moves every head's parameters to `device` (nn/device.h), once after loading.
void move_heads(Heads& heads, const torch::Device& device);

}  // namespace iadgpt::model
