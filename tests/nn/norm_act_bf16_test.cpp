// The one-pass bf16 LayerNorm and QuickGELU (nn/norm_act_bf16.h) against float64 forms of the
// same bf16 values, across the 16-lane steps' ragged ends, offsets, the sign change and the far tails.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "io/error.h"
#include "nn/norm_act_bf16.h"

using namespace iadgpt;

TEST(QuickGeluBf16, IsWithinHalfABf16StepOfFloat64) {
  if (!nn::norm_act_bf16_supported(nn::MatvecIsa::Avx512Bf16))
    FAIL() << "this CPU cannot run the avx512bf16 path; the test machines are AVX-512 BF16 CPUs, so it is expected to run";
  for (const int64_t n : {1, 15, 17, 100003}) {
    torch::manual_seed(n);
    // Values over [-60, 60] and near zero, and the exact ones sigmoid turns on: 0, ±1e-30, ±100.
    auto x = torch::cat({8 * torch::randn({n}), 60 * (2 * torch::rand({n}) - 1),
                         torch::tensor({0.0, 1e-30, -1e-30, 100.0, -100.0, -60.0})})
                 .to(torch::kBFloat16);
    const auto y = nn::quick_gelu_bf16(x.view({-1, 1}).t(), nn::MatvecIsa::Avx512Bf16);  // a view, not contiguous
    ASSERT_EQ(y.sizes(), (std::vector<int64_t>{1, x.numel()}));
    const auto wide = x.to(torch::kFloat64);
    const auto ref = wide * torch::sigmoid(1.702 * wide);
    // Rounding to bf16 (8 significant bits) moves a value by at most 2^-8 of itself; the fp32
    // exponential (about 2^-23), division and products a few 2^-24 more. Past e^-87 the fp32 form
    // gives 0 where float64 gives under 1e-36 · |x|: hence the absolute 1e-35.
    const auto bound = ref.abs() * (std::ldexp(1.0, -8) + std::ldexp(1.0, -20)) + 1e-35;
    const auto err = (y.view(-1).to(torch::kFloat64) - ref).abs();
    EXPECT_TRUE(err.le(bound).all().item<bool>()) << "n " << n << ": worst excess " << (err - bound).max().item<double>();
  }
}

TEST(QuickGeluBf16, RejectsAnotherDtypeOrPath) {
  EXPECT_THROW(nn::quick_gelu_bf16(torch::randn({4})), InputError);
  EXPECT_THROW(nn::quick_gelu_bf16(torch::randn({4}).to(torch::kBFloat16), nn::MatvecIsa::Avx2), InputError);
}

TEST(LayerNormBf16, IsWithinHalfABf16StepOfFloat64) {
  if (!nn::norm_act_bf16_supported(nn::MatvecIsa::Avx512Bf16))
    FAIL() << "this CPU cannot run the avx512bf16 path; the test machines are AVX-512 BF16 CPUs, so it is expected to run";
  for (const int64_t width : {1, 7, 16, 33, 1280}) {
    torch::manual_seed(width);
    // Rows with an offset (a residual stream's mean drifts) and a spread of a few units.
    auto x = (3 + 4 * torch::randn({2, 19, width})).to(torch::kBFloat16);
    const auto weight = (1 + 0.3 * torch::randn({width})).to(torch::kBFloat16);
    const auto bias = 0.2 * torch::randn({width});  // fp32, as the text towers keep theirs
    const double eps = 1e-5;
    const auto y = nn::layer_norm_bf16(x, weight, bias, eps, nn::MatvecIsa::Avx512Bf16);
    ASSERT_EQ(y.sizes(), x.sizes());
    ASSERT_EQ(y.scalar_type(), torch::kBFloat16);
    const auto wide = x.to(torch::kFloat64);
    const auto mean = wide.mean(-1, true), var = (wide - mean).pow(2).mean(-1, true);
    const auto normed = (wide - mean) / torch::sqrt(var + eps);
    const auto ref = normed * weight.to(torch::kFloat64) + bias.to(torch::kFloat64);
    // Rounding to bf16 moves a value by at most 2^-8 of itself. The fp32 sums and the centring
    // add about 2^-20 of the terms before they cancel (|x̂ · w| + |b|): the absolute part.
    const auto bound = ref.abs() * std::ldexp(1.0, -8) +
                       (normed * weight.to(torch::kFloat64)).abs().add(bias.to(torch::kFloat64).abs()) * std::ldexp(1.0, -18);
    const auto err = (y.to(torch::kFloat64) - ref).abs();
    EXPECT_TRUE(err.le(bound).all().item<bool>()) << "width " << width << ": worst excess " << (err - bound).max().item<double>();
  }
}

TEST(LayerNormBf16, RejectsMisSizedWeightsAnotherDtypeOrPath) {
  const auto x = torch::randn({3, 8}).to(torch::kBFloat16);
  const auto w = torch::ones({8}), b = torch::zeros({8});
  EXPECT_THROW(nn::layer_norm_bf16(x.to(torch::kFloat32), w, b, 1e-5), InputError);
  EXPECT_THROW(nn::layer_norm_bf16(x, torch::ones({7}), b, 1e-5), InputError);
  EXPECT_THROW(nn::layer_norm_bf16(x, w, torch::zeros({9}), 1e-5), InputError);
  EXPECT_THROW(nn::layer_norm_bf16(x, torch::Tensor(), b, 1e-5), InputError);
  EXPECT_THROW(nn::layer_norm_bf16(x, w, b, 1e-5, nn::MatvecIsa::Avx2), InputError);
}
