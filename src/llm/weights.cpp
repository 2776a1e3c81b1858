#include "llm/weights.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <set>

#include "io/error.h"
#include "io/mapped_file.h"
#include "nn/weights.h"

namespace iadgpt::llm {
namespace {

using Shape = std::vector<int64_t>;

// One row per tensor of a decoder layer: HF name (after `model.layers.{L}.`) -> field, shape.
struct LayerKey {
  const char* name;
  torch::Tensor LayerWeights::*field;
  Shape (*shape)(const LlamaConfig&);
  bool is_norm;
  nn::QuantMatrix LayerWeights::*quant = nullptr;  // projections: their quantized form
  LoraPair LayerWeights::*lora = nullptr;      // projections: their unmerged adapter
};

const LayerKey kHfLayerKeys[] = {
    {"input_layernorm.weight", &LayerWeights::attn_norm, [](const LlamaConfig& c) { return Shape{c.hidden_size}; }, true},
    {"self_attn.q_proj.weight", &LayerWeights::wq, [](const LlamaConfig& c) { return Shape{c.q_dim(), c.hidden_size}; }, false, &LayerWeights::q_wq, &LayerWeights::lora_q},
    {"self_attn.k_proj.weight", &LayerWeights::wk, [](const LlamaConfig& c) { return Shape{c.kv_dim(), c.hidden_size}; }, false, &LayerWeights::q_wk, &LayerWeights::lora_k},
    {"self_attn.v_proj.weight", &LayerWeights::wv, [](const LlamaConfig& c) { return Shape{c.kv_dim(), c.hidden_size}; }, false, &LayerWeights::q_wv, &LayerWeights::lora_v},
    {"self_attn.o_proj.weight", &LayerWeights::wo, [](const LlamaConfig& c) { return Shape{c.hidden_size, c.q_dim()}; }, false, &LayerWeights::q_wo, &LayerWeights::lora_o},
    {"post_attention_layernorm.weight", &LayerWeights::ffn_norm, [](const LlamaConfig& c) { return Shape{c.hidden_size}; }, true},
    {"mlp.gate_proj.weight", &LayerWeights::w_gate, [](const LlamaConfig& c) { return Shape{c.intermediate_size, c.hidden_size}; }, false, &LayerWeights::q_gate, &LayerWeights::lora_gate},
    {"mlp.up_proj.weight", &LayerWeights::w_up, [](const LlamaConfig& c) { return Shape{c.intermediate_size, c.hidden_size}; }, false, &LayerWeights::q_up, &LayerWeights::lora_up},
    {"mlp.down_proj.weight", &LayerWeights::w_down, [](const LlamaConfig& c) { return Shape{c.hidden_size, c.intermediate_size}; }, false, &LayerWeights::q_down, &LayerWeights::lora_down},
};

// Model-level tensors.
constexpr const char* kEmbedKey = "model.embed_tokens.weight";
constexpr const char* kNormKey = "model.norm.weight";
constexpr const char* kHeadKey = "lm_head.weight";


torch::Tensor take(const io::TensorMap& tensors, const std::string& key, const Shape& shape,
                   const std::string& source, torch::Dtype dtype, std::set<std::string>& used) {
  auto it = tensors.find(key);
  if (it == tensors.end())
    throw InputError(fmt::format("{}: missing tensor '{}' (expected shape {})", source, key, shape_text(shape)));
  const torch::Tensor& t = it->second;
  if (!t.is_floating_point())
    throw InputError(fmt::format("{}: tensor '{}' has dtype {}, expected a floating-point type", source, key,
                                 std::string(c10::toString(t.scalar_type()))));
  if (t.sizes() != at::IntArrayRef(shape))
    throw InputError(fmt::format("{}: tensor '{}' has shape {}, expected {} from the config", source, key,
                                 shape_text(t.sizes()), shape_text(shape)));
  used.insert(key);
  auto out = nn::convert_weight(t, dtype);
  // A vector kept in its stored dtype (the fp32 norms) would alias the checkpoint's memory map
  // and keep the whole mapped file resident after its matrices were converted: copy it (it is small).
  if (shape.size() == 1 && out.is_alias_of(t)) out = out.clone();
  return out;
}

// A projection stored quantized (README "Stored quantized checkpoints"): `<key>.q` and
// `<key>.scale`, validated against the shape the config implies; errors name the key.
nn::QuantMatrix take_quant(const io::TensorMap& tensors, const std::string& key, const Shape& shape, nn::QuantFormat format,
                       const std::string& source, std::set<std::string>& used) {
  const auto q_key = nn::quant_codes_key(key), s_key = nn::quant_scale_key(key);
  for (const auto& k : {q_key, s_key})
    if (!tensors.count(k))
      throw InputError(fmt::format("{}: missing tensor '{}' (the checkpoint is stored quantized, {}; weight shape {})",
                                   source, k, nn::quant_format_name(format), shape_text(shape)));
  try {
    auto m = nn::quant_matrix_from_tensors(format, tensors.at(q_key), tensors.at(s_key), shape[0], shape[1], key);
    used.insert(q_key);
    used.insert(s_key);
    return m;
  } catch (const InputError& e) {
    throw InputError(fmt::format("{}: {}", source, e.what()));
  }
}

// The quantization policy, written once (quantizing at load, quantize_weights, the stored plan,
// reading a stored checkpoint): the format a matrix of input width `cols` takes when the model's
// projections go to `format` (none: not quantized). A projection takes `format`; the untied head
// takes q8 for every format (weights.h quantize_weights says why). A width that does not divide
// into blocks of 32 keeps the matrix in the model dtype, as llama.cpp falls back to another type
// for such tensors (real LLaMA shapes all divide).
nn::QuantFormat matrix_format(int64_t cols, nn::QuantFormat format, bool head) {
  if (format == nn::QuantFormat::None || cols % nn::kQuantBlock != 0) return nn::QuantFormat::None;
  return head ? nn::QuantFormat::Q8 : format;
}

// A quantized projection would drop its unmerged adapter: refused, naming it.
void require_merged(const LayerWeights& L, const LayerKey& row) {
  if ((L.*row.lora).defined())
    throw InputError(fmt::format("quantize: '{}' has an unmerged LoRA adapter; merge it first", row.name));
}

// Tensors that HF checkpoints may carry but that are recomputed here.
bool ignorable(const std::string& key) { return key.ends_with(".rotary_emb.inv_freq"); }

}  // namespace

LlamaWeights weights_from_tensors(const io::TensorMap& tensors, const LlamaConfig& c, const std::string& source,
                                  torch::Dtype dtype, nn::QuantFormat quant, nn::QuantFormat stored) {
  if (stored != nn::QuantFormat::None && (dtype != torch::kBFloat16 || (quant != nn::QuantFormat::None && quant != stored)))
    throw InputError(fmt::format("{}: the weights are stored quantized ({}); load them with dtype bf16 and no other format",
                                 source, nn::quant_format_name(stored)));
  // Shapes are validated for every key before any conversion work is done.
  LlamaWeights w;
  std::set<std::string> used;
  w.embed = take(tensors, kEmbedKey, {c.vocab_size, c.hidden_size}, source, dtype, used);
  w.layers.resize(c.num_layers);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    for (const auto& row : kHfLayerKeys) {
      const auto key = fmt::format("model.layers.{}.{}", l, row.name);
      const auto cols = row.shape(c)[1];
      if (!row.is_norm && matrix_format(cols, stored, false) != nn::QuantFormat::None) {
        w.layers[l].*row.quant = take_quant(tensors, key, row.shape(c), stored, source, used);
        continue;
      }
      // Quantized projections are quantized from an fp32 copy of one matrix at a time.
      const auto format = row.is_norm ? nn::QuantFormat::None : matrix_format(cols, quant, false);
      auto t = take(tensors, key, row.shape(c), source, row.is_norm || format != nn::QuantFormat::None ? torch::kFloat32 : dtype, used);
      if (format != nn::QuantFormat::None) w.layers[l].*row.quant = nn::quantize(t, format);
      else w.layers[l].*row.field = std::move(t);
    }
  }
  w.norm = take(tensors, kNormKey, {c.hidden_size}, source, torch::kFloat32, used);
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed;
    // Some exporters write the tied copy too; it must then really be the embedding.
    if (auto it = tensors.find(kHeadKey); it != tensors.end()) {
      used.insert(kHeadKey);
      if (it->second.sizes() != w.embed.sizes() || !torch::equal(it->second.to(dtype), w.embed))
        throw InputError(fmt::format("{}: config.json has tie_word_embeddings true but tensor '{}' differs from '{}'",
                                     source, kHeadKey, kEmbedKey));
    }
  } else if (const auto head_stored = matrix_format(c.hidden_size, stored, true); head_stored != nn::QuantFormat::None) {
    w.q_lm_head = take_quant(tensors, kHeadKey, {c.vocab_size, c.hidden_size}, head_stored, source, used);
  } else {
    const auto head = matrix_format(c.hidden_size, quant, true);
    w.lm_head = take(tensors, kHeadKey, {c.vocab_size, c.hidden_size}, source, head != nn::QuantFormat::None ? torch::kFloat32 : dtype, used);
    if (head != nn::QuantFormat::None) w.q_lm_head = nn::quantize(w.lm_head, head), w.lm_head = torch::Tensor();
  }
  w.quant = stored != nn::QuantFormat::None ? stored : quant;
  for (const auto& [key, t] : tensors) {
    if (used.count(key) || ignorable(key)) continue;
    throw InputError(fmt::format(
        "{}: unexpected tensor '{}' {} (config: {} layers, hidden_size {}{}); config.json and the weights disagree",
        source, key, shape_text(t.sizes()), c.num_layers, c.hidden_size,
        stored == nn::QuantFormat::None ? "" : fmt::format(", stored {}", nn::quant_format_name(stored))));
  }
  return w;
}

LlamaWeights random_weights(const LlamaConfig& c, torch::Dtype dtype, uint64_t seed) {
  // A small random pool copied into every matrix: values look like trained weights (std 0.02)
  // while filling 13 GB costs one memory pass, and no fp32 copy of any matrix ever exists.
  torch::manual_seed(seed);
  const auto pool = torch::randn({1 << 20}, torch::kFloat32).mul_(0.02).to(dtype);
  int64_t offset = 0;
  auto make = [&](Shape shape, torch::Dtype dt) {
    auto t = torch::empty(shape, torch::TensorOptions().dtype(dt));
    const auto src = pool.to(dt);
    // Plain memcpy: first touch of the fresh pages dominates; no tensor op overhead per chunk.
    auto* dst = static_cast<char*>(t.data_ptr());
    const auto* from = static_cast<const char*>(src.data_ptr());
    const int64_t total = t.numel() * t.element_size(), pool_bytes = src.numel() * src.element_size();
    for (int64_t i = 0; i < total;) {
      const int64_t start = (offset * src.element_size()) % pool_bytes;
      const int64_t n = std::min(total - i, pool_bytes - start);
      std::memcpy(dst + i, from + start, static_cast<size_t>(n));
      i += n;
      offset += 7919;  // shift the pool between chunks so matrices are not periodic in rows
    }
    return t;
  };
  auto ones = [&](int64_t n) { return torch::ones({n}, torch::kFloat32); };
  LlamaWeights w;
  w.embed = make({c.vocab_size, c.hidden_size}, dtype);
  w.layers.resize(c.num_layers);
  for (auto& L : w.layers) {
    L.attn_norm = ones(c.hidden_size);
    L.wq = make({c.q_dim(), c.hidden_size}, dtype);
    L.wk = make({c.kv_dim(), c.hidden_size}, dtype);
    L.wv = make({c.kv_dim(), c.hidden_size}, dtype);
    L.wo = make({c.hidden_size, c.q_dim()}, dtype);
    L.ffn_norm = ones(c.hidden_size);
    L.w_gate = make({c.intermediate_size, c.hidden_size}, dtype);
    L.w_up = make({c.intermediate_size, c.hidden_size}, dtype);
    L.w_down = make({c.hidden_size, c.intermediate_size}, dtype);
  }
  w.norm = ones(c.hidden_size);
  w.lm_head = c.tie_word_embeddings ? w.embed : make({c.vocab_size, c.hidden_size}, dtype);
  return w;
}

void quantize_weights(LlamaWeights& w, nn::QuantFormat format) {
  if (format == nn::QuantFormat::None) return;
  if (w.quant != nn::QuantFormat::None)
    throw InputError(fmt::format("the weights are already quantized ({})", nn::quant_format_name(w.quant)));
  // Frees each source matrix at once (or its pages, when it views a mapped checkpoint): peak
  // memory is one matrix more.
  auto replace = [](torch::Tensor& source, nn::QuantMatrix& quant, nn::QuantFormat matrix) {
    if (matrix == nn::QuantFormat::None) return;  // stays in the model dtype
    quant = nn::quantize(source, matrix);
    io::release_mapped_pages(source);
    source = torch::Tensor();
  };
  for (auto& L : w.layers) {
    for (const auto& row : kHfLayerKeys) {
      if (row.is_norm) continue;
      require_merged(L, row);
      replace(L.*row.field, L.*row.quant, matrix_format((L.*row.field).size(1), format, false));
    }
  }
  if (!w.lm_head.is_same(w.embed)) replace(w.lm_head, w.q_lm_head, matrix_format(w.lm_head.size(1), format, true));
  w.quant = format;
}

namespace {

// The plan's entries for one matrix: stored quantized (`quant` defined), quantized here to
// `format` (matrix_format's choice), or kept as bf16 (none).
void plan_matrix(std::vector<PlannedTensor>& plan, const std::string& key, torch::Tensor& source,
                 nn::QuantMatrix& quant, nn::QuantFormat format) {
  auto bf16 = [&source] { return source.to(torch::kBFloat16).contiguous(); };
  if (!quant.defined() && format == nn::QuantFormat::None) {
    plan.push_back({key, at::kBFloat16, source.sizes().vec(), bf16});
    return;
  }
  if (!quant.defined() && !source.defined())
    throw InputError(fmt::format("quantized checkpoint: '{}' is neither quantized nor present", key));
  if (quant.defined()) {
    plan.push_back({nn::quant_codes_key(key), quant.q.scalar_type(), quant.q.sizes().vec(), [&quant] { return quant.q; }});
    plan.push_back({nn::quant_scale_key(key), quant.scale.scalar_type(), quant.scale.sizes().vec(), [&quant] { return quant.scale; }});
    return;
  }
  const int64_t rows = source.size(0), cols = source.size(1);
  auto made = std::make_shared<nn::QuantMatrix>();  // between the two calls only
  const bool q8 = format == nn::QuantFormat::Q8;
  plan.push_back({nn::quant_codes_key(key), q8 ? at::kChar : at::kByte, {rows, q8 ? cols : cols / 2}, [&source, made, format] {
                    *made = nn::quantize(source, format);
                    io::release_mapped_pages(source);
                    source = torch::Tensor();
                    return made->q;
                  }});
  plan.push_back({nn::quant_scale_key(key), at::kHalf, {rows, cols / nn::kQuantBlock}, [made] {
                    auto scale = made->scale;
                    *made = nn::QuantMatrix();
                    return scale;
                  }});
}

}  // namespace

std::vector<PlannedTensor> quantized_tensor_plan(const LlamaConfig& c, LlamaWeights& w, nn::QuantFormat format) {
  if (w.quant != nn::QuantFormat::None) format = w.quant;  // stored parts (`format` unused)
  std::vector<PlannedTensor> plan;
  plan.push_back({kEmbedKey, at::kBFloat16, w.embed.sizes().vec(), [&w] { return w.embed.to(torch::kBFloat16).contiguous(); }});
  plan.push_back({kNormKey, at::kFloat, w.norm.sizes().vec(), [&w] { return w.norm.to(torch::kFloat32).contiguous(); }});
  for (size_t l = 0; l < w.layers.size(); ++l) {
    auto& L = w.layers[l];
    for (const auto& row : kHfLayerKeys) {
      const auto key = fmt::format("model.layers.{}.{}", l, row.name);
      if (row.is_norm) {
        auto& norm = L.*row.field;
        plan.push_back({key, at::kFloat, norm.sizes().vec(), [&norm] { return norm.to(torch::kFloat32).contiguous(); }});
        continue;
      }
      require_merged(L, row);
      const int64_t cols = (L.*row.quant).defined() ? (L.*row.quant).cols() : (L.*row.field).size(1);
      plan_matrix(plan, key, L.*row.field, L.*row.quant, matrix_format(cols, format, false));
    }
  }
  if (!c.tie_word_embeddings) plan_matrix(plan, kHeadKey, w.lm_head, w.q_lm_head, matrix_format(c.hidden_size, format, true));
  std::sort(plan.begin(), plan.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return plan;
}

io::TensorMap quantized_tensors(const LlamaConfig& c, const LlamaWeights& w) {
  if (w.quant == nn::QuantFormat::None) throw InputError("quantized_tensors: the weights are not quantized");
  auto handles = w;  // the plan takes its tensors by reference; the caller's stay as they are
  io::TensorMap out;
  for (const auto& t : quantized_tensor_plan(c, handles, w.quant)) out[t.name] = t.make();
  return out;
}

void finish_quantized(LlamaWeights& w) {
  const bool tied = w.lm_head.defined() && w.lm_head.is_same(w.embed);
  w.embed = w.embed.to(torch::kBFloat16).contiguous();
  if (tied) w.lm_head = w.embed;
  for (auto& L : w.layers)
    for (const auto& row : kHfLayerKeys)
      if (!row.is_norm && (L.*row.field).defined()) L.*row.field = (L.*row.field).to(torch::kBFloat16).contiguous();
  // An untied head left unquantized (matrix_format: its width does not divide into blocks).
  if (!tied && w.lm_head.defined()) w.lm_head = w.lm_head.to(torch::kBFloat16).contiguous();
}

int64_t weight_bytes(const LlamaWeights& w) {
  auto bytes = [](const torch::Tensor& t) { return t.defined() ? t.numel() * t.element_size() : int64_t{0}; };
  int64_t total = bytes(w.embed) + bytes(w.norm) + w.q_lm_head.bytes();
  if (!w.lm_head.is_same(w.embed)) total += bytes(w.lm_head);
  for (const auto& L : w.layers)
    for (const auto& row : kHfLayerKeys) total += bytes(L.*row.field) + (row.is_norm ? 0 : (L.*row.quant).bytes());
  return total;
}

}  // namespace iadgpt::llm
