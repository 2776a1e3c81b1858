#include "llm/model.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>

#include "io/checkpoint.h"
#include "io/error.h"
#include "io/heap.h"
#include "llm/decode.h"
#include "llm/ops.h"
#include "nn/device.h"

namespace iadgpt::llm {
namespace {

// cos/sin(p / factor · theta^(-2i/hd)) for i < hd/2, computed in double then stored fp32
// (HF computes them in fp32; the difference is far below the 1e-4 logit tolerance).
std::pair<torch::Tensor, torch::Tensor> rope_table(const LlamaConfig& c) {
  const int64_t half = c.head_dim() / 2;
  auto inv_freq = torch::arange(0, half, torch::kFloat64).mul(-2.0 / c.head_dim());
  inv_freq = torch::pow(torch::full({}, c.rope_theta, torch::kFloat64), inv_freq);
  auto pos = torch::arange(0, c.max_position_embeddings, torch::kFloat64).div(c.rope_linear_factor);
  auto angles = torch::outer(pos, inv_freq);
  return {angles.cos().to(torch::kFloat32), angles.sin().to(torch::kFloat32)};
}

// y = x Wᵀ for quantized W (a block of tokens): nn::gemm_quant, int8 activations (q8: two passes).
// Its output lands in a buffer the cache keeps (fresh pages cost ~14 µs each to touch) and
// leaves as a copy in x's dtype.
torch::Tensor linear_quantized(const torch::Tensor& x, const nn::QuantMatrix& qw, KvCache& cache) {
  const int64_t rows = qw.rows(), cols = qw.cols();
  const auto x2 = x.reshape({-1, cols}).to(torch::kFloat32).contiguous();
  const int64_t n = x2.size(0);
  if (!cache.quant_out.defined() || cache.quant_out.numel() < n * rows)
    cache.quant_out = torch::empty({n * rows}, torch::kFloat32);
  nn::gemm_quant(qw, x2.data_ptr<float>(), n, cache.quant_out.data_ptr<float>(), nn::best_matvec_isa(), cache.quant_scratch);
  auto shape = x.sizes().vec();
  shape.back() = rows;
  return cache.quant_out.narrow(0, 0, n * rows).view(shape).to(x.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const nn::QuantMatrix& qw, KvCache& cache) {
  return qw.defined() ? linear_quantized(x, qw, cache) : torch::linear(x, w);
}

// y = x Wᵀ (+ LoRA kept separate). x is already in the weights' dtype.
torch::Tensor project(const torch::Tensor& x, const torch::Tensor& w, const nn::QuantMatrix& qw, const LoraPair& lora,
                      KvCache& cache) {
  auto y = linear(x, w, qw, cache);
  if (lora.defined()) y = y + torch::linear(torch::linear(x, lora.a), lora.b).mul(lora.scale);
  return y;
}

std::filesystem::path config_path_for(const std::filesystem::path& path) {
  return std::filesystem::is_directory(path) ? path / "config.json" : path.parent_path() / "config.json";
}

}  // namespace

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return torch::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  auto var = x.pow(2).mean(-1, /*keepdim=*/true);
  return x * torch::rsqrt(var + eps) * weight;
}

LlamaModel::LlamaModel(LlamaConfig c, LlamaWeights w, torch::Dtype dt, std::filesystem::path src)
    : config(std::move(c)), weights(std::move(w)), dtype(dt), source(std::move(src)) {
  std::tie(rope_cos, rope_sin) = rope_table(config);
}

torch::Tensor LlamaModel::embed(std::span<const int64_t> ids) const {
  for (int64_t id : ids)
    if (id < 0 || id >= config.vocab_size)
      throw InputError(fmt::format("token id {} is outside the vocabulary [0, {})", id, config.vocab_size));
  torch::Tensor index;
  {
    nn::PlannedSync planned;  // the ids' upload: a decode step's one planned host→device copy (nn::SyncCheck)
    index = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kInt64).to(device());
  }
  return weights.embed.index_select(0, index).to(torch::kFloat32);
}

LlamaModel load_model(const std::filesystem::path& path, const LoadOptions& options) {
  const auto config_file = config_path_for(path);
  if (!std::filesystem::exists(path))
    throw InputError(fmt::format("{}: no such model directory or file", path.string()));
  if (!std::filesystem::exists(config_file))
    throw InputError(fmt::format("{}: config.json not found (a Hugging Face model directory is expected)",
                                 config_file.string()));
  if (options.quant != nn::QuantFormat::None && options.dtype != torch::kBFloat16)
    throw InputError(fmt::format("{}: quantized weights ({}) need the bf16 dtype for the rest of the model",
                                 path.string(), nn::quant_format_name(options.quant)));
  auto config = LlamaConfig::from_file(config_file);
  const auto stored = stored_quant_format(config_file);
  auto ckpt = io::load_checkpoint(path);
  // The weights file says what it holds too: a config.json copied beside other weights must not
  // reinterpret them.
  const auto meta = ckpt.metadata.find(kQuantKey);
  const std::string file_says = meta == ckpt.metadata.end() ? "none" : meta->second;
  if (file_says != nn::quant_format_name(stored))
    throw InputError(fmt::format("{}: config.json says '{}' is {}, the weights' metadata says {}", path.string(), kQuantKey,
                                 nn::quant_format_name(stored), file_says));
  auto weights = weights_from_tensors(ckpt.tensors, config, path.string(), options.dtype, options.quant, stored);
  return LlamaModel(std::move(config), std::move(weights), options.dtype, path);
}

nn::QuantFormat stored_quant_format(const std::filesystem::path& config_file) {
  std::ifstream in(config_file);
  if (!in) throw InputError(fmt::format("{}: cannot open", config_file.string()));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("{}: invalid JSON: {}", config_file.string(), e.what()));
  }
  if (!j.is_object() || !j.contains(kQuantKey)) return nn::QuantFormat::None;
  if (!j.at(kQuantKey).is_string())
    throw InputError(fmt::format("{}: field '{}' must be a string (q8 or q4), found {}", config_file.string(), kQuantKey,
                                 j.at(kQuantKey).dump()));
  const auto f = nn::parse_quant_format(j.at(kQuantKey).get<std::string>(), fmt::format("{}: field '{}'", config_file.string(), kQuantKey));
  if (f == nn::QuantFormat::None)
    throw InputError(fmt::format("{}: field '{}' is 'none'; leave it out for unquantized weights", config_file.string(), kQuantKey));
  return f;
}

void quantize_model(LlamaModel& model, nn::QuantFormat format) {
  quantize_weights(model.weights, format);
  finish_quantized(model.weights);
  io::release_free_heap();  // the 16-bit matrices just replaced
  model.dtype = torch::kBFloat16;
}

void move_model(LlamaModel& model, const torch::Device& device) {
  auto& w = model.weights;
  if (!device.is_cpu() && w.quant != nn::QuantFormat::None)
    throw InputError(fmt::format("{}: {} weights run on the CPU only (their kernels are CPU kernels); load bf16 "
                                 "weights for {}", model.source.string(), nn::quant_format_name(w.quant),
                                 nn::device_name(device)));
  const bool tied = w.lm_head.defined() && w.lm_head.is_same(w.embed);
  for (auto* t : {&w.embed, &w.norm, &model.rope_cos, &model.rope_sin}) nn::to_device(*t, device);
  if (tied) w.lm_head = w.embed;  // still one tensor
  else nn::to_device(w.lm_head, device);
  for (auto& L : w.layers) {
    for (auto* t : {&L.attn_norm, &L.wq, &L.wk, &L.wv, &L.wo, &L.ffn_norm, &L.w_gate, &L.w_up, &L.w_down})
      nn::to_device(*t, device);
    for (auto* p : {&L.lora_q, &L.lora_k, &L.lora_v, &L.lora_o, &L.lora_gate, &L.lora_up, &L.lora_down}) {
      if (!p->defined()) continue;
      p->a = p->a.to(device);
      p->b = p->b.to(device);
    }
  }
}

KvCache::KvCache(const LlamaModel& m, int64_t capacity) {
  const auto& c = m.config;
  capacity = std::min(capacity, m.max_positions());
  // torch::empty: pages are touched only as positions fill, so a large capacity costs nothing up front.
  auto opts = torch::TensorOptions().dtype(m.dtype).device(m.device());
  k = torch::empty({c.num_layers, c.num_kv_heads, capacity, c.head_dim()}, opts);
  v = torch::empty({c.num_layers, c.num_kv_heads, capacity, c.head_dim()}, opts);
}

torch::Tensor embed_segments(const LlamaModel& model, std::span<const Segment> segments) {
  std::vector<torch::Tensor> parts;
  for (size_t i = 0; i < segments.size(); ++i) {
    const auto& s = segments[i];
    if (s.embeddings.defined()) {
      if (s.embeddings.dim() != 2 || s.embeddings.size(1) != model.config.hidden_size)
        throw InputError(fmt::format("prompt segment {}: embedding rows have shape [{}], expected [n, {}] (LLM width)",
                                     i, fmt::join(s.embeddings.sizes(), ", "), model.config.hidden_size));
      parts.push_back(s.embeddings.to(torch::kFloat32));
    } else if (!s.ids.empty()) {
      parts.push_back(model.embed(s.ids));
    }
  }
  if (parts.empty()) throw InputError("the prompt is empty");
  return torch::cat(parts, 0);
}

namespace {

// One sequence's rows in a packed forward: `rows` rows of the packed input from `offset`, at
// positions cache->pos .. cache->pos + rows - 1 of its own cache.
struct Packed {
  KvCache* cache;
  int64_t offset, rows;
  torch::Tensor cos, sin, mask;  // RoPE rows at its positions; causal mask [rows, pos + rows] (rows > 1)
};

Packed packed_sequence(const LlamaModel& model, KvCache& cache, int64_t offset, int64_t T) {
  const int64_t pos = cache.pos, S = pos + T;
  Packed p{&cache, offset, T, model.rope_cos.narrow(0, pos, T), model.rope_sin.narrow(0, pos, T), {}};
  // Causal mask for the new queries against all S keys: query t sits at position pos+t.
  if (T > 1) {
    const auto on = torch::TensorOptions().device(cache.k.device());
    auto q_pos = torch::arange(pos, S, on.dtype(torch::kInt64)).unsqueeze(1);
    auto k_pos = torch::arange(0, S, on.dtype(torch::kInt64)).unsqueeze(0);
    p.mask = torch::zeros({T, S}, on.dtype(torch::kFloat32)).masked_fill_(k_pos > q_pos, -INFINITY);
  }
  return p;
}

// Attention of one sequence's rows in layer `l`: RoPE, append to its cache, grouped-query
// attention over its positions 0 .. pos+T-1. q [T, H·hd], k and v [T, KV·hd] in the model's
// dtype; returns [T, H·hd].
torch::Tensor attend(const LlamaModel& model, const Packed& p, int64_t l, const torch::Tensor& q_in,
                     const torch::Tensor& k_in, const torch::Tensor& v_in) {
  const auto& c = model.config;
  const int64_t T = p.rows, pos = p.cache->pos, S = pos + T;
  const int64_t H = c.num_heads, KV = c.num_kv_heads, hd = c.head_dim(), group = H / KV;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  auto q = apply_rope(q_in.view({T, H, hd}).transpose(0, 1).to(torch::kFloat32), p.cos, p.sin);
  auto k = apply_rope(k_in.view({T, KV, hd}).transpose(0, 1).to(torch::kFloat32), p.cos, p.sin);
  auto& cache = *p.cache;
  cache.k[l].narrow(1, pos, T).copy_(k);
  cache.v[l].narrow(1, pos, T).copy_(v_in.view({T, KV, hd}).transpose(0, 1));
  auto keys = cache.k[l].narrow(1, 0, S);    // [KV, S, hd]
  auto values = cache.v[l].narrow(1, 0, S);  // [KV, S, hd]
  // Query heads kv*group .. kv*group+group-1 share kv head `kv` (HF repeat_kv) — grouping
  // them into one batch entry avoids materialising repeated keys.
  auto qg = q.to(model.dtype).reshape({KV, group * T, hd});
  auto scores = torch::bmm(qg, keys.transpose(1, 2)).to(torch::kFloat32).mul_(scale);  // [KV, group*T, S]
  if (p.mask.defined()) scores = (scores.view({KV, group, T, S}) + p.mask).view({KV, group * T, S});
  auto probs = torch::softmax(scores, -1).to(model.dtype);
  return torch::bmm(probs, values).view({H, T, hd}).transpose(0, 1).reshape({T, H * hd});
}

// The decoder layers on packed rows x [sum of rows, D] (fp32): every projection is one GEMM over
// all sequences' rows, attention runs per sequence over its own cache. Advances each cache's pos
// only once every layer has run (an exception leaves the positions as they were).
torch::Tensor run_layers(const LlamaModel& model, std::span<const Packed> seqs, torch::Tensor x) {
  const auto& c = model.config;
  KvCache& scratch = *seqs.front().cache;  // the dequantization tile of quantized matrices
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const auto& L = model.weights.layers[l];
    // Attention: pre-norm, q/k/v projections, then each sequence's own attention.
    auto h = rms_norm(x, L.attn_norm, c.rms_norm_eps).to(model.dtype);
    auto q = project(h, L.wq, L.q_wq, L.lora_q, scratch);
    auto k = project(h, L.wk, L.q_wk, L.lora_k, scratch);
    auto v = project(h, L.wv, L.q_wv, L.lora_v, scratch);
    std::vector<torch::Tensor> attn;
    for (const auto& p : seqs)
      attn.push_back(attend(model, p, l, q.narrow(0, p.offset, p.rows), k.narrow(0, p.offset, p.rows),
                            v.narrow(0, p.offset, p.rows)));
    auto a = attn.size() == 1 ? attn.front() : torch::cat(attn, 0);
    x = x + project(a, L.wo, L.q_wo, L.lora_o, scratch).to(torch::kFloat32);

    // SwiGLU MLP.
    h = rms_norm(x, L.ffn_norm, c.rms_norm_eps).to(model.dtype);
    auto gate = torch::silu(project(h, L.w_gate, L.q_gate, L.lora_gate, scratch));
    auto up = project(h, L.w_up, L.q_up, L.lora_up, scratch);
    x = x + project(gate * up, L.w_down, L.q_down, L.lora_down, scratch).to(torch::kFloat32);
  }
  for (const auto& p : seqs) p.cache->pos += p.rows;
  return x;
}

// Final norm and the LM head on rows x [n, D] → fp32 logits [n, V].
torch::Tensor lm_logits(const LlamaModel& model, const torch::Tensor& x, KvCache& scratch) {
  const auto& W = model.weights;
  const auto h = rms_norm(x, W.norm, model.config.rms_norm_eps).to(model.dtype);
  return linear(h, W.lm_head, W.q_lm_head, scratch).to(torch::kFloat32);
}

}  // namespace

torch::Tensor forward(const LlamaModel& model, KvCache& cache, const torch::Tensor& input, Logits which) {
  torch::NoGradGuard no_grad;
  const int64_t T = input.size(0), S = cache.pos + T;
  if (S > cache.capacity())
    throw InputError(fmt::format("context full: {} positions requested, the KV cache holds {}", S, cache.capacity()));
  // The hand-written decode kernels read host memory; on another device every step is the
  // general forward below.
  if (T == 1 && model.dtype == torch::kBFloat16 && cache.k.scalar_type() == torch::kBFloat16 && cache.k.is_cpu())
    return decode_step_bf16(model, cache, input);
  const Packed one[] = {packed_sequence(model, cache, 0, T)};
  auto x = run_layers(model, one, input.to(torch::kFloat32));
  if (which == Logits::Last) x = x.narrow(0, T - 1, 1);
  return lm_logits(model, x, cache);
}

torch::Tensor forward_batch(const LlamaModel& model, std::span<KvCache* const> caches, std::span<const torch::Tensor> inputs) {
  torch::NoGradGuard no_grad;
  const auto D = model.config.hidden_size;
  const auto n = static_cast<int64_t>(caches.size());
  if (n == 0 || inputs.size() != caches.size())
    throw InputError(fmt::format("forward_batch: {} inputs for {} sequences", inputs.size(), caches.size()));
  std::vector<Packed> seqs;
  std::vector<torch::Tensor> rows;
  int64_t offset = 0;
  for (int64_t i = 0; i < n; ++i) {
    const auto& x = inputs[i];
    if (x.dim() != 2 || x.size(0) < 1 || x.size(1) != D)
      throw InputError(fmt::format("forward_batch: sequence {} has input shape {}, expected [T >= 1, {}]", i,
                                   shape_text(x.sizes()), D));
    if (caches[i]->pos + x.size(0) > caches[i]->capacity())
      throw InputError(fmt::format("context full: sequence {} requests {} positions, its KV cache holds {}", i,
                                   caches[i]->pos + x.size(0), caches[i]->capacity()));
    for (int64_t j = 0; j < i; ++j)
      if (caches[j]->k.data_ptr() == caches[i]->k.data_ptr())
        throw InputError(fmt::format("forward_batch: sequences {} and {} share one KV cache", j, i));
    seqs.push_back(packed_sequence(model, *caches[i], offset, x.size(0)));
    rows.push_back(x.to(torch::kFloat32));
    offset += x.size(0);
  }
  auto x = run_layers(model, seqs, torch::cat(rows, 0));
  std::vector<int64_t> last;
  for (const auto& p : seqs) last.push_back(p.offset + p.rows - 1);
  x = x.index_select(0, torch::tensor(last, torch::kInt64).to(x.device()));
  return lm_logits(model, x, *caches.front());
}

torch::Tensor decode_batch(const LlamaModel& model, std::span<KvCache* const> caches, const torch::Tensor& x) {
  if (x.dim() != 2 || x.size(0) != static_cast<int64_t>(caches.size()))
    throw InputError(fmt::format("decode_batch: {} input rows for {} sequences", x.dim() == 2 ? x.size(0) : -1, caches.size()));
  bool bf16 = model.dtype == torch::kBFloat16;
  for (auto* cache : caches) bf16 = bf16 && cache->k.scalar_type() == torch::kBFloat16;
  if (bf16 && caches.size() > 1) return decode_step_bf16_batch(model, caches, x);
  std::vector<torch::Tensor> rows;
  for (size_t i = 0; i < caches.size(); ++i)
    rows.push_back(forward(model, *caches[i], x.narrow(0, static_cast<int64_t>(i), 1), Logits::Last));
  return rows.size() == 1 ? rows.front() : torch::cat(rows, 0);  // a lone sequence: no copy per step
}

torch::Tensor forward_tokens(const LlamaModel& model, KvCache& cache, std::span<const int64_t> ids, Logits which) {
  if (ids.empty()) throw InputError("no tokens to run");
  return forward(model, cache, model.embed(ids), which);
}

}  // namespace iadgpt::llm
