// Hugging Face directories and format detection: shards, indexes, config.json, and errors.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "common/shared.h"
#include "io/checkpoint.h"

namespace io = iadgpt::io;
namespace fs = std::filesystem;

namespace {

// A fresh directory per test: each test builds its own HF layout.
fs::path dir(const std::string& name) {
  auto d = iadgpt::test::scratch("io-hf") / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write_text(const fs::path& p, const std::string& s) { std::ofstream(p) << s; }

std::string error_of(const fs::path& p) {
  try {
    io::load_checkpoint(p);
  } catch (const iadgpt::InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << p << " was accepted";
  return "";
}

// Two shards: a.safetensors holds x, b.safetensors holds y.
fs::path two_shards(const std::string& name) {
  auto d = dir(name);
  io::save_safetensors(d / "a.safetensors", {{"x", torch::ones({2})}});
  io::save_safetensors(d / "b.safetensors", {{"y", torch::zeros({3})}});
  write_text(d / "config.json", R"({"model_type": "toy"})");
  return d;
}

}  // namespace

TEST(HfDir, ShardedIndexLoadsEveryShard) {
  auto d = two_shards("ok");
  write_text(d / "model.safetensors.index.json", R"({"metadata":{},"weight_map":{"x":"a.safetensors","y":"b.safetensors"}})");
  auto ck = io::load_checkpoint(d);
  EXPECT_EQ(ck.format, io::Format::HuggingFaceDir);
  EXPECT_EQ(ck.tensors.size(), 2u);
  EXPECT_EQ(ck.tensors.at("y").sizes(), (std::vector<int64_t>{3}));
  EXPECT_EQ((*ck.hf_config)["model_type"], "toy");
}

TEST(HfDir, IndexNamingAMissingShardIsRejected) {
  auto d = two_shards("missing-shard");
  write_text(d / "model.safetensors.index.json", R"({"weight_map":{"x":"a.safetensors","y":"model-00002-of-00002.safetensors"}})");
  auto msg = error_of(d);
  EXPECT_NE(msg.find("shard 'model-00002-of-00002.safetensors' named in the index is missing (needed for 'y')"), std::string::npos)
      << msg;
}

TEST(HfDir, IndexKeyAbsentFromItsShardIsRejected) {
  auto d = two_shards("missing-key");
  write_text(d / "model.safetensors.index.json", R"({"weight_map":{"x":"a.safetensors","z":"b.safetensors"}})");
  auto msg = error_of(d);
  EXPECT_NE(msg.find("tensor 'z' listed in model.safetensors.index.json is missing from the shard"), std::string::npos) << msg;
}

TEST(HfDir, IndexShardOutsideTheDirectoryIsRejected) {
  auto d = two_shards("escape");
  write_text(d / "model.safetensors.index.json", R"({"weight_map":{"x":"../a.safetensors"}})");
  auto msg = error_of(d);
  EXPECT_NE(msg.find("is not a file in this directory"), std::string::npos) << msg;
}

TEST(HfDir, DirectoryWithoutWeightsIsRejected) {
  auto d = dir("empty");
  write_text(d / "config.json", "{}");
  auto msg = error_of(d);
  EXPECT_NE(msg.find("directory has no model.safetensors"), std::string::npos) << msg;
}

TEST(HfDir, LlamaShardedFixtureHasConfigAndTwentyOneBf16Tensors) {
  auto ck = io::load_checkpoint(iadgpt::test::fixture("llama_tiny/sharded"));
  ASSERT_EQ(ck.tensors.size(), 21u);
  EXPECT_EQ(ck.tensors.at("lm_head.weight").scalar_type(), torch::kBFloat16);
  EXPECT_EQ(ck.tensors.at("lm_head.weight").sizes(), (std::vector<int64_t>{512, 64}));
  EXPECT_EQ((*ck.hf_config)["num_key_value_heads"], 2);
}

TEST(Detect, FormatComesFromContentNotExtension) {
  auto d = dir("detect");
  io::save_safetensors(d / "weights.pth", {{"x", torch::ones({1})}});  // safetensors named .pth
  EXPECT_EQ(io::load_checkpoint(d / "weights.pth").format, io::Format::Safetensors);
  write_text(d / "junk.safetensors", "hello, world");
  EXPECT_NE(error_of(d / "junk.safetensors").find("unrecognised checkpoint format"), std::string::npos);
  EXPECT_NE(error_of(d / "nope.safetensors").find("no such file or directory"), std::string::npos);
}

TEST(Detect, SafetensorsHeaderLengthThatLooksLikePickleMagicIsSafetensors) {
  // Header length 0x280 = 640 bytes: the file starts 0x80 0x02, like a protocol-2 pickle.
  auto d = dir("magic");
  std::string header = R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  header.append(640 - header.size(), ' ');
  std::string bytes(8, '\0');
  uint64_t n = header.size();
  std::memcpy(bytes.data(), &n, 8);
  bytes += header + "A";
  std::ofstream(d / "m.safetensors", std::ios::binary) << bytes;
  auto ck = io::load_checkpoint(d / "m.safetensors");
  EXPECT_EQ(ck.tensors.at("x").item<uint8_t>(), 'A');
}

TEST(HfDir, IndexFileNamedDirectlyLoadsLikeItsDirectory) {
  auto idx = iadgpt::test::fixture("llama_tiny/sharded/model.safetensors.index.json");
  auto ck = io::load_checkpoint(idx);
  EXPECT_EQ(ck.format, io::Format::HuggingFaceDir);
  EXPECT_EQ(ck.tensors.size(), 21u);
  ASSERT_TRUE(ck.hf_config.has_value());
}
