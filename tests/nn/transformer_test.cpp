// The shared block against libtorch's own nn::MultiheadAttention / LayerNorm composition:
// an independent implementation of the same pre-norm block.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <iostream>

#include "io/error.h"
#include "nn/transformer.h"
#include "nn/weights.h"

using namespace iadgpt;

namespace {

nn::BlockWeights random_block(int64_t width, int64_t hidden) {
  torch::manual_seed(3);
  nn::BlockWeights w;
  w.ln1_weight = 1 + 0.1 * torch::randn({width});
  w.ln1_bias = 0.1 * torch::randn({width});
  w.qkv_weight = torch::randn({3 * width, width}) / std::sqrt(double(width));
  w.qkv_bias = 0.05 * torch::randn({3 * width});
  w.out_weight = torch::randn({width, width}) / std::sqrt(double(width));
  w.out_bias = 0.05 * torch::randn({width});
  w.ln2_weight = 1 + 0.1 * torch::randn({width});
  w.ln2_bias = 0.1 * torch::randn({width});
  w.fc1_weight = torch::randn({hidden, width}) / std::sqrt(double(width));
  w.fc1_bias = 0.05 * torch::randn({hidden});
  w.fc2_weight = torch::randn({width, hidden}) / std::sqrt(double(hidden));
  w.fc2_bias = 0.05 * torch::randn({width});
  return w;
}

// Reference: torch::nn::MultiheadAttention (sequence-first), as the upstream towers use it.
torch::Tensor reference_block(const torch::Tensor& x, const nn::BlockWeights& w, int64_t heads,
                              double eps, const torch::Tensor& mask, nn::Activation act = nn::Activation::Gelu) {
  const int64_t width = x.size(2);
  torch::nn::MultiheadAttention mha(torch::nn::MultiheadAttentionOptions(width, heads));
  torch::NoGradGuard no_grad;
  mha->in_proj_weight.copy_(w.qkv_weight);
  mha->in_proj_bias.copy_(w.qkv_bias);
  mha->out_proj->weight.copy_(w.out_weight);
  mha->out_proj->bias.copy_(w.out_bias);
  auto ln = [&](const torch::Tensor& t, const torch::Tensor& g, const torch::Tensor& b) {
    auto mean = t.mean(-1, true);
    auto var = (t - mean).pow(2).mean(-1, true);
    return (t - mean) / torch::sqrt(var + eps) * g + b;
  };
  auto seq = x.transpose(0, 1);
  auto normed = ln(seq, w.ln1_weight, w.ln1_bias);
  auto attn = std::get<0>(mha->forward(normed, normed, normed, {}, false, mask.defined() ? mask : torch::Tensor()));
  auto h = seq + attn;
  auto hidden = torch::linear(ln(h, w.ln2_weight, w.ln2_bias), w.fc1_weight, w.fc1_bias);
  const auto activated = act == nn::Activation::Gelu ? 0.5 * hidden * (1 + torch::erf(hidden / std::sqrt(2.0)))
                                                     : hidden / (1 + torch::exp(-1.702 * hidden));
  auto out = h + torch::linear(activated, w.fc2_weight, w.fc2_bias);
  return out.transpose(0, 1);
}

}  // namespace

TEST(TransformerBlock, MatchesMultiheadAttentionComposition) {
  auto w = random_block(32, 128);
  torch::manual_seed(4);
  auto x = torch::randn({2, 9, 32});
  nn::BlockConfig cfg{.width = 32, .heads = 4, .eps = 1e-6, .activation = nn::Activation::Gelu};
  auto ours = nn::block_forward(x, w, cfg);
  auto ref = reference_block(x, w, 4, 1e-6, {});
  // fp32 with different summation orders: agreement to ~1e-6 relative on O(1) values.
  EXPECT_LT((ours - ref).abs().max().item<double>(), 2e-5);
}

TEST(TransformerBlock, CausalMaskHidesTheFuture) {
  auto w = random_block(16, 64);
  torch::manual_seed(5);
  auto x = torch::randn({1, 6, 16});
  auto mask = torch::full({6, 6}, -INFINITY).triu(1);
  nn::BlockConfig cfg{.width = 16, .heads = 2, .eps = 1e-5, .activation = nn::Activation::Gelu};
  auto full = nn::block_forward(x, w, cfg, mask);
  auto prefix = nn::block_forward(x.slice(1, 0, 3), w, cfg, mask.slice(0, 0, 3).slice(1, 0, 3));
  EXPECT_LT((full.slice(1, 0, 3) - prefix).abs().max().item<double>(), 1e-5);
  auto ref = reference_block(x, w, 2, 1e-5, mask);
  EXPECT_LT((full - ref).abs().max().item<double>(), 2e-5);
}

TEST(TransformerBlock, QuickGeluIsSigmoidScaled) {
  auto x = torch::linspace(-4, 4, 17);
  auto y = nn::activation(x, nn::Activation::QuickGelu);
  EXPECT_LT((y - x * torch::sigmoid(1.702 * x)).abs().max().item<double>(), 1e-7);
  EXPECT_GT((nn::activation(x, nn::Activation::Gelu) - y).abs().max().item<double>(), 1e-3);
}

TEST(TransformerBlock, Bf16PathStaysCloseToFp32) {
  auto w = random_block(32, 128);
  torch::manual_seed(6);
  auto x = torch::randn({2, 9, 32});
  nn::BlockConfig cfg{.width = 32, .heads = 4, .eps = 1e-6, .activation = nn::Activation::Gelu};
  auto ref = nn::block_forward(x, w, cfg);
  auto w16 = w;
  nn::convert_block(w16, torch::kBFloat16);
  auto out = nn::block_forward(x.to(torch::kBFloat16), w16, cfg).to(torch::kFloat32);
  // bf16 keeps 8 significant bits: relative error ~2^-8 per op, a few ops deep.
  EXPECT_LT((out - ref).abs().max().item<double>(), 0.1);
}

// At a length where bf16 takes the rows-by-thread products and the head-by-head attention
// (transformer.h), with and without a causal mask, against the fp32 MultiheadAttention composition.
TEST(TransformerBlock, Bf16LongSequenceByThreadAndByHeadStaysCloseToFp32) {
  const int threads_before = torch::get_num_threads();
  torch::set_num_threads(2);
  torch::NoGradGuard no_grad;  // both paths are for inference, as the towers run
  auto w = random_block(64, 128);
  torch::manual_seed(7);
  const int64_t length = 600, heads = 16;
  auto x = torch::randn({1, length, 64});
  nn::BlockConfig cfg{.width = 64, .heads = heads, .eps = 1e-6, .activation = nn::Activation::Gelu};
  auto w16 = w;
  nn::convert_block(w16, torch::kBFloat16);
  const auto x16 = x.to(torch::kBFloat16);
  // The shape must take both paths, or this test checks the plain ones.
  EXPECT_TRUE(nn::linear_rows_by_thread(x16, w16.qkv_weight));
  EXPECT_TRUE(nn::attention_by_head(x16, heads));
  const auto causal = torch::full({length, length}, -INFINITY).triu(1);
  for (const auto& mask : {torch::Tensor(), causal}) {
    auto out = nn::block_forward(x16, w16, cfg, mask).to(torch::kFloat32);
    auto ref = reference_block(x, w, heads, 1e-6, mask);
    // As Bf16PathStaysCloseToFp32: ~2^-8 relative per op, a few ops deep, on O(1) values.
    EXPECT_LT((out - ref).abs().max().item<double>(), 0.1) << (mask.defined() ? "causal" : "full");
  }
  torch::set_num_threads(threads_before);
}

// Heads 64 wide in bf16 take the fused attention (attention_bf16.h) and QuickGELU the one-pass
// kernel (norm_act_bf16.h): at a short (text, causal) and a long (vision) length, against the
// fp32 MultiheadAttention composition.
TEST(TransformerBlock, Bf16FusedAttentionAndQuickGeluStayCloseToFp32) {
  torch::NoGradGuard no_grad;  // both kernels are for inference, as the towers run
  auto w = random_block(128, 512);
  nn::BlockConfig cfg{.width = 128, .heads = 2, .eps = 1e-6, .activation = nn::Activation::QuickGelu};
  auto w16 = w;
  nn::convert_block(w16, torch::kBFloat16);
  for (const int64_t length : {77, 300}) {
    torch::manual_seed(length);
    auto x = torch::randn({2, length, 128});
    const auto x16 = x.to(torch::kBFloat16);
    // The shape must take the fused path, or this test checks the ATen ones.
    ASSERT_TRUE(nn::attention_fused(x16, cfg.heads))
        << "this CPU cannot run the avx512bf16 path; the test machines are AVX-512 BF16 CPUs";
    const auto causal = torch::full({length, length}, -INFINITY).triu(1);
    for (const auto& mask : {torch::Tensor(), causal}) {
      auto out = nn::block_forward(x16, w16, cfg, mask).to(torch::kFloat32);
      auto ref = reference_block(x, w, cfg.heads, 1e-6, mask, nn::Activation::QuickGelu);
      // As Bf16PathStaysCloseToFp32: ~2^-8 relative per op, a few ops deep, on O(1) values.
      EXPECT_LT((out - ref).abs().max().item<double>(), 0.1) << length << (mask.defined() ? " causal" : " full");
    }
  }
}

TEST(TransformerBlock, Int8BlockMatchesTheReferenceOnItsDequantizedWeights) {
  // quantize_block: the four matrices become q8 (their tensors dropped) and the block runs the int8
  // GEMM with one activation pass. Against the independent composition above given the same
  // weights dequantized, only the activations' int8 rounding differs: ≤ 1/254 of each block of
  // 32's largest |x| per element, the order of bf16's 2^-9, four products deep. Measured 0.028 on
  // these O(1) outputs (2026-12-05); the bound is 0.08 (about 3×; bf16's test above allows 0.1).
  auto w = random_block(64, 128);
  nn::quantize_block(w, nn::QuantFormat::Q8, "test block");
  EXPECT_FALSE(w.qkv_weight.defined() || w.out_weight.defined() || w.fc1_weight.defined() || w.fc2_weight.defined());
  ASSERT_TRUE(nn::block_quantized(w));
  auto dequantized = w;
  dequantized.qkv_weight = nn::dequantize(w.qkv_quant), dequantized.out_weight = nn::dequantize(w.out_quant);
  dequantized.fc1_weight = nn::dequantize(w.fc1_quant), dequantized.fc2_weight = nn::dequantize(w.fc2_quant);
  torch::manual_seed(7);
  auto x = torch::randn({2, 9, 64});
  nn::BlockConfig cfg{.width = 64, .heads = 4, .eps = 1e-6, .activation = nn::Activation::Gelu};
  const auto ours = nn::block_forward(x, w, cfg);
  const auto ref = reference_block(x, dequantized, 4, 1e-6, {});
  const double err = (ours - ref).abs().max().item<double>();
  std::cout << "[ measured ] int8 block against its dequantized weights: max |Δ| " << err << "\n";
  EXPECT_LT(err, 0.08);
  // bf16 activations in, bf16 out (the int8 GEMM itself takes and gives fp32).
  EXPECT_EQ(nn::block_forward(x.to(torch::kBFloat16), w, cfg).scalar_type(), torch::kBFloat16);
}

TEST(TransformerBlock, QuantizingAWidthNotAMultipleOf32NamesTheBlockAndMatrix) {
  auto w = random_block(48, 96);
  try {
    nn::quantize_block(w, nn::QuantFormat::Q8, "vision block 3");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("vision block 3: qkv weight [144, 48]"), std::string::npos) << e.what();
  }
}

TEST(Take, NamesKeyAndShapesOnMismatch) {
  io::TensorMap m{{"a.weight", torch::zeros({3, 4})}};
  EXPECT_EQ(nn::take(m, "a.weight", {3, -1}, "f.pth").sizes(), (std::vector<int64_t>{3, 4}));
  try {
    nn::take(m, "a.weight", {4, 4}, "f.pth");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'a.weight' has shape [3,4], expected [4,4]"), std::string::npos) << e.what();
  }
  try {
    nn::take(m, "b.weight", {1}, "f.pth");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor 'b.weight'"), std::string::npos) << e.what();
  }
}
