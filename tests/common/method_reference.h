// Independent references for the tests: METHOD §1.4 (text map), §1.6 (zero-shot projection),
// §1.7 (TGE) and §1.8 (MMF) written with plain tensor ops in float64, from the weights as the
// state-dict tensors hold them — never through the modules under test. The bilinear upsampling and
// the adaptive average pool are written out by hand (interpolation matrices and bin means).
//
//   auto maps = test::reference::text_map(projected_patches, f_text, 224);    // [B, 2, S, S]
//   auto expert = test::reference::multi_mask_fusion(mmf_tensors, masks);     // [B, 18, H]
#pragma once
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "io/checkpoint.h"

namespace iadgpt::test::reference {

inline torch::Tensor f64(const torch::Tensor& t) { return t.detach().to(torch::kFloat64); }

// Rows normalised to unit L2 norm (last dimension).
inline torch::Tensor normalize_rows(const torch::Tensor& x) { return x / x.pow(2).sum(-1, true).sqrt(); }

// LayerNorm over the last dimension (biased variance, as torch.nn.LayerNorm).
inline torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, double eps) {
  auto mean = x.mean(-1, true);
  auto var = (x - mean).pow(2).mean(-1, true);
  return (x - mean) / (var + eps).sqrt() * f64(weight) + f64(bias);
}

// [out, in] matrix of 1-D linear interpolation with align_corners = true: out[i] samples the input
// at i·(in−1)/(out−1).
inline torch::Tensor interpolation_matrix(int64_t out, int64_t in) {
  auto m = torch::zeros({out, in}, torch::kFloat64);
  auto a = m.accessor<double, 2>();
  for (int64_t i = 0; i < out; ++i) {
    const double src = out > 1 ? static_cast<double>(i) * static_cast<double>(in - 1) / static_cast<double>(out - 1) : 0.0;
    const auto i0 = std::min<int64_t>(static_cast<int64_t>(std::floor(src)), in - 1);
    const auto i1 = std::min<int64_t>(i0 + 1, in - 1);
    const double w = src - static_cast<double>(i0);
    a[i][i0] += 1.0 - w;
    a[i][i1] += w;
  }
  return m;
}

// METHOD §1.4 from projected patches [B, N, D]: row-normalise, 100·cos with F_text [2, D], g×g
// grid, bilinear upsample (align_corners) to size×size, softmax over the two channels.
// Returns [B, 2, size, size] (channel 1 = abnormal).
inline torch::Tensor text_map(const torch::Tensor& projected, const torch::Tensor& f_text, int64_t size) {
  const int64_t batch = projected.size(0), n = projected.size(1);
  const auto g = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(n))));
  auto logits = 100.0 * torch::matmul(normalize_rows(f64(projected)), f64(f_text).t());  // [B, N, 2]
  auto grid = logits.permute({0, 2, 1}).reshape({batch, 2, g, g});                      // row-major patches
  const auto r = interpolation_matrix(size, g);
  auto up = torch::matmul(torch::matmul(r, grid), r.t());  // [B, 2, S, S]
  auto e = (up - up.amax(1, true)).exp();
  return e / e.sum(1, true);
}

// METHOD §1.4 decoder projection of one layer: P_l = T_l[1:] · W_lᵀ + b_l ([B, N, D]).
inline torch::Tensor decoder_projection(const io::TensorMap& decoder, int64_t layer, const torch::Tensor& tap) {
  const auto key = "fc." + std::to_string(layer);
  return torch::matmul(f64(tap).slice(1, 1), f64(decoder.at(key + ".weight")).t()) + f64(decoder.at(key + ".bias"));
}

// METHOD §1.6 projection into the joint space: the tower's head LayerNorm, then the projection
// [D, D_v] (Linear layout), per patch token (CLS dropped). [B, N, D].
inline torch::Tensor joint_projection(const torch::Tensor& tap, const torch::Tensor& ln_weight, const torch::Tensor& ln_bias,
                                      double eps, const torch::Tensor& proj) {
  auto normed = layer_norm(f64(tap).slice(1, 1), ln_weight, ln_bias, eps);
  return torch::matmul(normed, f64(proj).t());
}

// METHOD §1.7 with the TGE's state dict (llama_proj, normal_path, abnormal_path, gate_log_scale).
// e [B, D], sentences [K, D], f_text [2, D] -> E_img [B, H].
inline torch::Tensor text_guided_enhancer(const io::TensorMap& tge, const torch::Tensor& e, const torch::Tensor& normal,
                                          const torch::Tensor& abnormal, const torch::Tensor& f_text) {
  const double tau = 0.07;
  auto x = f64(e);
  auto side = [&](const torch::Tensor& u, const std::string& path) {
    auto a = torch::softmax(torch::matmul(x, f64(u).t()) / tau, -1);  // α_p [B, K]
    auto c = torch::matmul(a, f64(u));                                // c_p [B, D]
    return torch::matmul(torch::cat({x, c}, -1), f64(tge.at(path + ".weight")).t()) + f64(tge.at(path + ".bias"));
  };
  auto gate = torch::softmax(torch::matmul(x, f64(f_text).t()) * f64(tge.at("gate_log_scale")).exp(), -1);  // γ [B, 2]
  auto proj = torch::matmul(x, f64(tge.at("llama_proj.weight")).t()) + f64(tge.at("llama_proj.bias"));
  return proj + gate.slice(1, 0, 1) * side(normal, "normal_path") + gate.slice(1, 1, 2) * side(abnormal, "abnormal_path");
}

// Adaptive average pool of [B, C, h, w] to out×out, PyTorch's bins: [floor(i·h/out), ceil((i+1)·h/out)).
inline torch::Tensor adaptive_average(const torch::Tensor& x, int64_t out) {
  const int64_t h = x.size(2), w = x.size(3);
  std::vector<torch::Tensor> rows;
  for (int64_t i = 0; i < out; ++i) {
    const int64_t y0 = (i * h) / out, y1 = ((i + 1) * h + out - 1) / out;
    std::vector<torch::Tensor> cols;
    for (int64_t j = 0; j < out; ++j) {
      const int64_t x0 = (j * w) / out, x1 = ((j + 1) * w + out - 1) / out;
      cols.push_back(x.slice(2, y0, y1).slice(3, x0, x1).mean({2, 3}));  // [B, C]
    }
    rows.push_back(torch::stack(cols, -1));  // [B, C, out]
  }
  return torch::stack(rows, -2);  // [B, C, out, out]
}

// METHOD §1.8 with the MMF's state dict: five conv 3×3 (padding 1) → ReLU → 2×2 max-pool stages
// (`convs.{0,3,6,9,12}`), 3×3 adaptive average pool, cell_proj per cell (row-major), the 9 base
// tokens first. masks [B, 6, S, S] -> E_expert [B, 18, H].
inline torch::Tensor multi_mask_fusion(const io::TensorMap& mmf, const torch::Tensor& masks) {
  auto x = f64(masks);
  for (int stage = 0; stage < 5; ++stage) {
    const auto key = "convs." + std::to_string(3 * stage);
    x = torch::conv2d(x, f64(mmf.at(key + ".weight")), f64(mmf.at(key + ".bias")), 1, 1).clamp_min(0.0);
    const int64_t b = x.size(0), c = x.size(1), h = x.size(2) / 2, w = x.size(3) / 2;
    x = x.slice(2, 0, 2 * h).slice(3, 0, 2 * w).reshape({b, c, h, 2, w, 2}).amax({3, 5});  // 2×2 max-pool, floor
  }
  auto cells = adaptive_average(x, 3).flatten(2).transpose(1, 2);  // [B, 9, 1024], cell (r, c) at 3r + c
  auto tokens = torch::matmul(cells, f64(mmf.at("cell_proj.weight")).t()) + f64(mmf.at("cell_proj.bias"));
  auto base = f64(mmf.at("base_tokens")).unsqueeze(0).expand({masks.size(0), -1, -1});
  return torch::cat({base, tokens}, 1);
}

}  // namespace iadgpt::test::reference
