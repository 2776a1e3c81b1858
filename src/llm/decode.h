// The single-token decode step on bf16 weights (internal to the llm module; `forward` calls it
// when T == 1 and the matrices are bf16). Projections quantized to q8 / q4 (quant.h) take the
// quantized kernels on the same bf16 input row, widened and quantized per block of 32. Same computation as `forward`, written for one row:
// the projections are the matvec kernels (matvec.h) reading each weight once without re-packing,
// RMSNorm, RoPE, the KV-cache append, attention and SwiGLU run in place in buffers the KvCache
// owns, so a step allocates only the logits it returns (and LoRA updates when attached).
//
//   auto logits = iadgpt::llm::decode_step_bf16(model, cache, x);  // x [1, D] → fp32 [1, V]
//
// Numerics vs the multi-token path: projections accumulate in fp32 and return fp32 (oneDNN's
// bf16 GEMM rounds its outputs to bf16), attention scores and probabilities stay fp32, and the
// matrix inputs (normed rows, q, attention output, SwiGLU product) are rounded to bf16 as there.
#pragma once
#include <torch/torch.h>

#include <span>

#include "llm/model.h"

namespace iadgpt::llm {

torch::Tensor decode_step_bf16(const LlamaModel& model, KvCache& cache, const torch::Tensor& x);

// One decode step of several sequences at once (continuous batching): row i of x [n, D] is
// sequence i's next input, at its own position caches[i]->pos, attending over its own cache;
// fp32 logits [n, V]. Each projection reads its weights once for all rows (nn::matvec_bf16_multi),
// so the logits of row i are bit for bit those of decode_step_bf16(model, *caches[i], x[i]).
// The caches must be distinct and each have room for one more position (InputError).
torch::Tensor decode_step_bf16_batch(const LlamaModel& model, std::span<KvCache* const> caches, const torch::Tensor& x);

}  // namespace iadgpt::llm
