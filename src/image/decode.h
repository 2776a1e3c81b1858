// Image decoding (METHOD §1.1): PNG, JPEG, BMP, TIFF (anything OpenCV reads), 8/16-bit, grey,
// grey+alpha, RGB, RGBA → one RGB image. From a file or from bytes in memory (uploads, fuzzing).
//
//   cv::Mat rgb = iadgpt::image::decode_file("bottle.png");     // CV_8UC3, RGB order
//   cv::Mat rgb16 = iadgpt::image::decode_bytes(bytes, "upload", Depth::Native);  // keeps 16-bit
//
// Alpha is dropped without compositing (as PIL's convert('RGB'), which the reference used).
// 16-bit images become 8-bit by v/257 rounded (the full range maps onto 0..255); float images
// are taken as [0,1]. Rejected with InputError: empty input, undecodable data, and dimensions
// above kMaxSide per side or kMaxPixels in total (checked from the header before decoding where
// the format allows, so a forged header cannot make us allocate gigabytes).
// Thread-safety: re-entrant.
#pragma once
#include <opencv2/core.hpp>

#include <cstdint>
#include <filesystem>
#include <span>
#include <string_view>

#include "io/aten.h"  // not <torch/torch.h>: the fuzz build (clang 14) cannot parse it

namespace iadgpt::image {

inline constexpr int64_t kMaxSide = 32768;
inline constexpr int64_t kMaxPixels = int64_t{1} << 27;  // 134 M pixels = 403 MB as RGB8

enum class Depth {
  U8,      // CV_8UC3 (what CLIP preprocessing consumes)
  Native,  // CV_8UC3 or CV_16UC3 or CV_32FC3, as stored
};

cv::Mat decode_file(const std::filesystem::path& path, Depth depth = Depth::U8);
cv::Mat decode_bytes(std::span<const uint8_t> bytes, std::string_view name = "<memory>", Depth depth = Depth::U8);

// Width/height from the PNG/JPEG/BMP header without decoding; {0,0} when unknown format.
cv::Size peek_size(std::span<const uint8_t> bytes);

// Any RGB Mat (8U/16U/32F) → CV_8UC3.
cv::Mat to_rgb8(const cv::Mat& rgb);
// RGB Mat → float tensor [3,H,W] in [0,1] (ToTensor); keeps 16-bit precision.
at::Tensor to_float_tensor(const cv::Mat& rgb);

}  // namespace iadgpt::image
