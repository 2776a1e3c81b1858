// Building blocks shared by every CLIP-family tower (vision and text): LayerNorm, the two GELU
// variants, and one pre-norm transformer block. Weights are plain tensors filled by the
// family's key-map table; the forward is a function of (input, weights, config).
//
//   iadgpt::nn::BlockConfig cfg{.width = 1280, .heads = 16, .eps = 1e-6, .activation = Gelu};
//   x = iadgpt::nn::block_forward(x, weights.blocks[i], cfg);          // x: [B, L, D]
#pragma once
#include <torch/torch.h>

#include <array>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "nn/quant.h"

namespace iadgpt::nn {

enum class Activation {
  Gelu,       // exact erf GELU (ImageBind, OpenCLIP ViT-H)
  QuickGelu,  // x·sigmoid(1.702x) (OpenAI CLIP)
};

struct BlockConfig {
  int64_t width = 0;
  int64_t heads = 0;
  double eps = 1e-5;
  Activation activation = Activation::Gelu;
};

// One residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).
struct BlockWeights {
  torch::Tensor ln1_weight, ln1_bias;  // [D]
  torch::Tensor qkv_weight;            // [3D, D], rows stacked q, k, v (nn.MultiheadAttention order)
  torch::Tensor qkv_bias;              // [3D]
  torch::Tensor out_weight, out_bias;  // [D, D], [D]
  torch::Tensor ln2_weight, ln2_bias;  // [D]
  torch::Tensor fc1_weight, fc1_bias;  // [F, D], [F]
  torch::Tensor fc2_weight, fc2_bias;  // [D, F], [D]
  // Weight-only quantized matrices (quantize_block), or undefined. A defined one replaces its
  // tensor above (which is then dropped): the linear layer runs the int8 GEMM (quant.h gemm_quant,
  // one activation pass) on the CPU.
  QuantMatrix qkv_quant, out_quant, fc1_quant, fc2_quant;
};

// The four matrices a block may hold quantized, each with its quantized slot (quantize_block,
// and a loader reading matrices stored quantized).
struct QuantSlot {
  const char* name;
  torch::Tensor BlockWeights::*weight;
  QuantMatrix BlockWeights::*quant;
};
inline constexpr QuantSlot kQuantSlots[] = {{"qkv", &BlockWeights::qkv_weight, &BlockWeights::qkv_quant},
                                            {"out", &BlockWeights::out_weight, &BlockWeights::out_quant},
                                            {"fc1", &BlockWeights::fc1_weight, &BlockWeights::fc1_quant},
                                            {"fc2", &BlockWeights::fc2_weight, &BlockWeights::fc2_quant}};

// y = x Wᵀ + b with W given as a tensor or, when `quant` is defined, quantized (then x is taken in
// fp32 and y returned in x's dtype). x: [..., in].
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const QuantMatrix& quant,
                     const torch::Tensor& bias);

torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& weight,
                         const torch::Tensor& bias, double eps);
torch::Tensor activation(const torch::Tensor& x, Activation kind);

// Two ways of running the same bf16 products on the CPU, chosen by shape, for inference only (the
// row split writes through out= products, which record no gradients), each giving what the plain
// ATen call gives up to summation order. Measured on the 2-vCPU Zen 4 VM (2026-12-06, 2
// threads, ms per call, best of 10):
// - linear_rows_by_thread: the rows of x split evenly over the threads, each thread one
//   single-threaded product (bit-identical to torch::linear in that measurement). oneDNN's own
//   threading of a product lost 13–20 % at CLIP-336's 577 rows (fc1 4096×1024: 14.8 → 12.1; qkv
//   10.6 → 8.7) and was level with it at ImageBind's 257 (5120×1280: 9.1 / 9.3) and ahead at
//   LLaMA's 82 prompt tokens (7.7 / 8.2): hence at least kRowsPerThreadToSplit rows per thread.
// - attention_by_head: scores, softmax and context one (batch, head) pair at a time, the pairs
//   split over the threads, so each head's [L, L] scores stay in cache instead of all heads'
//   (B·heads·L² fp32) passing through memory: CLIP-336 (16 × 577², 21 MB) 9.5 → 7.2 ms per layer;
//   ImageBind (16 × 257², 4.2 MB) 1.7 → 1.9, hence only above kBatchedScoresBytes.
inline constexpr int64_t kRowsPerThreadToSplit = 256;
inline constexpr double kBatchedScoresBytes = 8 << 20;
bool linear_rows_by_thread(const torch::Tensor& x, const torch::Tensor& weight);
// x [B, L, D]: the block's input.
bool attention_by_head(const torch::Tensor& x, int64_t heads);
// Taken before either attention form (head by head above, or all heads batched) where it
// applies: bf16 inference on a CPU with AVX-512 BF16 and heads whose width is a multiple of 16
// (attention_bf16.h), each head's whole attention in one pass. Same sitting, same harnesses:
// CLIP-336 7.25 (head by head) → 4.30 ms per layer; ImageBind (80-wide heads) 1.69 (batched) →
// 1.07 ms.
bool attention_fused(const torch::Tensor& x, int64_t heads);

// Multi-head self-attention with a packed q/k/v projection; `additive_mask` is [L, L] (0 / -inf)
// or undefined for full attention. x: [B, L, D] batch-first.
torch::Tensor self_attention(const torch::Tensor& x, const BlockWeights& w, const BlockConfig& cfg,
                             const torch::Tensor& additive_mask);

torch::Tensor block_forward(const torch::Tensor& x, const BlockWeights& w, const BlockConfig& cfg,
                            const torch::Tensor& additive_mask = {});

// Casts every tensor of a block (e.g. to bf16 for the fast path).
void convert_block(BlockWeights& w, torch::Dtype dtype);
// Every tensor of the block, for a move or a cast written once (convert_block, move_block).
std::array<torch::Tensor*, 12> block_tensors(BlockWeights& w);
// Quantizes the block's four matrices to `format` (q8 or q4; none leaves the block as it is) and
// drops their tensors. InputError when a matrix's input width is not a multiple of 32, naming it
// after `where` (the block).
void quantize_block(BlockWeights& w, QuantFormat format, std::string_view where);
// Whether any matrix of the block is quantized.
bool block_quantized(const BlockWeights& w);
void move_block(BlockWeights& w, const torch::Device& device);

}  // namespace iadgpt::nn
