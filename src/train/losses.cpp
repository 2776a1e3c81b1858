#include "train/losses.h"

#include <fmt/format.h>

#include "io/error.h"
#include "nn/weights.h"

namespace iadgpt::train {

torch::Tensor binarize_mask(const torch::Tensor& mask, double threshold) {
  return mask.gt(threshold).to(torch::kFloat32);
}

torch::Tensor focal_loss(const torch::Tensor& probs, const torch::Tensor& target, double gamma, double smooth) {
  if (probs.dim() != 4) {
    throw InputError(fmt::format("focal loss: probabilities must be [B, C, H, W], got {}", nn::shape_string(probs.sizes())));
  }
  const int64_t classes = probs.size(1);
  auto ids = target.reshape({probs.size(0), probs.size(2), probs.size(3)}).to(torch::kLong);
  // [B, H, W, C] -> [B, C, H, W], the one-hot key of every pixel.
  auto key = torch::one_hot(ids, classes).permute({0, 3, 1, 2}).to(probs.scalar_type());
  if (smooth > 0) key = key.clamp(smooth / static_cast<double>(classes - 1), 1.0 - smooth);
  auto pt = (key * probs).sum(1) + smooth;  // [B, H, W]
  return (-torch::pow(1.0 - pt, gamma) * torch::log(pt)).mean();
}

torch::Tensor dice_loss(const torch::Tensor& abnormal, const torch::Tensor& target, double smooth) {
  if (abnormal.numel() != target.numel() || abnormal.dim() < 1) {
    throw InputError(fmt::format("dice loss: map {} and mask {} differ in size", nn::shape_string(abnormal.sizes()),
                                 nn::shape_string(target.sizes())));
  }
  const int64_t batch = abnormal.size(0);
  auto p = abnormal.reshape({batch, -1});
  auto t = target.reshape({batch, -1}).to(p.scalar_type());
  auto dice = (2.0 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth);
  return 1.0 - dice.sum() / static_cast<double>(batch);
}

MapLoss map_loss(const std::vector<torch::Tensor>& layer_maps, const torch::Tensor& target) {
  if (layer_maps.empty()) throw InputError("map loss: no layer maps given");
  MapLoss loss{torch::zeros({}), torch::zeros({}), torch::zeros({})};
  for (const auto& m : layer_maps) {
    if (m.dim() != 4 || m.size(1) != 2) {
      throw InputError(fmt::format("map loss: a layer map must be [B, 2, S, S], got {}", nn::shape_string(m.sizes())));
    }
    auto focal = focal_loss(m, target);
    auto dice = dice_loss(m.select(1, 1), target);
    loss.focal = loss.focal + focal;
    loss.dice = loss.dice + dice;
  }
  loss.total = loss.focal + loss.dice;
  return loss;
}

}  // namespace iadgpt::train
