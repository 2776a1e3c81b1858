#include "llm/export.h"

#include <fmt/format.h>

#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "io/error.h"
#include "llm/model.h"
#include "llm/options.h"

namespace iadgpt::llm {
namespace {

const char* hf_dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default: throw InputError(fmt::format("cannot write {} weights as a Hugging Face checkpoint", c10::toString(dtype)));
  }
}

nlohmann::json config_json(const LlamaConfig& c, at::ScalarType dtype) {
  nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}},
                      {"model_type", c.model_type},
                      {"vocab_size", c.vocab_size},
                      {"hidden_size", c.hidden_size},
                      {"intermediate_size", c.intermediate_size},
                      {"num_hidden_layers", c.num_layers},
                      {"num_attention_heads", c.num_heads},
                      {"num_key_value_heads", c.num_kv_heads},
                      {"max_position_embeddings", c.max_position_embeddings},
                      {"rms_norm_eps", c.rms_norm_eps},
                      {"rope_theta", c.rope_theta},
                      {"hidden_act", "silu"},
                      {"tie_word_embeddings", c.tie_word_embeddings},
                      {"bos_token_id", c.bos_token_id},
                      {"torch_dtype", hf_dtype_name(dtype)}};
  j["eos_token_id"] = c.eos_token_ids.size() == 1 ? nlohmann::json(c.eos_token_ids[0]) : nlohmann::json(c.eos_token_ids);
  if (c.head_dim_override > 0) j["head_dim"] = c.head_dim_override;
  if (c.rope_linear_factor != 1.0) j["rope_scaling"] = {{"type", "linear"}, {"factor", c.rope_linear_factor}};
  return j;
}

}  // namespace

void save_hf_checkpoint(const std::filesystem::path& dir, const LlamaConfig& config, const LlamaWeights& w,
                        const nlohmann::json& extra) {
  for (const auto& L : w.layers) {
    for (const auto* q : {&L.q_wq, &L.q_wk, &L.q_wv, &L.q_wo, &L.q_gate, &L.q_up, &L.q_down}) {
      if (q->defined()) throw InputError("save_hf_checkpoint: the weights are quantized; write them before quantizing");
    }
  }
  std::filesystem::create_directories(dir);
  io::TensorMap t{{"model.embed_tokens.weight", w.embed}, {"model.norm.weight", w.norm}};
  if (!config.tie_word_embeddings) t["lm_head.weight"] = w.lm_head;
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const auto& L = w.layers[l];
    const auto p = fmt::format("model.layers.{}.", l);
    t[p + "input_layernorm.weight"] = L.attn_norm;
    t[p + "post_attention_layernorm.weight"] = L.ffn_norm;
    t[p + "self_attn.q_proj.weight"] = L.wq;
    t[p + "self_attn.k_proj.weight"] = L.wk;
    t[p + "self_attn.v_proj.weight"] = L.wv;
    t[p + "self_attn.o_proj.weight"] = L.wo;
    t[p + "mlp.gate_proj.weight"] = L.w_gate;
    t[p + "mlp.up_proj.weight"] = L.w_up;
    t[p + "mlp.down_proj.weight"] = L.w_down;
  }
  io::save_safetensors(dir / "model.safetensors", t, {{"format", "pt"}});
  auto j = config_json(config, w.embed.scalar_type());
  j.update(extra);
  io::write_file_atomic(dir / "config.json", j.dump(1) + "\n");
}

namespace {

// The stored quantized checkpoint of `w` (quantized, or quantized here to `format` matrix by
// matrix: quantized_tensor_plan), written one tensor at a time: the header first, then each
// tensor as it is made, so that no more than one matrix's quants are held.
void write_quantized(const std::filesystem::path& dir, const LlamaConfig& config, LlamaWeights& w,
                     nn::QuantFormat format, const nlohmann::json& extra,
                     const std::function<void(int64_t, int64_t)>& progress = {}) {
  if (w.quant != nn::QuantFormat::None) format = w.quant;
  const auto plan = quantized_tensor_plan(config, w, format);
  std::vector<io::SafetensorsEntry> entries;
  for (const auto& t : plan) entries.push_back({t.name, t.dtype, t.shape});
  const std::string name = nn::quant_format_name(format);
  std::filesystem::create_directories(dir);
  io::SafetensorsWriter file(dir / "model.safetensors", entries, {{"format", "pt"}, {kQuantKey, name}});
  for (size_t i = 0; i < plan.size(); ++i) {
    file.write(plan[i].name, plan[i].make());
    if (progress) progress(static_cast<int64_t>(i + 1), static_cast<int64_t>(plan.size()));
  }
  file.commit();
  auto j = config_json(config, at::kBFloat16);
  j.update(extra);
  j[kQuantKey] = name;
  io::write_file_atomic(dir / "config.json", j.dump(1) + "\n");
}

}  // namespace

void save_quantized_checkpoint(const std::filesystem::path& dir, const LlamaConfig& config, const LlamaWeights& w,
                               const nlohmann::json& extra) {
  if (w.quant == nn::QuantFormat::None) throw InputError("save_quantized_checkpoint: the weights are not quantized");
  auto handles = w;  // the plan takes its tensors by reference; the caller's stay as they are
  write_quantized(dir, config, handles, w.quant, extra);
}

void quantize_checkpoint(const std::filesystem::path& in, nn::QuantFormat format, const std::filesystem::path& out,
                         const std::function<void(int64_t, int64_t)>& progress) {
  if (format == nn::QuantFormat::None) throw InputError("quantize: no format given (expected q8 or q4)");
  if (!std::filesystem::is_directory(in))
    throw InputError(fmt::format("{}: no such model directory", in.string()));
  if (!std::filesystem::exists(in / "config.json"))
    throw InputError(fmt::format("{}: config.json not found (a Hugging Face model directory or a bundle is expected)",
                                 (in / "config.json").string()));
  if (const auto stored = stored_quant_format(in / "config.json"); stored != nn::QuantFormat::None)
    throw InputError(fmt::format("{}: already quantized ({}); quantize the unquantized checkpoint instead", in.string(),
                                 nn::quant_format_name(stored)));
  // Read lazily (a safetensors source stays mapped) and written matrix by matrix: memory holds
  // about one matrix, not the quantized model.
  auto model = load_model(in, {.dtype = source_dtype(in)});
  write_quantized(out, model.config, model.weights, format, nlohmann::json::object(), progress);
  if (std::filesystem::exists(in / "tokenizer.model"))
    std::filesystem::copy_file(in / "tokenizer.model", out / "tokenizer.model",
                               std::filesystem::copy_options::overwrite_existing);
}

}  // namespace iadgpt::llm
