// Matrix-vector products on bf16 weights for the single-token decode step, without re-packing:
// y = W x with W [rows, cols] bf16 row-major (the checkpoint layout, used as loaded), x bf16,
// y fp32. oneDNN's bf16 GEMM re-packs W on every call, which costs as much for one row as for 64;
// these kernels stream W once, so decode runs close to the memory-bandwidth limit.
//
//   auto y = torch::empty({rows}, torch::kFloat32);
//   iadgpt::nn::matvec_bf16(w, x_bf16, y);                        // best path for this CPU
//   iadgpt::nn::matvec_bf16(w, x_bf16, y, MatvecIsa::Avx2);       // force a path (tests)
//
// Paths, chosen at run time: AVX-512 BF16 (`vdpbf16ps`: bf16 pairs multiplied exactly and
// accumulated in fp32), AVX2 + FMA (bf16 widened to fp32, fp32 FMA), portable scalar. All three
// form exact bf16×bf16 products and accumulate in fp32; they differ only in summation order.
// Only these kernels are compiled for AVX2 / AVX-512 (function target attributes); the rest of
// the build stays generic x86-64.
// Thread-safety: the functions are pure; rows are split over torch's intra-op threads.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <span>

namespace iadgpt::nn {

enum class MatvecIsa { Scalar, Avx2, Avx512Bf16 };

// "avx512bf16" | "avx2" | "scalar".
const char* matvec_isa_name(MatvecIsa isa);

// Whether this CPU (and OS) can run `isa`.
bool matvec_isa_supported(MatvecIsa isa);

// The best supported path, probed once and cached in a function-local static (the module's only
// process-wide state). The environment variable IADGPT_MATVEC=avx2|scalar, read at that first
// call, forces a lower path (to compare paths in `bench llm`); an unknown or unsupported value is
// an InputError.
MatvecIsa best_matvec_isa();

// y[r] = Σ_c w[r, c] · x[c], fp32 accumulation; rows [0, rows) split over intra-op threads (a
// call inside a parallel region runs on the calling thread). Raw-pointer form for the decode step.
void matvec_bf16(const at::BFloat16* w, const at::BFloat16* x, float* y, int64_t rows, int64_t cols, MatvecIsa isa);

// Several vectors against one matrix (a batched decode step: one row per sequence):
// ys[b] = W xs[b], each exactly as matvec_bf16(w, xs[b], ys[b]) computes it (the same kernel,
// row by row), but W is read from memory once for all of them: rows are taken in blocks of
// about 64 KiB, and each block is applied to every vector while it is in cache. Decode is bound
// by reading the weights, so n sequences cost little more than one.
void matvec_bf16_multi(const at::BFloat16* w, std::span<const at::BFloat16* const> xs, std::span<float* const> ys,
                       int64_t rows, int64_t cols, MatvecIsa isa);

// Tensor form: w [rows, cols] bf16 contiguous, x [cols] bf16 contiguous, y [rows] fp32 contiguous
// (preallocated). Wrong dtypes or shapes → InputError; an unsupported `isa` → InputError.
void matvec_bf16(const torch::Tensor& w, const torch::Tensor& x, torch::Tensor& y,
                 MatvecIsa isa = best_matvec_isa());

// How many threads a range split by these kernels (at::parallel_for in this module) really runs
// on, now: at most at::get_num_threads(). 1 where the module was compiled without OpenMP, whatever
// --threads says (ATen's parallel_for is a header template that is serial without it); `bench
// llm` prints it beside the thread count.
int kernel_threads();

// The memory bandwidth a streaming read reaches, for `bench`'s decode limit: bytes per second of
// a read (the same vector width as `isa`'s kernel) of a fresh `buffer_bytes` buffer, one
// contiguous share per intra-op thread; `passes` plain and `passes` software-prefetched passes
// after two warm-up passes (which also fault the pages in), the fastest pass counts. Choose
// `buffer_bytes` well above the last-level cache, or the figure is the cache's.
double measure_read_bandwidth(int64_t buffer_bytes, int passes, MatvecIsa isa = best_matvec_isa());

}  // namespace iadgpt::nn
