// The q8 / q4 matrix-vector kernels of quant.h. Each block of 32 gives an exact int32 dot product
// of weight quants and activation quants; it is scaled by (weight scale · activation scale) in
// fp32 and summed. Like the bf16 kernels (matvec.cpp), each thread streams whole rows.
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "io/error.h"
#include "nn/quant.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "nn/simd_x86.h"
#define IADGPT_QUANT_X86 1
#endif

namespace iadgpt::nn {
namespace {
namespace qmv {  // (named: the module is one unity translation unit)

using RowFn = float (*)(const uint8_t* q, const c10::Half* scale, const QuantizedInput& x, int64_t nb);

// ---- Scalar: the block sums in int32, as the vector paths; the reference order of operations. ----

float dot_row_q8_scalar(const uint8_t* q_bytes, const c10::Half* scale, const QuantizedInput& x, int64_t nb) {
  const auto* q = reinterpret_cast<const int8_t*>(q_bytes);
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t s = 0;
    for (int64_t i = b * kQuantBlock; i < (b + 1) * kQuantBlock; ++i) s += int32_t{q[i]} * int32_t{x.q[i]};
    acc += static_cast<float>(scale[b]) * x.scale[b] * static_cast<float>(s);
  }
  return acc;
}

float dot_row_q4_scalar(const uint8_t* q, const c10::Half* scale, const QuantizedInput& x, int64_t nb) {
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* qb = q + b * 16;
    const int8_t* xb = x.q + b * kQuantBlock;
    int32_t s = 0;
    for (int64_t j = 0; j < 16; ++j) s += ((qb[j] & 0x0F) - 8) * int32_t{xb[j]} + ((qb[j] >> 4) - 8) * int32_t{xb[j + 16]};
    acc += static_cast<float>(scale[b]) * x.scale[b] * static_cast<float>(s);
  }
  return acc;
}

#ifdef IADGPT_QUANT_X86

// ---- AVX2: 32 weights a step; vpmaddubsw (u8 × s8 pairs → s16, no saturation here: at most
// 2·128·127) then vpmaddwd by ones (→ 8 int32). q8 uses |w| and x with w's sign (vpsignb). ----

__attribute__((target("avx2,fma"))) float dot_row_q8_avx2(const uint8_t* q, const c10::Half* scale,
                                                          const QuantizedInput& x, int64_t nb) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + b * kQuantBlock));
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + b * kQuantBlock));
    const __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w)), ones);
    const __m256 d = _mm256_set1_ps(static_cast<float>(scale[b]) * x.scale[b]);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), d, acc);
  }
  return simd::hsum8(acc);
}

// q4: the nibbles are q + 8 (unsigned, as vpmaddubsw wants); 8 · Σ x.q · d is subtracted at the end.
__attribute__((target("avx2,fma"))) float dot_row_q4_avx2(const uint8_t* q, const c10::Half* scale,
                                                          const QuantizedInput& x, int64_t nb) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m128i nib = _mm_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps();
  float offset = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + b * 16));
    const __m256i w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), nib), _mm_and_si128(v, nib));
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + b * kQuantBlock));
    const __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(w, xv), ones);
    const float d = static_cast<float>(scale[b]) * x.scale[b];
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d), acc);
    offset += d * x.offset[b];
  }
  return simd::hsum8(acc) - offset;
}

// ---- AVX-512 VNNI: 64 weights (two blocks) a step; vpdpbusd (u8 × s8, four products summed into
// each int32 lane): lanes 0..7 hold block 2p, lanes 8..15 block 2p+1. Weights enter as unsigned
// q + 128 (q8) or q + 8 (q4); the per-block offset · Σx is subtracted once per 16 blocks. The scales of 16 blocks are
// converted at once; vpermps spreads the two blocks' scales over their lanes. ----


// The maskz_ forms with full masks below: GCC 12's plain forms warn (-Wmaybe-uninitialized) about
// an undefined temporary inside its own header; same instructions.
#define IADGPT_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

// Two blocks of weights as 64 u8 values (q8: |w|) against 64 s8 activations (q8: with w's sign).
// `full`: both blocks exist; otherwise only the first (masked loads, the rest zero).
template <QuantFormat F>
IADGPT_VNNI_TARGET inline __m512i dot_pair(const uint8_t* q, const int8_t* xq, bool full) {
  const __m512i xv = full ? _mm512_loadu_si512(xq) : _mm512_maskz_loadu_epi8(0xFFFFFFFFull, xq);
  if constexpr (F == QuantFormat::Q8) {
    // q + 128 (flipping the sign bit) is unsigned, as vpdpbusd wants; 128 · Σx is subtracted per
    // block (as q4's 8 · Σx). One instruction, where |w| and x with w's sign took three.
    const __m512i w = full ? _mm512_loadu_si512(q) : _mm512_maskz_loadu_epi8(0xFFFFFFFFull, q);
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(w, _mm512_set1_epi8(-128)), xv);
  } else {
    if (full) {
      // Bytes [A | B] of blocks 2p and 2p+1 → 128-bit lanes [A, A, B, B] (one vpermq); lanes 1
      // and 3 shifted right by 4 (one vpsrlvw), then the nibble mask: [lo A, hi A, lo B, hi B],
      // in x's element order. Two instructions fewer than unpacking the halves and shuffling
      // (below): 30-31 against 34-39 ns per 2048-wide row in cache, one thread.
      const __m512i ab = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
      const __m512i aabb = _mm512_maskz_permutexvar_epi64(0xFF, _mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0), ab);
      const __m512i by4 = _mm512_set1_epi64(0x0004000400040004LL);
      const __m512i shift = _mm512_mask_blend_epi64(0xCC, _mm512_setzero_si512(), by4);
      const __m512i w = _mm512_and_si512(_mm512_srlv_epi16(aabb, shift), _mm512_set1_epi8(0x0F));
      return _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xv);
    }
    const __m256i v = full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)) : _mm256_maskz_loadu_epi8(0xFFFF, q);
    const __m256i nib = _mm256_set1_epi8(0x0F);
    // [lo nibbles of both blocks | high nibbles of both] → [block 2p: 0..15, 16..31 | block 2p+1: ...].
    const __m512i t = _mm512_maskz_inserti64x4(0xFF, _mm512_castsi256_si512(_mm256_and_si256(v, nib)),
                                         _mm256_and_si256(_mm256_srli_epi16(v, 4), nib), 1);
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_maskz_shuffle_i64x2(0xFF, t, t, _MM_SHUFFLE(3, 1, 2, 0)), xv);
  }
}

template <QuantFormat F>
IADGPT_VNNI_TARGET float dot_row_avx512(const uint8_t* q, const c10::Half* scale, const QuantizedInput& x, int64_t nb) {
  constexpr int64_t kRowBytesPerBlock = F == QuantFormat::Q8 ? kQuantBlock : kQuantBlock / 2;
  const __m512i pair_base = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  __m512i idx[8];  // pair p takes the scales of blocks 2p (lanes 0..7) and 2p+1 (lanes 8..15)
  for (int p = 0; p < 8; ++p) idx[p] = _mm512_add_epi32(pair_base, _mm512_set1_epi32(2 * p));
  __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, offset = acc0;
  for (int64_t b = 0; b < nb; b += 16) {
    const int64_t n = std::min<int64_t>(16, nb - b);
    const auto mask = static_cast<__mmask16>((1u << n) - 1);
    const __m512 d = _mm512_mul_ps(_mm512_maskz_cvtph_ps(mask, _mm256_maskz_loadu_epi16(mask, scale + b)),
                                   _mm512_maskz_loadu_ps(mask, x.scale + b));
    // x.offset is 8 · Σq: the q4 offset; q8's 128 · Σq is 16 times it (an exact power of two).
    const __m512 off_scale = _mm512_set1_ps(F == QuantFormat::Q8 ? 16.0f : 1.0f);
    offset = _mm512_fmadd_ps(_mm512_mul_ps(d, off_scale), _mm512_maskz_loadu_ps(mask, x.offset + b), offset);
    // The group's quants are 4 (q4) or 8 (q8) lines; its 16 scales half a line.
    for (int64_t line = 0; line < 16 * kRowBytesPerBlock / 64; ++line)
      simd::prefetch_ahead(q + b * kRowBytesPerBlock + 64 * line);
    simd::prefetch_ahead(scale + b);
    // Two accumulators, so consecutive pairs do not wait on one FMA chain. Full groups unrolled.
    if (n == 16) {
#pragma GCC unroll 8
      for (int64_t p = 0; p < 8; ++p) {
        const __m512 dot = _mm512_maskz_cvtepi32_ps(0xFFFF, dot_pair<F>(q + (b + 2 * p) * kRowBytesPerBlock,
                                                                          x.q + (b + 2 * p) * kQuantBlock, true));
        const __m512 dp = _mm512_maskz_permutexvar_ps(0xFFFF, idx[p], d);
        if (p & 1) acc1 = _mm512_fmadd_ps(dot, dp, acc1);
        else acc0 = _mm512_fmadd_ps(dot, dp, acc0);
      }
    } else {
      for (int64_t p = 0; 2 * p < n; ++p) {
        const __m512 dot = _mm512_maskz_cvtepi32_ps(0xFFFF, dot_pair<F>(q + (b + 2 * p) * kRowBytesPerBlock,
                                                                          x.q + (b + 2 * p) * kQuantBlock, 2 * p + 1 < n));
        acc0 = _mm512_fmadd_ps(dot, _mm512_maskz_permutexvar_ps(0xFFFF, idx[p], d), acc0);
      }
    }
  }
  return simd::hsum16(_mm512_sub_ps(_mm512_add_ps(acc0, acc1), offset));
}

// quantize_input's loop for one block, with the same results: the same fp32 max, scale and
// product x · (127 / max); vcvtps2dq rounds to nearest even under the default MXCSR, as
// nearbyint does.
IADGPT_VNNI_TARGET void quantize_block_avx512(const float* xb, int8_t* q, float* scale, float* offset) {
  const __m512 lo = _mm512_loadu_ps(xb), hi = _mm512_loadu_ps(xb + 16);
  const __m512i no_sign = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512i abs_max = _mm512_maskz_max_epu32(0xFFFF, _mm512_and_si512(_mm512_castps_si512(lo), no_sign),
                                           _mm512_and_si512(_mm512_castps_si512(hi), no_sign));
  // (|x| of finite floats orders as its bits do. The maskz_ forms and the 16 lanes reduced in
  // memory: GCC 12's plain forms and reduce intrinsics warn, as noted above.)
  alignas(64) float lanes[16];
  _mm512_store_si512(lanes, abs_max);
  float amax = 0.0f;
  for (float v : lanes) amax = std::max(amax, v);
  const float s = amax / 127.0f, inv = s == 0.0f ? 0.0f : 127.0f / amax;
  const __m512i limit = _mm512_set1_epi32(127), neg_limit = _mm512_set1_epi32(-127);
  const __m512 v = _mm512_set1_ps(inv);
  const __m512i q_lo = _mm512_maskz_min_epi32(0xFFFF, _mm512_maskz_max_epi32(0xFFFF, _mm512_maskz_cvtps_epi32(0xFFFF, _mm512_mul_ps(lo, v)), neg_limit), limit);
  const __m512i q_hi = _mm512_maskz_min_epi32(0xFFFF, _mm512_maskz_max_epi32(0xFFFF, _mm512_maskz_cvtps_epi32(0xFFFF, _mm512_mul_ps(hi, v)), neg_limit), limit);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_maskz_cvtepi32_epi8(0xFFFF, q_lo));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm512_maskz_cvtepi32_epi8(0xFFFF, q_hi));
  alignas(64) int32_t sums[16];
  _mm512_store_si512(sums, _mm512_add_epi32(q_lo, q_hi));
  int32_t sum = 0;
  for (int32_t v_sum : sums) sum += v_sum;
  *scale = s;
  *offset = 8.0f * static_cast<float>(sum);
}

#endif  // IADGPT_QUANT_X86

RowFn row_fn(QuantFormat format, MatvecIsa isa) {
  const bool q8 = format == QuantFormat::Q8;
#ifdef IADGPT_QUANT_X86
  if (isa == MatvecIsa::Avx512Bf16) return q8 ? &dot_row_avx512<QuantFormat::Q8> : &dot_row_avx512<QuantFormat::Q4>;
  if (isa == MatvecIsa::Avx2) return q8 ? &dot_row_q8_avx2 : &dot_row_q4_avx2;
#endif
  return q8 ? &dot_row_q8_scalar : &dot_row_q4_scalar;
}

}  // namespace qmv
}  // namespace

void quantize_input(const float* x, const QuantizedInput& out, MatvecIsa isa) {
#ifdef IADGPT_QUANT_X86
  // The vector form costs ~1/10 of the scalar one (a libm nearbyint call per element): it runs once
  // per matrix and token, single-threaded in decode, and for every prompt row in gemm_quant.
  if (isa == MatvecIsa::Avx512Bf16) {
    for (int64_t b = 0; b < out.cols / kQuantBlock; ++b)
      qmv::quantize_block_avx512(x + b * kQuantBlock, out.q + b * kQuantBlock, out.scale + b, out.offset + b);
    return;
  }
#endif
  for (int64_t b = 0; b < out.cols / kQuantBlock; ++b) {
    const float* xb = x + b * kQuantBlock;
    float amax = 0.0f;
    for (int64_t i = 0; i < kQuantBlock; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float s = amax / 127.0f, inv = s == 0.0f ? 0.0f : 127.0f / amax;
    int32_t sum = 0;
    for (int64_t i = 0; i < kQuantBlock; ++i) {
      // x · (127 / max) rather than x / s: one division per block, not per element (once per
      // matrix and token, single-threaded); |x − s·q| ≤ s/2 up to fp32 rounding either way.
      const int v = std::clamp(static_cast<int>(std::nearbyint(xb[i] * inv)), -127, 127);
      out.q[b * kQuantBlock + i] = static_cast<int8_t>(v);
      sum += v;
    }
    out.scale[b] = s;
    out.offset[b] = 8.0f * static_cast<float>(sum);
  }
}

void matvec_quant(const QuantMatrix& w, const QuantizedInput& x, float* y, MatvecIsa isa) {
  const int64_t rows = w.rows(), nb = w.cols() / kQuantBlock;
  const int64_t row_bytes = w.q.size(1);
  const auto fn = qmv::row_fn(w.format, isa);
  const auto* q = static_cast<const uint8_t*>(w.q.data_ptr());
  const auto* scale = w.scale.data_ptr<c10::Half>();
  // A thread gets at least ~32 KiB of weights (as matvec_bf16): small products stay on one thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t{32} << 10) / row_bytes);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) y[r] = fn(q + r * row_bytes, scale + r * nb, x, nb);
  });
}

void matvec_quant_multi(const QuantMatrix& w, std::span<const QuantizedInput> xs, std::span<float* const> ys,
                        MatvecIsa isa) {
  if (xs.size() != ys.size())
    throw InputError(fmt::format("matvec_quant_multi: {} inputs for {} outputs", xs.size(), ys.size()));
  const int64_t rows = w.rows(), nb = w.cols() / kQuantBlock;
  const int64_t row_bytes = w.q.size(1);
  const auto fn = qmv::row_fn(w.format, isa);
  const auto* q = static_cast<const uint8_t*>(w.q.data_ptr());
  const auto* scale = w.scale.data_ptr<c10::Half>();
  // Blocks of ~64 KiB of weights stay in L2 while every input passes over them (as
  // matvec_bf16_multi); the thread split is matvec_quant's, and each output element is one call
  // of the same row kernel on the same data, so each output is bit for bit its own matvec_quant.
  const int64_t block = std::max<int64_t>(1, (int64_t{64} << 10) / row_bytes);
  const int64_t grain = std::max<int64_t>(1, (int64_t{32} << 10) / row_bytes);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t b0 = r0; b0 < r1; b0 += block) {
      const int64_t b1 = std::min(r1, b0 + block);
      for (size_t i = 0; i < xs.size(); ++i)
        for (int64_t r = b0; r < b1; ++r) ys[i][r] = fn(q + r * row_bytes, scale + r * nb, xs[i], nb);
    }
  });
}

void matvec_quant(const QuantMatrix& w, const torch::Tensor& x, torch::Tensor& y, MatvecIsa isa) {
  if (!w.defined()) throw InputError("matvec_quant: the matrix is not quantized");
  if (x.scalar_type() != torch::kFloat32 || y.scalar_type() != torch::kFloat32)
    throw InputError(fmt::format("matvec_quant: expected fp32 x and y, got {} and {}", c10::toString(x.scalar_type()),
                                 c10::toString(y.scalar_type())));
  if (x.numel() != w.cols() || y.numel() != w.rows() || !x.is_contiguous() || !y.is_contiguous())
    throw InputError(fmt::format("matvec_quant: shapes do not fit: w [{}, {}], x [{}], y [{}] (contiguous expected)",
                                 w.rows(), w.cols(), fmt::join(x.sizes(), ", "), fmt::join(y.sizes(), ", ")));
  if (!matvec_isa_supported(isa))
    throw InputError(fmt::format("matvec_quant: this CPU does not support the {} path", matvec_isa_name(isa)));
  const int64_t cols = w.cols(), nb = cols / kQuantBlock;
  std::vector<int8_t> q(static_cast<size_t>(cols));
  std::vector<float> scale(static_cast<size_t>(nb)), offset(static_cast<size_t>(nb));
  const QuantizedInput xq{q.data(), scale.data(), offset.data(), cols};
  quantize_input(x.data_ptr<float>(), xq);
  matvec_quant(w, xq, y.data_ptr<float>(), isa);
}

}  // namespace iadgpt::nn
