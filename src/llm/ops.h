// The two LLaMA-specific tensor operations, shared by the inference forward (model.cpp, KV cache)
// and the training forward (train_forward.cpp, autograd) so that both compute the same numbers.
#pragma once
#include <torch/torch.h>

namespace iadgpt::llm {

// Rotary position embedding, HF rotate_half convention: the two halves of each head are the
// (real, imaginary) parts. x: [..., T, hd] fp32; cos/sin: [T, hd/2].
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

// RMSNorm in fp32 as HF does (variance of the fp32 input), weight applied after normalising.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

}  // namespace iadgpt::llm
