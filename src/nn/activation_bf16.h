// The QuickGELU of the bf16 path in one pass: x · sigmoid(1.702 x) computed in fp32 from each
// bf16 x and rounded to bf16 once, where the ATen form (x * torch::sigmoid(1.702 * x)) makes
// three passes and three bf16 tensors, rounding after each. Used by nn::activation for bf16
// inference on CPUs with AVX-512 BF16 (CLIP's towers: 577 × 4096 values a layer at 336 px).
//
//   auto y = iadgpt::nn::quick_gelu_bf16(x);   // x bf16 on the CPU, any shape
//
// sigmoid(z) as 1 / (1 + e^-z) for z ≥ 0 and e^z / (1 + e^z) below, e^-|z| from the softmax's
// exponential (simd_x86.h, relative error about 2^-23); the result is within half a bf16 step of
// the float64 value plus that error.
#pragma once
#include <torch/torch.h>

#include "nn/matvec.h"

namespace iadgpt::nn {

// Whether quick_gelu_bf16 runs with `isa`: the AVX-512 BF16 path only.
bool quick_gelu_bf16_supported(MatvecIsa isa);

// y = x · sigmoid(1.702 x), x bf16 on the CPU (any shape, made contiguous); the values split
// over the intra-op threads. Another dtype or device, or an isa it does not take → InputError.
torch::Tensor quick_gelu_bf16(const torch::Tensor& x, MatvecIsa isa = best_matvec_isa());

}  // namespace iadgpt::nn
