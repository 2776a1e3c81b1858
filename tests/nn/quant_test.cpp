// Weight-only quantization (llm/quant.h): the documented layout read back independently, the
// quantize → dequantize round-trip bounds, and the q8 / q4 matvec kernels on every dispatch path
// against a naive float64 loop, on ragged row counts.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "io/error.h"
#include "nn/quant.h"
#include "common/tensors.h"

namespace nn = iadgpt::nn;
namespace t = iadgpt::test;

namespace {

const nn::MatvecIsa kAllPaths[] = {nn::MatvecIsa::Scalar, nn::MatvecIsa::Avx2, nn::MatvecIsa::Avx512Bf16};
const nn::QuantFormat kFormats[] = {nn::QuantFormat::Q8, nn::QuantFormat::Q4};

// The stored integers per the README layout, read here without the library: q8 int8 row-major;
// q4 byte 16b+j of a row holds element 32b+j (low nibble) and 32b+16+j (high nibble), as q + 8.
std::vector<int> stored_quants(const nn::QuantMatrix& m, int64_t r) {
  const int64_t cols = m.cols();
  const auto q = m.q.contiguous();
  std::vector<int> out(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) {
    if (m.format == nn::QuantFormat::Q8) {
      out[c] = q.data_ptr<int8_t>()[r * cols + c];
    } else {
      const int byte = q.data_ptr<uint8_t>()[r * cols / 2 + (c / 32) * 16 + (c % 32) % 16];
      out[c] = ((c % 32) < 16 ? (byte & 0x0F) : (byte >> 4)) - 8;
    }
  }
  return out;
}

// float64 [rows, cols]: scale · q from the stored integers.
torch::Tensor reference_dequant(const nn::QuantMatrix& m) {
  auto out = torch::empty({m.rows(), m.cols()}, torch::kFloat64);
  const auto scale = m.scale.to(torch::kFloat64).contiguous();
  double* dst = out.data_ptr<double>();
  for (int64_t r = 0; r < m.rows(); ++r) {
    const auto q = stored_quants(m, r);
    for (int64_t c = 0; c < m.cols(); ++c)
      dst[r * m.cols() + c] = scale.data_ptr<double>()[r * (m.cols() / 32) + c / 32] * q[c];
  }
  return out;
}

// Weights with blocks of very different magnitudes, a zero block and single outliers.
torch::Tensor test_weights(int64_t rows, int64_t cols, uint64_t seed) {
  torch::manual_seed(static_cast<int64_t>(seed));
  auto w = torch::randn({rows, cols}) * torch::exp(torch::randn({rows, cols / 32, 1}) * 2).expand({rows, cols / 32, 32}).reshape({rows, cols});
  if (rows > 1 && cols >= 64) {
    w[0].narrow(0, 32, 32).zero_();
    w[1][5] = 40.0f;
    w[1][40] = -40.0f;
  }
  return w;
}

}  // namespace

TEST(Quant, LayoutAndRoundTripBounds) {
  for (const auto format : kFormats) {
    const auto w = test_weights(7, 160, 3);
    const auto m = nn::quantize(w, format);
    ASSERT_EQ(m.rows(), 7);
    ASSERT_EQ(m.cols(), 160);
    const auto ref = reference_dequant(m);
    // dequantize() must read the layout as documented: products of an fp16 and a small integer
    // are exact in fp32, so equality is exact.
    EXPECT_EQ(t::max_abs_diff(nn::dequantize(m), ref), 0.0) << nn::quant_format_name(format);
    const auto w64 = w.to(torch::kFloat64);
    for (int64_t r = 0; r < 7; ++r) {
      const auto q = stored_quants(m, r);
      for (int64_t b = 0; b < 5; ++b) {
        const auto block = w64[r].narrow(0, b * 32, 32);
        const double amax = block.abs().max().item<double>();
        const double s = m.scale[r][b].to(torch::kFloat64).item<double>();
        // The scale convention: q8 max|w|/127; q4 m/−8 (m the element of largest magnitude).
        const double expected = format == nn::QuantFormat::Q8
                                    ? amax / 127.0
                                    : block[block.abs().argmax().item<int64_t>()].item<double>() / -8.0;
        // fp16 rounding of the scale: relative 2^-11.
        EXPECT_NEAR(s, expected, std::abs(expected) * std::ldexp(1.0, -11) + 1e-30) << r << "," << b;
        for (int64_t i = 0; i < 32; ++i) {
          const int64_t c = b * 32 + i;
          const int lo = format == nn::QuantFormat::Q8 ? -127 : -8, hi = format == nn::QuantFormat::Q8 ? 127 : 7;
          ASSERT_GE(q[c], lo);
          ASSERT_LE(q[c], hi);
          // Round to nearest: |w − s·q| ≤ |s|/2 (relative slack 1e-6 for the fp32 division);
          // q4 elements clamped from +8 to 7 are up to |s| off.
          const double err = std::abs(w64[r][c].item<double>() - s * q[c]);
          const bool clamped = format == nn::QuantFormat::Q4 && q[c] == 7 && w64[r][c].item<double>() / s > 7.5;
          EXPECT_LE(err, std::abs(s) * (clamped ? 1.0 : 0.5) * (1 + 1e-6)) << r << "," << c;
        }
      }
    }
  }
}

TEST(Quant, RejectsColumnsNotAMultipleOf32AndMismatchedShapes) {
  EXPECT_THROW(nn::quantize(torch::randn({4, 48}), nn::QuantFormat::Q8), iadgpt::InputError);
  EXPECT_THROW(nn::quantize(torch::randn({4, 33}), nn::QuantFormat::Q4), iadgpt::InputError);
  EXPECT_THROW(nn::quantize(torch::randn({64}), nn::QuantFormat::Q4), iadgpt::InputError);
  const auto m = nn::quantize(torch::randn({4, 64}), nn::QuantFormat::Q8);
  auto y = torch::empty({4});
  EXPECT_THROW(nn::matvec_quant(m, torch::randn({63}), y), iadgpt::InputError);
  EXPECT_THROW(nn::matvec_quant(m, torch::randn({64}).to(torch::kBFloat16), y), iadgpt::InputError);
  auto y_short = torch::empty({3});
  EXPECT_THROW(nn::matvec_quant(m, torch::randn({64}), y_short), iadgpt::InputError);
  auto y2 = torch::empty({5, 4});
  EXPECT_THROW(nn::gemm_quant(m, torch::randn({5, 63}), y2), iadgpt::InputError);
  EXPECT_THROW(nn::gemm_quant(m, torch::randn({4, 64}), y2), iadgpt::InputError);
  EXPECT_THROW(nn::gemm_quant(m, torch::randn({5, 64}).to(torch::kBFloat16), y2), iadgpt::InputError);
  EXPECT_THROW(nn::gemm_quant(nn::QuantMatrix{}, torch::randn({5, 64}), y2), iadgpt::InputError);
}

// A NaN or infinite weight has no block scale: quantize refuses the matrix with an error that says
// so (one such element among finite ones, in the block's middle, for both formats).
TEST(Quant, NonFiniteWeightsAreRefused) {
  for (const auto format : kFormats) {
    for (const float bad : {NAN, INFINITY, -INFINITY}) {
      auto w = torch::randn({3, 96});
      w[1][45] = bad;
      try {
        nn::quantize(w, format);
        ADD_FAILURE() << "accepted " << bad << " in " << nn::quant_format_name(format);
      } catch (const iadgpt::InputError& e) {
        EXPECT_NE(std::string(e.what()).find("non-finite"), std::string::npos) << e.what();
      }
    }
  }
}

namespace {

// Runs one path on one shape and checks it against Σ_c deq(w)[r,c] · x[c] in float64.
// Error sources, each bounded:
// - activation quantization (x per block of 32 → int8, scale s_x = max|x|/127, round to
//   nearest): |x_c − s_x q_c| ≤ s_x/2, so the row moves by at most Σ_c |deq w_c| · s_x,b/2
//   (zero when x is exactly s_x · integer, the `exact_x` case);
// - fp32 arithmetic: the block sums are exact int32; the products d = s_w·s_x and d·sum round
//   (2u each) and at most cols/4 + 16 terms are added in fp32 (a vector kernel keeps 8 partial
//   lanes per block; the AVX-512 kernels multiply unsigned q + 128 (q8) or q + 8 (q4) and
//   subtract the offset, so their terms reach (|q| + 2·offset)·|q_x|·s_w·s_x); u = 2^-24.
//   First-order bound (cols/4 + 40)·u·Σ_c (|deq w_c| + 2·offset·|s_w,b|)(|x_c| + s_x,b/2).
// A column dropped, doubled or paired with the wrong scale moves a row by ~|w_c x_c| ≫ both.
// x [cols]: random, or (exact_x) per block a power of two times integers with one of magnitude
// 127, so that s_x is that power of two exactly and every x_c = s_x · integer: activation
// quantization is then exact.
torch::Tensor test_input(int64_t cols, bool exact_x) {
  if (!exact_x) return torch::randn({cols});
  auto k = torch::randint(-127, 128, {cols / 32, 32}, torch::kFloat32);
  k.select(1, 7).fill_(127);
  auto p = torch::pow(2.0, torch::randint(-6, 3, {cols / 32, 1}, torch::kFloat32));
  return (k * p).reshape({cols}).contiguous();
}

// y [rows] (one kernel's W x) against the float64 reference within the bound above.
// dw: reference_dequant(m). `passes`: activation quantization passes (gemm_quant: 2 for q8, the
// residual pass leaves ≤ s_x/508 per element instead of s_x/2; 1 for q4).
void expect_close_to_reference(const nn::QuantMatrix& m, const torch::Tensor& dw, const torch::Tensor& x,
                               const torch::Tensor& y, bool exact_x, const std::string& what, int passes = 1) {
  const int64_t rows = m.rows(), cols = m.cols();
  const auto x64 = x.to(torch::kFloat64);
  const auto exact = torch::mv(dw, x64);
  const auto sx = x64.view({cols / 32, 32}).abs().amax(1).div(127.0).mul(1 + 1e-6);  // + fp32 slack
  const auto sx_c = sx.repeat_interleave(32);                                        // per column
  const auto sw_c = m.scale.to(torch::kFloat64).abs().repeat_interleave(32, 1);       // [rows, cols]
  const double act_step = passes == 1 ? 2.0 : 508.0;
  const auto act_bound = exact_x ? torch::zeros({rows}, torch::kFloat64) : torch::mv(dw.abs(), sx_c / act_step);
  const double offset_q = m.format == nn::QuantFormat::Q8 ? 256 : 16;  // 2 × the stored offset 128 or 8
  const auto fp_bound = torch::mv(dw.abs() + offset_q * sw_c, x64.abs() + sx_c / 2)
                            .mul((static_cast<double>(cols) / 4 + 40) * std::ldexp(1.0, -24));
  const auto bound = act_bound + fp_bound;
  const auto err = (y.to(torch::kFloat64) - exact).abs();  // NaN (a skipped output) fails le()
  EXPECT_TRUE(err.le(bound).all().item<bool>())
      << nn::quant_format_name(m.format) << " " << what << " [" << rows << ", " << cols << "] exact_x=" << exact_x
      << ": max error " << err.max().item<double>() << ", worst excess " << (err - bound).max().item<double>();
}

void expect_kernel_matches(nn::QuantFormat format, nn::MatvecIsa isa, int64_t rows, int64_t cols, bool exact_x,
                           uint64_t seed) {
  const auto m = nn::quantize(test_weights(rows, cols, seed), format);
  torch::manual_seed(static_cast<int64_t>(seed) + 1000);
  const auto x = test_input(cols, exact_x);
  auto y = torch::full({rows}, NAN, torch::kFloat32);  // NaN: a row the kernel skips shows
  nn::matvec_quant(m, x, y, isa);
  expect_close_to_reference(m, reference_dequant(m), x, y, exact_x, nn::matvec_isa_name(isa));
}

}  // namespace

TEST(Quant, EveryKernelPathMatchesDoubleReferenceOnRaggedShapes) {
  // Columns: 1, 2, 15, 16, 17 and 33 blocks (across the AVX-512 path's pairs and 16-block groups,
  // odd counts leave a single last block); rows ragged, the last shapes large enough to be split
  // over two threads.
  const std::vector<std::pair<int64_t, int64_t>> shapes{{1, 32},  {3, 64},    {5, 480},   {7, 512},
                                                        {9, 544}, {13, 1056}, {1001, 96}, {203, 2048}};
  const int threads_before = torch::get_num_threads();
  for (const auto isa : kAllPaths) {
    if (!nn::matvec_isa_supported(isa)) {
      ADD_FAILURE() << "this CPU cannot run the " << nn::matvec_isa_name(isa)
                    << " path; the test machines are AVX-512 BF16/VNNI CPUs, so every path is expected to run";
      continue;
    }
    for (int threads : {1, 2}) {
      torch::set_num_threads(threads);
      uint64_t seed = 0;
      for (const auto format : kFormats)
        for (const auto& [rows, cols] : shapes)
          for (bool exact_x : {true, false}) expect_kernel_matches(format, isa, rows, cols, exact_x, ++seed);
    }
  }
  torch::set_num_threads(threads_before);
}

TEST(Quant, GemmOnEveryPathMatchesDoubleReferenceForEachInputRow) {
  // The prefill product Y = X Wᵀ (gemm_quant): every output row Y[t] is held to the matvec bound
  // above; for q8 with the two-pass activation error s_x/508 (the residual's scale is
  // ≤ (s_x/2)/127; the fp32 rounding of the residual itself, ≤ 2^-24 |x|, is inside the fp32
  // term, whose 2·nb block terms are fewer than the cols/4 + 40 allowed), for q4 one pass's s_x/2;
  // with InputPasses::One (the vision tower's) one pass's s_x/2 for both formats.
  // Shapes: inputs around the VNNI path's groups of 16 and pairs of groups (2, 5, 16, 17, 31, 33,
  // 40, 48, 19), rows ragged against its 4-row micro-kernel and over several weight tiles (tiles of
  // 32 rows at 2048 columns, 64 at 96), columns 1 to 100 blocks: past 64 blocks (2112, 3200) the
  // tile is taken 8 blocks at a time, with a short last chunk (66 = 8·8 + 2 blocks); exact and
  // random inputs mixed in one X. Outputs start as NaN, so one never written fails.
  struct Shape {
    int64_t rows, cols, n;
  };
  const std::vector<Shape> shapes{{1, 32, 2},     {3, 64, 17},     {5, 480, 16},   {7, 544, 33},
                                  {13, 1056, 5}, {203, 2048, 40}, {1001, 96, 31}, {70, 64, 48},
                                  {67, 2112, 19}, {9, 3200, 50}};
  const int threads_before = torch::get_num_threads();
  for (const auto isa : kAllPaths) {
    if (!nn::matvec_isa_supported(isa)) {
      ADD_FAILURE() << "this CPU cannot run the " << nn::matvec_isa_name(isa) << " path";
      continue;
    }
    for (int threads : {1, 2}) {
      torch::set_num_threads(threads);
      uint64_t seed = 100;
      for (const auto format : kFormats)
        for (const auto passes : {nn::InputPasses::ForFormat, nn::InputPasses::One})
        for (const auto& [rows, cols, n] : shapes) {
          const auto m = nn::quantize(test_weights(rows, cols, ++seed), format);
          torch::manual_seed(static_cast<int64_t>(seed) + 1000);
          std::vector<torch::Tensor> xs;
          for (int64_t t = 0; t < n; ++t) xs.push_back(test_input(cols, t % 2 == 0));
          const auto x = torch::stack(xs).contiguous();
          auto y = torch::full({n, rows}, NAN, torch::kFloat32);
          nn::gemm_quant(m, x, y, isa, passes);
          const auto dw = reference_dequant(m);
          const bool two = format == nn::QuantFormat::Q8 && passes == nn::InputPasses::ForFormat;
          for (int64_t t = 0; t < n; ++t)
            expect_close_to_reference(m, dw, xs[t], y[t], t % 2 == 0,
                                      fmt::format("gemm {} {} threads, {} pass(es), input {} of {}",
                                                  nn::matvec_isa_name(isa), threads, two ? 2 : 1, t, n),
                                      two ? 2 : 1);
        }
    }
  }
  torch::set_num_threads(threads_before);
}

TEST(Quant, InputQuantizationGivesTheSameBytesOnEveryPath) {
  // quantize_input's AVX-512 code against its scalar loop, bit for bit, on blocks that test the
  // rounding: ties (block max 127, so x · 127/max = x exactly, and x = k + 0.5 must round to
  // even), a zero block, a block of one huge value and tiny ones, negative maxima, random ones.
  // Independent check of the ties: 0.5 → 0, 1.5 → 2, 2.5 → 2, -0.5 → 0, -1.5 → -2.
  if (!nn::matvec_isa_supported(nn::MatvecIsa::Avx512Bf16)) GTEST_FAIL() << "the test machines are AVX-512 CPUs";
  const int64_t cols = 32 * 6;
  torch::manual_seed(5);
  auto x = torch::randn({cols}) * 3;
  auto* xp = x.data_ptr<float>();
  xp[0] = 127.0f;
  for (int i = 1; i < 32; ++i) xp[i] = static_cast<float>(i % 8) - 3.5f;  // ±0.5, ±1.5, ±2.5, ±3.5
  xp[1] = 0.5f, xp[2] = 1.5f, xp[3] = 2.5f, xp[4] = -0.5f, xp[5] = -1.5f;
  for (int i = 32; i < 64; ++i) xp[i] = 0.0f;
  for (int i = 64; i < 96; ++i) xp[i] = i == 70 ? 1e30f : 1e-30f * static_cast<float>(i);
  for (int i = 96; i < 128; ++i) xp[i] = i == 100 ? -9.0f : xp[i] * 0.1f;
  std::vector<int8_t> q[2];
  std::vector<float> scale[2], offset[2];
  const nn::MatvecIsa paths[2] = {nn::MatvecIsa::Scalar, nn::MatvecIsa::Avx512Bf16};
  for (int p = 0; p < 2; ++p) {
    q[p].assign(cols, 99), scale[p].assign(cols / 32, -1.0f), offset[p].assign(cols / 32, -1.0f);
    nn::quantize_input(xp, {q[p].data(), scale[p].data(), offset[p].data(), cols}, paths[p]);
  }
  EXPECT_EQ(q[0], q[1]);
  EXPECT_EQ(scale[0], scale[1]);
  EXPECT_EQ(offset[0], offset[1]);
  EXPECT_EQ(q[1][0], 127);
  EXPECT_EQ(q[1][1], 0);
  EXPECT_EQ(q[1][2], 2);
  EXPECT_EQ(q[1][3], 2);
  EXPECT_EQ(q[1][4], 0);
  EXPECT_EQ(q[1][5], -2);
  EXPECT_EQ(scale[1][1], 0.0f);
  EXPECT_EQ(q[1][70], 127);
  EXPECT_EQ(q[1][100], -127);
}
