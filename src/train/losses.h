// Pixel losses of the stage-2 map learning (METHOD §3.2): focal + dice on every tapped layer's
// two-channel softmax map, against the ground-truth mask binarised at 0.3.
//
//   auto target = train::binarize_mask(mask);                 // [B, S, S] float 0/1
//   auto loss = train::map_loss(decoder->forward(taps, f_text, S).layers, target);
//   loss.total.backward();
//
// Conventions follow AnomalyGPT's code/utils/loss.py (read, not copied):
// * FocalLoss(gamma=2, alpha=None, smooth=1e-5): the one-hot target is clamped to
//   [smooth/(C-1), 1-smooth], p_t = <key, p> + smooth, loss = mean over pixels of -(1-p_t)^γ·log p_t.
//   The input is already a softmax (apply_nonlin=None in AnomalyGPT).
// * BinaryDiceLoss(smooth=1) on the abnormal channel: per image (2Σpt + 1)/(Σp + Σt + 1), loss =
//   1 − mean over the batch.
// * Both are summed over the tapped layers (AnomalyGPT: loss_pixel += focal + dice per layer).
#pragma once
#include <torch/torch.h>

#include <vector>

namespace iadgpt::train {

inline constexpr double kMaskThreshold = 0.3;  // AnomalyGPT: gt[gt > 0.3] = 1, else 0

// `mask > threshold` as float 0/1, same shape. Masks in [0, 1] (divide U8 {0,255} masks first).
torch::Tensor binarize_mask(const torch::Tensor& mask, double threshold = kMaskThreshold);

// probs: [B, C, H, W] softmax over C; target: [B, H, W] or [B, 1, H, W] holding class ids 0..C-1.
// Returns a scalar (mean over B·H·W pixels).
torch::Tensor focal_loss(const torch::Tensor& probs, const torch::Tensor& target, double gamma = 2.0,
                         double smooth = 1e-5);

// abnormal: [B, H, W] (or [B, 1, H, W]) probabilities; target: same number of elements, 0/1.
torch::Tensor dice_loss(const torch::Tensor& abnormal, const torch::Tensor& target, double smooth = 1.0);

struct MapLoss {
  torch::Tensor total;  // focal + dice, summed over layers (what is back-propagated)
  torch::Tensor focal;  // summed over layers (detached copies are cheap: scalars)
  torch::Tensor dice;
};

// layer_maps[l]: [B, 2, S, S] (anomaly::LayerMaps::layers); target: [B, S, S] binarised.
MapLoss map_loss(const std::vector<torch::Tensor>& layer_maps, const torch::Tensor& target);

}  // namespace iadgpt::train
