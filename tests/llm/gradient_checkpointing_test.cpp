// Gradient checkpointing of the training forward (TrainForwardOptions::checkpoint_layers): the same
// gradients as the plain forward, from a backward that really runs every decoder layer again.
// llama_tiny fixture, fp32, a right-padded batch of two rows with LoRA dropout on.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/autocast_mode.h>

#include <atomic>

#include "llm/config.h"
#include "llm/model.h"
#include "llm/train_forward.h"
#include "llm_test_util.h"

using namespace iadgpt;

namespace {

std::vector<int64_t> seq(int i) {
  return test::to_ids(test::llama_tiny_reference().at(fmt::format("seq{}.input_ids", i)));
}

struct Grads {
  std::vector<torch::Tensor> params;  // in the model's parameter order
  torch::Tensor input;
  double loss = 0;
  int64_t layer_forwards = 0;
};

// One forward + backward of a padded batch; LoRA (dropout 0.2) or every weight trains.
Grads gradients(bool checkpoint, bool full, bool autocast = false) {
  auto m = llm::load_model(test::llama_tiny());
  std::vector<torch::Tensor> params;
  if (full) {
    params = llm::make_trainable(m).tensors;
  } else {
    params = llm::add_trainable_lora(m, {.rank = 4, .alpha = 8, .dropout = 0.2}, 7).parameters;
    torch::NoGradGuard g;
    torch::manual_seed(3);  // the same B in every call
    for (size_t i = 1; i < params.size(); i += 2) params[i].normal_(0, 0.1);  // B ≠ 0: every path counts
  }
  const auto a_ids = seq(0), b_ids = seq(1);
  auto a = m.embed(a_ids), b = m.embed(std::vector<int64_t>(b_ids.begin(), b_ids.begin() + 5));
  const int64_t T = a.size(0);
  auto x = torch::stack({a, torch::cat({b, torch::zeros({T - b.size(0), b.size(1)})})}).detach().requires_grad_();
  auto mask = torch::ones({2, T}, torch::kInt64);
  mask[1].narrow(0, b.size(0), T - b.size(0)).zero_();
  auto labels = torch::tensor(a_ids).unsqueeze(0).repeat({2, 1});
  labels[1].narrow(0, b.size(0), T - b.size(0)).fill_(llm::kIgnoreIndex);
  std::atomic<int64_t> count{0};
  llm::TrainForwardOptions o;
  o.lora_dropout = full ? 0.0 : 0.2;
  if (!full) o.dropout_seeds = {5, 6};
  o.checkpoint_layers = checkpoint;
  o.layer_forwards = &count;
  if (autocast) {
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(true);
    at::autocast::increment_nesting();
  }
  auto loss = llm::answer_cross_entropy(llm::forward_train(m, x, mask, o), labels).sum().to(torch::kFloat32);
  loss.backward();
  if (autocast) {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_cpu_enabled(false);
  }
  Grads g;
  g.loss = loss.item<double>();
  g.input = x.grad().clone();
  for (const auto& p : params) g.params.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
  g.layer_forwards = count.load();
  return g;
}

}  // namespace

// The recompute runs the layer's own operations on its own saved input with the same dropout
// seeds, so the forward values are the plain path's; the backward differs only in where the
// layer's input gradient is summed (its residual and branch parts arrive through one more graph
// boundary), a reordering of fp32 sums: ≤ a few u (6e-8) relative, so 1e-6 of the largest
// gradient component. A recompute with other masks or another input moves gradients by O(1).
TEST(GradientCheckpointing, GivesThePlainGradientsAndRecomputesEveryLayer) {
  const int64_t layers = llm::LlamaConfig::from_file(test::llama_tiny() / "config.json").num_layers;
  for (const bool full : {false, true}) {
    const auto plain = gradients(false, full), ckpt = gradients(true, full);
    SCOPED_TRACE(full ? "full fine-tune" : "LoRA with dropout");
    EXPECT_EQ(plain.loss, ckpt.loss);
    EXPECT_EQ(plain.layer_forwards, layers);
    EXPECT_EQ(ckpt.layer_forwards, 2 * layers) << "every layer runs once more in backward";
    ASSERT_EQ(plain.params.size(), ckpt.params.size());
    double worst = (plain.input - ckpt.input).abs().max().item<double>() / plain.input.abs().max().item<double>();
    for (size_t i = 0; i < plain.params.size(); ++i) {
      ASSERT_EQ(plain.params[i].defined(), ckpt.params[i].defined()) << "parameter " << i;
      if (!plain.params[i].defined()) continue;
      const double scale = std::max(plain.params[i].abs().max().item<double>(), 1e-30);
      worst = std::max(worst, (plain.params[i] - ckpt.params[i]).abs().max().item<double>() / scale);
    }
    std::printf("%s: loss %.9g, layer forwards %lld / %lld, worst relative gradient difference %.3g\n",
                full ? "full" : "lora", ckpt.loss, static_cast<long long>(plain.layer_forwards),
                static_cast<long long>(ckpt.layer_forwards), worst);
    EXPECT_LE(worst, 1e-6);
  }
}

// Under CPU autocast (bf16 matmuls) as the trainer runs it: the recompute must see autocast as the
// forward did and must not reuse casts made while the forward ran without grad (they carry no
// graph back to the fp32 LoRA pairs). Same ops in the same order, so the same gradients: 1e-6 of
// the largest component, as above; lost LoRA gradients would differ by their whole size.
TEST(GradientCheckpointing, UnderAutocastGivesThePlainGradients) {
  const auto plain = gradients(false, false, true), ckpt = gradients(true, false, true);
  ASSERT_EQ(plain.params.size(), ckpt.params.size());
  double worst = 0;
  for (size_t i = 0; i < plain.params.size(); ++i) {
    ASSERT_TRUE(plain.params[i].defined() && ckpt.params[i].defined()) << "parameter " << i;
    const double scale = std::max(plain.params[i].abs().max().item<double>(), 1e-30);
    worst = std::max(worst, (plain.params[i] - ckpt.params[i]).abs().max().item<double>() / scale);
  }
  std::printf("autocast: loss %.9g / %.9g, worst relative gradient difference %.3g\n", plain.loss, ckpt.loss, worst);
  EXPECT_LE(worst, 1e-6);
}
