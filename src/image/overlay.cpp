#include "image/overlay.h"

#include <fmt/format.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "io/error.h"

namespace iadgpt::image {
namespace {

cv::Mat to_u8_gray(const torch::Tensor& values, cv::Size size, double scale) {
  auto t = values.squeeze().to(torch::kFloat32).contiguous();
  cv::Mat f(static_cast<int>(t.size(0)), static_cast<int>(t.size(1)), CV_32F, t.data_ptr<float>());
  cv::Mat resized;
  cv::resize(f, resized, size, 0, 0, cv::INTER_LINEAR);
  cv::Mat u8;
  resized.convertTo(u8, CV_8U, scale);  // saturating: values outside [0, 1] clamp
  return u8;
}

cv::Mat fit_height(const cv::Mat& rgb8, int height) {
  cv::Mat out;
  const int width = std::max(1, static_cast<int>(std::lround(rgb8.cols * double(height) / rgb8.rows)));
  cv::resize(rgb8, out, cv::Size(width, height), 0, 0, cv::INTER_AREA);
  return out;
}

}  // namespace

cv::Mat heatmap_overlay(const cv::Mat& rgb8, const torch::Tensor& map, double alpha) {
  cv::Mat heat_bgr, heat_rgb, blended;
  cv::applyColorMap(to_u8_gray(map, rgb8.size(), 255.0), heat_bgr, cv::COLORMAP_JET);
  cv::cvtColor(heat_bgr, heat_rgb, cv::COLOR_BGR2RGB);
  cv::addWeighted(rgb8, 1.0 - alpha, heat_rgb, alpha, 0.0, blended);
  return blended;
}

cv::Mat mask_image(const torch::Tensor& mask, cv::Size size) {
  cv::Mat gray = to_u8_gray((mask != 0).to(torch::kFloat32), size, 255.0), rgb;
  cv::threshold(gray, gray, 127, 255, cv::THRESH_BINARY);
  cv::cvtColor(gray, rgb, cv::COLOR_GRAY2RGB);
  return rgb;
}

cv::Mat result_grid(const cv::Mat& rgb8, const torch::Tensor& map, const torch::Tensor& predicted_mask,
                    const std::optional<torch::Tensor>& ground_truth, int tile) {
  std::vector<cv::Mat> tiles = {
      fit_height(rgb8, tile), fit_height(heatmap_overlay(rgb8, map), tile),
      fit_height(mask_image(predicted_mask, rgb8.size()), tile),
      ground_truth ? fit_height(mask_image(*ground_truth, rgb8.size()), tile)
                   : cv::Mat(tile, fit_height(rgb8, tile).cols, CV_8UC3, cv::Scalar(0, 0, 0))};
  cv::Mat grid;
  cv::hconcat(tiles, grid);
  return grid;
}

void write_png(const std::filesystem::path& path, const cv::Mat& rgb8) {
  cv::Mat bgr;
  cv::cvtColor(rgb8, bgr, cv::COLOR_RGB2BGR);
  bool ok = false;
  try {
    ok = cv::imwrite(path.string(), bgr);
  } catch (const cv::Exception&) {
    ok = false;
  }
  if (!ok) throw InputError(fmt::format("cannot write image {}", path.string()));
}

}  // namespace iadgpt::image
