// LLaMA-family hyper-parameters, read from a Hugging Face `config.json` (LLaMA, LLaMA-2, Vicuna,
// TinyLlama, Mistral-style GQA). One struct drives the whole decoder (METHOD §1.9/§1.10 use it).
//
//   auto cfg = iadgpt::llm::LlamaConfig::from_file("vicuna-7b/config.json");
//   cfg.head_dim();  // 128
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace iadgpt::llm {

struct LlamaConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;         // D, the LLM width (rows of injected embeddings)
  int64_t intermediate_size = 11008;  // F, SwiGLU width
  int64_t num_layers = 32;
  int64_t num_heads = 32;
  int64_t num_kv_heads = 32;  // < num_heads: grouped-query attention
  int64_t head_dim_override = 0;  // `head_dim` in newer configs; 0 = hidden_size / num_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  double rope_linear_factor = 1.0;  // rope_scaling {"type": "linear", "factor": f}
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 1;
  std::vector<int64_t> eos_token_ids{2};
  std::string model_type = "llama";

  int64_t head_dim() const { return head_dim_override > 0 ? head_dim_override : hidden_size / num_heads; }
  int64_t q_dim() const { return num_heads * head_dim(); }
  int64_t kv_dim() const { return num_kv_heads * head_dim(); }

  // Throws InputError naming `source` and the key for missing/unsupported values.
  static LlamaConfig from_json(const nlohmann::json& j, const std::string& source);
  static LlamaConfig from_file(const std::filesystem::path& path);

  // Real-size architectures for `iadgpt bench llm` ("llama-7b", "tinyllama-1.1b").
  static LlamaConfig preset(const std::string& name);
  int64_t parameter_count() const;
};

}  // namespace iadgpt::llm
