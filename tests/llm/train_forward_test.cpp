// The differentiable training forward (llm/train_forward.h) against the inference forward and
// against finite differences, on the llama_tiny fixture.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "llm/lora.h"
#include "llm/model.h"
#include "llm/train_forward.h"
#include "llm_test_util.h"

using namespace iadgpt;

namespace {

llm::LlamaModel tiny() { return llm::load_model(test::llama_tiny()); }

torch::Tensor inference_logits(const llm::LlamaModel& m, const std::vector<int64_t>& ids) {
  llm::KvCache cache(m, static_cast<int64_t>(ids.size()));
  return llm::forward_tokens(m, cache, ids, llm::Logits::All);
}

std::vector<int64_t> seq(int i) {
  return test::to_ids(test::llama_tiny_reference().at(fmt::format("seq{}.input_ids", i)));
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace

// Tolerance 1e-5: both are fp32 with the same operations, only the attention batching differs
// (summation order), which moves logits of |max| ≈ 4 by ~1e-6.
TEST(TrainForward, EqualsInferenceLogitsOnOneSequence) {
  auto m = tiny();
  auto ids = seq(2);
  auto x = m.embed(ids).unsqueeze(0);
  auto logits = llm::forward_train(m, x, {});
  EXPECT_LT(max_diff(logits[0], inference_logits(m, ids)), 1e-5);
  // And the fixture's reference (float64 HF implementation): the README's fp32 bound 1e-4.
  EXPECT_LT(max_diff(logits[0], test::llama_tiny_reference().at("seq2.logits")), 1e-4);
}

TEST(TrainForward, PaddedBatchRowsEqualTheirOwnInference) {
  auto m = tiny();
  auto a = seq(0), b = seq(1);  // lengths 7 and 33
  const int64_t T = 36, D = m.config.hidden_size;
  auto x = torch::zeros({3, T, D});
  auto mask = torch::zeros({3, T}, torch::kInt64);
  x[0].narrow(0, 0, 7).copy_(m.embed(a));  // right padding
  mask[0].narrow(0, 0, 7).fill_(1);
  x[1].narrow(0, 0, 33).copy_(m.embed(b));
  mask[1].narrow(0, 0, 33).fill_(1);
  x[2].narrow(0, T - 7, 7).copy_(m.embed(a));  // left padding: positions count real tokens only
  mask[2].narrow(0, T - 7, 7).fill_(1);
  x[2].narrow(0, 0, T - 7).normal_();          // garbage in the padding must not leak
  auto logits = llm::forward_train(m, x, mask);
  EXPECT_LT(max_diff(logits[0].narrow(0, 0, 7), inference_logits(m, a)), 1e-5);
  EXPECT_LT(max_diff(logits[1].narrow(0, 0, 33), inference_logits(m, b)), 1e-5);
  EXPECT_LT(max_diff(logits[2].narrow(0, T - 7, 7), inference_logits(m, a)), 1e-5);
}

TEST(TrainForward, TrainableLoraEqualsInferenceWithTheSamePairs) {
  auto m = tiny();
  auto lora = llm::add_trainable_lora(m, {.rank = 4, .alpha = 8, .dropout = 0.1}, 7);
  ASSERT_EQ(lora.parameters.size(), 2u * 4u * m.config.num_layers);
  {
    torch::NoGradGuard g;
    for (size_t i = 1; i < lora.parameters.size(); i += 2) lora.parameters[i].normal_(0, 0.1);  // B ≠ 0
  }
  auto ids = seq(1);
  auto logits = llm::forward_train(m, m.embed(ids).unsqueeze(0), {});
  auto ref = inference_logits(m, ids);
  EXPECT_LT(max_diff(logits[0], ref), 1e-5);
  // The LoRA matters (so the comparison above can fail): base logits differ.
  auto base = tiny();
  EXPECT_GT(max_diff(ref, inference_logits(base, ids)), 1e-2);
}

TEST(TrainForward, GradientsAreFiniteAndMatchFiniteDifferences) {
  auto m = tiny();
  auto lora = llm::add_trainable_lora(m, {.rank = 2, .alpha = 2, .dropout = 0}, 3);
  {
    torch::NoGradGuard g;
    for (size_t i = 1; i < lora.parameters.size(); i += 2) lora.parameters[i].normal_(0, 0.1);
  }
  auto ids = seq(0);
  auto x = m.embed(ids).unsqueeze(0).clone().requires_grad_();
  auto labels = torch::full({1, 7}, llm::kIgnoreIndex, torch::kInt64);
  labels[0].narrow(0, 4, 3).copy_(torch::tensor(std::vector<int64_t>(ids.begin() + 4, ids.end())));
  auto loss_of = [&] { return llm::answer_cross_entropy(llm::forward_train(m, x, {}), labels).sum(); };
  auto loss = loss_of();
  loss.backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_TRUE(torch::isfinite(x.grad()).all().item<bool>());
  for (const auto& p : lora.parameters) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_TRUE(torch::isfinite(p.grad()).all().item<bool>());
  }
  // Frozen base weights carry no gradient.
  EXPECT_FALSE(m.weights.layers[0].wq.requires_grad());

  // Directional derivative along a random N(0,1) direction, central difference with ε = 1e-2 in
  // fp32: truncation O(ε²) and rounding ~1e-6·|L|/ε ≈ 1e-3 → 3 % relative tolerance.
  torch::manual_seed(11);
  auto check = [&](torch::Tensor& param, const std::string& what) {
    auto dir = torch::randn_like(param);  // ~1 per element: ε moves every entry by ~1e-2
    const double analytic = (param.grad() * dir).sum().item<double>();
    const double eps = 1e-2;
    double plus, minus;
    {
      torch::NoGradGuard g;
      param.add_(dir * eps);
      plus = loss_of().item<double>();
      param.sub_(dir * (2 * eps));
      minus = loss_of().item<double>();
      param.add_(dir * eps);
    }
    const double numeric = (plus - minus) / (2 * eps);
    EXPECT_NEAR(analytic, numeric, 0.03 * std::abs(numeric) + 1e-4) << what;
    std::printf("%s: analytic %.6g numeric %.6g\n", what.c_str(), analytic, numeric);
    EXPECT_GT(std::abs(numeric), 1e-3) << what << ": the direction must move the loss for the check to mean anything";
  };
  check(x, "input embeddings");
  check(lora.parameters[0], "layer 0 q lora_A");
  check(lora.parameters[7], "layer 0 o lora_B");
}

TEST(TrainForward, DropoutDependsOnTheRowSeedNotOnTheBatch) {
  auto m = tiny();
  llm::add_trainable_lora(m, {.rank = 4, .alpha = 8, .dropout = 0.5}, 5);
  {
    torch::NoGradGuard g;
    for (auto& L : m.weights.layers) L.lora_q.b.normal_(0, 0.5);
  }
  const auto s1 = seq(1);
  auto a = m.embed(seq(0)).unsqueeze(0), b = m.embed(std::vector<int64_t>(s1.begin(), s1.begin() + 7)).unsqueeze(0);
  auto both = llm::forward_train(m, torch::cat({a, b}), {}, {.lora_dropout = 0.5, .dropout_seeds = {10, 20}});
  auto alone = llm::forward_train(m, b, {}, {.lora_dropout = 0.5, .dropout_seeds = {20}});
  EXPECT_LT(max_diff(both[1], alone[0]), 1e-5);
  auto other = llm::forward_train(m, b, {}, {.lora_dropout = 0.5, .dropout_seeds = {21}});
  EXPECT_GT(max_diff(other[0], alone[0]), 1e-4);
}

TEST(TrainForward, FullFineTuneMakesEveryWeightALeafAndKeepsLogits) {
  auto m = tiny();
  auto ids = seq(0);
  auto before = inference_logits(m, ids);
  auto params = llm::make_trainable(m);
  EXPECT_EQ(params.names.front(), "model.embed_tokens.weight");
  EXPECT_EQ(params.names.size(), 2u + 9u * m.config.num_layers + 1u);
  auto logits = llm::forward_train(m, m.embed(ids).unsqueeze(0), {});
  EXPECT_LT(max_diff(logits[0], before), 1e-5);
  llm::answer_cross_entropy(logits, torch::tensor(ids).unsqueeze(0)).sum().backward();
  for (size_t i = 0; i < params.tensors.size(); ++i)
    EXPECT_TRUE(params.tensors[i].grad().defined()) << params.names[i];
}

TEST(TrainForward, SavedPeftAdapterLoadsBack) {
  auto m = tiny();
  llm::LoraSpec spec{.rank = 4, .alpha = 8, .dropout = 0.1};
  llm::add_trainable_lora(m, spec, 1);
  {
    torch::NoGradGuard g;
    for (auto& L : m.weights.layers) L.lora_v.b.normal_(0, 0.3);
  }
  auto dir = test::scratch("peft") / "adapter";
  llm::save_peft_adapter(m, spec, dir);
  auto loaded = tiny();
  llm::attach_lora(loaded, llm::load_lora(dir));
  EXPECT_EQ(max_diff(inference_logits(loaded, seq(0)), inference_logits(m, seq(0))), 0.0);
}
