// CLIP preprocessing (METHOD §1.1): the encoder view (short side → S bicubic, centre crop S×S)
// and the map view (whole image → S×S bicubic, no crop), both ToTensor + CLIP mean/std.
//
//   cv::Mat rgb = iadgpt::image::decode_file("bottle.png");
//   at::Tensor x = iadgpt::image::clip_encoder_view(rgb, 224);   // [3,224,224] float32
//   at::Tensor m = iadgpt::image::clip_map_view(rgb, 224);
//
// The default resampler reproduces PIL's BICUBIC resize of 8-bit RGB images (what torchvision's
// Resize(BICUBIC) on PIL images, and hence the ImageBind/CLIP/AnomalyGPT references, use):
// a = -0.5, support widened by the downscale factor (antialias), normalised coefficients in
// 22-bit fixed point, horizontal pass then vertical pass, each rounded and clipped to uint8.
// Measured differences against the upstream pixel_values: src/image/README.md.
// Thread-safety: pure functions.
#pragma once
#include <opencv2/core.hpp>

#include "io/aten.h"  // not <torch/torch.h>: the fuzz build (clang 14) cannot parse it

#include <array>
#include <cstdint>
#include <string_view>

namespace iadgpt::image {

inline constexpr std::array<float, 3> kClipMean = {0.48145466f, 0.4578275f, 0.40821073f};
inline constexpr std::array<float, 3> kClipStd = {0.26862954f, 0.26130258f, 0.27577711f};

enum class Resampler {
  PilBicubic,  // ours: PIL ImagingResample BICUBIC, bit-exact on 8-bit images (default)
  CvCubic,     // OpenCV INTER_CUBIC (a = -0.75, no antialias)
  CvArea,      // OpenCV INTER_AREA (box filter when shrinking, bilinear-like when enlarging)
};
Resampler parse_resampler(std::string_view name);  // "pil", "cv-cubic", "cv-area"

// PIL-compatible bicubic resize of a CV_8UC3 (or CV_8UC1) image.
cv::Mat pil_bicubic_resize(const cv::Mat& src, int out_width, int out_height);
cv::Mat resize(const cv::Mat& rgb8, int out_width, int out_height, Resampler r = Resampler::PilBicubic);

// torchvision Resize(int): short side → size, long side → int(size·long/short).
cv::Size short_side_size(cv::Size in, int size);
// torchvision CenterCrop offsets: round((in - size) / 2) with Python's round-half-even.
cv::Rect center_crop_rect(cv::Size in, int size);

// ToTensor + Normalize(CLIP mean/std): per value (v / 255 − mean) / std in float32, each step
// rounded like torchvision's div(255), sub_(mean), div_(std).
at::Tensor normalize_clip(const cv::Mat& rgb8);

at::Tensor clip_encoder_view(const cv::Mat& rgb8, int size, Resampler r = Resampler::PilBicubic);
at::Tensor clip_map_view(const cv::Mat& rgb8, int size, Resampler r = Resampler::PilBicubic);

}  // namespace iadgpt::image
