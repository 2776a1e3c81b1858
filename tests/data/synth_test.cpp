#include <gtest/gtest.h>
#include <torch/torch.h>

#include <opencv2/core.hpp>

#include "data/synth.h"

using namespace iadgpt;

TEST(CutPaste, MaskMarksExactlyThePixelsThatChanged) {
  cv::Mat target(120, 160, CV_8UC3, cv::Scalar(40, 80, 120));
  cv::Mat source(60, 80, CV_8UC3);
  cv::randu(source, 0, 255);
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    auto s = data::cutpaste(target, source, rng);
    ASSERT_EQ(s.image.size(), target.size());
    const auto area = s.mask.sum().item<int64_t>();
    EXPECT_GE(area, static_cast<int64_t>(0.01 * 120 * 160));
    EXPECT_LE(area, static_cast<int64_t>(0.2 * 120 * 160));
    // Outside the mask the image is untouched.
    cv::Mat diff;
    cv::absdiff(s.image, target, diff);
    cv::Mat changed;
    diff.convertTo(diff, CV_32FC3);  // transform keeps the depth: 8U would be read as float below
    cv::transform(diff, changed, cv::Matx13f(1, 1, 1));
    int64_t changed_outside = 0;
    auto mask = s.mask.accessor<uint8_t, 2>();
    for (int y = 0; y < 120; ++y)
      for (int x = 0; x < 160; ++x) changed_outside += (mask[y][x] == 0 && changed.at<float>(y, x) > 0);
    EXPECT_EQ(changed_outside, 0);
  }
}

TEST(CutPaste, SameSeedSameSample) {
  cv::Mat img(64, 64, CV_8UC3);
  cv::randu(img, 0, 255);
  std::mt19937_64 a(3), b(3);
  auto s1 = data::cutpaste(img, img, a), s2 = data::cutpaste(img, img, b);
  EXPECT_TRUE(torch::equal(s1.mask, s2.mask));
  EXPECT_EQ(cv::norm(s1.image, s2.image), 0.0);
}
