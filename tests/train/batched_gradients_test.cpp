// Config `gradients`: "batched" (one forward + backward over a rank's micro-batch, the default off
// the CPU) computes the gradients "per_example" (one example at a time, the CPU default) computes,
// with the same loss weights. In process (train::train with the on_gradients hook), fp32, small
// fixtures: frozen imagebind_tiny, llama_tiny with LoRA r 4 and dropout, hazelnut_toy.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>

#include "common/shared.h"
#include "common/tiny_training.h"
#include "io/safetensors.h"
#include "train/config.h"
#include "train/trainer.h"

using namespace iadgpt;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Stage 2 trains the most at once (decoder + MMF by CE, focal and dice; the LoRA by CE), and a
// decision weight adds the Yes/No CE, so every term of the loss reaches a gradient.
json stage2_config(const fs::path& out, const std::string& gradients, int64_t grad_accum) {
  auto cfg = test::tiny_training_config(out);
  cfg.update(json{
      {"lora", {{"rank", 4}, {"alpha", 8}, {"dropout", 0.1}}},
      {"llm_lr", 1e-3},
      {"datasets", {{{"kind", "mvtec"}, {"root", test::data("hazelnut_toy").string()}, {"categories", {"hazelnut"}}}}},
      {"synthesis", "cutpaste"},
      {"holdout", 2},
      {"references", 1},
      {"decision_weight", 1.0},
      {"stages", {{{"stage", 2}, {"steps", 2}}}},
      {"batch_size", 4},
      {"grad_accum", grad_accum},
      {"gradients", gradients},
      {"checkpoint_every", 0},
      {"resume", false},
  });
  return cfg;
}

struct Run {
  std::map<int64_t, torch::Tensor> gradients;  // by global step
  io::TensorMap mmf, decoder;
};

Run train_with(const fs::path& dir, const std::string& gradients, int64_t grad_accum = 1, bool checkpointing = false) {
  auto j = stage2_config(dir / "out", gradients, grad_accum);
  j["gradient_checkpointing"] = checkpointing;
  auto cfg = train::parse_train_config(j, dir / "train.json");
  train::Distributed one;
  train::TrainHooks hooks;
  Run run;
  hooks.on_gradients = [&](int64_t step, const torch::Tensor& g) { run.gradients[step] = g.clone(); };
  train::train(cfg, one, hooks);
  run.mmf = io::load_safetensors(dir / "out" / "mmf.safetensors");
  run.decoder = io::load_safetensors(dir / "out" / "decoder.safetensors");
  return run;
}

}  // namespace

TEST(BatchedGradients, EqualThePerExampleSumAndTrainTheSameParameters) {
  const auto dir = test::scratch("train-batched");
  const auto per_example = train_with(dir / "per-example", "per_example");
  const auto batched = train_with(dir / "batched", "batched");
  const auto accumulated = train_with(dir / "accumulated", "batched", /*grad_accum=*/2);
  ASSERT_EQ(per_example.gradients.size(), 2u);
  // Step 1: the same initial weights and the same examples, so the gradients differ only by fp32
  // rounding. Batched, a weight's gradient is one GEMM over every row of the micro-batch (padded to
  // its longest sequence) instead of a sum of per-example GEMMs: other summation orders, each
  // partial sum off by ~n·u (u = 6e-8, n ≤ a few hundred terms per dot product), i.e. ~1e-5
  // relative to the gradient's scale. Tolerance: 1e-4 of the gradient norm (norm-wise) and of the
  // largest component (elementwise). A loss term weighted wrongly (say the map loss not multiplied
  // by its rows) moves the decoder's and the MMF's gradients by O(1) of their size.
  const auto& ref = per_example.gradients.at(1);
  const double scale = ref.abs().max().item<double>();
  for (const auto* r : {&batched, &accumulated}) {
    const auto& g = r->gradients.at(1);
    ASSERT_EQ(g.sizes(), ref.sizes());
    const double norm_rel = (g - ref).norm().item<double>() / ref.norm().item<double>();
    const double max_rel = (g - ref).abs().max().item<double>() / scale;
    std::printf("%s step 1: |g - g_pe| / |g_pe| = %.3g, max |g - g_pe| / max |g_pe| = %.3g (|g_pe| = %.4g)\n",
                r == &batched ? "batched" : "batched, grad_accum 2", norm_rel, max_rel, ref.norm().item<double>());
    EXPECT_LT(norm_rel, 1e-4);
    EXPECT_LT(max_rel, 1e-4);
  }
  // The trained parameters after two steps. AdamW's first update is lr·sign(g) wherever |g| ≫ eps,
  // so a component whose gradient is within rounding of 0 may move by ±lr either way (the README's
  // "Exactness notes"): the bound is per component 2 steps × 2 × lr (1e-3) = 4e-3, and most
  // components (clear gradients) must agree to 1e-5.
  for (const auto* part : {&per_example.mmf, &per_example.decoder}) {
    const auto& other = part == &per_example.mmf ? batched.mmf : batched.decoder;
    int64_t total = 0, close = 0;
    double worst = 0;
    for (const auto& [name, t] : *part) {
      auto d = (other.at(name) - t).abs();
      total += t.numel();
      close += d.le(1e-5).sum().item<int64_t>();
      worst = std::max(worst, d.max().item<double>());
    }
    std::printf("%s: %lld of %lld components within 1e-5, worst %.3g\n", part == &per_example.mmf ? "mmf" : "decoder",
                static_cast<long long>(close), static_cast<long long>(total), worst);
    EXPECT_LE(worst, 4e-3);
    EXPECT_GE(static_cast<double>(close), 0.99 * static_cast<double>(total));
  }
}

// Config `gradient_checkpointing` in a batched stage-2 step: the recompute reproduces the forward
// (tests/llm/gradient_checkpointing_test.cpp), so the step's gradients are the plain ones up to a
// reordering of fp32 sums: 1e-6 of the largest component (measured: bitwise equal).
TEST(BatchedGradients, GradientCheckpointingGivesTheSameStep) {
  const auto dir = test::scratch("train-checkpointing");
  const auto plain = train_with(dir / "plain", "batched");
  const auto ckpt = train_with(dir / "checkpointed", "batched", 1, /*checkpointing=*/true);
  for (const int64_t step : {1, 2}) {
    const auto& a = plain.gradients.at(step);
    const auto& b = ckpt.gradients.at(step);
    const double rel = (a - b).abs().max().item<double>() / a.abs().max().item<double>();
    std::printf("step %lld: max |g_ckpt - g| / max |g| = %.3g\n", static_cast<long long>(step), rel);
    EXPECT_LE(rel, 1e-6) << "step " << step;
  }
}

TEST(BatchedGradients, TheDefaultFollowsTheDeviceAndABadValueNamesTheKey) {
  const auto dir = test::scratch("train-gradients-key");
  auto j = stage2_config(dir / "out", "per_example", 1);
  j.erase("gradients");
  const auto cfg = train::parse_train_config(j, dir / "train.json");
  EXPECT_FALSE(train::uses_batched_gradients(cfg, torch::Device("cpu")));
  EXPECT_TRUE(train::uses_batched_gradients(cfg, torch::Device("cuda:0")));
  j["gradients"] = "batched";
  EXPECT_TRUE(train::uses_batched_gradients(train::parse_train_config(j, dir / "train.json"), torch::Device("cpu")));
  j["gradients"] = "per-example";
  try {
    train::parse_train_config(j, dir / "train.json");
    FAIL() << "a bad 'gradients' was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("'gradients'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("per_example"), std::string::npos) << e.what();
  }
}
