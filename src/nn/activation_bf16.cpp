#include "nn/activation_bf16.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>

#include "io/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include "nn/simd_x86.h"
#define IADGPT_ACTIVATION_X86 1
#endif

namespace iadgpt::nn {
namespace {
namespace act {  // (named: the module is one unity translation unit)

#ifdef IADGPT_ACTIVATION_X86
IADGPT_AVX512_BF16_TARGET void quick_gelu_span(const at::BFloat16* x, at::BFloat16* y, int64_t n) {
  const __m512 slope = _mm512_set1_ps(1.702f), one = _mm512_set1_ps(1.0f);
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = simd::lanes_left(c, n);
    const __m512 value = simd::load_bf16(x + c, m);
    const __m512 z = _mm512_mul_ps(value, slope);
    // t = e^-|z| ∈ (0, 1]: sigmoid(z) = 1 / (1 + t) for z ≥ 0, t / (1 + t) for z < 0.
    const __m512 t = simd::exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(z)));
    const __mmask16 negative = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ);
    const __m512 sigmoid = _mm512_div_ps(_mm512_mask_mov_ps(one, negative, t), _mm512_add_ps(one, t));
    simd::store_bf16(y + c, _mm512_mul_ps(value, sigmoid), m);
  }
}
#endif

}  // namespace act
}  // namespace

bool quick_gelu_bf16_supported(MatvecIsa isa) {
#ifdef IADGPT_ACTIVATION_X86
  return isa == MatvecIsa::Avx512Bf16 && matvec_isa_supported(isa);
#else
  (void)isa;
  return false;
#endif
}

torch::Tensor quick_gelu_bf16(const torch::Tensor& x, MatvecIsa isa) {
  if (x.scalar_type() != torch::kBFloat16 || !x.device().is_cpu())
    throw InputError(fmt::format("quick_gelu_bf16: expected bf16 values on the CPU, got {} {}",
                                 c10::toString(x.scalar_type()), x.device().str()));
  if (!quick_gelu_bf16_supported(isa))
    throw InputError(fmt::format("quick_gelu_bf16: the {} path does not run on this CPU", matvec_isa_name(isa)));
  const auto in = x.contiguous();
  auto out = torch::empty_like(in);
#ifdef IADGPT_ACTIVATION_X86
  const auto* src = in.data_ptr<at::BFloat16>();
  auto* dst = out.data_ptr<at::BFloat16>();
  // 32 K values per task: enough to cover the parallel region's start.
  at::parallel_for(0, in.numel(), int64_t{1} << 15, [&](int64_t i0, int64_t i1) {
    act::quick_gelu_span(src + i0, dst + i0, i1 - i0);
  });
#endif
  return out;
}

}  // namespace iadgpt::nn
