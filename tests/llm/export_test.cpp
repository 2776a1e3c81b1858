// llm::save_hf_checkpoint writes a directory that load_model reads back as the same decoder.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <fstream>

#include "common/shared.h"
#include "llm/export.h"
#include "llm/model.h"

using namespace iadgpt;

namespace {

llm::LlamaConfig gqa_config() {
  llm::LlamaConfig c;
  c.vocab_size = 96, c.hidden_size = 64, c.intermediate_size = 160, c.num_layers = 2;
  c.num_heads = 4, c.num_kv_heads = 2;  // grouped-query: k/v projections narrower than q
  c.max_position_embeddings = 32, c.rms_norm_eps = 1e-5, c.rope_theta = 500000.0;
  c.rope_linear_factor = 2.0, c.eos_token_ids = {2, 7};
  return c;
}

}  // namespace

TEST(Export, AWrittenCheckpointLoadsAsTheSameDecoder) {
  const auto config = gqa_config();
  const auto weights = llm::random_weights(config, torch::kFloat32, 11);
  const auto dir = test::scratch("llm-export") / "llm";
  llm::save_hf_checkpoint(dir, config, weights, {{"note", "test"}});

  const auto loaded = llm::load_model(dir);
  // Every hyper-parameter from_json reads comes back as written.
  EXPECT_EQ(loaded.config.num_kv_heads, 2);
  EXPECT_EQ(loaded.config.rope_theta, 500000.0);
  EXPECT_EQ(loaded.config.rope_linear_factor, 2.0);
  EXPECT_EQ(loaded.config.eos_token_ids, (std::vector<int64_t>{2, 7}));
  EXPECT_EQ(loaded.config.rms_norm_eps, 1e-5);
  // fp32 written and read: bit-identical tensors under their HF names.
  EXPECT_TRUE(torch::equal(loaded.weights.embed, weights.embed));
  EXPECT_TRUE(torch::equal(loaded.weights.lm_head, weights.lm_head));
  EXPECT_TRUE(torch::equal(loaded.weights.layers[1].wk, weights.layers[1].wk));
  EXPECT_TRUE(torch::equal(loaded.weights.layers[1].w_down, weights.layers[1].w_down));
  EXPECT_TRUE(torch::equal(loaded.weights.layers[0].ffn_norm, weights.layers[0].ffn_norm));
  // And the decoder computes what the in-memory one computes (the same fp32 kernels: exact).
  const llm::LlamaModel original(config, weights, torch::kFloat32);
  const std::vector<int64_t> ids = {1, 5, 9, 42, 3};
  llm::KvCache a(original, 16), b(loaded, 16);
  EXPECT_TRUE(torch::equal(llm::forward_tokens(original, a, ids, llm::Logits::All),
                           llm::forward_tokens(loaded, b, ids, llm::Logits::All)));
  std::ifstream in(dir / "config.json");
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j.at("torch_dtype"), "float32");
  EXPECT_EQ(j.at("note"), "test");
}

TEST(Export, ATiedHeadIsWrittenOnceAndLoadsTied) {
  auto config = gqa_config();
  config.tie_word_embeddings = true;
  auto weights = llm::random_weights(config, torch::kBFloat16, 5);
  const auto dir = test::scratch("llm-export-tied") / "llm";
  llm::save_hf_checkpoint(dir, config, weights);
  const auto loaded = llm::load_model(dir, {.dtype = torch::kBFloat16});
  EXPECT_TRUE(loaded.weights.lm_head.is_same(loaded.weights.embed));
  EXPECT_TRUE(torch::equal(loaded.weights.embed, weights.embed));
  std::ifstream in(dir / "config.json");
  EXPECT_EQ(nlohmann::json::parse(in).at("torch_dtype"), "bfloat16");
}
