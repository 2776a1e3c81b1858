// The attention softmax of the bf16 path in one pass over each row: bf16 scores in, fp32 max,
// exponentials and sum, bf16 probabilities out, rounded once. It computes what
// torch::softmax(scores.to(kFloat32), -1).to(kBFloat16) computes (the block's softmax until
// 2026-12-06) without its two fp32 copies of the [L, L] scores, up to the exponential's last fp32
// bits: a probability can land one bf16 step away where its fp32 value lies at a rounding
// boundary (75 of 5.3 M at CLIP-336's 16 × 577², both within half a bf16 step of float64).
// At that shape it took 1.1–1.4 ms against 3.1 ms for the ATen form (Zen 4 VM, 2 threads).
//
//   auto probs = iadgpt::nn::softmax_bf16(scores);        // scores [..., L] bf16, CPU
//
// Paths (MatvecIsa, as the matvec kernels choose them): AVX-512 (F, BW, BF16: `vcvtneps2bf16`
// rounds to nearest even), e^x as 2^n · e^r with a degree-6 Taylor polynomial (relative error
// about 2^-23, far below bf16's 2^-9), and 0 for a probability under 1.7e-38 (e^-87 of the row's
// largest); every other path the scalar loop with std::exp. A −inf score (a masked position)
// gives exactly 0; a row of −inf only gives NaN, as torch::softmax does.
#pragma once
#include <torch/torch.h>

#include <cstdint>

#include "nn/matvec.h"

namespace iadgpt::nn {

// probs[r, :] = softmax(scores[r, :]) for rows [0, rows), rows split over the intra-op threads
// (inline inside a parallel region).
void softmax_rows_bf16(const at::BFloat16* scores, at::BFloat16* probs, int64_t rows, int64_t cols, MatvecIsa isa);

// Tensor form: scores bf16 on the CPU, any shape with at least one dimension (the softmax runs
// over the last). Another dtype or device, or an unsupported isa → InputError.
torch::Tensor softmax_bf16(const torch::Tensor& scores, MatvecIsa isa = best_matvec_isa());

}  // namespace iadgpt::nn
