// Synthetic anomalies from normal images, for fitting thresholds when a validation split has no
// real anomalies (METHOD §4.3). CutPaste (Li et al. 2021): a rectangle of another normal image,
// colour-jittered, pasted at a random place; the mask marks the pasted pixels.
//
//   std::mt19937_64 rng(seed);
//   auto s = data::cutpaste(normal, other_normal, rng);   // s.image (RGB8), s.mask [H, W] U8 0/1
#pragma once
#include <torch/torch.h>

#include <opencv2/core.hpp>

#include <random>
#include <vector>

namespace iadgpt::data {

struct SyntheticSample {
  cv::Mat image;       // RGB8, the target's size
  torch::Tensor mask;  // [H, W] U8 0/1
  torch::Tensor soft;  // [H, W] float in [0,1]: the soft label (NSA); mask as float for the others
  std::vector<cv::Rect> pasted;  // pasted rectangles (NSA, CutPaste); pixels outside them are untouched
};

struct CutPasteOptions {
  double min_area = 0.02, max_area = 0.15;  // of the image area
  double min_aspect = 0.3, max_aspect = 3.3;
  double jitter = 0.1;                      // colour jitter, fraction of the range per channel
};

// `source` may equal `target`; it is resized to the target's size first.
SyntheticSample cutpaste(const cv::Mat& target, const cv::Mat& source, std::mt19937_64& rng,
                         const CutPasteOptions& options = {});

}  // namespace iadgpt::data
