#include "llm/decode.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <cmath>

#include "io/error.h"
#include "nn/matvec.h"
#include "nn/quant.h"

namespace iadgpt::llm {
namespace {

using bf16 = at::BFloat16;

// Views into the KvCache's decode buffers (one fp32 and one bf16 block, carved here).
struct DecodeBuffers {
  float *x, *q, *k, *v, *proj, *gate, *up, *scores, *attn;  // fp32
  bf16 *in, *q16;                                           // bf16 matvec inputs
  float* in_f32;                                            // quantized weights: `in` widened,
  nn::QuantizedInput in_q;                                      // then quantized per block of 32
};

DecodeBuffers decode_buffers(const LlamaModel& model, KvCache& cache) {
  const auto& c = model.config;
  const int64_t D = c.hidden_size, F = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim();
  const int64_t in_max = std::max({D, F, qd}), blocks = (in_max + nn::kQuantBlock - 1) / nn::kQuantBlock;
  const int64_t f32_size = D + qd + 2 * kvd + D + 2 * F + c.num_heads * cache.capacity() + qd + in_max + 2 * blocks;
  const int64_t bf16_size = in_max + qd;
  // Allocated on the first decode step of this cache, then reused for every token.
  if (!cache.decode_f32.defined() || cache.decode_f32.numel() != f32_size) {
    cache.decode_f32 = torch::empty({f32_size}, torch::kFloat32);
    cache.decode_bf16 = torch::empty({bf16_size}, torch::kBFloat16);
    cache.decode_i8 = torch::empty({in_max}, torch::kInt8);
  }
  DecodeBuffers b{};
  float* f = cache.decode_f32.data_ptr<float>();
  for (auto [ptr, n] : {std::pair{&b.x, D}, {&b.q, qd}, {&b.k, kvd}, {&b.v, kvd}, {&b.proj, D}, {&b.gate, F},
                        {&b.up, F}, {&b.scores, c.num_heads * cache.capacity()}, {&b.attn, qd}, {&b.in_f32, in_max},
                        {&b.in_q.scale, blocks}, {&b.in_q.offset, blocks}}) {
    *ptr = f;
    f += n;
  }
  b.in_q.q = cache.decode_i8.data_ptr<int8_t>();
  b.in = cache.decode_bf16.data_ptr<bf16>();
  b.q16 = b.in + in_max;
  return b;
}

// y = W x (+ the unmerged LoRA update scale · B (A x), which allocates: attached adapters only).
// A quantized W (qw defined) takes the q8/q4 kernels on x widened and quantized per block in `b`.
void project_row(const torch::Tensor& w, const nn::QuantMatrix& qw, const LoraPair& lora, const bf16* x, float* y,
                 nn::MatvecIsa isa, const DecodeBuffers& b) {
  int64_t rows = 0, cols = 0;
  if (qw.defined()) {
    rows = qw.rows(), cols = qw.cols();
    for (int64_t i = 0; i < cols; ++i) b.in_f32[i] = static_cast<float>(x[i]);
    nn::QuantizedInput in = b.in_q;
    in.cols = cols;
    nn::quantize_input(b.in_f32, in);
    nn::matvec_quant(qw, in, y, isa);
  } else {
    const auto wc = w.contiguous();  // a no-op for loaded weights; guards hand-built ones
    rows = wc.size(0), cols = wc.size(1);
    nn::matvec_bf16(wc.data_ptr<bf16>(), x, y, rows, cols, isa);
  }
  if (!lora.defined()) return;
  auto xt = torch::from_blob(const_cast<bf16*>(x), {1, cols}, torch::kBFloat16);
  auto update = torch::linear(torch::linear(xt.to(lora.a.scalar_type()), lora.a), lora.b);
  torch::from_blob(y, {1, rows}, torch::kFloat32).add_(update.to(torch::kFloat32), lora.scale);
}

// out = bf16(x · rsqrt(mean(x²) + eps) · weight), the statistic accumulated in double.
void rms_norm_row_to_bf16(const float* x, const torch::Tensor& weight, int64_t n, double eps, bf16* out) {
  double sum_sq = 0.0;
  for (int64_t i = 0; i < n; ++i) sum_sq += static_cast<double>(x[i]) * x[i];
  const float inv = static_cast<float>(1.0 / std::sqrt(sum_sq / static_cast<double>(n) + eps));
  const float* w = weight.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) out[i] = bf16(x[i] * inv * w[i]);
}

// RoPE in place on `heads` rows of hd (rotate_half: halves are real and imaginary parts), as apply_rope.
void rope_row_inplace(float* x, int64_t heads, int64_t hd, const float* cos, const float* sin) {
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* x1 = x + h * hd;
    float* x2 = x1 + half;
    for (int64_t i = 0; i < half; ++i) {
      const float a = x1[i], b = x2[i];
      x1[i] = a * cos[i] - b * sin[i];
      x2[i] = b * cos[i] + a * sin[i];
    }
  }
}

// Grouped-query attention of one new query row over positions 0..S-1 of layer `layer`'s cache.
// Query head h reads kv head h / group (HF repeat_kv); heads are split over threads. Scores,
// softmax and the weighted sum are fp32; the result is rounded to bf16 for o_proj.
void attend_row(const LlamaModel& model, const KvCache& cache, int64_t layer, int64_t S, const DecodeBuffers& b,
                nn::MatvecIsa isa) {
  const auto& c = model.config;
  const int64_t H = c.num_heads, hd = c.head_dim(), group = H / c.num_kv_heads, cap = cache.capacity();
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  const int64_t layer_size = c.num_kv_heads * cap * hd;  // cache [layers, kv heads, cap, hd]
  const bf16* keys_l = cache.k.data_ptr<bf16>() + layer * layer_size;
  const bf16* values_l = cache.v.data_ptr<bf16>() + layer * layer_size;
  at::parallel_for(0, H, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t kv = h / group;
      float* scores = b.scores + h * cap;
      // Keys of one kv head are [cap, hd] rows: the scores are a matvec over the first S rows.
      nn::matvec_bf16(keys_l + kv * cap * hd, b.q16 + h * hd, scores, S, hd, isa);
      float max_score = -INFINITY;
      for (int64_t s = 0; s < S; ++s) max_score = std::max(max_score, scores[s] *= scale);
      float sum = 0.0f;
      for (int64_t s = 0; s < S; ++s) sum += (scores[s] = std::exp(scores[s] - max_score));
      float* out = b.attn + h * hd;
      std::fill(out, out + hd, 0.0f);
      const bf16* values = values_l + kv * cap * hd;
      for (int64_t s = 0; s < S; ++s) {
        const float p = scores[s] / sum;
        for (int64_t d = 0; d < hd; ++d) out[d] += p * static_cast<float>(values[s * hd + d]);
      }
    }
  });
}

// The projection of every sequence's row: one pass over W for all of them (nn::matvec_bf16_multi, or
// nn::matvec_quant_multi on each row widened and quantized into its own buffers) when W has no
// unmerged adapter, else project_row on each (an adapter's update is per row anyway).
void project_rows(const torch::Tensor& w, const nn::QuantMatrix& qw, const LoraPair& lora, std::span<const bf16* const> xs,
                  std::span<float* const> ys, nn::MatvecIsa isa, std::span<const DecodeBuffers> b) {
  if (lora.defined() || xs.size() == 1) {
    for (size_t i = 0; i < xs.size(); ++i) project_row(w, qw, lora, xs[i], ys[i], isa, b[i]);
    return;
  }
  if (qw.defined()) {
    std::vector<nn::QuantizedInput> in;
    for (size_t i = 0; i < xs.size(); ++i) {
      for (int64_t c = 0; c < qw.cols(); ++c) b[i].in_f32[c] = static_cast<float>(xs[i][c]);
      in.push_back(b[i].in_q);
      in.back().cols = qw.cols();
      nn::quantize_input(b[i].in_f32, in.back());
    }
    nn::matvec_quant_multi(qw, in, ys, isa);
    return;
  }
  const auto wc = w.contiguous();
  nn::matvec_bf16_multi(wc.data_ptr<bf16>(), xs, ys, wc.size(0), wc.size(1), isa);
}

// Appends row `b.k`, `b.v` (after RoPE) at position `pos` of layer `l` of `cache`.
void append_kv(const LlamaModel& model, KvCache& cache, int64_t l, int64_t pos, const DecodeBuffers& b) {
  const auto& c = model.config;
  const int64_t KV = c.num_kv_heads, hd = c.head_dim(), cap = cache.capacity();
  bf16* k_cache = cache.k.data_ptr<bf16>() + l * KV * cap * hd;
  bf16* v_cache = cache.v.data_ptr<bf16>() + l * KV * cap * hd;
  for (int64_t kv = 0; kv < KV; ++kv)
    for (int64_t d = 0; d < hd; ++d) {
      k_cache[(kv * cap + pos) * hd + d] = bf16(b.k[kv * hd + d]);
      v_cache[(kv * cap + pos) * hd + d] = bf16(b.v[kv * hd + d]);
    }
}

// One field of every sequence's buffers, as the span project_rows takes.
template <class T>
std::vector<T> field(std::span<const DecodeBuffers> b, T DecodeBuffers::*member) {
  std::vector<T> out;
  for (const auto& one : b) out.push_back(one.*member);
  return out;
}

// One layer of the batched step: decode_step_bf16's layer body with each projection shared.
void layer_batch(const LlamaModel& model, std::span<KvCache* const> caches, int64_t l, std::span<const DecodeBuffers> b,
                 nn::MatvecIsa isa) {
  const auto& c = model.config;
  const auto& L = model.weights.layers[l];
  const int64_t D = c.hidden_size, F = c.intermediate_size, H = c.num_heads, KV = c.num_kv_heads;
  const int64_t hd = c.head_dim(), qd = c.q_dim(), n = static_cast<int64_t>(b.size());
  std::vector<const bf16*> in;
  for (const auto& one : b) in.push_back(one.in);
  for (int64_t i = 0; i < n; ++i) rms_norm_row_to_bf16(b[i].x, L.attn_norm, D, c.rms_norm_eps, b[i].in);
  project_rows(L.wq, L.q_wq, L.lora_q, in, field(b, &DecodeBuffers::q), isa, b);
  project_rows(L.wk, L.q_wk, L.lora_k, in, field(b, &DecodeBuffers::k), isa, b);
  project_rows(L.wv, L.q_wv, L.lora_v, in, field(b, &DecodeBuffers::v), isa, b);
  for (int64_t i = 0; i < n; ++i) {
    // Each sequence at its own position, over its own cache.
    const int64_t pos = caches[i]->pos;
    const float* cos = model.rope_cos.data_ptr<float>() + pos * (hd / 2);
    const float* sin = model.rope_sin.data_ptr<float>() + pos * (hd / 2);
    rope_row_inplace(b[i].q, H, hd, cos, sin);
    rope_row_inplace(b[i].k, KV, hd, cos, sin);
    append_kv(model, *caches[i], l, pos, b[i]);
    for (int64_t j = 0; j < qd; ++j) b[i].q16[j] = bf16(b[i].q[j]);
    attend_row(model, *caches[i], l, pos + 1, b[i], isa);
    for (int64_t j = 0; j < qd; ++j) b[i].in[j] = bf16(b[i].attn[j]);
  }
  project_rows(L.wo, L.q_wo, L.lora_o, in, field(b, &DecodeBuffers::proj), isa, b);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < D; ++j) b[i].x[j] += b[i].proj[j];
    rms_norm_row_to_bf16(b[i].x, L.ffn_norm, D, c.rms_norm_eps, b[i].in);
  }
  project_rows(L.w_gate, L.q_gate, L.lora_gate, in, field(b, &DecodeBuffers::gate), isa, b);
  project_rows(L.w_up, L.q_up, L.lora_up, in, field(b, &DecodeBuffers::up), isa, b);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < F; ++j) b[i].in[j] = bf16(b[i].gate[j] / (1.0f + std::exp(-b[i].gate[j])) * b[i].up[j]);
  project_rows(L.w_down, L.q_down, L.lora_down, in, field(b, &DecodeBuffers::proj), isa, b);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < D; ++j) b[i].x[j] += b[i].proj[j];
}

}  // namespace

torch::Tensor decode_step_bf16(const LlamaModel& model, KvCache& cache, const torch::Tensor& input) {
  torch::NoGradGuard no_grad;
  const auto& c = model.config;
  const auto& W = model.weights;
  const int64_t D = c.hidden_size, F = c.intermediate_size, H = c.num_heads, KV = c.num_kv_heads;
  const int64_t hd = c.head_dim(), qd = c.q_dim(), pos = cache.pos;
  const nn::MatvecIsa isa = nn::best_matvec_isa();
  const DecodeBuffers b = decode_buffers(model, cache);
  if (input.numel() != D)
    throw InputError(fmt::format("decode step: input has shape {}, expected [1, {}]", shape_text(input.sizes()), D));
  const auto x_in = input.to(torch::kFloat32).contiguous();
  std::copy_n(x_in.data_ptr<float>(), D, b.x);
  const float* cos = model.rope_cos.data_ptr<float>() + pos * (hd / 2);
  const float* sin = model.rope_sin.data_ptr<float>() + pos * (hd / 2);

  for (int64_t l = 0; l < c.num_layers; ++l) {
    const auto& L = W.layers[l];
    // Attention: pre-norm, q/k/v projections, RoPE, append to the cache, grouped-query attention.
    rms_norm_row_to_bf16(b.x, L.attn_norm, D, c.rms_norm_eps, b.in);
    project_row(L.wq, L.q_wq, L.lora_q, b.in, b.q, isa, b);
    project_row(L.wk, L.q_wk, L.lora_k, b.in, b.k, isa, b);
    project_row(L.wv, L.q_wv, L.lora_v, b.in, b.v, isa, b);
    rope_row_inplace(b.q, H, hd, cos, sin);
    rope_row_inplace(b.k, KV, hd, cos, sin);
    append_kv(model, cache, l, pos, b);
    for (int64_t i = 0; i < qd; ++i) b.q16[i] = bf16(b.q[i]);
    attend_row(model, cache, l, pos + 1, b, isa);
    for (int64_t i = 0; i < qd; ++i) b.in[i] = bf16(b.attn[i]);
    project_row(L.wo, L.q_wo, L.lora_o, b.in, b.proj, isa, b);
    for (int64_t i = 0; i < D; ++i) b.x[i] += b.proj[i];

    // SwiGLU MLP: silu(gate) · up in fp32, rounded once to bf16 for the down projection.
    rms_norm_row_to_bf16(b.x, L.ffn_norm, D, c.rms_norm_eps, b.in);
    project_row(L.w_gate, L.q_gate, L.lora_gate, b.in, b.gate, isa, b);
    project_row(L.w_up, L.q_up, L.lora_up, b.in, b.up, isa, b);
    for (int64_t i = 0; i < F; ++i) b.in[i] = bf16(b.gate[i] / (1.0f + std::exp(-b.gate[i])) * b.up[i]);
    project_row(L.w_down, L.q_down, L.lora_down, b.in, b.proj, isa, b);
    for (int64_t i = 0; i < D; ++i) b.x[i] += b.proj[i];
  }
  cache.pos = pos + 1;
  rms_norm_row_to_bf16(b.x, W.norm, D, c.rms_norm_eps, b.in);
  auto logits = torch::empty({1, c.vocab_size}, torch::kFloat32);  // returned: the caller keeps it
  project_row(W.lm_head, W.q_lm_head, LoraPair{}, b.in, logits.data_ptr<float>(), isa, b);
  return logits;
}

}  // namespace iadgpt::llm

namespace iadgpt::llm {

torch::Tensor decode_step_bf16_batch(const LlamaModel& model, std::span<KvCache* const> caches, const torch::Tensor& input) {
  torch::NoGradGuard no_grad;
  const auto& c = model.config;
  const int64_t D = c.hidden_size, n = static_cast<int64_t>(caches.size());
  if (input.dim() != 2 || input.size(0) != n || input.size(1) != D)
    throw InputError(fmt::format("batched decode step: input has shape {}, expected [{}, {}]", shape_text(input.sizes()), n, D));
  for (int64_t i = 0; i < n; ++i) {
    if (caches[i]->pos >= caches[i]->capacity())
      throw InputError(fmt::format("context full: sequence {} holds {} positions, its KV cache {}", i, caches[i]->pos,
                                   caches[i]->capacity()));
    for (int64_t j = 0; j < i; ++j)
      if (caches[j]->k.data_ptr() == caches[i]->k.data_ptr())
        throw InputError(fmt::format("batched decode step: sequences {} and {} share one KV cache", j, i));
  }
  const nn::MatvecIsa isa = nn::best_matvec_isa();
  std::vector<DecodeBuffers> b;
  for (auto* cache : caches) b.push_back(decode_buffers(model, *cache));
  const auto x_in = input.to(torch::kFloat32).contiguous();
  for (int64_t i = 0; i < n; ++i) std::copy_n(x_in.data_ptr<float>() + i * D, D, b[i].x);
  for (int64_t l = 0; l < c.num_layers; ++l) layer_batch(model, caches, l, b, isa);
  for (auto* cache : caches) ++cache->pos;
  auto logits = torch::empty({n, c.vocab_size}, torch::kFloat32);
  std::vector<const bf16*> in;
  std::vector<float*> out;
  for (int64_t i = 0; i < n; ++i) {
    rms_norm_row_to_bf16(b[i].x, model.weights.norm, D, c.rms_norm_eps, b[i].in);
    in.push_back(b[i].in);
    out.push_back(logits.data_ptr<float>() + i * c.vocab_size);
  }
  project_rows(model.weights.lm_head, model.weights.q_lm_head, LoraPair{}, in, out, isa, b);
  return logits;
}

}  // namespace iadgpt::llm
