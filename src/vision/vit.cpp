#include "vision/vit.h"

#include <fmt/format.h>

#include "io/error.h"
#include "nn/device.h"
#include "nn/weights.h"

namespace iadgpt::vision {

std::vector<int64_t> VitConfig::default_taps() const {
  std::vector<int64_t> taps;
  for (int64_t k = 1; k <= 4; ++k) taps.push_back(std::max<int64_t>(0, k * layers / 4 - 1));
  return taps;
}

int64_t VitConfig::parameter_count() const {
  const int64_t D = width, F = mlp_dim;
  const int64_t block = 4 * D /*2 LN*/ + 3 * D * D + 3 * D + D * D + D + F * D + F + D * F + D;
  return D * 3 * patch_size * patch_size + D + tokens() * D + 2 * D + layers * block + 2 * D +
         (has_projection ? embed_dim * D : 0);
}

double VitConfig::flops_per_image() const {
  const double L = static_cast<double>(tokens()), D = static_cast<double>(width), F = static_cast<double>(mlp_dim);
  const double N = L - 1, stem = 2.0 * N * D * 3 * patch_size * patch_size;
  const double block = 2.0 * L * D * 3 * D + 2 * (2.0 * L * L * D) + 2.0 * L * D * D + 2 * (2.0 * L * D * F);
  return stem + layers * block + (has_projection ? 2.0 * D * embed_dim : 0.0);
}

namespace {

void check_input(const torch::Tensor& pixels, const VitConfig& cfg) {
  if (pixels.dim() != 4 || pixels.size(1) != 3 || pixels.size(2) != cfg.image_size ||
      pixels.size(3) != cfg.image_size) {
    throw InputError(fmt::format("pixel values have shape {}, expected [B, 3, {}, {}]",
                                 fmt::join(pixels.sizes(), ","), cfg.image_size, cfg.image_size));
  }
  if (!pixels.is_floating_point()) throw InputError("pixel values must be floating point");
}

// Patch embedding: a p×p/stride-p convolution without bias, then one token per patch in
// row-major order. [B,3,S,S] → [B,N,D_v].
torch::Tensor embed_patches(const torch::Tensor& pixels, const VitWeights& w, const VitConfig& cfg) {
  auto x = torch::conv2d(pixels, w.patch_weight, {}, cfg.patch_size);
  return x.flatten(2).transpose(1, 2);
}

}  // namespace

VitOutput vit_forward(const VitWeights& w, const VitConfig& cfg, const torch::Tensor& pixels,
                      std::span<const int64_t> taps) {
  check_input(pixels, cfg);
  for (int64_t t : taps) {
    if (t < 0 || t >= cfg.layers) {
      throw InputError(fmt::format("tap {} is out of range: the model has blocks 0..{}", t, cfg.layers - 1));
    }
  }
  torch::NoGradGuard no_grad;
  const auto dtype = w.patch_weight.scalar_type();
  const int64_t B = pixels.size(0);

  // 1. Patches → tokens, class token first, plus learned positions.
  auto x = embed_patches(pixels.to(dtype), w, cfg);
  auto cls = w.cls_token.to(dtype).view({1, 1, cfg.width}).expand({B, 1, cfg.width});
  x = torch::cat({cls, x}, 1) + w.pos_embed.to(dtype).unsqueeze(0);

  // 2. Pre-transformer LayerNorm (ImageBind pre_transformer_layer, OpenAI ln_pre, HF pre_layrnorm).
  x = nn::layer_norm(x, w.pre_ln_weight, w.pre_ln_bias, cfg.eps);

  // 3. Blocks; taps are the raw block outputs, batch-first (ImageBind itself runs sequence-first).
  VitOutput out;
  out.taps.resize(taps.size());
  const auto block_cfg = cfg.block();
  for (int64_t i = 0; i < cfg.layers; ++i) {
    x = nn::block_forward(x, w.blocks[i], block_cfg);
    for (size_t k = 0; k < taps.size(); ++k) {
      if (taps[k] == i) out.taps[k] = x.to(torch::kFloat32);
    }
  }

  // 4. Head: LayerNorm of the class token, projection into the joint space, normalise.
  auto pooled = nn::layer_norm(x.select(1, 0), w.head_ln_weight, w.head_ln_bias, cfg.eps);
  auto raw = w.proj.defined() ? torch::matmul(pooled, w.proj.t()) : pooled;
  out.embedding_raw = raw.to(torch::kFloat32);
  out.embedding = torch::nn::functional::normalize(
      out.embedding_raw, torch::nn::functional::NormalizeFuncOptions().p(2).dim(-1));
  return out;
}

namespace {
std::array<torch::Tensor*, 8> stem_and_head_tensors(VitWeights& w) {
  return {&w.patch_weight, &w.cls_token, &w.pos_embed, &w.pre_ln_weight, &w.pre_ln_bias,
          &w.head_ln_weight, &w.head_ln_bias, &w.proj};
}
}  // namespace

void convert_weights(VitWeights& w, torch::Dtype dtype) {
  for (auto* t : stem_and_head_tensors(w))
    if (t->defined()) *t = nn::convert_weight(*t, dtype);
  for (auto& b : w.blocks) nn::convert_block(b, dtype);
}

void require_vision_quant(nn::QuantFormat format, std::string_view what) {
  if (format == nn::QuantFormat::Q4)
    throw InputError(fmt::format("{}: the vision tower takes none or q8, not q4 (q4 is for the LLM: its maps were not checked)", what));
}

nn::QuantFormat parse_vision_quant(std::string_view name, std::string_view what) {
  if (const auto format = nn::quant_format_named(name)) {
    require_vision_quant(*format, what);
    return *format;
  }
  throw InputError(fmt::format("{}: unknown vision tower format '{}' (expected none or q8)", what, name));
}

void quantize_weights(VitWeights& w, nn::QuantFormat format) {
  require_vision_quant(format, "quantize_weights");
  for (size_t i = 0; i < w.blocks.size(); ++i) nn::quantize_block(w.blocks[i], format, fmt::format("vision block {}", i));
}

void move_weights(VitWeights& w, const torch::Device& device) {
  for (auto* t : stem_and_head_tensors(w)) nn::to_device(*t, device);
  for (auto& b : w.blocks) nn::move_block(b, device);
}

VitConfig vit_preset(std::string_view arch) {
  if (arch == "imagebind-huge") {
    return {.family = Family::ImageBind, .image_size = 224, .patch_size = 14, .width = 1280, .layers = 32,
            .heads = 16, .mlp_dim = 5120, .embed_dim = 1024, .eps = 1e-6, .activation = nn::Activation::Gelu};
  }
  if (arch == "clip-vit-l-14-336") {
    return {.family = Family::OpenAiClip, .image_size = 336, .patch_size = 14, .width = 1024, .layers = 24,
            .heads = 16, .mlp_dim = 4096, .embed_dim = 768, .eps = 1e-5, .activation = nn::Activation::QuickGelu};
  }
  if (arch == "vit-tiny") {  // tests: a ViT at CPU-test size (4 blocks for the four taps)
    return {.family = Family::ImageBind, .image_size = 56, .patch_size = 14, .width = 64, .layers = 4,
            .heads = 2, .mlp_dim = 128, .embed_dim = 32, .eps = 1e-6, .activation = nn::Activation::Gelu};
  }
  throw InputError(fmt::format("unknown architecture '{}' (expected imagebind-huge, clip-vit-l-14-336 or vit-tiny)", arch));
}

VitWeights random_weights(const VitConfig& cfg, torch::Dtype dtype, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto opts = torch::TensorOptions().dtype(dtype);
  // Drawn in fp32 (vectorised; bf16 normal_ is ~10x slower) one tensor at a time, so a bf16 model
  // never holds more than one weight's fp32 temporary (≤ 26 MB for ImageBind-Huge's fc1).
  auto randn = [&](std::vector<int64_t> shape) {
    return torch::empty(shape, torch::kFloat32).normal_(0.0, 0.02, gen).to(dtype);
  };
  auto ones = [&](int64_t n) { return torch::ones({n}, opts); };
  auto zeros = [&](int64_t n) { return torch::zeros({n}, opts); };
  const int64_t D = cfg.width, F = cfg.mlp_dim, p = cfg.patch_size;
  VitWeights w;
  w.patch_weight = randn({D, 3, p, p});
  w.cls_token = randn({D});
  w.pos_embed = randn({cfg.tokens(), D});
  w.pre_ln_weight = ones(D);
  w.pre_ln_bias = zeros(D);
  for (int64_t i = 0; i < cfg.layers; ++i) {
    nn::BlockWeights b;
    b.ln1_weight = ones(D), b.ln1_bias = zeros(D);
    b.qkv_weight = randn({3 * D, D}), b.qkv_bias = zeros(3 * D);
    b.out_weight = randn({D, D}), b.out_bias = zeros(D);
    b.ln2_weight = ones(D), b.ln2_bias = zeros(D);
    b.fc1_weight = randn({F, D}), b.fc1_bias = zeros(F);
    b.fc2_weight = randn({D, F}), b.fc2_bias = zeros(D);
    w.blocks.push_back(std::move(b));
  }
  w.head_ln_weight = ones(D);
  w.head_ln_bias = zeros(D);
  if (cfg.has_projection) w.proj = randn({cfg.embed_dim, D});
  return w;
}

}  // namespace iadgpt::vision
