// The trainable adapters between the anomaly maps and the LLM (METHOD §1.7–1.8):
//
//   model::TextGuidedEnhancer tge(/*embed_dim=*/1024, /*llm_hidden=*/4096);
//   auto image_token = tge->forward(e, text.normal_sentences, text.abnormal_sentences, text.f_text);  // [B, H]
//   model::MultiMaskFusion mmf(/*llm_hidden=*/4096);
//   auto expert = mmf->forward(mask_stack);                                                           // [B, 18, H]
//
// Parameter names are the state-dict keys of our adapter files; AnomalyGPT's PromptLearner keeps
// its own names (`meta_net.<i>`, `base_prompts`) so its released weights load unchanged.
#pragma once
#include <torch/torch.h>

#include <string_view>

#include "io/checkpoint.h"

namespace iadgpt::model {

// TGE: the image embedding attends over each side's prompt embeddings, each side has a pathway
// Linear(2D, H), a learned-temperature gate mixes them, added to PandaGPT's llama_proj(e).
class TextGuidedEnhancerImpl : public torch::nn::Module {
 public:
  TextGuidedEnhancerImpl(int64_t embed_dim, int64_t llm_hidden);

  // e: [B, D] (normalised), normal/abnormal sentences [K, D] (normalised), f_text [2, D].
  torch::Tensor forward(const torch::Tensor& e, const torch::Tensor& normal_sentences,
                        const torch::Tensor& abnormal_sentences, const torch::Tensor& f_text);

  // Parameters of the TGE proper, llama_proj excluded: 2·(2D·H + H) + 1.
  int64_t enhancer_parameter_count();

  torch::nn::Linear llama_proj{nullptr};      // PandaGPT's Linear(D, H)
  torch::nn::Linear normal_path{nullptr};     // W_n: Linear(2D, H), zero-initialised
  torch::nn::Linear abnormal_path{nullptr};   // W_a: Linear(2D, H), zero-initialised
  torch::Tensor gate_log_scale;               // log(1/τ_g), initialised to log(1/0.07)

  static constexpr double kAttentionTemperature = 0.07;  // τ
};
TORCH_MODULE(TextGuidedEnhancer);

// MMF: six masks → five conv/ReLU/max-pool stages → 3×3 adaptive average pool → one Linear(1024, H)
// per cell, after 9 learned base tokens.
class MultiMaskFusionImpl : public torch::nn::Module {
 public:
  static constexpr int64_t kMasks = 6;  // M_l for four layers, M_text, M_fs
  explicit MultiMaskFusionImpl(int64_t llm_hidden);

  // masks: [B, 6, S, S] -> E_expert [B, 18, H].
  torch::Tensor forward(const torch::Tensor& masks);

  torch::nn::Sequential convs{nullptr};
  torch::nn::Linear cell_proj{nullptr};
  torch::Tensor base_tokens;  // [9, H]
};
TORCH_MODULE(MultiMaskFusion);

// AnomalyGPT's PromptLearner (one map in): conv stack to a 3×3 grid of H-wide tokens after its
// 9 base prompts. Kept for AnomalyGPT compatibility.
class PromptLearnerImpl : public torch::nn::Module {
 public:
  explicit PromptLearnerImpl(int64_t llm_hidden, int64_t maps_in = 1);
  torch::Tensor forward(const torch::Tensor& map);  // [B, 1, 224, 224] -> [B, 18, H]

  torch::nn::Sequential meta_net{nullptr};
  torch::Tensor base_prompts;  // [9, H]
  int64_t llm_hidden;
};
TORCH_MODULE(PromptLearner);

int64_t parameter_count(torch::nn::Module& module);

// Copies `tensors[prefix + name]` into every parameter of `module`, checking shapes; InputError
// names the missing or mismatched key. Extra keys are ignored (a delta holds other modules too).
void load_parameters(torch::nn::Module& module, const io::TensorMap& tensors, std::string_view prefix,
                     std::string_view source);
io::TensorMap parameter_tensors(torch::nn::Module& module, std::string_view prefix = "");

}  // namespace iadgpt::model
