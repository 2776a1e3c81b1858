// CLIP-family text towers (ImageBind, OpenAI CLIP, OpenCLIP, Hugging Face CLIP): token ids ->
// one embedding per text in the joint image-text space (METHOD §1.3).
//
//   auto tower = iadgpt::text::load_text_tower("imagebind_huge.pth");
//   torch::Tensor ids = tokenizer.tokenize_batch({"a photo of a damaged screw."});  // [1,77]
//   auto out = iadgpt::text::encode_text(tower, ids);   // out.embedding: [1,1024], L2-normalised
//
// All families share one forward: token embedding + positions, pre-norm blocks (nn::block_forward)
// under a causal mask, the token at the pooling position (argmax(ids), the EOT), LayerNorm,
// projection. They differ in key names (one table per family in text_families.cpp), LayerNorm eps,
// activation and what the family's own forward returns (`embedding_raw`).
// Thread-safety: a loaded tower is immutable; encode_text may run concurrently.
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/checkpoint.h"
#include "nn/transformer.h"

namespace iadgpt::text {

enum class TextFamily {
  ImageBind,   // modality_*.text.* (facebookresearch/ImageBind, AnomalyGPT)
  OpenAiClip,  // token_embedding, transformer.resblocks.* (openai/CLIP), QuickGELU
  OpenClip,    // same names as OpenAI (mlfoundations/open_clip), GELU unless quick_gelu
  HfClip,      // text_model.* (transformers CLIPModel / CLIPTextModelWithProjection)
};
std::string_view family_name(TextFamily family);

struct TextConfig {
  TextFamily family = TextFamily::ImageBind;
  int64_t vocab_size = 0;      // V, rows of the token embedding
  int64_t context_length = 0;  // C, rows of the positional embedding (77)
  int64_t width = 0;           // W
  int64_t heads = 0;
  int64_t layers = 0;
  int64_t mlp_width = 0;       // F
  int64_t embed_dim = 0;       // D, output of the projection
  double eps = 1e-5;
  nn::Activation activation = nn::Activation::Gelu;
  // HF pooling: first position of eos_token_id, except the legacy id 2 which means argmax(ids).
  // -1: argmax(ids) (ImageBind, OpenAI, OpenCLIP).
  int64_t eos_token_id = -1;
  std::string key_prefix;      // e.g. "module." when the checkpoint was saved from DDP
};

struct TextWeights {
  torch::Tensor token_embedding;                   // [V, W]
  torch::Tensor pos_embedding;                     // [C, W]
  torch::Tensor mask;                              // [C, C] additive 0/-inf (stored by ImageBind)
  std::vector<nn::BlockWeights> blocks;            // layers
  torch::Tensor final_ln_weight, final_ln_bias;    // [W], fp32
  torch::Tensor projection;                        // [D, W] as a Linear weight: y = x Pᵀ
  torch::Tensor log_logit_scale;                   // [] ImageBind postprocessor, else undefined
};

struct TextTower {
  TextConfig config;
  TextWeights weights;
  torch::Dtype dtype = torch::kFloat32;  // compute dtype of the blocks
};

struct TextLoadOptions {
  torch::Dtype dtype = torch::kFloat32;  // kFloat32 or kBFloat16
  // A JSON configuration where shapes cannot tell (heads of non-64-multiple widths, OpenCLIP's
  // activation): ImageBind constructor kwargs or iadgpt fixture config, an OpenCLIP model
  // config (`text_cfg`), an HF CLIPConfig/CLIPTextConfig, or {"family": "open_clip", ...}.
  // Falls back to the checkpoint's own HF config.json.
  std::optional<nlohmann::json> config;
};

// The text family of a checkpoint from its key names, or nullopt when it has no text tower.
std::optional<TextFamily> detect_text_family(const io::TensorMap& tensors);

// Validates every tensor (shape, presence) against the configuration derived from the shapes and
// `options.config`; errors are InputError naming the file and the key.
TextTower load_text_tower(const io::Checkpoint& checkpoint, const TextLoadOptions& options = {});
TextTower load_text_tower(const std::filesystem::path& path, const TextLoadOptions& options = {});
// Moves every tensor of the tower to `device` (nn/device.h), once after loading.
void move_text_tower(TextTower& tower, const torch::Device& device);

struct TextOutput {
  torch::Tensor head;           // [n, D] projection output, before normalisation
  torch::Tensor embedding;      // [n, D] L2-normalised head
  torch::Tensor embedding_raw;  // [n, D] as the family's forward returns it: ImageBind
                                // normalised · min(exp(log_logit_scale), 100); CLIP encode_text
                                // (= head) for the others
};

// ids: [n, L] integer, L <= context_length, each row pooled at its EOT (see TextConfig).
// Outputs are float32 whatever the compute dtype.
TextOutput encode_text(const TextTower& tower, const torch::Tensor& ids);

// Positions pooled for each row (argmax(ids), or the first eos_token_id for HF).
torch::Tensor pooling_positions(const TextConfig& config, const torch::Tensor& ids);

}  // namespace iadgpt::text
