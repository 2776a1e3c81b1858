// The matrix-multiply rate this CPU reaches, for `bench`: what prefill (a block of tokens through
// the decoder's GEMMs) is compared with, as the decode step is compared with the memory bandwidth
// (matvec.h `nn::measure_read_bandwidth`).
//
//   const double peak = iadgpt::llm::measure_gemm_flops(512, 2048, 5632, torch::kBFloat16, 5);
#pragma once
#include <torch/torch.h>

#include <cstdint>

#include "llm/config.h"

namespace iadgpt::llm {

// FLOP/s of torch::linear (the call the prefill makes) of x [rows, inner] with w [outer, inner]
// in `dtype`, on torch's intra-op threads: the best of `passes` timed calls after one warm-up
// call. 2 · rows · inner · outer FLOPs a call. Bad sizes or passes < 1 → InputError.
double measure_gemm_flops(int64_t rows, int64_t inner, int64_t outer, torch::Dtype dtype, int passes);

// FLOPs of a prefill of `tokens` tokens: the seven projection matrices of every layer for each
// token, causal attention (q·k and p·v over the positions before each token), and the head for
// the last token only (Logits::Last). Norms, RoPE and softmax are left out (< 1 %).
double prefill_flops(const LlamaConfig& config, int64_t tokens);

}  // namespace iadgpt::llm
