// Releasing the pages of a memory-mapped tensor once a loader has copied it (mapped_file.h):
// the process's file-backed memory drops by the tensor's size, the bytes read back unchanged
// afterwards (faulted in again from the file), and tensors that are not mapped are left alone.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <string>

#include "common/proc_status.h"
#include "common/shared.h"
#include "io/checkpoint.h"
#include "io/mapped_file.h"

namespace io = iadgpt::io;

namespace {

constexpr int64_t kBig = 16 << 20;  // 16 Mi floats: 64 MiB

std::filesystem::path write_big_file() {
  const auto path = iadgpt::test::scratch("io-mapped-release") / "big.safetensors";
  io::save_safetensors(path, {{"big", torch::arange(kBig, torch::kFloat32)}, {"small", torch::ones({3})}});
  return path;
}

}  // namespace

TEST(MappedRelease, DropsTheTensorsPagesAndTheBytesReadBackUnchanged) {
  const auto ckpt = io::load_safetensors(write_big_file());
  const auto& big = ckpt.at("big");
  ASSERT_EQ(big.numel(), kBig);
  // The loader maps, it does not copy: `big` views the file.
  EXPECT_GT(big.sum().item<double>(), 0.0);  // touches every page
  const int64_t before = iadgpt::test::proc_status_bytes("RssFile");
  ASSERT_GE(before, 60 << 20) << "the 64 MiB tensor's pages should be resident after reading it";

  const size_t released = io::release_mapped_pages(big);
  // Whole pages inside the 64 MiB only: at most one page short at each end.
  EXPECT_GE(released, size_t{64 << 20} - 2 * 4096);
  EXPECT_LE(released, size_t{64 << 20});
  const int64_t after = iadgpt::test::proc_status_bytes("RssFile");
  std::cout << "[ measured ] RssFile " << before / (1 << 20) << " MiB -> " << after / (1 << 20) << " MiB\n";
  EXPECT_LE(after, before - (60 << 20));

  // The values are still there: 0, 1, 2, ... as written (read back from the file).
  EXPECT_TRUE(torch::equal(big, torch::arange(kBig, torch::kFloat32)));
  EXPECT_TRUE(torch::equal(ckpt.at("small"), torch::ones({3})));
}

TEST(MappedRelease, LeavesTensorsThatDoNotViewAMappingAlone) {
  auto heap = torch::arange(kBig, torch::kFloat32);
  EXPECT_EQ(io::release_mapped_pages(heap), 0u);
  EXPECT_TRUE(torch::equal(heap, torch::arange(kBig, torch::kFloat32)));
  EXPECT_EQ(io::release_mapped_pages(torch::Tensor()), 0u);
  // A copy of a mapped tensor is heap memory too.
  const auto ckpt = io::load_safetensors(write_big_file());
  auto copy = ckpt.at("big").clone();
  EXPECT_EQ(io::release_mapped_pages(copy), 0u);
  EXPECT_TRUE(torch::equal(copy, torch::arange(kBig, torch::kFloat32)));
}
