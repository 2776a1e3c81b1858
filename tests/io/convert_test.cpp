// io::convert_to_safetensors and SafetensorsWriter: a checkpoint rewritten as safetensors one
// batch at a time reads back equal to the checkpoint loaded whole, holds about one batch in
// memory, and a writer used out of order or left incomplete replaces nothing.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "common/proc_status.h"
#include "common/shared.h"
#include "common/torch_save.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "io/heap.h"
#include "io/safetensors.h"

namespace io = iadgpt::io;
namespace fs = std::filesystem;
using iadgpt::test::fixture;

TEST(Convert, BatchedConversionReadsBackAsTheWholeCheckpointConverted) {
  const auto in = fixture("imagebind_tiny/imagebind_tiny.pth");
  const auto out = iadgpt::test::scratch("io-convert") / "all_bf16.safetensors";
  std::vector<std::pair<uint64_t, uint64_t>> steps;
  // 4 KiB batches: many batches, several tensors in some, one larger than a batch in others.
  const auto stats = io::convert_to_safetensors(
      in, out, {.float_dtype = torch::kBFloat16, .batch_bytes = 4096, .progress = [&](uint64_t d, uint64_t t) {
                  steps.emplace_back(d, t);
                }});
  const auto whole = io::load_checkpoint(in, {.float_dtype = torch::kBFloat16});
  const auto back = io::load_safetensors(out);
  ASSERT_EQ(back.size(), whole.tensors.size());
  EXPECT_EQ(stats.tensors, static_cast<int64_t>(whole.tensors.size()));
  int64_t params = 0;
  for (const auto& [k, v] : whole.tensors) {
    params += v.numel();
    ASSERT_TRUE(back.count(k)) << k;
    EXPECT_EQ(back.at(k).scalar_type(), v.scalar_type()) << k;
    EXPECT_TRUE(torch::equal(back.at(k), v)) << k;
  }
  EXPECT_EQ(stats.parameters, params);
  ASSERT_GT(steps.size(), 3u) << "the fixture should take several 4 KiB batches";
  EXPECT_EQ(steps.back().first, steps.back().second);
  EXPECT_EQ(steps.back().second, stats.bytes);
  // Only the keys asked for, and the file is the same one save_safetensors writes for them.
  const auto only = iadgpt::test::scratch("io-convert") / "vision.safetensors";
  auto is_vision = [](const std::string& k) { return k.find(".vision.") != std::string::npos; };
  io::convert_to_safetensors(in, only, {.keys = is_vision, .batch_bytes = 1 << 20});
  const auto vision = io::load_checkpoint(in, {.keys = is_vision});
  const auto reference = iadgpt::test::scratch("io-convert") / "vision_ref.safetensors";
  io::save_safetensors(reference, vision.tensors);
  std::ifstream a(only, std::ios::binary), b(reference, std::ios::binary);
  const std::string bytes_a((std::istreambuf_iterator<char>(a)), {}), bytes_b((std::istreambuf_iterator<char>(b)), {});
  EXPECT_FALSE(vision.tensors.empty());
  EXPECT_EQ(bytes_a, bytes_b);
}

TEST(Convert, MemoryStaysNearOneBatchNotTheWholeFile) {
  // 16 records of 16 MiB fp32 (256 MiB) → 128 MiB of bf16. Converted whole, the bf16 copies alone
  // would raise the peak by 128 MiB; in 16 MiB batches by about one record and one batch.
  const auto dir = iadgpt::test::scratch("io-convert-memory");
  std::vector<iadgpt::test::TensorSpec> specs;
  for (int i = 0; i < 16; ++i) specs.push_back({"layer." + std::to_string(i) + ".weight", {2048, 2048}});
  iadgpt::test::write_torch_save(dir / "big.pth", specs, [](size_t i) { return torch::full({2048, 2048}, float(i)); });
  io::release_free_heap();
  io::ConvertStats stats;
  const int64_t rise = iadgpt::test::peak_rss_rise([&] {
    stats = io::convert_to_safetensors(dir / "big.pth", dir / "big.safetensors",
                                       {.float_dtype = torch::kBFloat16, .batch_bytes = 16 << 20});
  });
  std::cout << "[ measured ] peak RSS rise " << rise / (1 << 20) << " MiB for " << stats.bytes / (1 << 20) << " MiB written\n";
  EXPECT_EQ(stats.bytes, uint64_t{128} << 20);
  // One 16 MiB fp32 record read, its 8 MiB bf16 copy, two of them per 16 MiB batch: measured
  // 48-56 MiB. The bound, 96 MiB, leaves room for the allocator and stays well under the 128 MiB
  // that holding the converted file takes (143 MiB measured with batching switched off).
  EXPECT_LT(rise, int64_t{96} << 20);
  const auto back = io::load_safetensors(dir / "big.safetensors");
  EXPECT_TRUE(torch::equal(back.at("layer.7.weight"), torch::full({2048, 2048}, 7.0f, torch::kBFloat16)));
}

TEST(SafetensorsWriter, OutOfOrderMisshapenOrIncompleteWritesReplaceNothing) {
  const auto dir = iadgpt::test::scratch("io-writer");
  const auto path = dir / "w.safetensors";
  io::save_safetensors(path, {{"old", torch::ones({2})}});
  auto entries = [] {
    return std::vector<io::SafetensorsEntry>{{"b", torch::kFloat32, {2}}, {"a", torch::kBFloat16, {3, 1}}};
  };
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const iadgpt::InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  {
    io::SafetensorsWriter w(path, entries(), {});
    ASSERT_EQ(w.entries().front().name, "a");  // name order, whatever order they were given in
    EXPECT_NE(message([&] { w.write("b", torch::ones({2})); }).find("where 'a' comes next"), std::string::npos);
    EXPECT_NE(message([&] { w.write("a", torch::ones({3, 1})); }).find("declared BF16 [3, 1]"), std::string::npos);
    w.write("a", torch::ones({3, 1}, torch::kBFloat16));
    EXPECT_NE(message([&] { w.commit(); }).find("1 of 2 tensors written (next: 'b')"), std::string::npos);
  }
  EXPECT_TRUE(torch::equal(io::load_safetensors(path).at("old"), torch::ones({2}))) << "the old file must stay";
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1) << "no temporary left behind";
  auto twice = entries();
  twice.push_back({"a", torch::kFloat32, {1}});
  EXPECT_NE(message([&] { io::SafetensorsWriter(path, twice, {}); }).find("'a' given twice"), std::string::npos);
  {
    io::SafetensorsWriter w(path, entries(), {{"k", "v"}});
    w.write("a", torch::arange(3, torch::kBFloat16).view({3, 1}));
    w.write("b", torch::full({2}, 5.0f));
    w.commit();
  }
  std::map<std::string, std::string> meta;
  const auto back = io::load_safetensors(path, &meta);
  EXPECT_TRUE(torch::equal(back.at("a"), torch::arange(3, torch::kBFloat16).view({3, 1})));
  EXPECT_TRUE(torch::equal(back.at("b"), torch::full({2}, 5.0f)));
  EXPECT_EQ(meta.at("k"), "v");
  EXPECT_FALSE(back.count("old"));
}
