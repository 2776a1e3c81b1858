// Differentiable LLaMA forward for training (METHOD §3.2–3.3): a batch of input-embedding rows
// [B, T, D] with a padding mask, causal attention, no KV cache, autograd on. Same arithmetic as
// the inference `llm::forward` (fp32 activations, HF rotate_half RoPE, grouped-query attention).
//
//   auto lora = llm::add_trainable_lora(model, {.rank = 32, .alpha = 32, .dropout = 0.1}, /*seed=*/0);
//   auto logits = llm::forward_train(model, x, mask, {.lora_dropout = 0.1, .dropout_seeds = seeds});
//   auto loss = llm::answer_cross_entropy(logits, targets);   // targets -100 outside the answers
//   loss.backward();                                           // grads on lora A/B (and on x)
//
// Trainable parts: LoRA pairs attached to q/k/v/o (PEFT init: A ~ kaiming-uniform(a=√5), B = 0,
// so training starts at the base model), or every weight (`make_trainable`, full fine-tune, for
// tiny models). Frozen weights never get `requires_grad`, so autograd stores nothing for them.
#pragma once
#include <torch/torch.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "llm/model.h"

namespace iadgpt::llm {

struct LoraSpec {
  int64_t rank = 32;     // PandaGPT/AnomalyGPT: r 32
  double alpha = 32;     // scale alpha / r
  double dropout = 0.1;  // on the LoRA input, training only (PEFT lora_dropout)
};

// One trainable LoRA pair per q/k/v/o projection of every layer, in order
// (layer 0 q A, q B, k A, k B, ..., o B, layer 1 ...). Replaces any attached LoRA.
struct TrainableLora {
  LoraSpec spec;
  std::vector<torch::Tensor> parameters;  // requires_grad, fp32
};
TrainableLora add_trainable_lora(LlamaModel& model, const LoraSpec& spec, uint64_t seed);

// Full fine-tune: every weight becomes an owned fp32 leaf with requires_grad (the checkpoint's
// memory-mapped tensors are never written). Returns them in a fixed order with their HF names.
struct NamedParameters {
  std::vector<std::string> names;
  std::vector<torch::Tensor> tensors;
};
NamedParameters make_trainable(LlamaModel& model);
// The HF-named weights of a model (the same order as make_trainable), for saving.
NamedParameters named_weights(const LlamaModel& model);
// LoRA pairs as PEFT keys (`base_model.model.model.layers.L.self_attn.q_proj.lora_A.weight`).
NamedParameters lora_weights(const LlamaModel& model);
// Writes a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) that
// `llm::load_lora` reads back.
void save_peft_adapter(const LlamaModel& model, const LoraSpec& spec, const std::filesystem::path& dir);

struct TrainForwardOptions {
  // LoRA dropout rate (0 = off; training uses LoraSpec::dropout). One seed per batch row: the masks of row b come from a generator
  // seeded with dropout_seeds[b], so a row's randomness does not depend on which rows share its
  // batch (data-parallel runs equal single-process ones).
  double lora_dropout = 0;
  std::vector<uint64_t> dropout_seeds;
  // Gradient checkpointing: each decoder layer keeps only its input for the backward, which runs
  // the layer again (one more forward of the decoder per step, activations of one layer at a time).
  bool checkpoint_layers = false;
  // Tests: incremented by every decoder-layer forward, recomputes included (must outlive the backward).
  std::atomic<int64_t>* layer_forwards = nullptr;
};

// x: [B, T, D] input embeddings (fp32; may require grad); attention_mask: [B, T] (1 = token,
// 0 = padding) or undefined (all tokens). Positions count the real tokens of each row (left or
// right padding both work); padded keys are never attended. Returns fp32 logits [B, T, V].
torch::Tensor forward_train(const LlamaModel& model, const torch::Tensor& x, const torch::Tensor& attention_mask,
                            const TrainForwardOptions& options = {});

inline constexpr int64_t kIgnoreIndex = -100;

// Next-token cross-entropy: logits [B, T, V] at position t predict labels[:, t+1]; labels [B, T]
// int64 with kIgnoreIndex wherever no loss is taken (prompt, padding). Per row the mean over its
// answer tokens; returns those per-row means [B] (rows without answer tokens give 0).
torch::Tensor answer_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels);

}  // namespace iadgpt::llm
