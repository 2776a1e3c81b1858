// bench train (train/bench.h) at CPU-test size: each stage's steps train (the loss of the fixed
// synthetic batch falls), checkpointing gives the same steps, bad options are InputErrors.
#include <gtest/gtest.h>

#include <cmath>

#include "io/error.h"
#include "train/bench.h"

using namespace iadgpt;

namespace {

train::TrainBenchOptions tiny(int64_t stage) {
  return {.arch = "vit-tiny+llama-tiny", .stage = stage, .steps = 4, .batch = 2, .prompt_tokens = 20,
          .answer_tokens = 5, .llm_dtype = "f32", .lora_rank = 4, .bf16_autocast = false};
}

}  // namespace

// AdamW at lr 1e-3 (heads) / 1e-4 (LoRA) on one fixed batch: after 3 updates the loss must be
// lower than before the first; a step that updated nothing (or the wrong parts only: stage 1's
// TGE feeds the image token, so its updates move the CE) would leave it where it was.
TEST(BenchTrain, EveryStageLowersTheLossOfItsBatch) {
  for (const int64_t stage : {1, 2, 3}) {
    const auto r = train::bench_training(tiny(stage));
    ASSERT_EQ(r.step_seconds.size(), 4u);
    ASSERT_EQ(r.losses.size(), 4u);
    EXPECT_EQ(r.tokens_per_example, 20 + 5 + 1 + 18);  // prompt, answer, image token, 18 expert tokens
    EXPECT_EQ(r.peak_device_bytes, -1);                 // the CPU: no allocator statistics
    std::printf("stage %lld: loss %.6f -> %.6f, %lld trained parameters\n", static_cast<long long>(stage), r.losses.front(),
                r.losses.back(), static_cast<long long>(r.trained_parameters));
    EXPECT_LT(r.losses.back(), r.losses.front()) << "stage " << stage;
    // The LoRA alone: 2 layers × 4 projections × rank 4 × (64 in + 64 out) = 4096; the stage's heads come on top.
    EXPECT_GT(r.trained_parameters, 4096) << "stage " << stage;
  }
}

// fp32 without autocast: the recompute reproduces the layer exactly (tests/llm/
// gradient_checkpointing_test.cpp), so the losses agree to the last bits (tolerance 1e-6 relative).
// The same with a bf16 base under bf16 autocast (the GPU configuration): the recompute runs under
// the forward's autocast and uses casts with a graph back to the LoRA pairs (a first version lost
// the pairs' gradients there: step 2's loss moved by 5e-5).
TEST(BenchTrain, GradientCheckpointingGivesTheSameSteps) {
  for (const bool autocast : {false, true}) {
    auto o = tiny(2);
    o.bf16_autocast = autocast;
    o.llm_dtype = autocast ? "bf16" : "f32";
    const auto plain = train::bench_training(o);
    o.gradient_checkpointing = true;
    const auto ckpt = train::bench_training(o);
    for (size_t i = 0; i < plain.losses.size(); ++i)
      EXPECT_NEAR(ckpt.losses[i], plain.losses[i], 1e-6 * plain.losses[i]) << "step " << i << (autocast ? ", autocast" : "");
  }
}

TEST(BenchTrain, BadOptionsAreInputErrors) {
  auto o = tiny(4);
  EXPECT_THROW(train::bench_training(o), InputError);
  o = tiny(1);
  o.arch = "vit-tiny";
  EXPECT_THROW(train::bench_training(o), InputError);
  o = tiny(1);
  o.llm_dtype = "f16";
  EXPECT_THROW(train::bench_training(o), InputError);
  o = tiny(1);
  o.steps = 0;
  EXPECT_THROW(train::bench_training(o), InputError);
}

// The GPU configuration on the CPU: a bf16 frozen base (fp32 LoRA pairs, cast around the base's
// projections) under bf16 autocast still trains the batch.
TEST(BenchTrain, ABf16BaseUnderAutocastTrainsToo) {
  auto o = tiny(2);
  o.llm_dtype = "bf16";
  o.bf16_autocast = true;
  const auto r = train::bench_training(o);
  std::printf("bf16 base, autocast: loss %.6f -> %.6f\n", r.losses.front(), r.losses.back());
  EXPECT_TRUE(std::isfinite(r.losses.back()));
  EXPECT_LT(r.losses.back(), r.losses.front());
}
