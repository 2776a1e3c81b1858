#include "nn/softmax.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <vector>

#include "io/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include "nn/simd_x86.h"
#define IADGPT_SOFTMAX_X86 1
#endif

namespace iadgpt::nn {
namespace {
namespace smx {  // (named: the module is one unity translation unit)

void softmax_row_scalar(const at::BFloat16* s, at::BFloat16* out, int64_t n, float* e) {
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t c = 0; c < n; ++c) max = std::max(max, static_cast<float>(s[c]));
  float sum = 0;
  for (int64_t c = 0; c < n; ++c) sum += e[c] = std::exp(static_cast<float>(s[c]) - max);
  const float inv = 1.0f / sum;
  for (int64_t c = 0; c < n; ++c) out[c] = at::BFloat16(e[c] * inv);  // round to nearest even
}

#ifdef IADGPT_SOFTMAX_X86
// One row; `e`: n floats (the exponentials between the sum and the scaling).
IADGPT_AVX512_BF16_TARGET void softmax_row_avx512(const at::BFloat16* s, at::BFloat16* out, int64_t n, float* e) {
  simd::softmax_row([s](int64_t c, __mmask16 m) IADGPT_AVX512_BF16_TARGET { return simd::load_bf16(s + c, m); }, n, e,
                    out);
}
#endif  // IADGPT_SOFTMAX_X86

}  // namespace smx
}  // namespace

void softmax_rows_bf16(const at::BFloat16* scores, at::BFloat16* probs, int64_t rows, int64_t cols, MatvecIsa isa) {
  // About 64 K scores per task: enough to cover the parallel region's start.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> e(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
#ifdef IADGPT_SOFTMAX_X86
      if (isa == MatvecIsa::Avx512Bf16) {
        smx::softmax_row_avx512(scores + r * cols, probs + r * cols, cols, e.data());
        continue;
      }
#endif
      smx::softmax_row_scalar(scores + r * cols, probs + r * cols, cols, e.data());
    }
  });
}

torch::Tensor softmax_bf16(const torch::Tensor& scores, MatvecIsa isa) {
  if (scores.scalar_type() != torch::kBFloat16 || !scores.device().is_cpu() || scores.dim() == 0)
    throw InputError(fmt::format("softmax_bf16: expected bf16 scores on the CPU with at least one dimension, got {} {} [{}]",
                                 c10::toString(scores.scalar_type()), scores.device().str(), fmt::join(scores.sizes(), ", ")));
  if (!matvec_isa_supported(isa))
    throw InputError(fmt::format("softmax_bf16: this CPU does not support the {} path", matvec_isa_name(isa)));
  const auto in = scores.contiguous();
  auto out = torch::empty_like(in);
  const int64_t cols = in.size(-1), rows = cols == 0 ? 0 : in.numel() / cols;
  softmax_rows_bf16(in.data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(), rows, cols, isa);
  return out;
}

}  // namespace iadgpt::nn
