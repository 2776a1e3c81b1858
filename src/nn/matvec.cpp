#include "nn/matvec.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "io/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "nn/simd_x86.h"
#define IADGPT_MATVEC_X86 1
#endif

namespace iadgpt::nn {
namespace {

// Each thread reads whole rows, one after the other: a single sequential stream of weights per
// thread. Measured on the Zen 5 test machine (sum of every TinyLlama matrix, 2 threads), this beat
// blocks of 2, 4 or 8 rows sharing each load of x (four interleaved streams: 63 against 58 ms at
// 4 rows; 71 at 8); x is re-read from L1 for every row, which costs nothing next to DRAM.
// (Software prefetch came later: simd_x86.h, prefetch_ahead.)

inline float bf16_to_float(uint16_t bits) {
  const uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &widened, sizeof f);
  return f;
}

void matvec_rows_scalar(const uint16_t* w, const uint16_t* x, float* y, int64_t r0, int64_t r1, int64_t cols) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* row = w + r * cols;
    float acc = 0.0f;
    for (int64_t c = 0; c < cols; ++c) acc += bf16_to_float(row[c]) * bf16_to_float(x[c]);
    y[r] = acc;
  }
}

#ifdef IADGPT_MATVEC_X86

// ---- AVX2 + FMA: 8 bf16 widened to fp32 (zero-extend, shift left 16), fp32 FMA. ----

__attribute__((target("avx2,fma"))) inline __m256 load8_bf16_as_f32(const uint16_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

// One row against x already widened to fp32: four accumulators over 32-column steps (hiding the
// FMA latency), then 8-column steps, then a scalar tail for the last < 8 columns.
__attribute__((target("avx2,fma"))) float dot_row_avx2(const uint16_t* w, const float* x, int64_t cols) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t c = 0;
  for (; c + 32 <= cols; c += 32) {
    simd::prefetch_ahead(w + c);  // 32 bf16: one line a step
    a0 = _mm256_fmadd_ps(load8_bf16_as_f32(w + c), _mm256_loadu_ps(x + c), a0);
    a1 = _mm256_fmadd_ps(load8_bf16_as_f32(w + c + 8), _mm256_loadu_ps(x + c + 8), a1);
    a2 = _mm256_fmadd_ps(load8_bf16_as_f32(w + c + 16), _mm256_loadu_ps(x + c + 16), a2);
    a3 = _mm256_fmadd_ps(load8_bf16_as_f32(w + c + 24), _mm256_loadu_ps(x + c + 24), a3);
  }
  for (; c + 8 <= cols; c += 8) a0 = _mm256_fmadd_ps(load8_bf16_as_f32(w + c), _mm256_loadu_ps(x + c), a0);
  float s = simd::hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; c < cols; ++c) s += bf16_to_float(w[c]) * x[c];
  return s;
}

// x is widened to fp32 once per call, in panels of kPanel columns on the stack (no allocation),
// instead of once per row: the widening otherwise doubles the work per weight.
__attribute__((target("avx2,fma"))) void matvec_rows_avx2(const uint16_t* w, const uint16_t* x, float* y, int64_t r0,
                                                          int64_t r1, int64_t cols) {
  constexpr int64_t kPanel = 16384;  // 64 KiB: one panel up to LLaMA-7B's 11008 columns
  alignas(32) float xf[kPanel];
  for (int64_t c0 = 0; c0 < cols; c0 += kPanel) {
    const int64_t n = std::min(kPanel, cols - c0);
    for (int64_t c = 0; c < n; ++c) xf[c] = bf16_to_float(x[c0 + c]);
    for (int64_t r = r0; r < r1; ++r) {
      const float part = dot_row_avx2(w + r * cols + c0, xf, n);
      y[r] = c0 == 0 ? part : y[r] + part;
    }
  }
}

// ---- AVX-512 BF16: vdpbf16ps multiplies 32 bf16 pairs exactly and adds pairs into 16 fp32 lanes. ----


__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline __m512 dot32_bf16(__m512 acc, const uint16_t* w,
                                                                               const uint16_t* x) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(_mm512_loadu_si512(w)),
                          reinterpret_cast<__m512bh>(_mm512_loadu_si512(x)));
}

// One row: four accumulators over 128-column steps, then 32-column steps, then one masked step
// for the last < 32 columns (masked loads read only those and zero the other lanes).
__attribute__((target("avx512f,avx512bw,avx512bf16"))) float dot_row_avx512bf16(const uint16_t* w, const uint16_t* x,
                                                                                int64_t cols) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t c = 0;
  for (; c + 128 <= cols; c += 128) {
    for (int line = 0; line < 4; ++line) simd::prefetch_ahead(w + c + 32 * line);
    a0 = dot32_bf16(a0, w + c, x + c);
    a1 = dot32_bf16(a1, w + c + 32, x + c + 32);
    a2 = dot32_bf16(a2, w + c + 64, x + c + 64);
    a3 = dot32_bf16(a3, w + c + 96, x + c + 96);
  }
  for (; c + 32 <= cols; c += 32) a0 = dot32_bf16(a0, w + c, x + c);
  if (c < cols) {
    const __mmask32 tail = static_cast<__mmask32>((uint64_t{1} << (cols - c)) - 1);
    a1 = _mm512_dpbf16_ps(a1, reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(tail, w + c)),
                          reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(tail, x + c)));
  }
  return simd::hsum16(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) void matvec_rows_avx512bf16(const uint16_t* w, const uint16_t* x,
                                                                                   float* y, int64_t r0, int64_t r1,
                                                                                   int64_t cols) {
  for (int64_t r = r0; r < r1; ++r) y[r] = dot_row_avx512bf16(w + r * cols, x, cols);
}

// ---- Streaming reads for measure_read_bandwidth: XOR every 64 bytes into a register so the loads
// cannot be dropped; n64 is the number of 64-byte lines. With `Prefetch`, each line is also
// prefetched as the kernels prefetch their weights (simd::prefetch_ahead), so a kernel that
// streams as well as it can reads at the probe's rate. On the Zen 5 test machine a plain read
// reached 37-40 GB/s and one prefetching 2 KiB ahead into L1 46-48 GB/s at 2 threads, so the
// probe takes the better of the two. ----

template <bool Prefetch>
__attribute__((target("avx512f"))) uint64_t read_lines_avx512(const char* p, int64_t n64) {
  __m512i a = _mm512_setzero_si512(), b = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 2 <= n64; i += 2) {
    if (Prefetch) simd::prefetch_ahead(p + i * 64), simd::prefetch_ahead(p + i * 64 + 64);
    a = _mm512_xor_si512(a, _mm512_loadu_si512(p + i * 64));
    b = _mm512_xor_si512(b, _mm512_loadu_si512(p + i * 64 + 64));
  }
  if (i < n64) a = _mm512_xor_si512(a, _mm512_loadu_si512(p + i * 64));
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_xor_si512(a, b));
  uint64_t out = 0;
  for (uint64_t lane : lanes) out ^= lane;
  return out;
}

template <bool Prefetch>
__attribute__((target("avx2"))) uint64_t read_lines_avx2(const char* p, int64_t n64) {
  __m256i a = _mm256_setzero_si256(), b = _mm256_setzero_si256();
  for (int64_t i = 0; i < n64; ++i) {
    if (Prefetch) simd::prefetch_ahead(p + i * 64);
    a = _mm256_xor_si256(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i * 64)));
    b = _mm256_xor_si256(b, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i * 64 + 32)));
  }
  const __m256i v = _mm256_xor_si256(a, b);
  return static_cast<uint64_t>(_mm256_extract_epi64(v, 0) ^ _mm256_extract_epi64(v, 1) ^ _mm256_extract_epi64(v, 2) ^
                               _mm256_extract_epi64(v, 3));
}

#endif  // IADGPT_MATVEC_X86

template <bool Prefetch>
uint64_t read_lines_scalar(const char* p, int64_t n64) {
  uint64_t acc = 0;
  for (int64_t i = 0; i < n64 * 8; ++i) {
    uint64_t word;
    std::memcpy(&word, p + i * 8, sizeof word);
    acc ^= word;
  }
  return acc;
}

MatvecIsa probe_best_isa() {
  MatvecIsa best = MatvecIsa::Scalar;
  if (matvec_isa_supported(MatvecIsa::Avx512Bf16)) best = MatvecIsa::Avx512Bf16;
  else if (matvec_isa_supported(MatvecIsa::Avx2)) best = MatvecIsa::Avx2;
  const char* forced = std::getenv("IADGPT_MATVEC");
  if (forced == nullptr || *forced == '\0') return best;
  for (auto isa : {MatvecIsa::Scalar, MatvecIsa::Avx2, MatvecIsa::Avx512Bf16})
    if (std::string(forced) == matvec_isa_name(isa)) {
      if (!matvec_isa_supported(isa))
        throw InputError(fmt::format("IADGPT_MATVEC={}: this CPU does not support that path", forced));
      return isa;
    }
  throw InputError(fmt::format("IADGPT_MATVEC={}: expected avx512bf16, avx2 or scalar", forced));
}

}  // namespace

const char* matvec_isa_name(MatvecIsa isa) {
  switch (isa) {
    case MatvecIsa::Avx512Bf16: return "avx512bf16";
    case MatvecIsa::Avx2: return "avx2";
    case MatvecIsa::Scalar: return "scalar";
  }
  return "?";
}

bool matvec_isa_supported(MatvecIsa isa) {
#ifdef IADGPT_MATVEC_X86
  // __builtin_cpu_supports also checks that the OS saves the YMM/ZMM state (XCR0).
  switch (isa) {
    case MatvecIsa::Avx512Bf16:
      // VNNI and VL for the q8/q4 kernels (quant.h); every AVX-512 BF16 CPU has them.
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni") &&
             __builtin_cpu_supports("avx512vl");
    case MatvecIsa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case MatvecIsa::Scalar: return true;
  }
  return false;
#else
  return isa == MatvecIsa::Scalar;
#endif
}

MatvecIsa best_matvec_isa() {
  static const MatvecIsa isa = probe_best_isa();
  return isa;
}

void matvec_bf16(const at::BFloat16* w_bf16, const at::BFloat16* x_bf16, float* y, int64_t rows, int64_t cols,
                 MatvecIsa isa) {
  const auto* w = reinterpret_cast<const uint16_t*>(w_bf16);
  const auto* x = reinterpret_cast<const uint16_t*>(x_bf16);
  auto rows_fn = &matvec_rows_scalar;
#ifdef IADGPT_MATVEC_X86
  if (isa == MatvecIsa::Avx512Bf16) rows_fn = &matvec_rows_avx512bf16;
  if (isa == MatvecIsa::Avx2) rows_fn = &matvec_rows_avx2;
#endif
  // Split over rows; a thread gets at least ~64 KiB of weights, so small products (attention
  // over a short context, test-size models) stay on one thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t{32} << 10) / std::max<int64_t>(1, cols));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) { rows_fn(w, x, y, r0, r1, cols); });
}

void matvec_bf16_multi(const at::BFloat16* w_bf16, std::span<const at::BFloat16* const> xs, std::span<float* const> ys,
                       int64_t rows, int64_t cols, MatvecIsa isa) {
  if (xs.size() != ys.size())
    throw InputError(fmt::format("matvec_bf16_multi: {} inputs for {} outputs", xs.size(), ys.size()));
  const auto* w = reinterpret_cast<const uint16_t*>(w_bf16);
  auto rows_fn = &matvec_rows_scalar;
#ifdef IADGPT_MATVEC_X86
  if (isa == MatvecIsa::Avx512Bf16) rows_fn = &matvec_rows_avx512bf16;
  if (isa == MatvecIsa::Avx2) rows_fn = &matvec_rows_avx2;
#endif
  // Blocks of ~64 KiB of weights stay in L2 while every vector passes over them; the thread split
  // is matvec_bf16's (each row is one kernel call's work either way, so results do not depend on it).
  const int64_t block = std::max<int64_t>(1, (int64_t{64} << 10) / std::max<int64_t>(1, 2 * cols));
  const int64_t grain = std::max<int64_t>(1, (int64_t{32} << 10) / std::max<int64_t>(1, cols));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t b0 = r0; b0 < r1; b0 += block) {
      const int64_t b1 = std::min(r1, b0 + block);
      for (size_t i = 0; i < xs.size(); ++i)
        rows_fn(w, reinterpret_cast<const uint16_t*>(xs[i]), ys[i], b0, b1, cols);
    }
  });
}

void matvec_bf16(const torch::Tensor& w, const torch::Tensor& x, torch::Tensor& y, MatvecIsa isa) {
  if (w.scalar_type() != torch::kBFloat16 || x.scalar_type() != torch::kBFloat16 || y.scalar_type() != torch::kFloat32)
    throw InputError(fmt::format("matvec_bf16: expected bf16 weights, bf16 x and fp32 y, got {}, {}, {}",
                                 c10::toString(w.scalar_type()), c10::toString(x.scalar_type()),
                                 c10::toString(y.scalar_type())));
  if (w.dim() != 2 || x.numel() != w.size(1) || y.numel() != w.size(0))
    throw InputError(fmt::format("matvec_bf16: shapes do not fit: w [{}], x [{}], y [{}]", fmt::join(w.sizes(), ", "),
                                 fmt::join(x.sizes(), ", "), fmt::join(y.sizes(), ", ")));
  if (!w.is_contiguous() || !x.is_contiguous() || !y.is_contiguous())
    throw InputError("matvec_bf16: w, x and y must be contiguous");
  if (!matvec_isa_supported(isa))
    throw InputError(fmt::format("matvec_bf16: this CPU does not support the {} path", matvec_isa_name(isa)));
  matvec_bf16(w.data_ptr<at::BFloat16>(), x.data_ptr<at::BFloat16>(), y.data_ptr<float>(), w.size(0), w.size(1), isa);
}

int kernel_threads() {
  const int64_t threads = std::max(1, at::get_num_threads());
  std::atomic<int> chunks{0};
  // One index per thread and grain 1: each thread that takes part runs exactly one chunk.
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) { chunks.fetch_add(1); });
  return chunks.load();
}

double measure_read_bandwidth(int64_t buffer_bytes, int passes, MatvecIsa isa) {
  if (buffer_bytes < (int64_t{1} << 20) || passes < 1)
    throw InputError("measure_read_bandwidth: at least 1 MiB and one pass are needed");
  const int64_t lines = buffer_bytes / 64;
  // Filled with a pattern (not zero pages: reads of untouched anonymous memory hit one shared
  // zero page and would measure the cache).
  auto buffer = torch::full({lines * 64}, 1, torch::kUInt8);
  const char* data = reinterpret_cast<const char*>(buffer.data_ptr<uint8_t>());
  // Even passes read plainly, odd passes with software prefetch; the best pass counts.
  using ReadFn = uint64_t (*)(const char*, int64_t);
  ReadFn read_fns[2] = {&read_lines_scalar<false>, &read_lines_scalar<true>};
#ifdef IADGPT_MATVEC_X86
  if (isa == MatvecIsa::Avx512Bf16) read_fns[0] = &read_lines_avx512<false>, read_fns[1] = &read_lines_avx512<true>;
  if (isa == MatvecIsa::Avx2) read_fns[0] = &read_lines_avx2<false>, read_fns[1] = &read_lines_avx2<true>;
#endif
  const int64_t threads = std::max(1, at::get_num_threads());
  double best = 1e30;
  std::atomic<uint64_t> sink{0};
  for (int p = 0; p < 2 * passes + 2; ++p) {  // passes 0 and 1 are the warm-up
    const auto read_fn = read_fns[p % 2];
    const auto t0 = std::chrono::steady_clock::now();
    // One contiguous share per thread, as the matvec kernels split rows.
    at::parallel_for(0, threads, 1, [&](int64_t t0_, int64_t t1_) {
      for (int64_t t = t0_; t < t1_; ++t) {
        const int64_t begin = lines * t / threads, end = lines * (t + 1) / threads;
        sink.fetch_xor(read_fn(data + begin * 64, end - begin), std::memory_order_relaxed);
      }
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (p > 1) best = std::min(best, seconds);
  }
  if (sink.load() == 0x5eed) std::fputc('\0', stderr);  // keeps the reads observable
  return static_cast<double>(lines * 64) / best;
}

}  // namespace iadgpt::nn
