// Lazy reading of PyTorch zip checkpoints: headers only, a key subset converted on read, and
// record errors found only when (and because) a wanted record is read.
#include <gtest/gtest.h>

#include <fstream>

#include "common/errors.h"
#include "common/shared.h"
#include "common/torch_save.h"
#include "io/checkpoint.h"

namespace io = iadgpt::io;
namespace fs = std::filesystem;
using iadgpt::test::fixture;

using iadgpt::test::input_error_message;

namespace {

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}
void write_all(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

bool is_vision(const std::string& k) { return k.find(".vision.") != std::string::npos; }

// {a: [2,3] = 0..5, b: [4] filled with 1234.5}: b's payload is easy to find in the file.
fs::path two_tensor_archive(const std::string& name) {
  auto p = iadgpt::test::scratch("io-lazy") / name;
  iadgpt::test::write_torch_save(p, {{"a", {2, 3}}, {"b", {4}}}, [](size_t i) {
    return i == 0 ? torch::arange(6, torch::kFloat32).reshape({2, 3}) : torch::full({4}, 1234.5f);
  });
  return p;
}

size_t find_payload_of_b(const std::string& bytes) {
  const float v = 1234.5f;
  std::string pattern;
  for (int i = 0; i < 4; ++i) pattern.append(reinterpret_cast<const char*>(&v), 4);
  const auto at = bytes.find(pattern);
  EXPECT_NE(at, std::string::npos);
  return at;
}

}  // namespace

// Reference: the fixture's F16 safetensors twin (another file, another parser) holds the same
// values (they are F16-representable, fixture README). bf16 rounding of equal fp32 inputs is
// deterministic, so the comparison is exact.
TEST(LazyTorchZip, VisionKeysInBf16EqualTheF16SafetensorsTwin) {
  auto lazy = io::load_checkpoint(fixture("imagebind_tiny/imagebind_tiny.pth"),
                                  {.float_dtype = torch::kBFloat16, .keys = is_vision});
  auto twin = io::load_checkpoint(fixture("imagebind_tiny/imagebind_tiny.safetensors"));
  size_t vision_keys = 0;
  for (const auto& [k, v] : twin.tensors) {
    if (!is_vision(k)) continue;
    ++vision_keys;
    ASSERT_TRUE(lazy.tensors.count(k)) << k;
    const auto& t = lazy.tensors.at(k);
    EXPECT_EQ(t.scalar_type(), torch::kBFloat16) << k;
    EXPECT_EQ(t.sizes(), v.sizes()) << k;
    EXPECT_TRUE(torch::equal(t, v.to(torch::kFloat32).to(torch::kBFloat16))) << k;
  }
  EXPECT_GT(vision_keys, 20u);
  EXPECT_EQ(lazy.tensors.size(), vision_keys) << "only the wanted keys are returned";
}

TEST(LazyTorchZip, HeadersOnlyGivesShapesAndStoredDtypesWithoutData) {
  auto headers = io::load_checkpoint(fixture("imagebind_tiny/imagebind_tiny.pth"), {.headers_only = true});
  auto twin = io::load_checkpoint(fixture("imagebind_tiny/imagebind_tiny.safetensors"));
  ASSERT_EQ(headers.tensors.size(), 179u);  // fixture README
  for (const auto& [k, v] : headers.tensors) {
    EXPECT_TRUE(v.is_meta()) << k;
    EXPECT_EQ(v.scalar_type(), torch::kFloat32) << k;
    ASSERT_TRUE(twin.tensors.count(k)) << k;
    EXPECT_EQ(v.sizes(), twin.tensors.at(k).sizes()) << k;
  }
}

TEST(LazyTorchZip, CorruptPayloadOfAnUnwantedRecordIsNeverRead) {
  const auto p = two_tensor_archive("corrupt_b.pth");
  auto bytes = read_all(p);
  bytes[find_payload_of_b(bytes) + 1] ^= 0x40;  // one bit of b's data; headers intact
  write_all(p, bytes);

  auto only_a = io::load_checkpoint(p, {.keys = [](const std::string& k) { return k == "a"; }});
  ASSERT_EQ(only_a.tensors.size(), 1u);
  EXPECT_TRUE(torch::equal(only_a.tensors.at("a"), torch::arange(6, torch::kFloat32).reshape({2, 3})));

  auto headers = io::load_checkpoint(p, {.headers_only = true});  // what `info` reads
  EXPECT_EQ(headers.tensors.at("b").sizes(), (std::vector<int64_t>{4}));

  auto msg = input_error_message([&] { io::load_checkpoint(p); });
  EXPECT_NE(msg.find("tensor 'b'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("record 'data/1' is corrupt (CRC-32"), std::string::npos) << msg;
}

TEST(LazyTorchZip, RecordReachingPastTheEndOfTheFileNamesTheTensor) {
  const auto p = two_tensor_archive("truncated_b.pth");
  auto bytes = read_all(p);
  // The central directory entry of data/1 (the last "/data/1" name in the file) claims 1 MiB
  // more than the file holds: what a download cut inside its data would give.
  const auto name_at = bytes.rfind("/data/1");
  const auto entry = bytes.rfind("PK\x01\x02", name_at);
  ASSERT_NE(entry, std::string::npos);
  for (size_t field : {20u, 24u}) {  // compressed and uncompressed sizes
    uint32_t size = 0;
    std::memcpy(&size, &bytes[entry + field], 4);
    size += 1u << 20;
    std::memcpy(&bytes[entry + field], &size, 4);
  }
  write_all(p, bytes);

  auto only_a = io::load_checkpoint(p, {.keys = [](const std::string& k) { return k == "a"; }});
  EXPECT_EQ(only_a.tensors.size(), 1u);
  auto msg = input_error_message([&] { io::load_checkpoint(p, {.float_dtype = torch::kBFloat16}); });
  EXPECT_NE(msg.find("tensor 'b'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("but the file ends at byte"), std::string::npos) << msg;
}
