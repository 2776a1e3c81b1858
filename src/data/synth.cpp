#include "data/synth.h"

#include <opencv2/imgproc.hpp>

#include <cmath>

namespace iadgpt::data {

SyntheticSample cutpaste(const cv::Mat& target, const cv::Mat& source, std::mt19937_64& rng,
                         const CutPasteOptions& options) {
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  auto uniform = [&](double lo, double hi) { return lo + (hi - lo) * unit(rng); };
  const int height = target.rows, width = target.cols;
  cv::Mat src;
  cv::resize(source, src, target.size(), 0, 0, cv::INTER_AREA);

  // Rectangle size from an area fraction and a log-uniform aspect ratio, clipped to the image.
  const double area = uniform(options.min_area, options.max_area) * height * width;
  const double aspect = std::exp(uniform(std::log(options.min_aspect), std::log(options.max_aspect)));
  const int h = std::clamp(static_cast<int>(std::lround(std::sqrt(area / aspect))), 2, height - 1);
  const int w = std::clamp(static_cast<int>(std::lround(std::sqrt(area * aspect))), 2, width - 1);
  auto pick = [&](int extent, int size) { return static_cast<int>(uniform(0, extent - size)); };
  const cv::Rect from(pick(width, w), pick(height, h), w, h);
  const cv::Rect to(pick(width, w), pick(height, h), w, h);

  cv::Mat patch = src(from).clone();
  // Colour jitter: per-channel gain and offset, so the patch differs from what it covers.
  std::vector<cv::Mat> channels;
  cv::split(patch, channels);
  for (auto& c : channels) {
    const double gain = uniform(1.0 - options.jitter, 1.0 + options.jitter);
    const double offset = uniform(-options.jitter, options.jitter) * 255.0;
    c.convertTo(c, CV_8U, gain, offset);
  }
  cv::merge(channels, patch);

  SyntheticSample out;
  out.image = target.clone();
  patch.copyTo(out.image(to));
  out.mask = torch::zeros({height, width}, torch::kUInt8);
  out.mask.slice(0, to.y, to.y + h).slice(1, to.x, to.x + w).fill_(1);
  out.soft = out.mask.to(torch::kFloat32);
  out.pasted = {to};
  return out;
}

}  // namespace iadgpt::data
