// A vision tower stored quantized (`iadgpt convert --keys vision --quant q8`): the file's layout
// against the format's own definition (nn/quant.h), loading it against quantizing at load and
// upstream's reference, and broken stored quants named in the error.
#include <gtest/gtest.h>

#include <fstream>

#include "common/errors.h"
#include "common/run.h"
#include "common/shared.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "nn/quant.h"
#include "vision/loader.h"
#include "vision/vit.h"

namespace {

using namespace iadgpt;
using namespace iadgpt::vision;

VisionOptions options_for(const std::string& file, torch::Dtype dtype, nn::QuantFormat quant = nn::QuantFormat::None) {
  VisionOptions o{.dtype = dtype, .quant = quant};
  if (file.starts_with("imagebind_tiny/")) {  // heads are not in the weights: the fixture's config gives them
    std::ifstream in(test::fixture("imagebind_tiny/config.json"));
    o.config = nlohmann::json::parse(in);
  }
  return o;
}

const std::vector<std::string> kLayouts = {"imagebind_tiny/imagebind_tiny.pth", "openai_clip_tiny/openai_clip_tiny.pt",
                                           "openai_clip_tiny/hf"};

// Every block matrix becomes `.q` (int8) + `.scale` (fp16) of the same rows, and scale·q is within
// half a scale of the bf16 weight (nn/quant.h's round trip for q8: w/scale rounded to nearest;
// 1e-6 relative allowed for the fp32 arithmetic of this check). Every other tensor is unchanged.
TEST(StoredInt8Tower, FileHoldsQuantsWithinHalfAScaleOfTheBf16Weights) {
  for (const auto& file : kLayouts) {
    VitConfig config;
    const auto plain = read_vision_tensors(test::fixture(file), options_for(file, torch::kBFloat16), &config);
    const auto stored = read_vision_tensors(test::fixture(file), options_for(file, torch::kBFloat16, nn::QuantFormat::Q8));
    EXPECT_EQ(stored.metadata.at(kStoredVisionQuantKey), "q8") << file;
    EXPECT_EQ(stored_vision_quant(stored), nn::QuantFormat::Q8) << file;
    int64_t matrices = 0;
    for (const auto& [key, w] : plain.tensors) {
      if (stored.tensors.count(key)) {
        EXPECT_TRUE(torch::equal(stored.tensors.at(key), w)) << file << " " << key;
        continue;
      }
      ++matrices;
      ASSERT_TRUE(stored.tensors.count(key + ".q") && stored.tensors.count(key + ".scale")) << file << " " << key;
      const auto& q = stored.tensors.at(key + ".q");
      const auto& scale = stored.tensors.at(key + ".scale");
      ASSERT_EQ(q.scalar_type(), torch::kChar) << key;
      ASSERT_EQ(scale.scalar_type(), torch::kHalf) << key;
      ASSERT_EQ(q.sizes(), w.sizes()) << key;
      const auto s = scale.to(torch::kFloat32).repeat_interleave(nn::kQuantBlock, 1);
      const auto error = (w.to(torch::kFloat32) - s * q.to(torch::kFloat32)).abs();
      EXPECT_TRUE((error <= s.abs() * (0.5 + 1e-6)).all().item<bool>()) << file << " " << key;
      EXPECT_GT(q.abs().max().item<int>(), 100) << key << ": a block's largest weight maps to ±127";
    }
    const int64_t per_block = file.ends_with("/hf") ? 6 : 4;  // HF keeps q, k and v apart
    EXPECT_EQ(matrices, per_block * config.layers) << file;
  }
}

// Loaded without asking for q8, the stored tower is the int8 tower quantized at load: the same
// outputs exactly (the same quants of the same bf16 weights, as the quants are per row), and within the int8 tower's bound
// of upstream's fp32 reference (tests/vision/cli_test.cpp: 0.3 on tap 3).
TEST(StoredInt8Tower, LoadsToTheSameOutputsAsQuantizingAtLoad) {
  const auto dir = test::scratch("stored-q8");
  const auto ref = io::load_safetensors(test::fixture("imagebind_tiny/reference.safetensors"));
  for (const auto& file : kLayouts) {
    const auto out = dir / (std::filesystem::path(file).filename().string() + ".safetensors");
    const auto stored = read_vision_tensors(test::fixture(file), options_for(file, torch::kBFloat16, nn::QuantFormat::Q8));
    io::save_safetensors(out, stored.tensors, stored.metadata);
    const auto from_file = load_vision(out, options_for(file, torch::kBFloat16));
    // Quantized after the whole checkpoint is read (nn::quantize_block on the model's matrices,
    // HF's q, k and v stacked first): not the path a file takes.
    const auto at_load = load_vision(io::load_checkpoint(test::fixture(file)), options_for(file, torch::kBFloat16, nn::QuantFormat::Q8));
    EXPECT_EQ(from_file.quant, nn::QuantFormat::Q8) << file;
    EXPECT_TRUE(from_file.weights.blocks[0].fc1_quant.defined() && !from_file.weights.blocks[0].fc1_weight.defined()) << file;
    const auto pixels = torch::rand({2, 3, from_file.config.image_size, from_file.config.image_size},
                                    torch::TensorOptions().dtype(torch::kFloat32)) * 2 - 1;
    const std::vector<int64_t> taps = {1, 3};
    const auto a = vit_forward(from_file.weights, from_file.config, pixels, taps);
    const auto b = vit_forward(at_load.weights, at_load.config, pixels, taps);
    EXPECT_TRUE(torch::equal(a.taps[1], b.taps[1])) << file;
    EXPECT_TRUE(torch::equal(a.embedding, b.embedding)) << file;
    if (file.starts_with("imagebind_tiny/")) {
      const auto r = vit_forward(from_file.weights, from_file.config, ref.at("pixel_values"), taps);
      EXPECT_LE((r.taps[1] - ref.at("vision_block3")).abs().max().item<double>(), 0.3);
    }
  }
}

// Each broken part of a stored tower is one InputError that names the tensor (or the metadata).
TEST(StoredInt8Tower, BrokenQuantsAreNamed) {
  const std::string file = "openai_clip_tiny/openai_clip_tiny.pt";
  const auto good = read_vision_tensors(test::fixture(file), options_for(file, torch::kBFloat16, nn::QuantFormat::Q8));
  const std::string key = "visual.transformer.resblocks.1.mlp.c_fc.weight";  // [512, 128]
  ASSERT_TRUE(good.tensors.count(key + ".q"));
  auto load = [&](const std::function<void(io::Checkpoint&)>& breaks) {
    auto ckpt = good;
    breaks(ckpt);
    return test::input_error_message([&] { load_vision(ckpt, options_for(file, torch::kBFloat16)); });
  };
  auto msg = load([&](io::Checkpoint& c) { c.tensors.erase(key + ".scale"); });
  EXPECT_NE(msg.find(key + ".scale"), std::string::npos) << msg;
  msg = load([&](io::Checkpoint& c) { c.tensors[key + ".q"] = torch::zeros({512, 64}, torch::kChar); });
  EXPECT_NE(msg.find(key), std::string::npos) << msg;
  msg = load([&](io::Checkpoint& c) { c.tensors[key + ".q"] = torch::zeros({512, 128}, torch::kByte); });
  EXPECT_NE(msg.find(key), std::string::npos) << msg;
  msg = load([&](io::Checkpoint& c) { c.tensors[key + ".scale"] = torch::zeros({512, 4}, torch::kFloat32); });
  EXPECT_NE(msg.find(key), std::string::npos) << msg;
  msg = load([&](io::Checkpoint& c) { c.metadata[kStoredVisionQuantKey] = "q4"; });
  EXPECT_NE(msg.find("metadata 'vision_quant'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not q4"), std::string::npos) << msg;
  msg = load([&](io::Checkpoint& c) { c.metadata[kStoredVisionQuantKey] = "int8"; });
  EXPECT_NE(msg.find("unknown vision tower format 'int8'"), std::string::npos) << msg;
  msg = load([&](io::Checkpoint& c) { c.metadata.erase(kStoredVisionQuantKey); });  // quants without the format
  EXPECT_NE(msg.find("missing tensor 'visual.transformer.resblocks.0.mlp.c_fc.weight'"), std::string::npos) << msg;
}

// The command a user runs: convert --quant q8, then every command loads the file as stored; a
// truncated file, or --quant on an LLM, is exit 2 with a message.
TEST(StoredInt8Tower, ConvertWritesWhatEncodeImageLoadsAndBadInputIsExit2) {
  const auto dir = test::scratch("stored-q8-cli");
  const std::string model = test::fixture("openai_clip_tiny/openai_clip_tiny.pt").string();
  const std::string q8 = (dir / "q8.safetensors").string();
  const std::string image = " " + test::fixture("openai_clip_tiny/images/coffee.png").string();
  auto r = test::run_iadgpt("--threads 1 convert --in " + model + " --out " + q8 + " --quant q8");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  r = test::run_iadgpt("--threads 1 info " + q8);
  EXPECT_NE(r.out.find("block matrices stored q8"), std::string::npos) << r.out << r.err;
  r = test::run_iadgpt("--threads 1 encode-image --model " + q8 + " --dtype bf16 --out " + (dir / "a.safetensors").string() + image);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  r = test::run_iadgpt("--threads 1 encode-image --model " + model + " --dtype bf16 --quant q8 --out " +
                       (dir / "b.safetensors").string() + image);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const auto a = io::load_safetensors(dir / "a.safetensors"), b = io::load_safetensors(dir / "b.safetensors");
  EXPECT_TRUE(torch::equal(a.at("embedding"), b.at("embedding")));

  const auto size = std::filesystem::file_size(q8);
  std::filesystem::copy_file(q8, dir / "cut.safetensors");
  std::filesystem::resize_file(dir / "cut.safetensors", size - 1000);
  r = test::run_iadgpt("--threads 1 encode-image --model " + (dir / "cut.safetensors").string() + " --out " +
                       (dir / "c.safetensors").string() + image);
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("cut.safetensors"), std::string::npos) << r.err;
  r = test::run_iadgpt("--threads 1 convert --in " + test::fixture("llama_tiny/model.safetensors").string() +
                       " --keys all --quant q8 --out " + (dir / "l.safetensors").string());
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("iadgpt quantize"), std::string::npos) << r.err;
}

}  // namespace
