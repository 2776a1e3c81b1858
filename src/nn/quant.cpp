// Formats, quantize / dequantize and the validation of stored quantized matrices (quant.h); the
// matrix-vector kernels are in quant_matvec.cpp, the prefill's product in quant_gemm.cpp.
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "io/error.h"
#include "nn/quant.h"

namespace iadgpt::nn {
namespace {
namespace qfmt {  // (named: the module is one unity translation unit)

// The block's scale rounded to fp16, as stored; non-finite → InputError (nothing sensible to store).
c10::Half block_scale(float scale) {
  const c10::Half h(scale);
  if (!std::isfinite(static_cast<float>(h)))
    throw InputError(fmt::format("quantize: a block scale {} does not fit fp16 (non-finite or huge weights)", scale));
  return h;
}

// |x| as its bit pattern: for non-negative floats the integer order is the float order, so the
// block's largest magnitude is an integer max (which vectorizes; a float max does not without
// -ffast-math), and a NaN sorts above every number, so it reaches block_scale, which refuses it.
uint32_t magnitude_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u & 0x7FFFFFFFu;
}

uint32_t block_max_bits(const float* wb) {
  uint32_t max_bits = 0;
  for (int64_t i = 0; i < kQuantBlock; ++i) max_bits = std::max(max_bits, magnitude_bits(wb[i]));
  return max_bits;
}

// out[i] = round(wb[i] / s) clamped to [lo, hi]; s is finite (block_scale). Rounding is to
// nearest, ties to even, as nearbyint in the default rounding mode, without its libm call per
// element: adding and subtracting 1.5 · 2^23 leaves the nearest integer for |v| < 2^22. Clamping
// to the integers lo and hi before rounding gives what clamping after would (rounding is monotonic
// and keeps integers), and keeps v in that range. (GCC keeps this loop scalar in the library's
// build, unlike the block max: the gain is the libm call.)
void block_quants(const float* wb, float s, int lo, int hi, int32_t* out) {
  if (s == 0.0f) {
    std::fill(out, out + kQuantBlock, 0);
    return;
  }
  constexpr float kRound = 12582912.0f;  // 1.5 · 2^23
  const float low = static_cast<float>(lo), high = static_cast<float>(hi);
  for (int64_t i = 0; i < kQuantBlock; ++i) {
    float v = wb[i] / s;
    v = v < low ? low : v;
    v = v > high ? high : v;
    out[i] = static_cast<int32_t>((v + kRound) - kRound);
  }
}

void quantize_row_q8(const float* w, int64_t cols, int8_t* q, c10::Half* scale) {
  int32_t quants[kQuantBlock];
  for (int64_t b = 0; b < cols / kQuantBlock; ++b) {
    const float* wb = w + b * kQuantBlock;
    const uint32_t max_bits = block_max_bits(wb);
    float amax;
    std::memcpy(&amax, &max_bits, sizeof amax);
    scale[b] = block_scale(amax / 127.0f);
    block_quants(wb, scale[b], -127, 127, quants);
    for (int64_t i = 0; i < kQuantBlock; ++i) q[b * kQuantBlock + i] = static_cast<int8_t>(quants[i]);
  }
}

void quantize_row_q4(const float* w, int64_t cols, uint8_t* q, c10::Half* scale) {
  int32_t quants[kQuantBlock];
  for (int64_t b = 0; b < cols / kQuantBlock; ++b) {
    const float* wb = w + b * kQuantBlock;
    // The first element of largest magnitude, with its sign: it maps to exactly −8.
    const uint32_t max_bits = block_max_bits(wb);
    int64_t at = 0;
    while (magnitude_bits(wb[at]) != max_bits) ++at;
    scale[b] = block_scale(wb[at] / -8.0f);
    block_quants(wb, scale[b], -8, 7, quants);
    uint8_t* qb = q + b * (kQuantBlock / 2);
    for (int64_t j = 0; j < kQuantBlock / 2; ++j)
      qb[j] = static_cast<uint8_t>((quants[j] + 8) | ((quants[j + 16] + 8) << 4));
  }
}

// Element c of a row as scale · q.
float dequant_at(const QuantMatrix& m, const int8_t* q8, const uint8_t* q4, const c10::Half* scale, int64_t c) {
  const float s = scale[c / kQuantBlock];
  if (m.format == QuantFormat::Q8) return s * static_cast<float>(q8[c]);
  const int64_t b = c / kQuantBlock, i = c % kQuantBlock;
  const uint8_t byte = q4[b * 16 + (i % 16)];
  const int v = (i < 16 ? (byte & 0x0F) : (byte >> 4)) - 8;
  return s * static_cast<float>(v);
}

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

std::optional<QuantFormat> quant_format_named(std::string_view name) {
  for (auto f : {QuantFormat::None, QuantFormat::Q8, QuantFormat::Q4})
    if (name == quant_format_name(f)) return f;
  return std::nullopt;
}

QuantFormat parse_quant_format(std::string_view name, std::string_view what) {
  if (const auto format = quant_format_named(name)) return *format;
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
  const int64_t rows = w.size(0), cols = w.size(1);
  QuantMatrix m;
  m.format = format;
  m.scale = torch::empty({rows, cols / kQuantBlock}, torch::kFloat16);
  m.q = format == QuantFormat::Q8 ? torch::empty({rows, cols}, torch::kInt8) : torch::empty({rows, cols / 2}, torch::kUInt8);
  auto* scale = m.scale.data_ptr<c10::Half>();
  // Rows are taken to fp32 a few at a time into one small buffer per thread, not the whole
  // matrix at once: a loader quantizing a checkpoint matrix by matrix then needs no fp32 copy of
  // each (26 MB for a vision MLP matrix; more than the holes the freed bf16 matrices leave in the
  // heap, which then grew by 1.2 GB over an ImageBind-Huge tower).
  const int64_t chunk_rows = std::max<int64_t>(1, (int64_t{1} << 16) / cols);
  at::parallel_for(0, rows, chunk_rows, [&](int64_t r0, int64_t r1) {
    auto rows_f32 = torch::empty({std::min(chunk_rows, r1 - r0), cols}, torch::kFloat32);
    for (int64_t first = r0; first < r1; first += chunk_rows) {
      const int64_t n = std::min(chunk_rows, r1 - first);
      rows_f32.narrow(0, 0, n).copy_(w.narrow(0, first, n));
      const float* src = rows_f32.data_ptr<float>();
      for (int64_t i = 0; i < n; ++i) {
        const int64_t r = first + i;
        if (format == QuantFormat::Q8)
          qfmt::quantize_row_q8(src + i * cols, cols, m.q.data_ptr<int8_t>() + r * cols, scale + r * (cols / kQuantBlock));
        else
          qfmt::quantize_row_q4(src + i * cols, cols, m.q.data_ptr<uint8_t>() + r * cols / 2,
                                scale + r * (cols / kQuantBlock));
      }
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

}  // namespace iadgpt::nn
