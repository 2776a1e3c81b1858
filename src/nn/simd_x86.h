// x86 SIMD helpers shared by the matrix-vector kernels (matvec.cpp, quant_matvec.cpp). Include
// only where <immintrin.h> exists (the kernels' IADGPT_*_X86 blocks); each function carries its
// own target attribute, so the build stays generic x86-64.
#pragma once
#include <immintrin.h>

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

}  // namespace iadgpt::nn::simd
