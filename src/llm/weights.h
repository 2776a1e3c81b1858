// LLaMA-family weights: one struct of named tensors, filled from a Hugging Face checkpoint
// through a key table (HF name -> field), every tensor's shape checked against the config first.
//
//   auto model = iadgpt::llm::load_model("vicuna-7b", {.dtype = torch::kBFloat16});
//   model.weights.layers[0].wq;   // [n_heads*head_dim, D], HF (rotate_half) row order
#pragma once
#include <torch/torch.h>

#include <functional>

#include <filesystem>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "llm/config.h"
#include "nn/quant.h"

namespace iadgpt::llm {

// "[4096, 4096]": a shape in error messages.
inline std::string shape_text(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// A low-rank update kept separate from its base matrix: y += scale · (x Aᵀ) Bᵀ.
struct LoraPair {
  torch::Tensor a;  // [r, in]
  torch::Tensor b;  // [out, r]
  double scale = 0.0;
  bool defined() const { return a.defined(); }
};

struct LayerWeights {
  torch::Tensor attn_norm;  // [D] fp32
  torch::Tensor wq;         // [n_heads*hd, D]
  torch::Tensor wk;         // [n_kv*hd, D]
  torch::Tensor wv;         // [n_kv*hd, D]
  torch::Tensor wo;         // [D, n_heads*hd]
  torch::Tensor ffn_norm;   // [D] fp32
  torch::Tensor w_gate;     // [F, D]
  torch::Tensor w_up;       // [F, D]
  torch::Tensor w_down;     // [D, F]
  // Unmerged LoRA updates (empty unless attach_lora was used), by projection.
  LoraPair lora_q, lora_k, lora_v, lora_o, lora_gate, lora_up, lora_down;
  // Weight-only quantized projections (quant.h; README "Weight-only quantization"). When one is
  // defined, the tensor field of that projection above is empty (no second copy is kept).
  nn::QuantMatrix q_wq, q_wk, q_wv, q_wo, q_gate, q_up, q_down;
};

struct LlamaWeights {
  torch::Tensor embed;    // [V, D]
  std::vector<LayerWeights> layers;
  torch::Tensor norm;     // [D] fp32
  torch::Tensor lm_head;  // [V, D]; the same tensor as `embed` when tie_word_embeddings
  nn::QuantMatrix q_lm_head;  // quantized head (then lm_head is empty); never when tied
  nn::QuantFormat quant = nn::QuantFormat::None;  // of the projections
};

struct LoadOptions {
  torch::Dtype dtype = torch::kFloat32;  // matrices (embedding, projections, head); norms stay fp32
  // Quantize the seven projections of every layer (and an untied head, always q8) at load, from
  // the checkpoint's own precision; needs dtype bf16 (embeddings and KV cache stay bf16).
  nn::QuantFormat quant = nn::QuantFormat::None;
};

// Fills LlamaWeights from HF-named tensors. Every expected key must be present with the shape the
// config implies; unknown keys are rejected (they mean config and weights disagree).
// With `quant`, the projections (and an untied head, q8) are quantized from the checkpoint's values.
// With `stored` (a checkpoint written by save_quantized_checkpoint, README "Stored quantized
// checkpoints"), they are read as stored (`<key>.q`, `<key>.scale`, views of the memory map, no
// re-quantization), each validated against the config; `dtype` must then be bf16 and `quant`
// none or the same format.
LlamaWeights weights_from_tensors(const io::TensorMap& tensors, const LlamaConfig& config,
                                  const std::string& source, torch::Dtype dtype,
                                  nn::QuantFormat quant = nn::QuantFormat::None, nn::QuantFormat stored = nn::QuantFormat::None);

// The tensors of a stored quantized checkpoint (the layout weights_from_tensors reads with
// `stored`): quantized projections and untied head as `<key>.q` / `<key>.scale`, the other
// matrices bf16, norms fp32. Unquantized weights → InputError.
io::TensorMap quantized_tensors(const LlamaConfig& config, const LlamaWeights& weights);

// One tensor of that layout, declared (name, dtype, shape) before it is made: a file can then be
// written one tensor at a time (io::SafetensorsWriter).
struct PlannedTensor {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  std::function<torch::Tensor()> make;
};
// The tensors of quantized_tensors in name order, each made when asked. Quantized weights give
// their stored parts. Unquantized ones (`format` q8 or q4) are quantized as quantize_weights
// would, one matrix at a time: its `.q` quantizes it and frees the source matrix (a mapped
// checkpoint's pages too), its `.scale` hands the rest over; the untied head goes to q8. Each
// `make` runs once, in order; `w` must outlive the calls. A LoRA left unmerged → InputError.
std::vector<PlannedTensor> quantized_tensor_plan(const LlamaConfig& config, LlamaWeights& w, nn::QuantFormat format);

// After quantize_weights on weights of any dtype: the matrices left unquantized (embedding, a
// tied head, projections whose input size is not a multiple of 32) rounded to bf16, as the
// quantized runtime expects (the tied head stays the same tensor as the embedding).
void finish_quantized(LlamaWeights& weights);

// Replaces the projections (and an untied head) by their quantized form, one matrix at a time,
// freeing each source matrix as it goes. The head is quantized to q8 for both formats: it is the
// one matrix whose error reaches the logits directly (llama.cpp keeps its head at 6 bits or more
// for Q4_0 too). A matrix (head included) whose input size is not a multiple of 32 stays in the
// model dtype (as llama.cpp falls back to another type for such tensors; real LLaMA shapes all
// divide). The same rule serves quantizing at load, the stored layout and reading it back.
// Already-quantized weights or a LoRA left unmerged → InputError.
void quantize_weights(LlamaWeights& w, nn::QuantFormat format);

// Random weights of the right shapes, created directly in `dtype` (for benchmarks: no fp32 copy).
LlamaWeights random_weights(const LlamaConfig& config, torch::Dtype dtype, uint64_t seed);

int64_t weight_bytes(const LlamaWeights& w);

}  // namespace iadgpt::llm
