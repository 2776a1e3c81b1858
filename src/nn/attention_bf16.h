// Multi-head self-attention of the bf16 path in one pass per head, on CPUs with AVX-512 BF16:
// for each (batch, head) pair, the keys and values are packed once into the pair layout that
// `vdpbf16ps` reads, then for each block of query rows the fp32 scores q·kᵀ, their softmax
// (scaled by 1/√head_dim in fp32, mask added, probabilities rounded to bf16 once) and the context
// p·v are computed while the block's scores stay in cache. No [L, L] tensor is ever made and no
// strided q/k/v is copied to a contiguous one.
//
//   auto context = iadgpt::nn::attention_bf16(qkv, mask);   // qkv [B, L, 3, H, hd] bf16, CPU
//
// Against the ATen composition (nn/transformer.cpp's head_attention, what PyTorch's bf16
// nn.MultiheadAttention computes) it differs in rounding only, in its favour: the scores are not
// rounded to bf16 before the softmax and q is not scaled in bf16 first. Both sums are in fp32.
#pragma once
#include <torch/torch.h>

#include "nn/matvec.h"

namespace iadgpt::nn {

// Whether attention_bf16 runs heads of this width with `isa`: the AVX-512 BF16 path only, and a
// head width that is a multiple of 16 (one vector of fp32 sums per 16 context values).
bool attention_bf16_supported(int64_t head_dim, MatvecIsa isa);

// qkv: [B, L, 3, H, hd] bf16 on the CPU, contiguous (the packed projection's output [B, L, 3·H·hd]
// viewed per head); additive_mask: undefined or [L, L] (0 / −inf, any floating dtype), added to
// every head's scores. Returns the context [B, L, H, hd] bf16. The (batch, head) pairs are split
// over the intra-op threads. A shape, dtype, device or isa it does not take → InputError.
torch::Tensor attention_bf16(const torch::Tensor& qkv, const torch::Tensor& additive_mask,
                             MatvecIsa isa = best_matvec_isa());

}  // namespace iadgpt::nn
