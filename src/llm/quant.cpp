// Formats, quantize / dequantize and the validation of stored quantized matrices (quant.h); the
// matrix-vector kernels are in quant_matvec.cpp.
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "io/error.h"
#include "llm/quant.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define IADGPT_QUANT_X86 1
#endif

namespace iadgpt::llm {
namespace {
namespace qfmt {  // (named: the module is one unity translation unit)

// The block's scale rounded to fp16, as stored; non-finite → InputError (nothing sensible to store).
c10::Half block_scale(float scale) {
  const c10::Half h(scale);
  if (!std::isfinite(static_cast<float>(h)))
    throw InputError(fmt::format("quantize: a block scale {} does not fit fp16 (non-finite or huge weights)", scale));
  return h;
}

int quant_of(float w, float scale, int lo, int hi) {
  if (scale == 0.0f) return 0;
  return std::clamp(static_cast<int>(std::nearbyint(w / scale)), lo, hi);
}

void quantize_row_q8(const float* w, int64_t cols, int8_t* q, c10::Half* scale) {
  for (int64_t b = 0; b < cols / kQuantBlock; ++b) {
    const float* wb = w + b * kQuantBlock;
    float amax = 0.0f;
    for (int64_t i = 0; i < kQuantBlock; ++i) amax = std::max(amax, std::fabs(wb[i]));
    scale[b] = block_scale(amax / 127.0f);
    const float s = scale[b];
    for (int64_t i = 0; i < kQuantBlock; ++i) q[b * kQuantBlock + i] = static_cast<int8_t>(quant_of(wb[i], s, -127, 127));
  }
}

void quantize_row_q4(const float* w, int64_t cols, uint8_t* q, c10::Half* scale) {
  for (int64_t b = 0; b < cols / kQuantBlock; ++b) {
    const float* wb = w + b * kQuantBlock;
    float m = 0.0f;  // the element of largest magnitude, with its sign: it maps to exactly −8
    for (int64_t i = 0; i < kQuantBlock; ++i)
      if (std::fabs(wb[i]) > std::fabs(m)) m = wb[i];
    scale[b] = block_scale(m / -8.0f);
    const float s = scale[b];
    uint8_t* qb = q + b * (kQuantBlock / 2);
    for (int64_t j = 0; j < kQuantBlock / 2; ++j) {
      const int lo = quant_of(wb[j], s, -8, 7) + 8, hi = quant_of(wb[j + 16], s, -8, 7) + 8;
      qb[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

// Element c of a row as scale · q (scalar reference for dequantize and the tail of the fast path).
float dequant_at(const QuantMatrix& m, const int8_t* q8, const uint8_t* q4, const c10::Half* scale, int64_t c) {
  const float s = scale[c / kQuantBlock];
  if (m.format == QuantFormat::Q8) return s * static_cast<float>(q8[c]);
  const int64_t b = c / kQuantBlock, i = c % kQuantBlock;
  const uint8_t byte = q4[b * 16 + (i % 16)];
  const int v = (i < 16 ? (byte & 0x0F) : (byte >> 4)) - 8;
  return s * static_cast<float>(v);
}

void dequant_row_bf16_scalar(const QuantMatrix& m, int64_t r, at::BFloat16* out) {
  const int64_t cols = m.cols();
  const auto* q8 = m.format == QuantFormat::Q8 ? m.q.data_ptr<int8_t>() + r * cols : nullptr;
  const auto* q4 = m.format == QuantFormat::Q4 ? m.q.data_ptr<uint8_t>() + r * cols / 2 : nullptr;
  const auto* scale = m.scale.data_ptr<c10::Half>() + r * (cols / kQuantBlock);
  for (int64_t c = 0; c < cols; ++c) out[c] = at::BFloat16(dequant_at(m, q8, q4, scale, c));
}

#ifdef IADGPT_QUANT_X86
// 16 int32 values · s → 16 bf16 (vcvtneps2bf16 rounds to nearest even, as at::BFloat16(float)).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) inline void store16_bf16(__m512i v, __m512 s, at::BFloat16* out) {
  const __m256bh h = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_maskz_cvtepi32_ps(0xFFFF, v), s));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), reinterpret_cast<__m256i>(h));
}

// One row, one 32-element block at a time: the prefill's dequantization must cost little next to
// the GEMM (README: measured). Pointers and the format are resolved once per row.
template <QuantFormat F>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void dequant_row_bf16_avx512(const QuantMatrix& m, int64_t r,
                                                                                    at::BFloat16* out) {
  const int64_t cols = m.cols(), nb = cols / kQuantBlock;
  const auto* scale = m.scale.data_ptr<c10::Half>() + r * nb;
  const auto* q = static_cast<const uint8_t*>(m.q.data_ptr()) + r * (F == QuantFormat::Q8 ? cols : cols / 2);
  const __m128i nib = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
  for (int64_t b0 = 0; b0 < nb; b0 += 16) {
    // 16 scales at once (vcvtph2ps), then one per block from the stored vector.
    const int64_t n = std::min<int64_t>(16, nb - b0);
    alignas(64) float s16[16];
    _mm512_store_ps(s16, _mm512_maskz_cvtph_ps(static_cast<__mmask16>((1u << n) - 1),
                                               _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), scale + b0)));
    for (int64_t b = b0; b < b0 + n; ++b) {
      const __m512 s = _mm512_set1_ps(s16[b - b0]);
      __m128i lo, hi;  // elements 0..15 and 16..31 of the block as int8
      if constexpr (F == QuantFormat::Q8) {
        lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + b * kQuantBlock));
        hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + b * kQuantBlock + 16));
      } else {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + b * 16));
        lo = _mm_sub_epi8(_mm_and_si128(v, nib), eight);
        hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), nib), eight);
      }
      store16_bf16(_mm512_maskz_cvtepi8_epi32(0xFFFF, lo), s, out + b * kQuantBlock);
      store16_bf16(_mm512_maskz_cvtepi8_epi32(0xFFFF, hi), s, out + b * kQuantBlock + 16);
    }
  }
}
#endif

}  // namespace qfmt
}  // namespace

const char* quant_format_name(QuantFormat format) {
  switch (format) {
    case QuantFormat::None: return "none";
    case QuantFormat::Q8: return "q8";
    case QuantFormat::Q4: return "q4";
  }
  return "?";
}

QuantFormat parse_quant_format(std::string_view name, std::string_view what) {
  for (auto f : {QuantFormat::None, QuantFormat::Q8, QuantFormat::Q4})
    if (name == quant_format_name(f)) return f;
  throw InputError(fmt::format("{}: unknown quantization format '{}' (expected none, q8 or q4)", what, name));
}

int64_t QuantMatrix::bytes() const {
  if (!defined()) return 0;
  return q.numel() * q.element_size() + scale.numel() * scale.element_size();
}

QuantMatrix quantize(const torch::Tensor& w, QuantFormat format) {
  if (format == QuantFormat::None) throw InputError("quantize: no format given");
  if (w.dim() != 2 || w.size(1) % kQuantBlock != 0 || w.size(1) == 0)
    throw InputError(fmt::format("quantize: expected a matrix whose columns are a multiple of {}, got shape [{}]",
                                 kQuantBlock, fmt::join(w.sizes(), ", ")));
  const auto wf = w.to(torch::kFloat32).contiguous();
  const int64_t rows = w.size(0), cols = w.size(1);
  QuantMatrix m;
  m.format = format;
  m.scale = torch::empty({rows, cols / kQuantBlock}, torch::kFloat16);
  m.q = format == QuantFormat::Q8 ? torch::empty({rows, cols}, torch::kInt8) : torch::empty({rows, cols / 2}, torch::kUInt8);
  const float* src = wf.data_ptr<float>();
  auto* scale = m.scale.data_ptr<c10::Half>();
  at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t{1} << 16) / cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (format == QuantFormat::Q8)
        qfmt::quantize_row_q8(src + r * cols, cols, m.q.data_ptr<int8_t>() + r * cols, scale + r * (cols / kQuantBlock));
      else
        qfmt::quantize_row_q4(src + r * cols, cols, m.q.data_ptr<uint8_t>() + r * cols / 2, scale + r * (cols / kQuantBlock));
    }
  });
  return m;
}

torch::Tensor dequantize(const QuantMatrix& m) {
  if (!m.defined()) throw InputError("dequantize: the matrix is not quantized");
  const int64_t rows = m.rows(), cols = m.cols();
  auto out = torch::empty({rows, cols}, torch::kFloat32);
  const auto* q8 = m.format == QuantFormat::Q8 ? m.q.data_ptr<int8_t>() : nullptr;
  const auto* q4 = m.format == QuantFormat::Q4 ? m.q.data_ptr<uint8_t>() : nullptr;
  const auto* scale = m.scale.data_ptr<c10::Half>();
  float* dst = out.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      dst[r * cols + c] = qfmt::dequant_at(m, q8 ? q8 + r * cols : nullptr, q4 ? q4 + r * cols / 2 : nullptr,
                                           scale + r * (cols / kQuantBlock), c);
  return out;
}

void dequantize_rows_bf16(const QuantMatrix& m, int64_t r0, int64_t r1, at::BFloat16* out) {
  if (!m.defined()) throw InputError("dequantize: the matrix is not quantized");
  const int64_t cols = m.cols();
  auto row_fn = &qfmt::dequant_row_bf16_scalar;
#ifdef IADGPT_QUANT_X86
  if (best_matvec_isa() == MatvecIsa::Avx512Bf16)
    row_fn = m.format == QuantFormat::Q8 ? &qfmt::dequant_row_bf16_avx512<QuantFormat::Q8>
                                         : &qfmt::dequant_row_bf16_avx512<QuantFormat::Q4>;
#endif
  at::parallel_for(r0, r1, std::max<int64_t>(1, (int64_t{1} << 15) / cols), [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; ++r) row_fn(m, r, out + (r - r0) * cols);
  });
}

QuantMatrix quant_matrix_from_tensors(QuantFormat format, const torch::Tensor& q, const torch::Tensor& scale,
                                      int64_t rows, int64_t cols, const std::string& name) {
  if (format == QuantFormat::None) throw InputError(fmt::format("'{}': no quantization format", name));
  if (cols % kQuantBlock != 0)
    throw InputError(fmt::format("'{}': {} columns are not a multiple of the block size {}", name, cols, kQuantBlock));
  const bool q8 = format == QuantFormat::Q8;
  const auto q_dtype = q8 ? torch::kInt8 : torch::kUInt8;
  const std::vector<int64_t> q_shape{rows, q8 ? cols : cols / 2}, s_shape{rows, cols / kQuantBlock};
  if (q.scalar_type() != q_dtype || q.sizes() != at::IntArrayRef(q_shape))
    throw InputError(fmt::format("'{}.q': has {} [{}], expected {} [{}] for format {}", name,
                                 c10::toString(q.scalar_type()), fmt::join(q.sizes(), ", "), c10::toString(q_dtype),
                                 fmt::join(q_shape, ", "), quant_format_name(format)));
  if (scale.scalar_type() != torch::kFloat16 || scale.sizes() != at::IntArrayRef(s_shape))
    throw InputError(fmt::format("'{}.scale': has {} [{}], expected Half [{}] for format {}", name,
                                 c10::toString(scale.scalar_type()), fmt::join(scale.sizes(), ", "),
                                 fmt::join(s_shape, ", "), quant_format_name(format)));
  return QuantMatrix{format, q.contiguous(), scale.contiguous()};
}

}  // namespace iadgpt::llm
