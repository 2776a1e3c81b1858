// Anomaly maps from tapped ViT tokens (METHOD §1.4–1.6).
//
//   anomaly::VisualDecoder decoder(/*vision_width=*/1280, /*embed_dim=*/1024, /*layers=*/4);
//   auto maps = decoder->forward(taps, text.f_text, 224);      // maps.fused: [B, 1, 224, 224]
//   anomaly::MemoryBank bank;  bank.add(reference_taps);
//   auto few_shot = bank.query(query_taps, 224);                // M_fs: [B, 1, 224, 224]
//
// Taps are the raw block outputs [B, 1+N, D_v] (CLS first) of the tapped layers, in order.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <string_view>
#include <vector>

#include "io/checkpoint.h"

namespace iadgpt::anomaly {

// Per-layer maps and their mean. `layers[l]` is [B, 2, S, S] (softmax over normal/abnormal, the
// abnormal channel is index 1); `fused` is the mean abnormal channel [B, 1, S, S].
struct LayerMaps {
  std::vector<torch::Tensor> layers;
  torch::Tensor fused;
};

// Text-guided map of one layer: row-normalise the projected patches [B, N, D], 100·cos with
// F_text [2, D], reshape to a g×g grid, bilinear upsample (align_corners) to `size`, softmax
// over the two channels. Returns [B, 2, size, size].
torch::Tensor text_guided_map(const torch::Tensor& projected_patches, const torch::Tensor& f_text,
                              int64_t size);

LayerMaps mean_over_layers(std::vector<torch::Tensor> layer_maps);

// The visual-guided decoder (AnomalyGPT's LinearLayer): one Linear(D_v, D) per tapped layer.
// Parameter names `fc.<l>.weight|bias` equal AnomalyGPT's `image_decoder.fc.<l>.*`.
class VisualDecoderImpl : public torch::nn::Module {
 public:
  VisualDecoderImpl(int64_t vision_width, int64_t embed_dim, int64_t layers);

  // taps[l]: [B, 1+N, D_v] -> P_l: [B, N, D] (CLS dropped).
  std::vector<torch::Tensor> project(const std::vector<torch::Tensor>& taps);
  LayerMaps forward(const std::vector<torch::Tensor>& taps, const torch::Tensor& f_text, int64_t size);

  int64_t vision_width() const { return vision_width_; }
  int64_t embed_dim() const { return embed_dim_; }
  int64_t num_layers() const { return static_cast<int64_t>(fc->size()); }

  torch::nn::ModuleList fc;

 private:
  int64_t vision_width_, embed_dim_;
};
TORCH_MODULE(VisualDecoder);

// Loads decoder weights from our safetensors (`fc.<l>.*`) or AnomalyGPT's delta checkpoint
// (`image_decoder.fc.<l>.*`), validating every shape; errors name the key.
void load_decoder(VisualDecoder& decoder, const io::TensorMap& tensors, std::string_view source);
io::TensorMap decoder_tensors(VisualDecoder& decoder);  // `fc.<l>.*`, for saving

// Few-shot memory bank (METHOD §1.5): normalised reference patch tokens per layer; a query
// patch's score is 1 − max cosine to the bank, averaged over layers.
class MemoryBank {
 public:
  // Bounded memory: similarities are computed for `chunk` query patches at a time. `dtype` is
  // the dtype of the stored rows and of the similarity products: bf16 when the encoder itself
  // runs in bf16 (its taps carry no more precision), which puts the products on oneDNN's bf16
  // GEMM; the maximum and the mean over layers are taken in fp32.
  explicit MemoryBank(int64_t chunk = 1024, torch::Dtype dtype = torch::kFloat32) : chunk_(chunk), dtype_(dtype) {}

  // Adds the taps of R reference images: taps[l] is [R, 1+N, D_v].
  void add(const std::vector<torch::Tensor>& taps);
  bool empty() const { return bank_.empty(); }
  int64_t size() const { return bank_.empty() ? 0 : bank_[0].size(0); }  // patches per layer
  void clear() { bank_.clear(); }

  // M_fs for B query images: [B, 1, size, size].
  torch::Tensor query(const std::vector<torch::Tensor>& taps, int64_t size) const;

 private:
  int64_t chunk_;
  torch::Dtype dtype_;
  std::vector<torch::Tensor> bank_;  // per layer [M, D_v], rows normalised, in dtype_
};

// The reference images plus their 90/180/270° rotations (AnomalyGPT's augmentation), [4R, 3, S, S].
torch::Tensor with_rotations(const torch::Tensor& pixel_values);

// Zero-shot map (METHOD §1.6): each tapped patch token goes through the family's own final norm
// and projection (`to_joint_space`: [B, N, D_v] -> [B, N, D]), then as the decoder map.
using JointProjection = std::function<torch::Tensor(const torch::Tensor&)>;
LayerMaps zero_shot_maps(const std::vector<torch::Tensor>& taps, const JointProjection& to_joint_space,
                         const torch::Tensor& f_text, int64_t size);

// (M_text + M_fs) / 2, the optional blend of METHOD §1.5.
torch::Tensor blend(const torch::Tensor& text_map, const torch::Tensor& few_shot_map);

// Image score from a map [B, 1, S, S]: the maximum, or the mean of the top-k values (k > 0).
torch::Tensor image_scores(const torch::Tensor& maps, int64_t top_k = 0);

}  // namespace iadgpt::anomaly
