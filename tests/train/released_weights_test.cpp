// Training from the released weights (issue 15, METHOD §1.7): a run started from a PandaGPT delta
// (llama_proj, the LLM's LoRA) and an AnomalyGPT delta (the decoder) holds, before it learns
// anything, exactly the model that `bundle create` builds from the same files: one step at a
// learning rate that moves nothing leaves every weight as loaded (the trainable LoRA starts with
// B = 0), so the bundle it writes and the bundle of the deltas give the same logits.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fmt/format.h>

#include <fstream>

#include "common/run.h"
#include "common/shared.h"
#include "common/tiny_training.h"
#include "image/decode.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/pipeline.h"
#include "model/tiny_bundle.h"

using namespace iadgpt;
namespace fs = std::filesystem;

namespace {

// PandaGPT's delta at fixture sizes (llama_tiny H 64, imagebind_tiny D 32): llama_proj and a rank-4
// LoRA on q_proj/o_proj of every layer, with B ≠ 0 so that it changes the LLM.
io::TensorMap pandagpt_delta(int64_t layers) {
  torch::manual_seed(11);
  io::TensorMap t;
  t["llama_proj.weight"] = torch::randn({64, 32}) * 0.2;
  t["llama_proj.bias"] = torch::randn({64}) * 0.1;
  for (int64_t l = 0; l < layers; ++l)
    for (const char* proj : {"q_proj", "o_proj"}) {  // [64, 64] in llama_tiny (its k/v are [32, 64])
      const auto key = fmt::format("llama_model.base_model.model.model.layers.{}.self_attn.{}", l, proj);
      t[key + ".lora_A.default.weight"] = torch::randn({4, 64}) * 0.1;
      t[key + ".lora_B.default.weight"] = torch::randn({64, 4}) * 0.1;
    }
  return t;
}

// AnomalyGPT's delta: the decoder, one Linear(D_v 64 → D 32) per tapped layer.
io::TensorMap anomalygpt_delta() {
  torch::manual_seed(12);
  io::TensorMap t;
  for (int l = 0; l < 4; ++l) {
    t[fmt::format("image_decoder.fc.{}.weight", l)] = torch::randn({32, 64}) * 0.1;
    t[fmt::format("image_decoder.fc.{}.bias", l)] = torch::randn({32}) * 0.1;
  }
  return t;
}

torch::Tensor logits_of(const model::Bundle& bundle, const cv::Mat& image) {
  model::IadGpt m(bundle);
  m.set_class("hazelnut");
  m.inspect(image, {.generate = false});
  return m.prompt_logits();
}

}  // namespace

TEST(ReleasedWeights, StepZeroOfARunFromTheDeltasIsTheBundleOfTheSameFiles) {
  const auto dir = test::scratch("released-weights");
  fs::remove_all(dir);
  fs::create_directories(dir);
  const auto llm_config = test::read_json_file(test::fixture("llama_tiny/config.json"));
  io::save_safetensors(dir / "pandagpt.safetensors", pandagpt_delta(llm_config.at("num_hidden_layers").get<int64_t>()));
  io::save_safetensors(dir / "anomalygpt.safetensors", anomalygpt_delta());

  auto cfg = test::tiny_training_config(dir / "trained");
  cfg.update(nlohmann::json{
      {"delta", (dir / "pandagpt.safetensors").string()},
      {"anomalygpt", (dir / "anomalygpt.safetensors").string()},
      {"llm_tuning", "lora"},
      {"lora", {{"rank", 4}, {"alpha", 8}, {"dropout", 0.0}}},
      {"llm_lr", 0.0},
      {"datasets", {{{"kind", "mvtec"}, {"root", test::data("hazelnut_toy").string()}, {"categories", {"hazelnut"}}}}},
      {"per_image", 1},
      {"holdout", 2},
      {"references", 1},
      // lr must be > 0: 1e-30 moves no weight of magnitude > 1e-22 in fp32 (the
      // heads' weights are ~0.1; zero-initialised pathways are read from the
      // run's own TGE file by both bundles); the LLM's lr is 0.
      {"stages", {{{"stage", 3}, {"steps", 1}, {"lr", 1e-30}}}},
      {"batch_size", 1},
      {"resume", false}});
  std::ofstream(dir / "train.json") << cfg.dump(1);
  auto r = test::run_iadgpt({"--threads", "1", "train", "--quiet", "--config", (dir / "train.json").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto trained = model::read_bundle(dir / "trained");
  ASSERT_TRUE(trained.lora.has_value());  // a LoRA trained on top of the delta's

  // The bundle of the same files: llama_proj and the LoRA from PandaGPT's delta, the decoder from
  // AnomalyGPT's; the TGE pathways and the MMF are the run's (a fresh run's own initialisation).
  auto tge = io::load_checkpoint(*trained.tge).tensors;
  for (auto it = tge.begin(); it != tge.end();) it = it->first.rfind("llama_proj.", 0) == 0 ? tge.erase(it) : std::next(it);
  io::save_safetensors(dir / "tge_pathways.safetensors", tge);
  auto released = test::tiny_bundle_fields("released-weights-bundle");
  released.taps = {0, 1, 2, 3};
  released.delta = dir / "pandagpt.safetensors";
  released.anomalygpt = dir / "anomalygpt.safetensors";
  released.tge = dir / "tge_pathways.safetensors";
  released.mmf = trained.mmf;
  released.mode = trained.mode;
  released.map = trained.map;
  released.rotations = trained.rotations;

  const auto image = image::decode_file(test::data("hazelnut_toy/hazelnut/test/colour/00.jpg"));
  const auto a = logits_of(trained, image), b = logits_of(released, image);
  ASSERT_EQ(a.sizes(), b.sizes());
  // Exact: the same tensors through the same operations (the step changed nothing, and the
  // trained LoRA's B is still zero).
  EXPECT_EQ((a - b).abs().max().item<double>(), 0.0);

  // And the deltas matter: without them the same run gives other logits.
  auto without = released;
  without.delta.reset();
  without.tge = trained.tge;
  without.decoder = trained.decoder;
  EXPECT_GT((logits_of(without, image) - a).abs().max().item<double>(), 1e-3);
}

TEST(ReleasedWeights, AMapWarmUpWithAnAnomalyGptDecoderIsAConfigError) {
  const auto dir = test::scratch("released-warmup");
  fs::create_directories(dir);
  io::save_safetensors(dir / "anomalygpt.safetensors", anomalygpt_delta());
  nlohmann::json cfg{{"out", (dir / "out").string()},
                     {"vision", test::fixture("imagebind_tiny/imagebind_tiny.safetensors").string()},
                     {"vision_config", test::fixture("imagebind_tiny/config.json").string()},
                     {"llm", test::fixture("llama_tiny").string()},
                     {"tokenizer", test::fixture("stories260K/tokenizer.model").string()},
                     {"anomalygpt", (dir / "anomalygpt.safetensors").string()},
                     {"datasets", {{{"kind", "mvtec"}, {"root", test::data("hazelnut_toy").string()}, {"categories", {"hazelnut"}}}}},
                     {"map_warmup", {{"steps", 10}}},
                     {"stages", {{{"stage", 1}, {"steps", 1}}}}};
  std::ofstream(dir / "train.json") << cfg.dump(1);
  auto r = test::run_iadgpt({"train", "--quiet", "--config", (dir / "train.json").string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("map_warmup.steps"), std::string::npos) << r.err;
}
