#include "nn/transformer.h"

#include <fmt/format.h>

#include <cmath>

#include "io/error.h"
#include "io/mapped_file.h"

#include "nn/device.h"
#include "nn/weights.h"

namespace iadgpt::nn {

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const QuantMatrix& quant,
                     const torch::Tensor& bias) {
  if (!quant.defined()) return torch::linear(x, weight, bias);
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
  auto y = torch::layer_norm(x.to(torch::kFloat32), {x.size(-1)}, weight.to(torch::kFloat32),
                             bias.to(torch::kFloat32), eps);
  return y.to(x.scalar_type());
}

torch::Tensor activation(const torch::Tensor& x, Activation kind) {
  switch (kind) {
    case Activation::Gelu:
      return torch::gelu(x);  // exact erf form, as nn.GELU() defaults
    case Activation::QuickGelu:
      return x * torch::sigmoid(1.702 * x);
  }
  throw std::logic_error("unknown activation");
}

torch::Tensor self_attention(const torch::Tensor& x, const BlockWeights& w, const BlockConfig& cfg,
                             const torch::Tensor& additive_mask) {
  const int64_t batch = x.size(0), length = x.size(1), width = x.size(2);
  const int64_t head_dim = width / cfg.heads;

  // [B, L, 3D] -> three [B, heads, L, head_dim] views.
  auto qkv = linear(x, w.qkv_weight, w.qkv_quant, w.qkv_bias)
                 .view({batch, length, 3, cfg.heads, head_dim})
                 .permute({2, 0, 3, 1, 4});
  auto q = qkv[0], k = qkv[1], v = qkv[2];

  // Scale q before the product, as nn.MultiheadAttention does, so fp32 rounding matches.
  q = q * (1.0 / std::sqrt(static_cast<double>(head_dim)));
  auto scores = torch::matmul(q, k.transpose(-2, -1));  // [B, heads, L, L]
  if (additive_mask.defined()) scores = scores + additive_mask.to(scores.scalar_type());
  // Softmax in fp32: bf16 exponentials of near-tied scores otherwise collapse.
  auto probs = torch::softmax(scores.to(torch::kFloat32), -1).to(v.scalar_type());
  auto context = torch::matmul(probs, v).transpose(1, 2).reshape({batch, length, width});
  return linear(context, w.out_weight, w.out_quant, w.out_bias);
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
