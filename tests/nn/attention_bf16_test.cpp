// The fused bf16 attention (nn/attention_bf16.h) against a float64 softmax(q kᵀ / √d + mask) v of
// the same bf16 q, k and v, on ragged lengths (across the 6-row and 16-column register tiles and
// the 48-row blocks), several heads and batches, with and without a causal mask.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "io/error.h"
#include "nn/attention_bf16.h"

using namespace iadgpt;

namespace {

constexpr auto kIsa = nn::MatvecIsa::Avx512Bf16;

// float64 attention of qkv [B, L, 3, H, hd] → [B, L, H, hd].
torch::Tensor reference_attention(const torch::Tensor& qkv, const torch::Tensor& mask) {
  const auto wide = qkv.to(torch::kFloat64);
  const auto q = wide.select(2, 0).transpose(1, 2), k = wide.select(2, 1).transpose(1, 2),
             v = wide.select(2, 2).transpose(1, 2);  // [B, H, L, hd]
  auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(qkv.size(4)));
  if (mask.defined()) scores = scores + mask.to(torch::kFloat64);
  return torch::matmul(torch::softmax(scores, -1), v).transpose(1, 2);
}

bool fused_path_runs() { return nn::attention_bf16_supported(64, kIsa); }
constexpr const char* kNoPath =
    "this CPU cannot run the avx512bf16 path; the test machines are AVX-512 BF16 CPUs, so it is expected to run";

}  // namespace

TEST(AttentionBf16, MatchesFloat64AttentionOnRaggedShapesWithAndWithoutCausalMask) {
  if (!fused_path_runs()) FAIL() << kNoPath;
  struct Shape { int64_t batch, length, heads, head_dim; };
  for (const auto s : {Shape{1, 1, 1, 16}, Shape{2, 7, 3, 64}, Shape{1, 50, 2, 32}, Shape{1, 101, 2, 80},
                       Shape{2, 257, 1, 64}}) {
    torch::manual_seed(s.length);
    // q and k scaled so the scores spread over a few units, as trained attention's do.
    auto qkv = torch::randn({s.batch, s.length, 3, s.heads, s.head_dim});
    qkv.select(2, 0).mul_(2.0);
    qkv = qkv.to(torch::kBFloat16);
    const auto causal = torch::full({s.length, s.length}, -std::numeric_limits<float>::infinity()).triu(1);
    for (const auto& mask : {torch::Tensor(), causal}) {
      const auto out = nn::attention_bf16(qkv, mask, kIsa);
      ASSERT_EQ(out.sizes(), (std::vector<int64_t>{s.batch, s.length, s.heads, s.head_dim}));
      const auto ref = reference_attention(qkv, mask);
      // Each context value is a convex combination of one column of v: rounding the probabilities
      // to bf16 moves it by at most 2^-8 · max|v| (each p by 2^-8 of itself, Σ p = 1), rounding
      // the result by 2^-8 · |context| ≤ 2^-8 · max|v|. The fp32 scores and sums add ~2^-20.
      const auto v_max = qkv.select(2, 2).to(torch::kFloat64).abs().amax({1, 3}, true);  // [B, 1, H, 1]
      const auto bound = v_max * (2 * std::ldexp(1.0, -8) + std::ldexp(1.0, -20));
      const auto err = (out.to(torch::kFloat64) - ref).abs();
      EXPECT_TRUE(err.le(bound).all().item<bool>())
          << "B " << s.batch << " L " << s.length << " H " << s.heads << " hd " << s.head_dim
          << (mask.defined() ? " causal" : " full") << ": worst excess " << (err - bound).max().item<double>();
      if (mask.defined()) {
        // The first query sees only the first key: its probability is exactly 1, its context v[0].
        EXPECT_TRUE(out.select(1, 0).eq(qkv.select(1, 0).select(1, 2)).all().item<bool>()) << "L " << s.length;
      }
    }
  }
}

TEST(AttentionBf16, ARowMaskedWholeGivesNaNAsTorchDoes) {
  if (!fused_path_runs()) FAIL() << kNoPath;
  const int64_t length = 5;
  auto mask = torch::zeros({length, length});
  mask[2].fill_(-std::numeric_limits<float>::infinity());
  const auto out = nn::attention_bf16(torch::randn({1, length, 3, 1, 16}).to(torch::kBFloat16), mask, kIsa);
  EXPECT_TRUE(out.select(1, 2).isnan().all().item<bool>());
  EXPECT_FALSE(out.select(1, 1).isnan().any().item<bool>());
}

TEST(AttentionBf16, RejectsWhatItDoesNotTake) {
  const auto qkv = torch::randn({1, 4, 3, 2, 16}).to(torch::kBFloat16);
  EXPECT_THROW(nn::attention_bf16(qkv.to(torch::kFloat32), {}, kIsa), InputError);               // dtype
  EXPECT_THROW(nn::attention_bf16(qkv.view({1, 4, 96}), {}, kIsa), InputError);                   // not per head
  EXPECT_THROW(nn::attention_bf16(qkv.transpose(1, 3), {}, kIsa), InputError);                    // not contiguous
  EXPECT_THROW(nn::attention_bf16(torch::randn({1, 4, 3, 2, 8}).to(torch::kBFloat16), {}, kIsa), InputError);  // head width
  EXPECT_THROW(nn::attention_bf16(qkv, {}, nn::MatvecIsa::Avx2), InputError);                     // isa
  if (fused_path_runs()) EXPECT_THROW(nn::attention_bf16(qkv, torch::zeros({4, 5}), kIsa), InputError);  // mask shape
}
