// `iadgpt convert` and `iadgpt info` on PyTorch zips, through the binary: the converted file
// against the fixture's independent F16 safetensors twin, and exit codes for damaged records.
#include <gtest/gtest.h>

#include <fstream>

#include "common/run.h"
#include "common/shared.h"
#include "common/torch_save.h"
#include "io/checkpoint.h"

namespace io = iadgpt::io;
namespace fs = std::filesystem;
using iadgpt::test::fixture;
using iadgpt::test::run_iadgpt;

namespace {
const std::string kStem = "modality_preprocessors.vision.rgbt_stem.proj.1.weight";
bool is_vision(const std::string& k) { return k.find(".vision.") != std::string::npos; }
}  // namespace

// The twin holds the .pth's fp32 values exactly (they are F16-representable, fixture README), so
// bf16(twin) is the expected value of every bf16 tensor, exactly; we also check the stated bound
// |x - bf16(x)| <= 2^-8 |x| (round to nearest with 8 significant bits) against the fp32 values.
TEST(ConvertCli, VisionBf16FromPthEqualsTheTwinRoundedToBf16) {
  const auto out = iadgpt::test::scratch("cli-convert") / "vision_bf16.safetensors";
  auto r = run_iadgpt({"convert", "--in", fixture("imagebind_tiny/imagebind_tiny.pth").string(), "--out", out.string(),
                       "--keys", "vision", "--dtype", "bf16", "--config", fixture("imagebind_tiny/config.json").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto converted = io::load_checkpoint(out);
  const auto twin = io::load_checkpoint(fixture("imagebind_tiny/imagebind_tiny.safetensors"));
  size_t vision = 0;
  for (const auto& [k, v] : twin.tensors) {
    if (!is_vision(k)) {
      EXPECT_FALSE(converted.tensors.count(k)) << k << " is not a vision tensor";
      continue;
    }
    ++vision;
    ASSERT_TRUE(converted.tensors.count(k)) << k;
    const auto& c = converted.tensors.at(k);
    const auto fp32 = v.to(torch::kFloat32);
    if (k == kStem) {  // kept in fp32: its two frames are summed before rounding
      EXPECT_EQ(c.scalar_type(), torch::kFloat32);
      EXPECT_TRUE(torch::equal(c, fp32));
      continue;
    }
    EXPECT_EQ(c.scalar_type(), torch::kBFloat16) << k;
    EXPECT_TRUE(torch::equal(c, fp32.to(torch::kBFloat16))) << k;
    const auto err = (c.to(torch::kFloat32) - fp32).abs();
    EXPECT_TRUE((err <= fp32.abs() / 256).all().item<bool>()) << k;
  }
  EXPECT_EQ(converted.tensors.size(), vision);
}

TEST(ConvertCli, AllKeysInF32AreLossless) {
  const auto out = iadgpt::test::scratch("cli-convert") / "all_f32.safetensors";
  auto r = run_iadgpt({"convert", "--in", fixture("imagebind_tiny/imagebind_tiny.pth").string(), "--out", out.string(),
                       "--keys", "all", "--dtype", "f32"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto converted = io::load_checkpoint(out);
  const auto twin = io::load_checkpoint(fixture("imagebind_tiny/imagebind_tiny.safetensors"));
  ASSERT_EQ(converted.tensors.size(), twin.tensors.size());
  for (const auto& [k, v] : twin.tensors) EXPECT_TRUE(torch::equal(converted.tensors.at(k), v.to(torch::kFloat32))) << k;
}

// One flipped bit in tensor b's data: `info` reads headers only and still succeeds; reading b
// (convert) is exit 2 with a message naming it.
TEST(ConvertCli, CorruptRecordPassesInfoAndFailsConvertWithExitTwo) {
  const auto p = iadgpt::test::scratch("cli-convert") / "corrupt.pth";
  iadgpt::test::write_torch_save(p, {{"a", {3}}, {"b", {4}}},
                                 [](size_t i) { return i == 0 ? torch::ones({3}) : torch::full({4}, 1234.5f); });
  std::string bytes;
  {
    std::ifstream in(p, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const float v = 1234.5f;
  const auto at = bytes.find(std::string(reinterpret_cast<const char*>(&v), 4));
  ASSERT_NE(at, std::string::npos);
  bytes[at] ^= 1;
  std::ofstream(p, std::ios::binary) << bytes;

  auto info = run_iadgpt({"info", p.string()});
  EXPECT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("tensors:    2"), std::string::npos) << info.out;
  auto conv = run_iadgpt({"convert", "--in", p.string(), "--out", (p.parent_path() / "x.safetensors").string(), "--keys", "all"});
  EXPECT_EQ(conv.exit_code, 2) << conv.err;
  EXPECT_NE(conv.err.find("tensor 'b'"), std::string::npos) << conv.err;
  EXPECT_NE(conv.err.find("CRC-32"), std::string::npos) << conv.err;
}
