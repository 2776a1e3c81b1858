// x86 SIMD helpers shared by the CPU kernels (matvec.cpp, quant_matvec.cpp, softmax.cpp,
// attention_bf16.cpp, norm_act_bf16.cpp). Include
// only where <immintrin.h> exists (the kernels' IADGPT_*_X86 blocks); each function carries its
// own target attribute, so the build stays generic x86-64.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <limits>

namespace iadgpt::nn::simd {

// Software prefetch distance of the weight streams. The hardware prefetchers alone left the bf16
// row kernel well below a plain streaming read; prefetching each line 4 KiB ahead (into the rows
// that follow: a matrix is one contiguous stream) raised it on both machine kinds measured. At 2
// threads on the Intel Xeon kind (family 6, model 207; a VM), a stand-alone kernel test went from
// 13.8–16.7 to 17–21.7 GB/s; on the Zen 5 kind a prefetched plain read reached 46–48 against
// 37–40 GB/s. Prefetches never fault, so the ones past a matrix's end are harmless.
// Into L2 (prefetcht1), not L1: on the AMD EPYC Zen 4 kind (family 25, 2 vCPUs) prefetches into
// L1 left the bf16 kernel at the speed of no prefetch at all, about 30 GB/s, while into L2 it
// streamed 4–17 % faster in a stand-alone test (2 GiB of weights, rows of 4096 and 11008) and
// TinyLlama's bf16 decode went from 14.4–14.8 to 17.9–20.4 tok/s (`bench llm`, runs alternated).
// The loads then hit L2, which costs nothing next to DRAM. (The Intel and Zen 5 figures above
// are from prefetches into L1; the L2 hint was not measured on those kinds.)
inline constexpr int kPrefetchBytes = 4096;

// One 64-byte line `kPrefetchBytes` after p, into L2 and the levels below it.
inline void prefetch_ahead(const void* p) {
  _mm_prefetch(static_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T1);
}

// Horizontal sum of 8 fp32 lanes.
__attribute__((target("avx2,fma"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Horizontal sum of 16 fp32 lanes, through memory: GCC 12's _mm512_reduce_add_ps and
// _mm512_extractf64x4_pd warn about an uninitialised temporary inside its own header. Once a row.
__attribute__((target("avx512f"))) inline float hsum16(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  const __m256 halves = _mm256_add_ps(_mm256_load_ps(lanes), _mm256_load_ps(lanes + 8));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(halves), _mm256_extractf128_ps(halves, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Largest of 16 fp32 lanes, through memory (as hsum16).
__attribute__((target("avx512f"))) inline float hmax16(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float max = lanes[0];
  for (int i = 1; i < 16; ++i) max = lanes[i] > max ? lanes[i] : max;
  return max;
}

#define IADGPT_AVX512_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// Lanes [c, n) of a 16-lane step at c, for a row of n values.
IADGPT_AVX512_BF16_TARGET inline __mmask16 lanes_left(int64_t c, int64_t n) {
  return c + 16 <= n ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - c)) - 1);
}

// (The all-lanes masked forms below, _mm512_maskz_*(kAllLanes, …), are the plain operations:
// GCC 12's plain forms start from an "undefined" register that -Wmaybe-uninitialized reports.)
inline constexpr __mmask16 kAllLanes = 0xFFFF;

// 16 bf16 values as fp32 (bf16 is the top half of an fp32); lanes outside `m` are 0.
IADGPT_AVX512_BF16_TARGET inline __m512 load_bf16(const void* p, __mmask16 m) {
  const __m256i bits = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAllLanes, _mm512_maskz_cvtepu16_epi32(kAllLanes, bits), 16));
}

// 16 fp32 values rounded to bf16 (nearest even, `vcvtneps2bf16`), stored in the lanes of `m`.
IADGPT_AVX512_BF16_TARGET inline void store_bf16(void* p, __m512 v, __mmask16 m) {
  const __m256bh rounded = _mm512_cvtneps_pbh(v);
  _mm256_mask_storeu_epi16(p, m, reinterpret_cast<const __m256i&>(rounded));
}

// e^x for x ≤ 0 (a score minus its row's max, or −|z| in QuickGELU's sigmoid): 2^n · e^r, n = round(x / ln 2), r = x − n ln 2
// with ln 2 in two parts (Cody–Waite), |r| ≤ ln 2 / 2, where the Taylor terms to r^6 leave a
// relative error of about 2^-23 (r^7/7!), the fp32 rounding a few 2^-24 more. Below −87 (and for
// NaN) 0: the exact value is under 1.7e-38, 2^-125 of the row's largest term (e^0), which no sum
// of the context can see; and a masked −inf must give exactly 0.
IADGPT_AVX512_BF16_TARGET inline __m512 exp_nonpositive(__m512 x) {
  const __m512 n = _mm512_maskz_roundscale_ps(kAllLanes, _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln 2, high bits (exact n·hi)
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);  // ln 2 − hi
  __m512 p = _mm512_set1_ps(1.0f / 720);
  for (const float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ);
  return _mm512_maskz_scalef_ps(live, p, n);
}

// Softmax of one row of n logits, rounded to bf16 once: the fp32 max, the exponentials (into
// `e`, n floats; it may be where the logits lie, each lane read before it is written) and their
// sum, then e · (1 / sum) into `out` (n bf16). `logits(c, m)` gives lanes [c, c + 16) under
// mask m (softmax.cpp: bf16 scores; attention_bf16.cpp: fp32 scores scaled, mask added).
template <class Logits>
IADGPT_AVX512_BF16_TARGET inline void softmax_row(Logits logits, int64_t n, float* e, void* out) {
  __m512 max = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = lanes_left(c, n);
    max = _mm512_mask_max_ps(max, m, max, logits(c, m));
  }
  const __m512 row_max = _mm512_set1_ps(hmax16(max));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = lanes_left(c, n);
    const __m512 ex = _mm512_maskz_mov_ps(m, exp_nonpositive(_mm512_sub_ps(logits(c, m), row_max)));
    _mm512_mask_storeu_ps(e + c, m, ex);
    sum = _mm512_add_ps(sum, ex);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / hsum16(sum));
  auto* bf16_out = static_cast<uint16_t*>(out);
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = lanes_left(c, n);
    store_bf16(bf16_out + c, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, e + c), inv), m);
  }
}

}  // namespace iadgpt::nn::simd
