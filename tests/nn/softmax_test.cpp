// The bf16 attention softmax (nn/softmax.h) on every path against a float64 softmax of the same
// bf16 scores, on ragged rows (across the AVX-512 path's 16 lanes) with masked (−inf) positions.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "io/error.h"
#include "nn/softmax.h"

using namespace iadgpt;

TEST(SoftmaxBf16, EveryPathIsWithinHalfABf16StepOfFloat64OnRaggedMaskedRows) {
  for (const auto isa : {nn::MatvecIsa::Avx512Bf16, nn::MatvecIsa::Scalar}) {
    if (!nn::matvec_isa_supported(isa)) {
      ADD_FAILURE() << "this CPU cannot run the " << nn::matvec_isa_name(isa)
                    << " path; the test machines are AVX-512 BF16 CPUs, so every path is expected to run";
      continue;
    }
    for (const int64_t cols : {1, 15, 16, 17, 33, 577}) {
      torch::manual_seed(cols);
      const int64_t rows = 37;
      // Scores spread as attention's are (a few units); in every row but the first, columns 1, 6,
      // 11, … masked (column 0 never is, so no row is masked whole).
      auto scores = (4 * torch::randn({rows, cols})).to(torch::kBFloat16);
      auto masked = (torch::arange(cols) % 5 == 1).unsqueeze(0).repeat({rows, 1});
      masked[0].fill_(false);
      scores.masked_fill_(masked, -std::numeric_limits<float>::infinity());

      const auto probs = nn::softmax_bf16(scores, isa).to(torch::kFloat64);
      const auto ref = torch::softmax(scores.to(torch::kFloat64), -1);
      // Rounding to bf16 (8 significant bits) moves a value by at most 2^-8 of itself; the fp32
      // exponentials, sum and scaling add a few 2^-24 (the polynomial's error is about 2^-23).
      const auto bound = ref * (std::ldexp(1.0, -8) + std::ldexp(1.0, -20));
      const auto err = (probs - ref).abs();
      EXPECT_TRUE(err.le(bound).all().item<bool>())
          << nn::matvec_isa_name(isa) << " cols " << cols << ": worst excess " << (err - bound).max().item<double>();
      EXPECT_TRUE(probs.masked_select(masked).eq(0).all().item<bool>()) << nn::matvec_isa_name(isa) << " cols " << cols;
    }
  }
}

TEST(SoftmaxBf16, ARowMaskedWholeGivesNaNAsTorchDoes) {
  const auto row = torch::full({1, 20}, -std::numeric_limits<float>::infinity()).to(torch::kBFloat16);
  EXPECT_TRUE(torch::softmax(row.to(torch::kFloat32), -1).isnan().all().item<bool>());  // the reference
  for (const auto isa : {nn::MatvecIsa::Avx512Bf16, nn::MatvecIsa::Scalar})
    if (nn::matvec_isa_supported(isa))
      EXPECT_TRUE(nn::softmax_bf16(row, isa).isnan().all().item<bool>()) << nn::matvec_isa_name(isa);
}

TEST(SoftmaxBf16, RejectsAnotherDtype) {
  EXPECT_THROW(nn::softmax_bf16(torch::randn({3, 4})), InputError);
}
