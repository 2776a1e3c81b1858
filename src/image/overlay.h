// Pictures of a result: a heat-map overlay of an anomaly map on its image, and anomalib's
// visual grid (input | heat-map overlay | predicted mask | ground truth).
//
//   cv::Mat overlay = image::heatmap_overlay(rgb8, map);     // map: [H, W] in [0, 1]
//   image::write_png("part_overlay.png", overlay);
#pragma once
#include <torch/torch.h>

#include <opencv2/core.hpp>

#include <filesystem>
#include <optional>

namespace iadgpt::image {

// JET colours of `map` (values clamped to [0, 1], resized to the image) blended 50/50 with it; RGB8 out.
cv::Mat heatmap_overlay(const cv::Mat& rgb8, const torch::Tensor& map, double alpha = 0.5);

// A binary mask [H, W] (any dtype, non-zero = anomalous) as a white-on-black RGB8 picture.
cv::Mat mask_image(const torch::Tensor& mask, cv::Size size);

// input | overlay | predicted mask | ground truth (black when absent), each `tile` pixels high.
cv::Mat result_grid(const cv::Mat& rgb8, const torch::Tensor& map, const torch::Tensor& predicted_mask,
                    const std::optional<torch::Tensor>& ground_truth, int tile = 256);

// Writes RGB8 as PNG; InputError naming the path when it cannot be written.
void write_png(const std::filesystem::path& path, const cv::Mat& rgb8);

}  // namespace iadgpt::image
