// LayerNorm and QuickGELU of the bf16 path, each in one pass over bf16 values with fp32
// arithmetic and one rounding to bf16 at the end, on CPUs with AVX-512 BF16. nn::layer_norm and
// nn::activation take them for bf16 inference there.
//
//   auto y = iadgpt::nn::layer_norm_bf16(x, weight, bias, 1e-5);   // x bf16 on the CPU, [..., D]
//   auto z = iadgpt::nn::quick_gelu_bf16(x);                       // x bf16 on the CPU, any shape
//
// - layer_norm_bf16 computes what the ATen form computes (x → fp32, torch::layer_norm with fp32
//   weights, → bf16: three passes and two fp32 copies) up to the order of the fp32 sums: the mean
//   first, then the variance about it, from the row held in L1.
// - quick_gelu_bf16: x · sigmoid(1.702 x) from each bf16 x, where the ATen form (x *
//   torch::sigmoid(1.702 * x)) makes three passes and three bf16 tensors, rounding after each.
//   sigmoid(z) as 1 / (1 + e^-z) for z ≥ 0 and e^z / (1 + e^z) below, e^-|z| from the softmax's
//   exponential (simd_x86.h, relative error about 2^-23); the result is within half a bf16 step
//   of the float64 value plus that error.
#pragma once
#include <torch/torch.h>

#include "nn/matvec.h"

namespace iadgpt::nn {

// Whether these kernels run with `isa`: the AVX-512 BF16 path only.
bool norm_act_bf16_supported(MatvecIsa isa);

// LayerNorm over the last dimension of x (bf16 on the CPU, any shape, made contiguous); weight
// and bias [D] in any floating dtype (bias may be undefined: zero). Rows split over the intra-op
// threads. Another dtype or device, mis-sized weights, or an isa it does not take → InputError.
torch::Tensor layer_norm_bf16(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                              double eps, MatvecIsa isa = best_matvec_isa());

// y = x · sigmoid(1.702 x), x bf16 on the CPU (any shape, made contiguous); the values split
// over the intra-op threads. Another dtype or device, or an isa it does not take → InputError.
torch::Tensor quick_gelu_bf16(const torch::Tensor& x, MatvecIsa isa = best_matvec_isa());

}  // namespace iadgpt::nn
