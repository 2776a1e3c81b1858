// Weight-only quantization of the decoder's matrices: formats q8 and q4 (one fp16 scale per block
// of 32 weights along the input dimension, like llama.cpp's Q8_0 / Q4_0, in our own layout), the
// quantize / dequantize functions, and the matrix-vector kernels of the single-token decode step.
//
//   auto qw = iadgpt::nn::quantize(w, QuantFormat::Q4);           // w [rows, cols], cols % 32 == 0
//   auto y = torch::empty({rows}, torch::kFloat32);
//   iadgpt::nn::matvec_quant(qw, x_f32, y);                         // best path for this CPU
//   auto w2 = iadgpt::nn::dequantize(qw);                           // fp32 [rows, cols]
//
// Layout (README "Weight-only quantization"): `q` holds the quants row after row, `scale` the
// fp16 scales [rows, cols/32] row after row, so a kernel streams each row's quants and scales.
//   q8: q int8 [rows, cols], w ≈ scale · q, q in −127..127, scale = max|w| / 127 of the block.
//   q4: q uint8 [rows, cols/2]; block b of a row is bytes 16b..16b+15; byte j holds element j in
//       its low nibble and element j+16 in its high nibble, each stored as q + 8 (q in −8..7);
//       scale = m / −8 with m the block's element of largest magnitude (so m is exactly −8·scale;
//       the scale may be negative), w ≈ scale · q.
// Rounding: the scale is rounded to fp16 first, then q = round-to-nearest-even(w / scale),
// clamped to the range. Round trip: |w − scale·q| ≤ |scale|/2, except q4 elements of the sign
// opposite to m whose w/scale rounds to +8 and is clamped to 7: there ≤ |scale|.
//
// Kernels: y = W x, fp32 out. x is quantized per block of 32 to int8 (scale max|x|/127, round to
// nearest even) and each block's integer dot product is exact; the blocks' scaled sums are fp32.
// Paths as matvec.h (same MatvecIsa and IADGPT_MATVEC dispatch): AVX-512 VNNI (`vpdpbusd`),
// AVX2 (`vpmaddubsw` + `vpmaddwd`), scalar; they differ only in the fp32 summation order.
// Thread-safety: the functions are pure; rows are split over torch's intra-op threads.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "nn/matvec.h"

namespace iadgpt::nn {

enum class QuantFormat { None, Q8, Q4 };

inline constexpr int64_t kQuantBlock = 32;

// In a checkpoint, a matrix stored quantized is two tensors beside its weight's key: the codes
// (`<key>.q`) and the fp16 scales (`<key>.scale`). The LLM's and the vision tower's loaders and
// writers all name them through these.
inline constexpr std::string_view kQuantCodesSuffix = ".q";
inline constexpr std::string_view kQuantScaleSuffix = ".scale";
inline std::string quant_codes_key(std::string_view key) { return std::string(key).append(kQuantCodesSuffix); }
inline std::string quant_scale_key(std::string_view key) { return std::string(key).append(kQuantScaleSuffix); }

// "none" | "q8" | "q4".
const char* quant_format_name(QuantFormat format);
// The inverse: the format of that name, if there is one.
std::optional<QuantFormat> quant_format_named(std::string_view name);
// The same, where anything else → InputError naming `what` (a flag, a file).
QuantFormat parse_quant_format(std::string_view name, std::string_view what);

struct QuantMatrix {
  QuantFormat format = QuantFormat::None;
  torch::Tensor q;      // q8: int8 [rows, cols]; q4: uint8 [rows, cols/2]
  torch::Tensor scale;  // fp16 [rows, cols/32]

  bool defined() const { return format != QuantFormat::None; }
  int64_t rows() const { return scale.size(0); }
  int64_t cols() const { return scale.size(1) * kQuantBlock; }
  int64_t bytes() const;
};

// Quantizes w [rows, cols] (any floating dtype; cols a multiple of 32, else InputError; non-finite
// values → InputError). Rows are split over intra-op threads.
QuantMatrix quantize(const torch::Tensor& w, QuantFormat format);

// fp32 [rows, cols]: scale · q.
torch::Tensor dequantize(const QuantMatrix& m);

// A quantized matrix from its two stored tensors, validated: dtypes, shapes against the expected
// [rows, cols], contiguity. Any mismatch → InputError naming `name` (the weight's key).
QuantMatrix quant_matrix_from_tensors(QuantFormat format, const torch::Tensor& q, const torch::Tensor& scale,
                                      int64_t rows, int64_t cols, const std::string& name);

// x quantized per block of 32 for the kernels: q int8 [cols], scale fp32 [cols/32], and
// offset[b] = 8 · Σ q of block b (the q4 vector kernels multiply the stored q + 8 and subtract
// scale_w · scale · offset).
struct QuantizedInput {
  int8_t* q;
  float* scale;
  float* offset;
  int64_t cols;
};

// Fills `out` (its arrays sized as above, cols a multiple of 32) from x [cols] fp32. Every path
// (`isa`: AVX-512 or scalar code; Avx2 runs the scalar one) gives the same bytes.
void quantize_input(const float* x, const QuantizedInput& out, MatvecIsa isa = best_matvec_isa());

// y[r] = Σ_c w[r, c] x[c] with x given quantized; rows split over intra-op threads.
void matvec_quant(const QuantMatrix& w, const QuantizedInput& x, float* y, MatvecIsa isa);
// y_i = W x_i for several inputs (continuous batching): each block of W's rows is read once from
// memory for all of them; ys[i] is bit for bit matvec_quant(w, xs[i], ys[i], isa).
void matvec_quant_multi(const QuantMatrix& w, std::span<const QuantizedInput> xs, std::span<float* const> ys,
                        MatvecIsa isa);

// How many int8 passes gemm_quant takes of each input row: the format's choice (q8: two, q4: one),
// or one whatever the format. The LLM's prefill takes the format's choice, so that a q8 prompt
// decides as the bf16 model does; the vision tower takes one (twice the speed; its maps are
// checked against bf16 instead, vision/README.md).
enum class InputPasses { ForFormat, One };

// Y = X Wᵀ for a block of inputs (the prefill of quantized matrices): x [n, cols] fp32
// row-major, y [n, rows] fp32 row-major. Each input row is quantized per block of 32 to int8 as
// matvec_quant's x (quantize_input); for q8 (with InputPasses::ForFormat) in two passes: then the
// rounding error that leaves, the same way. Every part goes through the exact int32 block sums scaled by s_w · s_x. Two
// passes leave ≤ s_x/508 of activation error per element (one: s_x/2), about bf16's: a q8 prompt
// decides as the bf16 model does. q4 takes one pass: its weights' error is 16 times that of one
// pass. AVX-512 VNNI path: the weights unpacked a cache-sized tile at a time, a 4-row × 32-input
// micro-kernel on whole groups of 16 inputs, and a few inputs left over (at most 3 activation
// rows) through matvec_quant_multi (quant_gemm.cpp); AVX2 and scalar: matvec_quant_multi. `scratch` (uint8) is grown
// when too small and reused otherwise. Rows split over intra-op threads.
void gemm_quant(const QuantMatrix& w, const float* x, int64_t n, float* y, MatvecIsa isa, torch::Tensor& scratch,
                InputPasses passes = InputPasses::ForFormat);
// Tensor form (allocates its scratch): wrong dtypes or shapes, an unsupported isa → InputError.
void gemm_quant(const QuantMatrix& w, const torch::Tensor& x, torch::Tensor& y, MatvecIsa isa = best_matvec_isa(),
                InputPasses passes = InputPasses::ForFormat);

// Tensor form: x [cols] fp32, y [rows] fp32 contiguous (preallocated). Quantizes x (allocating its
// buffers). Wrong dtypes or shapes, cols not a multiple of 32, an unsupported isa → InputError.
void matvec_quant(const QuantMatrix& w, const torch::Tensor& x, torch::Tensor& y, MatvecIsa isa = best_matvec_isa());

}  // namespace iadgpt::nn
