// AnomalyGPT compatibility: its released weights are two delta checkpoints loaded over Vicuna-7B
// and ImageBind-Huge — PandaGPT's (llama_proj + LoRA on q/k/v/o) and AnomalyGPT's own
// (image_decoder.fc.<l>.*, prompt_learner.meta_net.*, prompt_learner.base_prompts; key names from
// CASIA-IVA-Lab/AnomalyGPT code/model/openllama.py and AnomalyGPT_models.py). Here both are built at
// fixture sizes: llama_tiny's PandaGPT-layout delta (shared fixture) and an AnomalyGPT delta
// written by this test as a PyTorch zip (.pt, fp16 like DeepSpeed's fp16 training saves).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "image/decode.h"
#include "io/checkpoint.h"
#include "llm/lora.h"
#include "model/pipeline.h"
#include "model/tiny_bundle.h"

using namespace iadgpt;
namespace fs = std::filesystem;

namespace {

// AnomalyGPT's delta at fixture sizes: decoder LinearLayer(64, 32, 4), PromptLearner(1, 64).
io::TensorMap anomalygpt_delta_tensors(uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  io::TensorMap t;
  for (int l = 0; l < 4; ++l) {
    t[fmt::format("image_decoder.fc.{}.weight", l)] = torch::randn({32, 64}) * 0.1;
    t[fmt::format("image_decoder.fc.{}.bias", l)] = torch::randn({32}) * 0.1;
  }
  model::PromptLearner pl(64);
  for (auto& p : pl->named_parameters()) t["prompt_learner." + p.key()] = p.value().detach().clone();
  for (auto& [k, v] : t) v = v.to(torch::kHalf);
  return t;
}

void write_torch_zip(const fs::path& file, const io::TensorMap& tensors) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [k, v] : tensors) dict.insert(k, v);
  const auto bytes = torch::pickle_save(c10::IValue(dict));
  std::ofstream(file, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

TEST(AnomalyGptCompat, DeltaCheckpointsRunEndToEnd) {
  auto b = test::tiny_bundle_fields("agpt-compat");
  fs::create_directories(b.dir);
  const auto agpt_tensors = anomalygpt_delta_tensors(11);
  const auto agpt_file = b.dir / "anomalygpt_pytorch_model.pt";
  write_torch_zip(agpt_file, agpt_tensors);
  ASSERT_EQ(io::detect_format(agpt_file), io::Format::TorchZip);
  b.delta = test::fixture("llama_tiny/pandagpt_delta/pytorch_model.pt");
  b.anomalygpt = agpt_file;
  b.lora_alpha = 16;  // the fixture's (AnomalyGPT/PandaGPT: 32)
  b.expert = "prompt_learner";
  model::write_bundle(b, b.dir);
  const auto bundle = model::read_bundle(b.dir);

  model::IadGpt m(bundle);
  m.set_class("bottle");
  const auto img = image::decode_file(test::data("mvtec_ad/grid/train/good/000.png"));
  model::InspectOptions opt;
  opt.max_tokens = 8;
  const auto r = m.inspect(img, opt);
  EXPECT_FALSE(r.answer.empty());
  EXPECT_GE(r.p_yes, 0.0);

  torch::NoGradGuard no_grad;
  const auto& tokens = m.image_tokens();
  // E_img = PandaGPT's llama_proj(e) (no TGE file: zero pathways).
  const auto panda = io::load_checkpoint(*bundle.delta).tensors;
  auto expected_img = torch::matmul(tokens.embedding, panda.at("llama_proj.weight").to(torch::kFloat32).t()) +
                      panda.at("llama_proj.bias").to(torch::kFloat32);
  EXPECT_LT((expected_img - tokens.image_token).abs().max().item<double>(), 1e-4);
  // E_expert = AnomalyGPT's prompt learner on its one map, with the delta's parameters.
  model::PromptLearner pl(64);
  model::load_parameters(*pl, agpt_tensors, "prompt_learner.", "delta");
  ASSERT_EQ(tokens.masks.size(1), 1);
  auto expected_expert = pl->forward(tokens.masks);
  EXPECT_LT((expected_expert - tokens.expert_tokens).abs().max().item<double>(), 1e-3);  // fp16 weights, fp32 math
  EXPECT_TRUE(torch::equal(tokens.expert_tokens[0].slice(0, 0, 9), agpt_tensors.at("prompt_learner.base_prompts").to(torch::kFloat32)));

  // The LoRA of the PandaGPT delta is merged: llama_tiny's reference logits with the LoRA.
  const auto ref = io::load_safetensors(test::fixture("llama_tiny/reference.safetensors"));
  auto ids_t = ref.at("seq0.input_ids").to(torch::kInt64).contiguous();
  std::vector<int64_t> ids(ids_t.data_ptr<int64_t>(), ids_t.data_ptr<int64_t>() + ids_t.numel());
  llm::KvCache cache(m.llm(), 64);
  auto logits = llm::forward_tokens(m.llm(), cache, ids, llm::Logits::All);
  // README tolerance for an fp32 runtime (the fp16 LoRA values are exact in fp16).
  EXPECT_LT((logits - ref.at("seq0.logits_lora")).abs().max().item<double>(), 1e-4);
}

TEST(AnomalyGptCompat, PromptLearnerExpertWithoutItsTensorsIsABundleError) {
  auto b = test::tiny_bundle_fields("agpt-missing");
  fs::create_directories(b.dir);
  b.delta = test::fixture("llama_tiny/pandagpt_delta/pytorch_model.pt");
  b.expert = "prompt_learner";
  model::write_bundle(b, b.dir);
  try {
    model::read_bundle(b.dir);
    FAIL() << "accepted a prompt_learner bundle without prompt_learner tensors";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("prompt_learner"), std::string::npos) << e.what();
  }
}
