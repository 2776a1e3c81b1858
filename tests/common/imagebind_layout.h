// Tensor names and shapes of ImageBind's upstream state dict (imagebind_model.py), for writing
// random-weight checkpoints in its `torch.save` layout: tests/tools/make_imagebind_pth (the real
// Huge size) and the load-memory tests (smaller widths).
#pragma once
#include <fmt/format.h>

#include <limits>
#include <string>
#include <vector>

#include "common/torch_save.h"

namespace iadgpt::test {

// One pre-LN transformer trunk under `prefix` (ImageBind's block names), width d, MLP 4d.
inline void add_imagebind_trunk(std::vector<TensorSpec>& s, const std::string& prefix, int64_t d, int64_t blocks) {
  s.push_back({prefix + ".pre_transformer_layer.0.weight", {d}});
  s.push_back({prefix + ".pre_transformer_layer.0.bias", {d}});
  for (int64_t i = 0; i < blocks; ++i) {
    const auto b = fmt::format("{}.blocks.{}.", prefix, i);
    s.push_back({b + "attn.in_proj_weight", {3 * d, d}});
    s.push_back({b + "attn.in_proj_bias", {3 * d}});
    s.push_back({b + "attn.out_proj.weight", {d, d}});
    s.push_back({b + "attn.out_proj.bias", {d}});
    for (const char* ln : {"norm_1", "norm_2"}) {
      s.push_back({b + ln + ".weight", {d}});
      s.push_back({b + ln + ".bias", {d}});
    }
    s.push_back({b + "mlp.fc1.weight", {4 * d, d}});
    s.push_back({b + "mlp.fc1.bias", {4 * d}});
    s.push_back({b + "mlp.fc2.weight", {d, 4 * d}});
    s.push_back({b + "mlp.fc2.bias", {d}});
  }
}

// The text modality: a `vocab`-row token embedding (CLIP BPE: 49408), 77 positions, the
// causal-mask buffer, width d, `blocks` blocks, projected to `embed`.
inline void add_imagebind_text(std::vector<TensorSpec>& s, int64_t d, int64_t blocks, int64_t embed, int64_t vocab = 49408) {
  s.push_back({"modality_preprocessors.text.token_embedding.weight", {vocab, d}});
  s.push_back({"modality_preprocessors.text.pos_embed", {1, 77, d}});
  s.push_back({"modality_preprocessors.text.mask", {77, 77}});  // a persistent buffer: the causal mask
  add_imagebind_trunk(s, "modality_trunks.text", d, blocks);
  s.push_back({"modality_heads.text.proj.0.weight", {d}});
  s.push_back({"modality_heads.text.proj.0.bias", {d}});
  s.push_back({"modality_heads.text.proj.1.weight", {embed, d}});
  s.push_back({"modality_postprocessors.text.1.log_logit_scale", {}});
}

// Values for a spec: ImageBind's build_causal_attention_mask for the mask (-inf above the
// diagonal, 0 on and below it), else small random values (ViT-like init: a forward stays finite).
inline torch::Tensor imagebind_random_value(const TensorSpec& spec) {
  if (spec.name == "modality_preprocessors.text.mask")
    return torch::full(spec.shape, -std::numeric_limits<float>::infinity()).triu(1);
  return torch::randn(spec.shape) * 0.02;
}

}  // namespace iadgpt::test
