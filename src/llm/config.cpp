#include "llm/config.h"

#include <fmt/format.h>

#include <fstream>

#include "io/error.h"

namespace iadgpt::llm {
namespace {

template <typename T>
T get_or(const nlohmann::json& j, const char* key, T fallback, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    throw InputError(fmt::format("{}: key '{}' has value {}, expected a {}", source, key, it->dump(),
                                 std::is_same_v<T, bool> ? "boolean" : "number"));
  }
}

int64_t require_positive(const nlohmann::json& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer() || it->get<int64_t>() <= 0)
    throw InputError(fmt::format("{}: key '{}' must be a positive integer, found {}", source, key,
                                 it == j.end() ? "nothing" : it->dump()));
  return it->get<int64_t>();
}

}  // namespace

LlamaConfig LlamaConfig::from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw InputError(fmt::format("{}: expected a JSON object", source));
  LlamaConfig c;
  c.model_type = get_or<std::string>(j, "model_type", "llama", source);
  if (c.model_type != "llama" && c.model_type != "mistral")
    throw InputError(fmt::format("{}: model_type '{}' is not supported (expected llama or mistral)",
                                 source, c.model_type));
  c.vocab_size = require_positive(j, "vocab_size", source);
  c.hidden_size = require_positive(j, "hidden_size", source);
  c.intermediate_size = require_positive(j, "intermediate_size", source);
  c.num_layers = require_positive(j, "num_hidden_layers", source);
  c.num_heads = require_positive(j, "num_attention_heads", source);
  c.num_kv_heads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                       ? require_positive(j, "num_key_value_heads", source)
                       : c.num_heads;
  c.head_dim_override = get_or<int64_t>(j, "head_dim", 0, source);
  c.max_position_embeddings = get_or<int64_t>(j, "max_position_embeddings", 2048, source);
  c.rms_norm_eps = get_or<double>(j, "rms_norm_eps", 1e-6, source);
  c.rope_theta = get_or<double>(j, "rope_theta", 10000.0, source);
  c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", false, source);
  c.bos_token_id = get_or<int64_t>(j, "bos_token_id", 1, source);
  if (auto it = j.find("eos_token_id"); it != j.end() && !it->is_null()) {
    c.eos_token_ids = it->is_array() ? it->get<std::vector<int64_t>>() : std::vector<int64_t>{it->get<int64_t>()};
  }
  if (auto act = get_or<std::string>(j, "hidden_act", "silu", source); act != "silu")
    throw InputError(fmt::format("{}: hidden_act '{}' is not supported (expected silu)", source, act));
  if (get_or<bool>(j, "attention_bias", false, source))
    throw InputError(fmt::format("{}: attention_bias true is not supported", source));
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    std::string type = it->value("type", it->value("rope_type", std::string{}));
    if (type != "linear")
      throw InputError(fmt::format("{}: rope_scaling type '{}' is not supported (expected linear)", source, type));
    c.rope_linear_factor = it->value("factor", 1.0);
    if (c.rope_linear_factor <= 0)
      throw InputError(fmt::format("{}: rope_scaling factor must be positive", source));
  }
  if (c.num_heads % c.num_kv_heads != 0)
    throw InputError(fmt::format("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                                 source, c.num_heads, c.num_kv_heads));
  if (c.head_dim_override == 0 && c.hidden_size % c.num_heads != 0)
    throw InputError(fmt::format("{}: hidden_size {} is not a multiple of num_attention_heads {}", source,
                                 c.hidden_size, c.num_heads));
  if (c.head_dim() % 2 != 0)
    throw InputError(fmt::format("{}: head dimension {} must be even for rotary embeddings", source, c.head_dim()));
  return c;
}

LlamaConfig LlamaConfig::from_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw InputError(fmt::format("{}: cannot open the model configuration", path.string()));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("{}: invalid JSON: {}", path.string(), e.what()));
  }
  return from_json(j, path.string());
}

LlamaConfig LlamaConfig::preset(const std::string& name) {
  LlamaConfig c;
  if (name == "llama-7b") {
    c.vocab_size = 32000, c.hidden_size = 4096, c.intermediate_size = 11008, c.num_layers = 32;
    c.num_heads = 32, c.num_kv_heads = 32, c.max_position_embeddings = 2048;
  } else if (name == "tinyllama-1.1b") {
    c.vocab_size = 32000, c.hidden_size = 2048, c.intermediate_size = 5632, c.num_layers = 22;
    c.num_heads = 32, c.num_kv_heads = 4, c.max_position_embeddings = 2048, c.rms_norm_eps = 1e-5;
  } else if (name == "llama-tiny") {  // tests: the shapes of a LLaMA at CPU-test size
    c.vocab_size = 512, c.hidden_size = 64, c.intermediate_size = 128, c.num_layers = 2;
    c.num_heads = 4, c.num_kv_heads = 2, c.max_position_embeddings = 512;
  } else {
    throw InputError(fmt::format("unknown architecture '{}' (expected llama-7b, tinyllama-1.1b or llama-tiny)", name));
  }
  return c;
}

int64_t LlamaConfig::parameter_count() const {
  const int64_t D = hidden_size, F = intermediate_size;
  const int64_t per_layer = D * q_dim() + 2 * D * kv_dim() + q_dim() * D + 3 * D * F + 2 * D;
  return vocab_size * D * (tie_word_embeddings ? 1 : 2) + num_layers * per_layer + D;
}

}  // namespace iadgpt::llm
