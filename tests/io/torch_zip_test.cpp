// PyTorch zip / TorchScript checkpoints through the restricted unpickler: every fixture layout,
// equality across layouts, and refusal of anything that is not plain state-dict data.
#include <gtest/gtest.h>

#include <caffe2/serialize/inline_container.h>

#include <fstream>

#include "common/errors.h"
#include "common/shared.h"
#include "io/checkpoint.h"
#include "io/pickle.h"

namespace io = iadgpt::io;
namespace fs = std::filesystem;
using iadgpt::test::fixture;

using iadgpt::test::input_error_message;

namespace {

fs::path scratch() { return iadgpt::test::scratch("io-torchzip"); }

std::span<const uint8_t> as_bytes(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

// A storage loader for in-memory pickles: zeros of the requested size.
io::TensorMap unpickle(const std::string& pickle) {
  auto zeros = [](const std::string&, torch::Dtype dt, int64_t numel) { return torch::zeros({numel}, dt); };
  return io::unpickle_tensors(as_bytes(pickle), zeros, "test.pkl").tensors;
}

// Writes a zip archive in PyTorch's layout with `data.pkl` and the given extra records.
fs::path write_archive(const std::string& name, const std::string& pickle,
                       const std::map<std::string, std::string>& records = {}) {
  auto p = scratch() / name;
  caffe2::serialize::PyTorchStreamWriter w(p.string());
  w.writeRecord("data.pkl", pickle.data(), pickle.size());
  for (const auto& [k, v] : records) w.writeRecord(k, v.data(), v.size());
  w.writeEndOfFile();
  return p;
}

// Pickle of {'w': tensor(float32, [2]) on storage '0'} (protocol 2), as torch.save writes it.
const std::string kTinyStateDict =
    std::string("\x80" "\x02" "}q\x00" "X\x01" "\x00" "\x00" "\x00" "wq\x01" "ctorch._utils\x0a" "_rebuild_tensor_v2\x0a" "q\x02" "((X\x07" "\x00" "\x00" "\x00" "storageq\x03" "ctorch\x0a" "FloatStorage\x0a" "q\x04" "X\x01" "\x00" "\x00" "\x00" "0q\x05" "X\x03" "\x00" "\x00" "\x00" "cpuq\x06" "K\x02" "tq\x07" "QK\x00" "K\x02" "\x85" "q\x08" "K\x01" "\x85" "q\x09" "\x89" "ccollections\x0a" "OrderedDict\x0a" ")Rq\x0a" "tq\x0b" "Rq\x0c" "s.", 160);

void expect_same_tensors(const io::TensorMap& a, const io::TensorMap& b, bool same_dtype) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [k, v] : a) {
    ASSERT_TRUE(b.count(k)) << k;
    const auto& w = b.at(k);
    if (same_dtype) {
      EXPECT_EQ(v.scalar_type(), w.scalar_type()) << k;
    }
    EXPECT_EQ(v.sizes(), w.sizes()) << k;
    // Exact: the fixtures store values representable in F16 and BF16 (see their READMEs).
    EXPECT_TRUE(torch::equal(v.to(torch::kFloat32), w.to(torch::kFloat32))) << k;
  }
}

}  // namespace

TEST(TorchZip, HandWrittenPickleMatchesTorchSaveLayout) {
  ASSERT_EQ(kTinyStateDict.back(), '.');
  auto t = unpickle(kTinyStateDict);
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t.at("w").sizes(), (std::vector<int64_t>{2}));
  EXPECT_EQ(t.at("w").scalar_type(), torch::kFloat32);
}

TEST(TorchZip, ArchiveRoundTripReadsStorageRecord) {
  float values[2] = {1.5f, -2.0f};
  auto p = write_archive("tiny.pth", kTinyStateDict, {{"data/0", std::string(reinterpret_cast<char*>(values), 8)}});
  auto ck = io::load_checkpoint(p);
  EXPECT_EQ(ck.format, io::Format::TorchZip);
  EXPECT_TRUE(torch::equal(ck.tensors.at("w"), torch::tensor({1.5f, -2.0f})));
}

TEST(TorchZip, ImagebindPthNestedPtAndF16SafetensorsAreBitIdentical) {
  auto pth = io::load_checkpoint(fixture("imagebind_tiny/imagebind_tiny.pth"));
  auto nested = io::load_checkpoint(fixture("imagebind_tiny/imagebind_tiny_nested.pt"));
  auto st = io::load_checkpoint(fixture("imagebind_tiny/imagebind_tiny.safetensors"));
  EXPECT_EQ(pth.format, io::Format::TorchZip);
  ASSERT_EQ(pth.tensors.size(), 179u);
  for (const auto& [k, v] : pth.tensors) EXPECT_EQ(v.scalar_type(), torch::kFloat32) << k;
  for (const auto& [k, v] : st.tensors) EXPECT_EQ(v.scalar_type(), torch::kFloat16) << k;
  EXPECT_EQ(pth.tensors.at("modality_preprocessors.vision.rgbt_stem.proj.1.weight").sizes(),
            (std::vector<int64_t>{64, 3, 2, 14, 14}));
  EXPECT_EQ(pth.tensors.at("modality_postprocessors.text.1.log_logit_scale").dim(), 0);
  EXPECT_FLOAT_EQ(pth.tensors.at("modality_postprocessors.text.1.log_logit_scale").item<float>(), 2.65625f);  // README
  expect_same_tensors(pth.tensors, nested.tensors, true);  // {'model': sd} unwrapped to the same names
  expect_same_tensors(pth.tensors, st.tensors, false);
}

TEST(TorchZip, LlamaBinEqualsSafetensors) {
  auto bin = io::load_checkpoint(fixture("llama_tiny/bin/pytorch_model.bin"));
  auto dir = io::load_checkpoint(fixture("llama_tiny/bin"));
  auto st = io::load_checkpoint(fixture("llama_tiny/model.safetensors"));
  EXPECT_EQ(dir.format, io::Format::HuggingFaceDir);
  ASSERT_TRUE(dir.hf_config.has_value());
  expect_same_tensors(st.tensors, bin.tensors, true);
  expect_same_tensors(st.tensors, dir.tensors, true);
}

TEST(TorchZip, PandaGptDeltaParametersKeepF16) {
  auto d = io::load_checkpoint(fixture("llama_tiny/pandagpt_delta/pytorch_model.pt"));
  ASSERT_EQ(d.tensors.size(), 18u);  // 2 layers x 4 projections x (A, B) + llama_proj weight, bias
  const auto& a = d.tensors.at("llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight");
  EXPECT_EQ(a.scalar_type(), torch::kFloat16);
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{8, 64}));
  EXPECT_EQ(d.tensors.at("llama_proj.weight").sizes(), (std::vector<int64_t>{64, 32}));
}

TEST(TorchScript, OpenAiClipArchiveMatchesStateDictPth) {
  auto ts = io::load_checkpoint(fixture("openai_clip_tiny/openai_clip_tiny.pt"));
  auto pth = io::load_checkpoint(fixture("openai_clip_tiny/openai_clip_tiny.pth"));
  EXPECT_EQ(ts.format, io::Format::TorchScript);
  EXPECT_EQ(pth.format, io::Format::TorchZip);
  ASSERT_EQ(ts.tensors.size(), 89u);
  ASSERT_EQ(pth.tensors.size(), 86u);
  int f16 = 0, f32 = 0, i64 = 0;
  for (const auto& [k, v] : ts.tensors) {
    f16 += v.scalar_type() == torch::kFloat16;
    f32 += v.scalar_type() == torch::kFloat32;
    i64 += v.scalar_type() == torch::kInt64;
  }
  EXPECT_EQ(f16, 51);  // README: 51 F16, 35 F32, 3 I64
  EXPECT_EQ(f32, 35);
  EXPECT_EQ(i64, 3);
  EXPECT_EQ(ts.tensors.at("input_resolution").item<int64_t>(), 224);
  EXPECT_EQ(ts.tensors.at("context_length").item<int64_t>(), 77);
  EXPECT_EQ(ts.tensors.at("vocab_size").item<int64_t>(), 2048);
  EXPECT_EQ(ts.tensors.at("visual.transformer.resblocks.0.attn.in_proj_weight").sizes(), (std::vector<int64_t>{384, 128}));
  auto without_buffers = ts.tensors;
  for (const char* k : {"input_resolution", "context_length", "vocab_size"}) without_buffers.erase(k);
  expect_same_tensors(pth.tensors, without_buffers, true);
}

TEST(TorchScript, OpenAiClipArchiveMatchesHfDirectoryWhereNamesCoincide) {
  auto ts = io::load_checkpoint(fixture("openai_clip_tiny/openai_clip_tiny.pt"), {.float_dtype = torch::kFloat32});
  auto hf = io::load_checkpoint(fixture("openai_clip_tiny/hf"));
  EXPECT_EQ(hf.tensors.size(), 110u);
  ASSERT_TRUE(hf.hf_config.has_value());
  EXPECT_EQ((*hf.hf_config)["projection_dim"], 32);
  // OpenAI name -> HF name; projections are stored transposed by HF (Linear weight layout).
  const std::vector<std::tuple<std::string, std::string, bool>> same = {
      {"logit_scale", "logit_scale", false},
      {"token_embedding.weight", "text_model.embeddings.token_embedding.weight", false},
      {"positional_embedding", "text_model.embeddings.position_embedding.weight", false},
      {"visual.class_embedding", "vision_model.embeddings.class_embedding", false},
      {"visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", false},
      {"visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight", false},
      {"visual.ln_pre.weight", "vision_model.pre_layrnorm.weight", false},
      {"ln_final.bias", "text_model.final_layer_norm.bias", false},
      {"text_projection", "text_projection.weight", true},
      {"visual.proj", "visual_projection.weight", true},
  };
  for (const auto& [a, b, transposed] : same) {
    auto x = ts.tensors.at(a);
    EXPECT_EQ(x.scalar_type(), torch::kFloat32) << a << ": float_dtype conversion";
    if (transposed) x = x.t();
    EXPECT_TRUE(torch::equal(x, hf.tensors.at(b))) << a << " vs " << b;
  }
}

TEST(TorchZipRejects, ForbiddenGlobalOsSystem) {
  // GLOBAL 'os system', ('echo pwned',), REDUCE: the classic pickle exploit.
  const std::string evil = std::string("\x80\x02") + "cos\nsystem\nX\x0a\x00\x00\x00" + "echo pwned" + "\x85R.";
  auto msg = input_error_message([&] { unpickle(evil); });
  EXPECT_NE(msg.find("forbidden global 'os.system'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("GLOBAL"), std::string::npos) << msg;
  // The same inside a real archive.
  auto p = write_archive("evil.pth", evil);
  msg = input_error_message([&] { io::load_checkpoint(p); });
  EXPECT_NE(msg.find("forbidden global 'os.system'"), std::string::npos) << msg;
}

TEST(TorchZipRejects, StackGlobalBuiltinsEval) {
  const std::string evil = std::string("\x80\x04\x8c\x08") + "builtins" + "\x8c\x04" + "eval" + "\x93\x8c\x01x\x85R.";
  auto msg = input_error_message([&] { unpickle(evil); });
  EXPECT_NE(msg.find("forbidden global 'builtins.eval'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("STACK_GLOBAL"), std::string::npos) << msg;
}

TEST(TorchZipRejects, CallingAStorageTypeIsNotAllowed) {
  const std::string p = std::string("\x80\x02") + "ctorch\nFloatStorage\n)R.";
  auto msg = input_error_message([&] { unpickle(p); });
  EXPECT_NE(msg.find("REDUCE of 'torch.FloatStorage' is not allowed"), std::string::npos) << msg;
}

TEST(TorchZipRejects, TensorReadingPastItsStorage) {
  auto bad = kTinyStateDict;
  bad[bad.find("K\x02\x85")+1] = 3;  // size (3,) on a storage of 2 elements
  auto msg = input_error_message([&] { unpickle(bad); });
  EXPECT_NE(msg.find("reads element 2 of a storage of 2 elements"), std::string::npos) << msg;
}

TEST(TorchZipRejects, MissingStorageRecord) {
  auto p = write_archive("nostorage.pth", kTinyStateDict);
  auto msg = input_error_message([&] { io::load_checkpoint(p); });
  EXPECT_NE(msg.find("storage record 'data/0' is missing"), std::string::npos) << msg;
}

TEST(TorchZipRejects, StorageRecordTooShort) {
  auto p = write_archive("short.pth", kTinyStateDict, {{"data/0", std::string(4, '\0')}});
  auto msg = input_error_message([&] { io::load_checkpoint(p); });
  EXPECT_NE(msg.find("holds 4 bytes, the pickle needs 2 x 4 bytes"), std::string::npos) << msg;
}

TEST(TorchZipRejects, TruncatedPickle) {
  auto msg = input_error_message([&] { unpickle(kTinyStateDict.substr(0, 60)); });
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
}

TEST(TorchZipRejects, LegacyNonZipPickle) {
  auto p = scratch() / "legacy.pth";
  {
    // torch.save(..., _use_new_zipfile_serialization=False) starts with the pickled magic number.
    std::ofstream out(p, std::ios::binary);
    out << std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 15);
  }
  auto msg = input_error_message([&] { io::load_checkpoint(p); });
  EXPECT_NE(msg.find("legacy non-zip PyTorch checkpoint; re-save with torch.save(..., _use_new_zipfile_serialization=True)"),
            std::string::npos)
      << msg;
}

TEST(TorchZipRejects, CorruptZip) {
  auto p = scratch() / "corrupt.pth";
  {
    std::ofstream out(p, std::ios::binary);
    out << "PK\x03\x04 this is not really a zip file at all";
  }
  auto msg = input_error_message([&] { io::load_checkpoint(p); });
  EXPECT_NE(msg.find("not a readable PyTorch zip archive"), std::string::npos) << msg;
}

TEST(TorchZipRejects, StrideZeroViewLargerThanItsStorage) {
  auto bad = kTinyStateDict;
  bad[bad.find("K\x02\x85")+1] = 200;                  // size (200,) ...
  bad[bad.find("K\x01\x85")+1] = 0;                    // ... stride (0,) over 2 elements
  auto msg = input_error_message([&] { unpickle(bad); });
  EXPECT_NE(msg.find("has more elements than its storage (2)"), std::string::npos) << msg;
}

namespace {
// torch.save-style {'epoch': 3, 'state_dict': OrderedDict(enc.w [2,3], enc.wt = its transposed view,
// head.b [1] at offset 1), 'note': 'ok'} pickled by CPython with protocol 4 (FRAME, MEMOIZE,
// STACK_GLOBAL, SHORT_BINUNICODE), storages as HalfStorage '0' (6 elements) and '1' (2).
const std::string kProtocol4 = std::string(
    "\x80\x04\x95\x24\x01\x00\x00\x00\x00\x00\x00\x7d\x94\x28\x8c\x05\x65\x70\x6f\x63\x68\x94\x4b\x03"
    "\x8c\x0a\x73\x74\x61\x74\x65\x5f\x64\x69\x63\x74\x94\x8c\x0b\x63\x6f\x6c\x6c\x65\x63\x74\x69\x6f"
    "\x6e\x73\x94\x8c\x0b\x4f\x72\x64\x65\x72\x65\x64\x44\x69\x63\x74\x94\x93\x94\x29\x52\x94\x28\x8c"
    "\x05\x65\x6e\x63\x2e\x77\x94\x8c\x0c\x74\x6f\x72\x63\x68\x2e\x5f\x75\x74\x69\x6c\x73\x94\x8c\x12"
    "\x5f\x72\x65\x62\x75\x69\x6c\x64\x5f\x74\x65\x6e\x73\x6f\x72\x5f\x76\x32\x94\x93\x94\x28\x28\x8c"
    "\x07\x73\x74\x6f\x72\x61\x67\x65\x94\x8c\x05\x74\x6f\x72\x63\x68\x94\x8c\x0b\x48\x61\x6c\x66\x53"
    "\x74\x6f\x72\x61\x67\x65\x94\x93\x94\x8c\x01\x30\x94\x8c\x03\x63\x70\x75\x94\x4b\x06\x74\x94\x51"
    "\x4b\x00\x4b\x02\x4b\x03\x86\x94\x4b\x03\x4b\x01\x86\x94\x89\x68\x05\x29\x52\x94\x74\x94\x52\x94"
    "\x8c\x06\x65\x6e\x63\x2e\x77\x74\x94\x68\x0a\x28\x28\x68\x0b\x68\x0e\x68\x0f\x68\x10\x4b\x06\x74"
    "\x94\x51\x4b\x00\x4b\x03\x4b\x02\x86\x94\x4b\x01\x4b\x03\x86\x94\x89\x68\x05\x29\x52\x94\x74\x94"
    "\x52\x94\x8c\x06\x68\x65\x61\x64\x2e\x62\x94\x68\x0a\x28\x28\x68\x0b\x68\x0e\x8c\x01\x31\x94\x68"
    "\x10\x4b\x02\x74\x94\x51\x4b\x01\x4b\x01\x85\x94\x68\x21\x89\x68\x05\x29\x52\x94\x74\x94\x52\x94"
    "\x75\x8c\x04\x6e\x6f\x74\x65\x94\x8c\x02\x6f\x6b\x94\x75\x2e",
    303);
}  // namespace

TEST(TorchZip, Protocol4NestedStateDictWithSharedStorage) {
  auto arange = [](const std::string& key, torch::Dtype dt, int64_t numel) {
    return (torch::arange(numel) + (key == "1" ? 10 : 0)).to(dt);
  };
  auto r = io::unpickle_tensors(as_bytes(kProtocol4), arange, "p4.pkl");
  EXPECT_FALSE(r.torchscript);
  ASSERT_EQ(r.tensors.size(), 3u) << "only the state_dict entry, not epoch/note";
  const auto& w = r.tensors.at("enc.w");
  EXPECT_EQ(w.scalar_type(), torch::kFloat16);
  EXPECT_TRUE(torch::equal(w, torch::arange(6).reshape({2, 3}).to(torch::kFloat16)));
  EXPECT_TRUE(torch::equal(r.tensors.at("enc.wt"), w.t()));
  EXPECT_EQ(r.tensors.at("enc.wt").data_ptr(), w.data_ptr()) << "views of one storage share memory";
  EXPECT_EQ(r.tensors.at("head.b").item<float>(), 11.0f);  // storage '1' = [10, 11], offset 1
}
