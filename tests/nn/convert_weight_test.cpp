// nn::convert_weight: the converted copy of a memory-mapped checkpoint tensor, and the source's
// pages released as it is made (so converting a model never holds the source file resident).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <string>

#include "common/proc_status.h"
#include "common/shared.h"
#include "io/checkpoint.h"
#include "nn/weights.h"

TEST(ConvertWeight, Bf16CopyOfAMappedTensorReleasesTheSourcePages) {
  constexpr int64_t n = 16 << 20;  // 64 MiB of fp32
  const auto path = iadgpt::test::scratch("nn-convert-weight") / "w.safetensors";
  // Values exactly representable in bf16 (multiples of 2^-3 below 2^5), so the expected copy is
  // known without converting: (i mod 256) / 8.
  const auto values = torch::arange(n, torch::kInt64).remainder(256).to(torch::kFloat32).div(8);
  iadgpt::io::save_safetensors(path, {{"w", values}});
  const auto ckpt = iadgpt::io::load_safetensors(path);
  const auto& mapped = ckpt.at("w");
  ASSERT_GT(mapped.sum().item<double>(), 0.0);  // pages resident
  const int64_t before = iadgpt::test::proc_status_bytes("RssFile");

  const auto bf16 = iadgpt::nn::convert_weight(mapped, torch::kBFloat16);
  EXPECT_EQ(bf16.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(bf16.is_contiguous());
  EXPECT_TRUE(torch::equal(bf16.to(torch::kFloat32), values));
  EXPECT_LE(iadgpt::test::proc_status_bytes("RssFile"), before - (60 << 20)) << "the fp32 source's pages should have been released";

  // Same dtype: no copy is made, and the mapping is kept (the weights are used from it).
  const auto same = iadgpt::nn::convert_weight(mapped, torch::kFloat32);
  EXPECT_TRUE(same.is_alias_of(mapped));
}
