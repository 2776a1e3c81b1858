// AnomalyGPT compatibility: its released weights are two delta checkpoints loaded over Vicuna-7B
// and ImageBind-Huge — PandaGPT's (llama_proj + LoRA on q/k/v/o) and AnomalyGPT's own
// (image_decoder.fc.<l>.*, prompt_learner.meta_net.*, prompt_learner.base_prompts; key names from
// CASIA-IVA-Lab/AnomalyGPT code/model/openllama.py and AnomalyGPT_models.py). Here both are built at
// fixture sizes: llama_tiny's PandaGPT-layout delta (shared fixture) and an AnomalyGPT delta
// written by this test as a PyTorch zip (.pt, fp16 like DeepSpeed's fp16 training saves).
// AnomalyGPT itself runs without APG: its bundles use the class descriptions and F_text as it does.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <zlib.h>

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

// A minimal torch.save writer (zip of archive/data.pkl + archive/data/<n> + archive/version, entries
// stored and 64-byte aligned, pickle protocol 2 with _rebuild_tensor_v2 and persistent storage
// ids) — what `torch.save(OrderedDict-like dict)` writes for a state dict. The test needs a real
// .pt in the delta layout and libtorch's own pickle_save tags its dicts with a TorchScript type.
struct Bytes {
  std::string b;
  void u8(uint8_t v) { b.push_back(static_cast<char>(v)); }
  void u16(uint16_t v) { for (int i = 0; i < 2; ++i) u8(static_cast<uint8_t>(v >> (8 * i))); }
  void u32(uint32_t v) { for (int i = 0; i < 4; ++i) u8(static_cast<uint8_t>(v >> (8 * i))); }
  void str(const std::string& s) { b += s; }
};

void pickle_unicode(Bytes& p, const std::string& s) { p.u8('X'); p.u32(static_cast<uint32_t>(s.size())); p.str(s); }
void pickle_int(Bytes& p, int64_t v) { p.u8('J'); p.u32(static_cast<uint32_t>(v)); }
void pickle_global(Bytes& p, const std::string& module, const std::string& name) { p.u8('c'); p.str(module + "\n" + name + "\n"); }
void pickle_ints(Bytes& p, at::IntArrayRef v) { p.u8('('); for (auto x : v) pickle_int(p, x); p.u8('t'); }

void write_torch_zip(const fs::path& file, const io::TensorMap& tensors) {
  Bytes pkl;
  pkl.u8(0x80); pkl.u8(2);  // PROTO 2
  pkl.u8('}');               // EMPTY_DICT
  pkl.u8('(');               // MARK
  std::vector<std::pair<std::string, std::string>> records;  // name, bytes
  int n = 0;
  for (const auto& [key, t] : tensors) {
    auto c = t.contiguous();
    const std::string id = std::to_string(n++);
    pickle_unicode(pkl, key);
    pickle_global(pkl, "torch._utils", "_rebuild_tensor_v2");
    pkl.u8('(');
    pkl.u8('(');
    pickle_unicode(pkl, "storage");
    pickle_global(pkl, "torch", c.scalar_type() == torch::kHalf ? "HalfStorage" : "FloatStorage");
    pickle_unicode(pkl, id);
    pickle_unicode(pkl, "cpu");
    pickle_int(pkl, c.numel());
    pkl.u8('t');
    pkl.u8('Q');  // BINPERSID
    pickle_int(pkl, 0);
    pickle_ints(pkl, c.sizes());
    pickle_ints(pkl, c.strides());
    pkl.u8(0x89);  // NEWFALSE: requires_grad
    pickle_global(pkl, "collections", "OrderedDict");
    pkl.u8(')');
    pkl.u8('R');
    pkl.u8('t');
    pkl.u8('R');
    records.emplace_back("archive/data/" + id,
                         std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size()));
  }
  pkl.u8('u');  // SETITEMS
  pkl.u8('.');  // STOP
  records.insert(records.begin(), {"archive/data.pkl", pkl.b});
  records.emplace_back("archive/version", "3\n");

  Bytes zip, central;
  for (const auto& [name, data] : records) {
    const uint32_t crc = static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size())));
    const uint32_t offset = static_cast<uint32_t>(zip.b.size());
    const size_t unpadded = offset + 30 + name.size() + 4;
    const uint16_t pad = static_cast<uint16_t>((64 - unpadded % 64) % 64);
    zip.u32(0x04034b50); zip.u16(20); zip.u16(0); zip.u16(0); zip.u16(0); zip.u16(0);
    zip.u32(crc); zip.u32(static_cast<uint32_t>(data.size())); zip.u32(static_cast<uint32_t>(data.size()));
    zip.u16(static_cast<uint16_t>(name.size())); zip.u16(static_cast<uint16_t>(4 + pad));
    zip.str(name);
    zip.u16(0x4246); zip.u16(pad); zip.str(std::string(pad, 'Z'));  // padding extra field, as torch writes
    zip.str(data);
    central.u32(0x02014b50); central.u16(20); central.u16(20); central.u16(0); central.u16(0); central.u16(0); central.u16(0);
    central.u32(crc); central.u32(static_cast<uint32_t>(data.size())); central.u32(static_cast<uint32_t>(data.size()));
    central.u16(static_cast<uint16_t>(name.size())); central.u16(0); central.u16(0); central.u16(0); central.u16(0);
    central.u32(0); central.u32(offset);
    central.str(name);
  }
  const uint32_t cd_offset = static_cast<uint32_t>(zip.b.size());
  zip.str(central.b);
  zip.u32(0x06054b50); zip.u16(0); zip.u16(0);
  zip.u16(static_cast<uint16_t>(records.size())); zip.u16(static_cast<uint16_t>(records.size()));
  zip.u32(static_cast<uint32_t>(central.b.size())); zip.u32(cd_offset); zip.u16(0);
  std::ofstream(file, std::ios::binary).write(zip.b.data(), static_cast<std::streamsize>(zip.b.size()));
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
