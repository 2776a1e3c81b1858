// bench's prefill yardstick: the FLOP count of a prefill and the GEMM rate probe.
#include <gtest/gtest.h>

#include <cmath>

#include "io/error.h"
#include "llm/gemm_peak.h"

using namespace iadgpt;

TEST(GemmPeak, PrefillFlopsCountEveryMultiplyAddOfTheBlockOnce) {
  llm::LlamaConfig c;
  c.vocab_size = 10, c.hidden_size = 4, c.intermediate_size = 8, c.num_layers = 3;
  c.num_heads = 2, c.num_kv_heads = 1;  // head_dim 2: q 4 wide, k/v 2 wide
  const int64_t tokens = 5;
  // Brute force, token by token: a multiply-add is 2 FLOPs.
  double want = 0;
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    for (int64_t i = 0; i < tokens; ++i) {
      want += 2.0 * (4 * 4) + 2.0 * (2 * 4) * 2 + 2.0 * (4 * 4);  // q, k, v, o
      want += 2.0 * (8 * 4) * 3;                                 // gate, up, down
      for (int64_t j = 0; j <= i; ++j) want += 2.0 * 2 * 2 * 2;    // 2 heads × (q·k + p·v), head_dim 2
    }
  }
  want += 2.0 * 10 * 4;  // the head, last token only
  EXPECT_DOUBLE_EQ(llm::prefill_flops(c, tokens), want);
}

TEST(GemmPeak, TheProbeReportsAFiniteRateAndRejectsEmptyShapes) {
  const double rate = llm::measure_gemm_flops(64, 256, 128, torch::kFloat32, 3);
  EXPECT_TRUE(std::isfinite(rate));
  // More than 10 MFLOP/s (any CPU) and less than 100 TFLOP/s (no CPU of this decade).
  EXPECT_GT(rate, 1e7);
  EXPECT_LT(rate, 1e14);
  EXPECT_THROW(llm::measure_gemm_flops(0, 256, 128, torch::kFloat32, 3), InputError);
  EXPECT_THROW(llm::measure_gemm_flops(64, 256, 128, torch::kFloat32, 0), InputError);
}
