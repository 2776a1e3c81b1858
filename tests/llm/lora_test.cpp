// LoRA: the PEFT adapter and the PandaGPT-style delta (same values, fp16, `.default.` keys) must
// reproduce llama_tiny's logits_lora, merged (W + α/r·B·A) or kept separate.
#include <gtest/gtest.h>

#include "io/error.h"
#include "llm/lora.h"
#include "llm_test_util.h"

namespace llm = iadgpt::llm;
namespace t = iadgpt::test;

namespace {
constexpr double kFp32Tol = 1e-4;  // acceptance bound; see model_test.cpp

double worst_lora_diff(const llm::LlamaModel& m) {
  const auto& ref = t::llama_tiny_reference();
  double worst = 0;
  for (const char* name : {"seq0", "seq1", "seq2"}) {
    const auto ids = t::to_ids(ref.at(std::string(name) + ".input_ids"));
    llm::KvCache cache(m, 256);
    const int64_t split = static_cast<int64_t>(ids.size()) / 2;
    std::span<const int64_t> s(ids);
    auto a = llm::forward_tokens(m, cache, s.first(split), llm::Logits::All);
    auto b = llm::forward_tokens(m, cache, s.subspan(split), llm::Logits::All);
    worst = std::max(worst, t::max_abs_diff(torch::cat({a, b}), ref.at(std::string(name) + ".logits_lora")));
  }
  return worst;
}
}  // namespace

TEST(Lora, PeftAdapterMergedMatchesReference) {
  auto m = llm::load_model(t::llama_tiny());
  auto lora = llm::load_peft_adapter(t::llama_tiny("lora"));
  EXPECT_EQ(lora.rank, 8);
  EXPECT_DOUBLE_EQ(lora.scale, 2.0);
  EXPECT_EQ(lora.modules.size(), 8u);
  llm::merge_lora(m, lora);
  EXPECT_LE(worst_lora_diff(m), kFp32Tol);
  const auto& ref = t::llama_tiny_reference();
  EXPECT_LE(t::max_abs_diff(m.weights.layers[1].wk, ref.at("debug.lora_merged.model.layers.1.self_attn.k_proj.weight")), 1e-6);
}

TEST(Lora, PeftAdapterKeptSeparateMatchesReference) {
  auto m = llm::load_model(t::llama_tiny());
  llm::attach_lora(m, llm::load_lora(t::llama_tiny("lora")));
  EXPECT_TRUE(m.weights.layers[0].lora_q.defined());
  EXPECT_LE(worst_lora_diff(m), kFp32Tol);
}

TEST(Lora, PandaGptDeltaMergedMatchesReference) {
  // r and alpha are not in a delta file; the fixture's are r 8 (from the tensors), alpha 16.
  auto m = llm::load_model(t::llama_tiny());
  auto delta = llm::load_lora(t::llama_tiny("pandagpt_delta/pytorch_model.pt"), 16.0);
  EXPECT_EQ(delta.rank, 8);
  EXPECT_EQ(delta.modules.size(), 8u);
  EXPECT_EQ(delta.other.count("llama_proj.weight"), 1u);  // left for the model bundle
  llm::merge_lora(m, delta);
  EXPECT_LE(worst_lora_diff(m), kFp32Tol);
}

TEST(Lora, WrongAlphaIsDetectableByTheReference) {
  // Guards the test itself: a mis-scaled LoRA must not pass the tolerance.
  auto m = llm::load_model(t::llama_tiny());
  llm::merge_lora(m, llm::load_lora(t::llama_tiny("pandagpt_delta/pytorch_model.pt"), 32.0));
  EXPECT_GT(worst_lora_diff(m), 1e-2);
}

TEST(Lora, AdapterForAnotherModelIsRejected) {
  // An A matrix whose input width is not the model's: the error names the key.
  auto m = llm::load_model(t::llama_tiny());
  auto lora = llm::load_peft_adapter(t::llama_tiny("lora"));
  lora.modules[0].a = torch::zeros({8, 65});
  try {
    llm::merge_lora(m, lora);
    FAIL() << "expected InputError";
  } catch (const iadgpt::InputError& e) {
    EXPECT_NE(std::string(e.what()).find(lora.modules[0].key), std::string::npos) << e.what();
  }
}

TEST(Lora, AdapterWithMoreLayersThanTheModelIsRejected) {
  auto m = llm::load_model(t::llama_tiny());
  auto lora = llm::load_peft_adapter(t::llama_tiny("lora"));
  lora.modules[0].layer = 2;
  EXPECT_THROW(llm::merge_lora(m, lora), iadgpt::InputError);
}
