#include "anomaly/maps.h"

#include <fmt/format.h>

#include <cmath>

#include "io/error.h"
#include "nn/weights.h"

namespace iadgpt::anomaly {
namespace F = torch::nn::functional;

namespace {

int64_t grid_side(int64_t patches) {
  const auto side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(patches))));
  if (side * side != patches) {
    throw InputError(fmt::format("{} patch tokens do not form a square grid", patches));
  }
  return side;
}

// [B, N, C] -> [B, C, g, g] -> bilinear (align_corners, as AnomalyGPT) to size×size.
torch::Tensor upsample_grid(const torch::Tensor& per_patch, int64_t size) {
  const int64_t batch = per_patch.size(0), side = grid_side(per_patch.size(1));
  auto grid = per_patch.permute({0, 2, 1}).reshape({batch, per_patch.size(2), side, side});
  return F::interpolate(grid, F::InterpolateFuncOptions()
                                  .size(std::vector<int64_t>{size, size})
                                  .mode(torch::kBilinear)
                                  .align_corners(true));
}

void check_taps(const std::vector<torch::Tensor>& taps, std::string_view what) {
  if (taps.empty()) throw InputError(fmt::format("{}: no tapped layers given", what));
  for (const auto& t : taps) {
    if (t.dim() != 3 || t.size(1) < 2) {
      throw InputError(fmt::format("{}: a tap must be [B, 1+N, D], got {}", what, nn::shape_string(t.sizes())));
    }
  }
}

}  // namespace

torch::Tensor text_guided_map(const torch::Tensor& projected_patches, const torch::Tensor& f_text,
                              int64_t size) {
  auto patches = F::normalize(projected_patches.to(torch::kFloat32), F::NormalizeFuncOptions().dim(-1));
  auto logits = 100.0 * torch::matmul(patches, f_text.to(torch::kFloat32).t());  // [B, N, 2]
  // Upsample the logits, then softmax: the order AnomalyGPT uses, so released decoders agree.
  return torch::softmax(upsample_grid(logits, size), 1);
}

LayerMaps mean_over_layers(std::vector<torch::Tensor> layer_maps) {
  LayerMaps maps;
  maps.layers = std::move(layer_maps);
  std::vector<torch::Tensor> abnormal;
  for (const auto& m : maps.layers) abnormal.push_back(m.slice(1, 1, 2));
  maps.fused = torch::stack(abnormal).mean(0);
  return maps;
}

VisualDecoderImpl::VisualDecoderImpl(int64_t vision_width, int64_t embed_dim, int64_t layers)
    : vision_width_(vision_width), embed_dim_(embed_dim) {
  fc = register_module("fc", torch::nn::ModuleList());
  for (int64_t l = 0; l < layers; ++l) fc->push_back(torch::nn::Linear(vision_width, embed_dim));
}

std::vector<torch::Tensor> VisualDecoderImpl::project(const std::vector<torch::Tensor>& taps) {
  check_taps(taps, "visual decoder");
  if (static_cast<int64_t>(taps.size()) != num_layers()) {
    throw InputError(fmt::format("visual decoder has {} layers but {} taps were given", num_layers(), taps.size()));
  }
  std::vector<torch::Tensor> projected;
  for (size_t l = 0; l < taps.size(); ++l) {
    auto patches = taps[l].slice(1, 1).to(torch::kFloat32);  // drop CLS
    projected.push_back(fc[l]->as<torch::nn::Linear>()->forward(patches));
  }
  return projected;
}

LayerMaps VisualDecoderImpl::forward(const std::vector<torch::Tensor>& taps, const torch::Tensor& f_text,
                                     int64_t size) {
  std::vector<torch::Tensor> layer_maps;
  for (const auto& p : project(taps)) layer_maps.push_back(text_guided_map(p, f_text, size));
  return mean_over_layers(std::move(layer_maps));
}

void load_decoder(VisualDecoder& decoder, const io::TensorMap& tensors, std::string_view source) {
  // Our files use `fc.<l>.*`; AnomalyGPT's delta nests the same module under `image_decoder.`.
  const std::string prefix = tensors.count("image_decoder.fc.0.weight") ? "image_decoder." : "";
  torch::NoGradGuard no_grad;
  for (int64_t l = 0; l < decoder->num_layers(); ++l) {
    auto linear = decoder->fc[l]->as<torch::nn::Linear>();
    const auto base = fmt::format("{}fc.{}.", prefix, l);
    for (auto [name, param, shape] :
         {std::tuple{"weight", linear->weight, std::vector<int64_t>{decoder->embed_dim(), decoder->vision_width()}},
          std::tuple{"bias", linear->bias, std::vector<int64_t>{decoder->embed_dim()}}}) {
      const auto key = base + name;
      auto it = tensors.find(key);
      if (it == tensors.end()) throw InputError(fmt::format("{}: missing decoder tensor '{}'", source, key));
      if (it->second.sizes() != at::IntArrayRef(shape)) {
        throw InputError(fmt::format("{}: decoder tensor '{}' has shape {}, expected {}", source, key,
                                     nn::shape_string(it->second.sizes()), nn::shape_string(shape)));
      }
      param.copy_(it->second.to(torch::kFloat32));
    }
  }
}

io::TensorMap decoder_tensors(VisualDecoder& decoder) {
  io::TensorMap out;
  for (const auto& item : decoder->named_parameters()) out[item.key()] = item.value().detach().clone();
  return out;
}

void MemoryBank::add(const std::vector<torch::Tensor>& taps) {
  check_taps(taps, "memory bank");
  if (!bank_.empty() && bank_.size() != taps.size()) {
    throw InputError(fmt::format("memory bank holds {} layers but {} taps were given", bank_.size(), taps.size()));
  }
  for (size_t l = 0; l < taps.size(); ++l) {
    auto patches = taps[l].slice(1, 1).to(torch::kFloat32);
    auto rows = F::normalize(patches.reshape({-1, patches.size(2)}), F::NormalizeFuncOptions().dim(-1)).to(dtype_);
    if (bank_.size() <= l) {
      bank_.push_back(rows.contiguous());
    } else {
      if (bank_[l].size(1) != rows.size(1)) {
        throw InputError(fmt::format("memory bank layer {} is {} wide, the new taps are {}", l, bank_[l].size(1), rows.size(1)));
      }
      bank_[l] = torch::cat({bank_[l], rows});
    }
  }
}

torch::Tensor MemoryBank::query(const std::vector<torch::Tensor>& taps, int64_t size) const {
  if (bank_.empty()) throw InputError("few-shot map requested but no reference images were given");
  check_taps(taps, "few-shot query");
  if (taps.size() != bank_.size()) {
    throw InputError(fmt::format("memory bank holds {} layers but the query has {}", bank_.size(), taps.size()));
  }
  const int64_t batch = taps[0].size(0), patches = taps[0].size(1) - 1;
  auto similarity = torch::zeros({batch * patches}, taps[0].options().dtype(torch::kFloat32));
  for (size_t l = 0; l < taps.size(); ++l) {
    auto q = F::normalize(taps[l].slice(1, 1).to(torch::kFloat32).reshape({batch * patches, -1}),
                          F::NormalizeFuncOptions().dim(-1))
                 .to(dtype_);
    if (q.size(1) != bank_[l].size(1)) {
      throw InputError(fmt::format("few-shot layer {}: query is {} wide, bank is {}", l, q.size(1), bank_[l].size(1)));
    }
    // Chunked so that a k=4 bank with rotations (4·4·256 rows) never builds a full Q×M matrix.
    for (int64_t start = 0; start < q.size(0); start += chunk_) {
      const int64_t end = std::min(start + chunk_, q.size(0));
      auto best = std::get<0>(torch::matmul(q.slice(0, start, end), bank_[l].t()).max(1)).to(torch::kFloat32);
      similarity.slice(0, start, end) += best;
    }
  }
  similarity /= static_cast<double>(taps.size());
  auto per_patch = (1.0 - similarity).reshape({batch, patches, 1});
  return upsample_grid(per_patch, size);
}

torch::Tensor with_rotations(const torch::Tensor& pixel_values) {
  std::vector<torch::Tensor> views;
  for (int64_t k = 0; k < 4; ++k) views.push_back(torch::rot90(pixel_values, k, {2, 3}));
  return torch::cat(views);
}

LayerMaps zero_shot_maps(const std::vector<torch::Tensor>& taps, const JointProjection& to_joint_space,
                         const torch::Tensor& f_text, int64_t size) {
  check_taps(taps, "zero-shot map");
  std::vector<torch::Tensor> layer_maps;
  for (const auto& tap : taps) {
    layer_maps.push_back(text_guided_map(to_joint_space(tap.slice(1, 1)), f_text, size));
  }
  return mean_over_layers(std::move(layer_maps));
}

torch::Tensor blend(const torch::Tensor& text_map, const torch::Tensor& few_shot_map) {
  if (text_map.sizes() != few_shot_map.sizes()) {
    throw InputError(fmt::format("cannot blend maps of shapes {} and {}", nn::shape_string(text_map.sizes()), nn::shape_string(few_shot_map.sizes())));
  }
  return (text_map + few_shot_map) / 2.0;
}

torch::Tensor image_scores(const torch::Tensor& maps, int64_t top_k) {
  auto flat = maps.reshape({maps.size(0), -1});
  if (top_k <= 0) return std::get<0>(flat.max(1));
  return std::get<0>(flat.topk(std::min<int64_t>(top_k, flat.size(1)), 1)).mean(1);
}

}  // namespace iadgpt::anomaly
