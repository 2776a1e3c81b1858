#include "text/text_tower.h"

#include <fmt/format.h>

#include "io/error.h"
#include "nn/device.h"
#include "nn/weights.h"

namespace iadgpt::text {
namespace {

// Additive causal mask: token i attends to tokens 0..i (openai/CLIP build_attention_mask).
torch::Tensor causal_mask(int64_t length, const torch::Device& device) {
  return torch::full({length, length}, -INFINITY, torch::TensorOptions(torch::kFloat32).device(device)).triu(1);
}

torch::Tensor checked_ids(const TextConfig& c, const torch::Tensor& ids) {
  if (ids.dim() != 2 || ids.size(0) == 0 || ids.size(1) == 0)
    throw InputError(fmt::format("token ids must have shape [n, L], got {}",
                                 nn::shape_string(ids.sizes())));
  if (ids.is_floating_point() || ids.scalar_type() == torch::kBool)
    throw InputError("token ids must be an integer tensor");
  if (ids.size(1) > c.context_length)
    throw InputError(fmt::format("token ids have {} positions; the text tower holds {}",
                                 ids.size(1), c.context_length));
  auto out = ids.to(torch::kInt64).contiguous();
  const int64_t lo = out.min().item<int64_t>(), hi = out.max().item<int64_t>();
  if (lo < 0 || hi >= c.vocab_size)
    throw InputError(fmt::format("token id {} is outside the vocabulary of {} ids",
                                 lo < 0 ? lo : hi, c.vocab_size));
  return out;
}

}  // namespace

torch::Tensor pooling_positions(const TextConfig& c, const torch::Tensor& ids) {
  // HF CLIPTextTransformer: legacy configs (eos_token_id == 2) pool at argmax(ids); newer ones at
  // the first eos_token_id. Everyone else: argmax(ids) — the first EOT, the largest id.
  if (c.family == TextFamily::HfClip && c.eos_token_id != 2)
    return (ids == c.eos_token_id).to(torch::kInt32).argmax(-1);
  return ids.argmax(-1);
}

TextOutput encode_text(const TextTower& tower, const torch::Tensor& ids_in) {
  torch::NoGradGuard no_grad;
  const TextConfig& c = tower.config;
  const TextWeights& w = tower.weights;
  const auto all_ids = checked_ids(c, ids_in);
  const int64_t n = all_ids.size(0);
  // Under the causal mask a token only sees earlier ones, so positions after the last pooled
  // token cannot change any output: run only up to it (prompts use ~10 of the 77 slots).
  const auto pos = pooling_positions(c, all_ids);
  const int64_t length = pos.max().item<int64_t>() + 1;
  // The ids are checked on the host; the tower runs where its weights are (nn/device.h).
  const auto device = w.token_embedding.device();
  const auto ids = all_ids.slice(1, 0, length).to(device);

  // 1. token embedding + positions.
  auto x = w.token_embedding.index_select(0, ids.flatten()).view({n, length, c.width});
  x = x + w.pos_embedding.slice(0, 0, length);

  // 2. pre-norm blocks under the causal mask.
  const auto mask = w.mask.defined() ? w.mask.slice(0, 0, length).slice(1, 0, length)
                                     : causal_mask(length, device);
  const nn::BlockConfig block{.width = c.width, .heads = c.heads, .eps = c.eps,
                              .activation = c.activation};
  for (const auto& b : w.blocks) x = nn::block_forward(x, b, block, mask);

  // 3. the pooled token (EOT) -> LayerNorm -> projection. LayerNorm is per token, so pooling
  // first equals CLIP's ln_final over all tokens followed by pooling.
  auto pooled = x.index({torch::arange(n, torch::TensorOptions(torch::kInt64).device(device)), pos.to(device)});  // [n, W]
  pooled = nn::layer_norm(pooled, w.final_ln_weight, w.final_ln_bias, c.eps);
  auto head = torch::linear(pooled, w.projection).to(torch::kFloat32);

  TextOutput out;
  out.head = head;
  out.embedding = torch::nn::functional::normalize(
      head, torch::nn::functional::NormalizeFuncOptions().p(2).dim(-1));
  if (c.family == TextFamily::ImageBind) {
    // ImageBind's text postprocessor: Normalize, then LearnableLogitScaling (clamped at 100).
    const double scale = std::min(std::exp(w.log_logit_scale.item<double>()), 100.0);
    out.embedding_raw = out.embedding * scale;
  } else {
    out.embedding_raw = head;  // CLIP encode_text / HF get_text_features
  }
  return out;
}

void move_text_tower(TextTower& tower, const torch::Device& device) {
  auto& w = tower.weights;
  for (auto* t : {&w.token_embedding, &w.pos_embedding, &w.mask, &w.final_ln_weight, &w.final_ln_bias,
                  &w.projection, &w.log_logit_scale})
    nn::to_device(*t, device);
  for (auto& b : w.blocks) nn::move_block(b, device);
}

}  // namespace iadgpt::text
