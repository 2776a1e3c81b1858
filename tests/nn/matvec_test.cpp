// The bf16 matvec kernels (llm/matvec.h) against an independent reference, on every dispatch
// path (forced by argument), on ragged shapes. The decode step that uses them is tested against
// the reference logits in model_test.cpp (Bf16TokenByTokenDecode...).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "io/error.h"
#include "nn/matvec.h"
#include "common/tensors.h"

namespace nn = iadgpt::nn;
namespace t = iadgpt::test;

namespace {

const nn::MatvecIsa kAllPaths[] = {nn::MatvecIsa::Scalar, nn::MatvecIsa::Avx2, nn::MatvecIsa::Avx512Bf16};

// Every product of two bf16 values is exact in fp32, so the kernels differ from the exact dot
// product only by fp32 rounding of the running sums. For any summation order of n terms that
// error is at most n·u·Σ|w_c x_c| (u = 2^-24, the fp32 unit roundoff; the γ_n bound to first
// order). A dropped, doubled or misaligned column changes a row by ~|w_c x_c| ≈ 0.1–1 ≫ that.
void expect_matches_reference(int64_t rows, int64_t cols, nn::MatvecIsa isa, uint64_t seed) {
  torch::manual_seed(static_cast<int64_t>(seed));
  const auto w = torch::randn({rows, cols}).to(torch::kBFloat16);
  const auto x = torch::randn({cols}).to(torch::kBFloat16);
  auto y = torch::full({rows}, NAN, torch::kFloat32);  // NaN: a row the kernel skips shows
  nn::matvec_bf16(w, x, y, isa);
  // Reference: double products of the same bf16 values, summed in double (independent of ATen's bf16 GEMM).
  const auto w64 = w.to(torch::kFloat64), x64 = x.to(torch::kFloat64);
  const auto exact = torch::mv(w64, x64);
  const auto bound = torch::mv(w64.abs(), x64.abs()).mul(static_cast<double>(cols) * std::ldexp(1.0, -24));
  const auto err = (y.to(torch::kFloat64) - exact).abs();
  EXPECT_TRUE(err.le(bound).all().item<bool>())
      << nn::matvec_isa_name(isa) << " [" << rows << ", " << cols << "]: max error " << err.max().item<double>()
      << ", worst excess " << (err - bound).max().item<double>();
}

}  // namespace

TEST(Matvec, EveryPathMatchesDoubleReferenceOnRaggedShapes) {
  // Columns below, at and across the 8-, 32- and 128-column steps of the kernels; the last shapes
  // are large enough to be split over threads, and 16411 columns cross the AVX2 path's
  // 16384-column panel of x.
  const std::vector<std::pair<int64_t, int64_t>> shapes{{1, 1},   {3, 5},    {5, 31},    {7, 32},    {9, 33},
                                                        {4, 64},  {13, 100}, {17, 257},  {2, 2048},
                                                        {37, 1000}, {1001, 257}, {203, 5632}, {5, 16411}};
  const int threads_before = torch::get_num_threads();
  for (const auto isa : kAllPaths) {
    if (!nn::matvec_isa_supported(isa)) {
      ADD_FAILURE() << "this CPU cannot run the " << nn::matvec_isa_name(isa)
                    << " path; the test machines are AVX-512 BF16 CPUs, so every path is expected to run";
      continue;
    }
    for (int threads : {1, 2}) {
      torch::set_num_threads(threads);
      uint64_t seed = 0;
      for (const auto& [rows, cols] : shapes) expect_matches_reference(rows, cols, isa, ++seed);
    }
  }
  torch::set_num_threads(threads_before);
}

TEST(Matvec, PathsAgreeWithEachOther) {
  // Same exact products, different summation order: within twice the bound above of each other.
  torch::manual_seed(7);
  const auto w = torch::randn({67, 333}).to(torch::kBFloat16);
  const auto x = torch::randn({333}).to(torch::kBFloat16);
  auto ys = std::vector<torch::Tensor>();
  for (const auto isa : kAllPaths) {
    if (!nn::matvec_isa_supported(isa)) continue;
    ys.push_back(torch::empty({67}, torch::kFloat32));
    nn::matvec_bf16(w, x, ys.back(), isa);
  }
  const double bound = 2 * 333 * std::ldexp(1.0, -24) *
                       torch::mv(w.to(torch::kFloat64).abs(), x.to(torch::kFloat64).abs()).max().item<double>();
  for (size_t i = 1; i < ys.size(); ++i) EXPECT_LE(t::max_abs_diff(ys[i], ys[0]), bound);
}

TEST(Matvec, RejectsWrongDtypesAndShapes) {
  auto w = torch::zeros({4, 8}, torch::kBFloat16);
  auto x = torch::zeros({8}, torch::kBFloat16);
  auto y = torch::zeros({4}, torch::kFloat32);
  auto y_bad = torch::zeros({5}, torch::kFloat32);
  auto x_f32 = torch::zeros({8}, torch::kFloat32);
  EXPECT_THROW(nn::matvec_bf16(w, x, y_bad), iadgpt::InputError);
  EXPECT_THROW(nn::matvec_bf16(w, x_f32, y), iadgpt::InputError);
  auto w_t = torch::zeros({8, 4}, torch::kBFloat16).t();  // right shape, not contiguous
  EXPECT_THROW(nn::matvec_bf16(w_t, x, y), iadgpt::InputError);
  EXPECT_NO_THROW(nn::matvec_bf16(w, x, y));
}

// The kernels' at::parallel_for runs serially unless this module was compiled with OpenMP (a
// header template: libtorch's own threads do not help). Two threads are asked for whatever the
// machine has; OpenMP starts them even on one core.
TEST(Matvec, KernelsRunOnTheThreadsAskedFor) {
  const int before = at::get_num_threads();
  at::set_num_threads(2);
  EXPECT_EQ(nn::kernel_threads(), 2);
  at::set_num_threads(1);
  EXPECT_EQ(nn::kernel_threads(), 1);
  at::set_num_threads(before);
}

TEST(Matvec, ReadBandwidthIsPositiveAndRejectsTinyBuffers) {
  EXPECT_GT(nn::measure_read_bandwidth(int64_t{4} << 20, 1), 0.0);
  EXPECT_THROW(nn::measure_read_bandwidth(1000, 1), iadgpt::InputError);
}
