// One Vision Transformer for every CLIP family (METHOD §1.2): config + named tensors + a forward
// that reads top to bottom. Families differ only in their key-map table (loader.h), eps and GELU.
//
//   auto model = iadgpt::vision::load_vision(iadgpt::io::load_checkpoint(path), {});
//   auto out = iadgpt::vision::vit_forward(model.weights, model.config, pixels, {7, 15, 23, 31});
//   out.embedding;  // [B, D] L2-normalised;  out.taps[0]: [B, 1+N, D_v] raw block-7 output, CLS first
//
// Thread-safety: vit_forward only reads the weights; concurrent calls on one model are fine.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nn/transformer.h"
#include "vision/family.h"

namespace iadgpt::vision {

struct VitConfig {
  Family family = Family::ImageBind;
  int64_t image_size = 224;  // S
  int64_t patch_size = 14;
  int64_t width = 0;         // D_v
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t mlp_dim = 0;       // F (4·D_v for every released tower)
  int64_t embed_dim = 0;     // D (joint space); == width when the checkpoint has no projection
  double eps = 1e-5;
  nn::Activation activation = nn::Activation::Gelu;
  bool has_projection = true;  // HF CLIPVisionModel has none: the pooled output is the embedding

  int64_t grid() const { return image_size / patch_size; }  // g
  int64_t tokens() const { return 1 + grid() * grid(); }     // 1 + N
  nn::BlockConfig block() const { return {.width = width, .heads = heads, .eps = eps, .activation = activation}; }
  // Default taps: four evenly spaced blocks ending with the last (METHOD §1.2: 32 → 7,15,23,31).
  std::vector<int64_t> default_taps() const;
  // Parameters of the vision tower (what load_vision reads).
  int64_t parameter_count() const;
  // Multiply-adds ×2 of one image's forward (matmuls and convolution only).
  double flops_per_image() const;
};

// Every tensor in our layout, whatever the family (the key maps convert on load).
struct VitWeights {
  torch::Tensor patch_weight;                 // [D_v, 3, p, p]  no bias (ImageBind: W[:,:,0]+W[:,:,1])
  torch::Tensor cls_token;                    // [D_v]
  torch::Tensor pos_embed;                    // [1+N, D_v]
  torch::Tensor pre_ln_weight, pre_ln_bias;   // [D_v]  ln_pre / pre_transformer_layer / pre_layrnorm
  std::vector<nn::BlockWeights> blocks;       // layers
  torch::Tensor head_ln_weight, head_ln_bias; // [D_v]  ln_post / modality_heads.vision.0 / post_layernorm
  torch::Tensor proj;                         // [D, D_v] Linear layout (OpenAI's visual.proj transposed); undefined = none
};

struct VitOutput {
  torch::Tensor embedding;           // [B, D] L2-normalised, fp32
  torch::Tensor embedding_raw;       // [B, D] as the family's forward returns it, fp32
  std::vector<torch::Tensor> taps;   // per requested block: [B, 1+N, D_v] raw block output, fp32
};

// pixels: [B, 3, S, S] float (CLIP-normalised). Runs in the dtype of the weights (fp32 or bf16:
// LayerNorm statistics and attention softmax are taken in fp32 by nn::*). `taps` are 0-based block
// indices; InputError when out of range.
VitOutput vit_forward(const VitWeights& w, const VitConfig& cfg, const torch::Tensor& pixels,
                      std::span<const int64_t> taps = {});

// Casts every tensor (bf16 fast path).
void convert_weights(VitWeights& w, torch::Dtype dtype);
// The formats the vision tower takes, written once: none or q8. q4 → InputError naming `what`
// (its maps were not checked: README "int8 tower").
void require_vision_quant(nn::QuantFormat format, std::string_view what);
// A vision quantization format by name (require_vision_quant's rule); q4 or an unknown name →
// InputError naming `what` (a flag, a bundle field).
nn::QuantFormat parse_vision_quant(std::string_view name, std::string_view what);
// Quantizes every block's four matrices (nn::quantize_block; the stem, LayerNorms, biases and
// projection stay as they are). q8; none: nothing; q4 → InputError (require_vision_quant).
void quantize_weights(VitWeights& w, nn::QuantFormat format);
// Moves every tensor to `device` (nn/device.h), once after loading. Quantized blocks: CPU only.
void move_weights(VitWeights& w, const torch::Device& device);

// Real-size architectures for `iadgpt bench encode` ("imagebind-huge", "clip-vit-l-14-336").
VitConfig vit_preset(std::string_view arch);
// Random weights created directly in `dtype` (no fp32 copy): LayerNorms 1/0, N(0, 0.02) elsewhere.
VitWeights random_weights(const VitConfig& cfg, torch::Dtype dtype, uint64_t seed = 0);

}  // namespace iadgpt::vision
