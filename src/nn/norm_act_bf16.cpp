#include "nn/norm_act_bf16.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <cmath>
#include <string_view>

#include "io/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include "nn/simd_x86.h"
#define IADGPT_NORM_ACT_X86 1
#endif

namespace iadgpt::nn {
namespace {
namespace act {  // (named: the module is one unity translation unit)

#ifdef IADGPT_NORM_ACT_X86
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

// One row of n: mean, then the variance about it (the row in L1 by then), then
// (x − mean) / √(var + eps) · weight + bias, rounded to bf16 once.
IADGPT_AVX512_BF16_TARGET void layer_norm_row(const at::BFloat16* x, const float* weight, const float* bias,
                                              float eps, int64_t n, at::BFloat16* y) {
  __m512 sum = _mm512_setzero_ps();
  for (int64_t c = 0; c < n; c += 16) sum = _mm512_add_ps(sum, simd::load_bf16(x + c, simd::lanes_left(c, n)));
  const float mean = simd::hsum16(sum) / static_cast<float>(n);
  const __m512 centre = _mm512_set1_ps(mean);
  __m512 squares = _mm512_setzero_ps();
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = simd::lanes_left(c, n);
    const __m512 d = _mm512_maskz_sub_ps(m, simd::load_bf16(x + c, m), centre);
    squares = _mm512_fmadd_ps(d, d, squares);
  }
  const __m512 scale = _mm512_set1_ps(1.0f / std::sqrt(simd::hsum16(squares) / static_cast<float>(n) + eps));
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = simd::lanes_left(c, n);
    const __m512 normed = _mm512_mul_ps(_mm512_sub_ps(simd::load_bf16(x + c, m), centre), scale);
    const __m512 out = _mm512_fmadd_ps(normed, _mm512_maskz_loadu_ps(m, weight + c), _mm512_maskz_loadu_ps(m, bias + c));
    simd::store_bf16(y + c, out, m);
  }
}
#endif

}  // namespace act
}  // namespace

bool norm_act_bf16_supported(MatvecIsa isa) {
#ifdef IADGPT_NORM_ACT_X86
  return isa == MatvecIsa::Avx512Bf16 && matvec_isa_supported(isa);
#else
  (void)isa;
  return false;
#endif
}

torch::Tensor layer_norm_bf16(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                              double eps, MatvecIsa isa) {
  if (x.scalar_type() != torch::kBFloat16 || !x.device().is_cpu() || x.dim() == 0)
    throw InputError(fmt::format("layer_norm_bf16: expected bf16 values on the CPU with at least one dimension, got {} {} [{}]",
                                 c10::toString(x.scalar_type()), x.device().str(), fmt::join(x.sizes(), ", ")));
  const int64_t width = x.size(-1);
  const auto check = [width](const torch::Tensor& t, std::string_view name) {
    if (!t.defined() || t.dim() != 1 || t.size(0) != width || !t.is_floating_point())
      throw InputError(fmt::format("layer_norm_bf16: the {} must be floating [{}] for rows of {}", name, width, width));
  };
  check(weight, "weight");
  if (bias.defined()) check(bias, "bias");
  if (!norm_act_bf16_supported(isa))
    throw InputError(fmt::format("layer_norm_bf16: the {} path does not run on this CPU", matvec_isa_name(isa)));
  const auto in = x.contiguous();
  auto out = torch::empty_like(in);
  const auto gain = weight.to(torch::kCPU, torch::kFloat32).contiguous();
  const auto shift = bias.defined() ? bias.to(torch::kCPU, torch::kFloat32).contiguous() : torch::zeros({width});
  const int64_t rows = width == 0 ? 0 : in.numel() / width;
#ifdef IADGPT_NORM_ACT_X86
  const auto* src = in.data_ptr<at::BFloat16>();
  auto* dst = out.data_ptr<at::BFloat16>();
  // About 32 K values per task: enough to cover the parallel region's start.
  at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(width, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      act::layer_norm_row(src + r * width, gain.data_ptr<float>(), shift.data_ptr<float>(), static_cast<float>(eps),
                          width, dst + r * width);
  });
#endif
  return out;
}

torch::Tensor quick_gelu_bf16(const torch::Tensor& x, MatvecIsa isa) {
  if (x.scalar_type() != torch::kBFloat16 || !x.device().is_cpu())
    throw InputError(fmt::format("quick_gelu_bf16: expected bf16 values on the CPU, got {} {}",
                                 c10::toString(x.scalar_type()), x.device().str()));
  if (!norm_act_bf16_supported(isa))
    throw InputError(fmt::format("quick_gelu_bf16: the {} path does not run on this CPU", matvec_isa_name(isa)));
  const auto in = x.contiguous();
  auto out = torch::empty_like(in);
#ifdef IADGPT_NORM_ACT_X86
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
