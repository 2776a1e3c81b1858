#include "nn/transformer.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <cmath>

#include "io/error.h"
#include "io/mapped_file.h"

#include "nn/attention_bf16.h"
#include "nn/device.h"
#include "nn/norm_act_bf16.h"
#include "nn/softmax.h"
#include "nn/weights.h"

namespace iadgpt::nn {
namespace {

// Where the bf16 routes of transformer.h and softmax.h apply: bf16 on the CPU, no gradients.
bool bf16_cpu_inference(const torch::Tensor& t) {
  return !at::GradMode::is_enabled() && t.device().is_cpu() && t.scalar_type() == torch::kBFloat16;
}

}  // namespace

bool linear_rows_by_thread(const torch::Tensor& x, const torch::Tensor& weight) {
  const int64_t threads = at::get_num_threads();
  return threads > 1 && !at::in_parallel_region() && bf16_cpu_inference(x) &&
         weight.scalar_type() == torch::kBFloat16 && x.dim() >= 1 && x.size(-1) > 0 &&
         x.numel() / x.size(-1) >= kRowsPerThreadToSplit * threads;
}

bool attention_fused(const torch::Tensor& x, int64_t heads) {
  return bf16_cpu_inference(x) && heads > 0 && x.size(-1) % heads == 0 &&
         attention_bf16_supported(x.size(-1) / heads, best_matvec_isa());
}

bool attention_by_head(const torch::Tensor& x, int64_t heads) {
  const double length = static_cast<double>(x.size(1));
  return bf16_cpu_inference(x) &&
         static_cast<double>(x.size(0) * heads) * length * length * sizeof(float) > kBatchedScoresBytes;
}

namespace {

// y = x Wᵀ + b for the rows of x split evenly over the intra-op threads, each thread one
// single-threaded oneDNN product of its rows (inside the parallel region oneDNN runs on the
// calling thread) written straight into its rows of y. See linear_rows_by_thread.
torch::Tensor linear_split_rows(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  const auto rows = x.reshape({-1, x.size(-1)}).contiguous();
  const int64_t n = rows.size(0), threads = at::get_num_threads();
  auto y = torch::empty({n, weight.size(0)}, rows.options());
  const auto weight_t = weight.t();
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = n * t / threads, r1 = n * (t + 1) / threads;
      auto out = y.narrow(0, r0, r1 - r0);
      const auto in = rows.narrow(0, r0, r1 - r0);
      if (bias.defined()) at::addmm_out(out, bias, in, weight_t);
      else at::mm_out(out, in, weight_t);
    }
  });
  auto sizes = x.sizes().vec();
  sizes.back() = weight.size(0);
  return y.view(sizes);
}

}  // namespace

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const QuantMatrix& quant,
                     const torch::Tensor& bias) {
  if (!quant.defined())
    return linear_rows_by_thread(x, weight) ? linear_split_rows(x, weight, bias) : torch::linear(x, weight, bias);
  auto sizes = x.sizes().vec();
  const auto rows = x.reshape({-1, x.size(-1)}).to(torch::kFloat32).contiguous();
  auto y = torch::empty({rows.size(0), quant.rows()}, rows.options());
  gemm_quant(quant, rows, y, best_matvec_isa(), InputPasses::One);
  if (bias.defined()) y.add_(bias.to(torch::kFloat32));
  sizes.back() = quant.rows();
  return y.view(sizes).to(x.scalar_type());
}

torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& weight,
                         const torch::Tensor& bias, double eps) {
  // LayerNorm statistics in fp32 even on the bf16 path: the variance of a 1280-wide row in bf16
  // loses about two significant digits.
  if (x.scalar_type() == torch::kFloat32) {
    return torch::layer_norm(x, {x.size(-1)}, weight, bias, eps);
  }
  if (bf16_cpu_inference(x) && norm_act_bf16_supported(best_matvec_isa())) return layer_norm_bf16(x, weight, bias, eps);
  auto y = torch::layer_norm(x.to(torch::kFloat32), {x.size(-1)}, weight.to(torch::kFloat32),
                             bias.to(torch::kFloat32), eps);
  return y.to(x.scalar_type());
}

torch::Tensor activation(const torch::Tensor& x, Activation kind) {
  switch (kind) {
    case Activation::Gelu:
      return torch::gelu(x);  // exact erf form, as nn.GELU() defaults
    case Activation::QuickGelu:
      if (bf16_cpu_inference(x) && norm_act_bf16_supported(best_matvec_isa())) return quick_gelu_bf16(x);
      return x * torch::sigmoid(1.702 * x);
  }
  throw std::logic_error("unknown activation");
}

namespace {

// Softmax in fp32: bf16 exponentials of near-tied scores otherwise collapse. bf16 inference on the
// CPU in one pass over the scores (softmax.h); otherwise through an fp32 copy.
torch::Tensor attention_softmax(const torch::Tensor& scores) {
  if (bf16_cpu_inference(scores)) return softmax_bf16(scores);
  return torch::softmax(scores.to(torch::kFloat32), -1).to(scores.scalar_type());
}

// softmax(q kᵀ + mask) v for one head, or for [B, heads] of them; q already scaled.
torch::Tensor head_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& additive_mask) {
  auto scores = torch::matmul(q, k.transpose(-2, -1));
  if (additive_mask.defined()) scores = scores + additive_mask.to(scores.scalar_type());
  return torch::matmul(attention_softmax(scores), v);
}

// The same per (batch, head) pair, the pairs split over the intra-op threads (attention_by_head).
// qkv [B, L, 3, heads, head_dim]; q scaled; returns the context [B, L, heads, head_dim].
torch::Tensor attention_head_by_head(const torch::Tensor& qkv, const torch::Tensor& q_scaled,
                                     const torch::Tensor& additive_mask) {
  const int64_t batch = qkv.size(0), heads = qkv.size(3);
  auto context = torch::empty({batch, qkv.size(1), heads, qkv.size(4)}, qkv.options());
  at::parallel_for(0, batch * heads, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / heads, h = i % heads;
      const auto k = qkv[b].select(1, 1).select(1, h), v = qkv[b].select(1, 2).select(1, h);
      context[b].select(1, h).copy_(head_attention(q_scaled[b].select(1, h), k, v, additive_mask));
    }
  });
  return context;
}

}  // namespace

torch::Tensor self_attention(const torch::Tensor& x, const BlockWeights& w, const BlockConfig& cfg,
                             const torch::Tensor& additive_mask) {
  const int64_t batch = x.size(0), length = x.size(1), width = x.size(2);
  const int64_t head_dim = width / cfg.heads;

  // [B, L, 3D] -> [B, L, 3, heads, head_dim]: q, k, v of each head.
  auto qkv = linear(x, w.qkv_weight, w.qkv_quant, w.qkv_bias).view({batch, length, 3, cfg.heads, head_dim});
  if (attention_fused(x, cfg.heads)) {
    const auto context = attention_bf16(qkv.contiguous(), additive_mask);
    return linear(context.view({batch, length, width}), w.out_weight, w.out_quant, w.out_bias);
  }
  // Scale q before the product, as nn.MultiheadAttention does, so fp32 rounding matches.
  const auto q = qkv.select(2, 0) * (1.0 / std::sqrt(static_cast<double>(head_dim)));  // [B, L, heads, head_dim]
  torch::Tensor context;
  if (attention_by_head(x, cfg.heads)) {
    context = attention_head_by_head(qkv, q, additive_mask);
  } else {
    const auto k = qkv.select(2, 1).transpose(1, 2), v = qkv.select(2, 2).transpose(1, 2);  // [B, heads, L, head_dim]
    context = head_attention(q.transpose(1, 2), k, v, additive_mask).transpose(1, 2);
  }
  return linear(context.reshape({batch, length, width}), w.out_weight, w.out_quant, w.out_bias);
}

torch::Tensor block_forward(const torch::Tensor& x, const BlockWeights& w, const BlockConfig& cfg,
                            const torch::Tensor& additive_mask) {
  auto h = x + self_attention(layer_norm(x, w.ln1_weight, w.ln1_bias, cfg.eps), w, cfg, additive_mask);
  auto mlp_hidden = linear(layer_norm(h, w.ln2_weight, w.ln2_bias, cfg.eps), w.fc1_weight, w.fc1_quant, w.fc1_bias);
  return h + linear(activation(mlp_hidden, cfg.activation), w.fc2_weight, w.fc2_quant, w.fc2_bias);
}

std::array<torch::Tensor*, 12> block_tensors(BlockWeights& w) {
  return {&w.ln1_weight, &w.ln1_bias, &w.qkv_weight, &w.qkv_bias, &w.out_weight, &w.out_bias,
          &w.ln2_weight, &w.ln2_bias, &w.fc1_weight, &w.fc1_bias, &w.fc2_weight, &w.fc2_bias};
}

void convert_block(BlockWeights& w, torch::Dtype dtype) {
  for (auto* t : block_tensors(w))
    if (t->defined()) *t = convert_weight(*t, dtype);
}


void quantize_block(BlockWeights& w, QuantFormat format, std::string_view where) {
  if (format == QuantFormat::None) return;
  for (const auto& slot : kQuantSlots) {
    auto& weight = w.*slot.weight;
    if (!weight.defined()) continue;  // already quantized
    if (weight.size(1) % kQuantBlock != 0)
      throw InputError(fmt::format("{}: {} weight [{}, {}]: its input width is not a multiple of {}, so it cannot be quantized",
                                   where, slot.name, weight.size(0), weight.size(1), kQuantBlock));
    w.*slot.quant = quantize(weight, format);
    io::release_mapped_pages(weight);  // a mapped checkpoint's pages, read once (io/mapped_file.h)
    weight = torch::Tensor();
  }
}

bool block_quantized(const BlockWeights& w) {
  for (const auto& slot : kQuantSlots)
    if ((w.*slot.quant).defined()) return true;
  return false;
}

void move_block(BlockWeights& w, const torch::Device& device) {
  if (!device.is_cpu() && block_quantized(w))
    throw InputError(fmt::format("quantized weights run on the CPU only, not on {}", device.str()));
  for (auto* t : block_tensors(w)) to_device(*t, device);
}

}  // namespace iadgpt::nn
