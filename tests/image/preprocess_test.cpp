// Decoding and CLIP preprocessing against the upstream pixel_values (PIL + torchvision).
#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <cstdio>
#include <fstream>

#include "common/shared.h"
#include "image/decode.h"
#include "image/preprocess.h"
#include "io/checkpoint.h"
#include "io/error.h"

namespace {

using namespace iadgpt;
using namespace iadgpt::image;

const char* kImages[] = {"astronaut", "coffee", "chelsea"};  // order of reference pixel_values

torch::Tensor reference_pixels() {
  return io::load_safetensors(test::fixture("imagebind_tiny/reference.safetensors")).at("pixel_values");
}

torch::Tensor encoder_views(Resampler r) {
  std::vector<torch::Tensor> views;
  for (const char* name : kImages) {
    auto rgb = decode_file(test::fixture(std::string("imagebind_tiny/images/") + name + ".png"));
    views.push_back(clip_encoder_view(rgb, 224, r));
  }
  return torch::stack(views);
}

std::vector<uint8_t> encode(const cv::Mat& m, const char* ext) {
  std::vector<uint8_t> out;
  cv::imencode(ext, m, out);
  return out;
}

TEST(Decode, FixturePngIsRgb8WithItsSize) {
  auto rgb = decode_file(test::fixture("imagebind_tiny/images/coffee.png"));
  EXPECT_EQ(rgb.type(), CV_8UC3);
  EXPECT_EQ(rgb.cols, 320);
  EXPECT_EQ(rgb.rows, 213);
}

TEST(Decode, GreyBecomesThreeEqualChannels) {
  cv::Mat grey(5, 7, CV_8UC1);
  cv::randu(grey, 0, 256);
  auto rgb = decode_bytes(encode(grey, ".png"));
  ASSERT_EQ(rgb.type(), CV_8UC3);
  std::vector<cv::Mat> ch;
  cv::split(rgb, ch);
  for (const auto& c : ch) EXPECT_EQ(cv::norm(c, grey, cv::NORM_INF), 0);
}

TEST(Decode, RgbaDropsAlphaAndSwapsToRgb) {
  cv::Mat bgra(4, 4, CV_8UC4, cv::Scalar(10, 20, 30, 0));  // fully transparent: alpha must be ignored
  auto rgb = decode_bytes(encode(bgra, ".png"));
  EXPECT_EQ(rgb.at<cv::Vec3b>(1, 1), cv::Vec3b(30, 20, 10));
}

TEST(Decode, SixteenBitScalesToEightBit) {
  cv::Mat bgr16(3, 3, CV_16UC3, cv::Scalar(0, 257 * 100, 65535));
  auto rgb = decode_bytes(encode(bgr16, ".png"));
  EXPECT_EQ(rgb.at<cv::Vec3b>(0, 0), cv::Vec3b(255, 100, 0));
  auto native = decode_bytes(encode(bgr16, ".png"), "x", Depth::Native);
  EXPECT_EQ(native.depth(), CV_16U);
}

TEST(Decode, JpegBmpTiffDecode) {
  cv::Mat bgr(16, 24, CV_8UC3, cv::Scalar(50, 100, 150));
  for (const char* ext : {".jpg", ".bmp", ".tiff"}) {
    auto rgb = decode_bytes(encode(bgr, ext), ext);
    EXPECT_EQ(rgb.size(), cv::Size(24, 16)) << ext;
    EXPECT_NEAR(rgb.at<cv::Vec3b>(8, 8)[0], 150, 3) << ext;  // JPEG is lossy: a few levels
  }
}

TEST(Decode, RejectsEmptyGarbageAndMissingFiles) {
  EXPECT_THROW(decode_bytes({}), InputError);
  const std::vector<uint8_t> garbage = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  EXPECT_THROW(decode_bytes(garbage), InputError);
  EXPECT_THROW(decode_file("/nonexistent/image.png"), InputError);
}

TEST(Decode, RejectsAbsurdDimensionsFromTheHeader) {
  cv::Mat small(2, 2, CV_8UC3, cv::Scalar::all(0));
  auto png = encode(small, ".png");
  // IHDR width/height at bytes 16..23 (big endian): claim 100000 × 100000.
  for (int off : {16, 20}) {
    png[off] = 0, png[off + 1] = 0x01, png[off + 2] = 0x86, png[off + 3] = 0xA0;
  }
  EXPECT_EQ(peek_size(png), cv::Size(100000, 100000));
  try {
    decode_bytes(png, "forged.png");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("too large"), std::string::npos) << e.what();
  }
}

// fuzz_image finding: libjpeg skips garbage before a marker, so the header peek must too,
// otherwise a huge SOF placed behind garbage bypasses the size limit.
TEST(Decode, JpegSizePeekSkipsGarbageBeforeMarkers) {
  cv::Mat bgr(9, 13, CV_8UC3, cv::Scalar(1, 2, 3));
  auto jpg = encode(bgr, ".jpg");
  ASSERT_EQ(peek_size(jpg), cv::Size(13, 9));
  jpg.insert(jpg.begin() + 2, {0x12, 0x34, 0x56});  // garbage between SOI and the first marker
  EXPECT_EQ(peek_size(jpg), cv::Size(13, 9));
}

TEST(Preprocess, ShortSideAndCropFollowTorchvision) {
  EXPECT_EQ(short_side_size({320, 213}, 224), cv::Size(336, 224));  // int(224·320/213) = 336
  EXPECT_EQ(short_side_size({213, 320}, 224), cv::Size(224, 336));
  // round((337-224)/2) = round(56.5) = 56 in Python (half to even), 57 with round-half-up.
  EXPECT_EQ(center_crop_rect({337, 224}, 224), cv::Rect(56, 0, 224, 224));
  EXPECT_EQ(center_crop_rect({339, 224}, 224), cv::Rect(58, 0, 224, 224));  // round(57.5) = 58
}

TEST(Preprocess, PilBicubicIsIdentityAtSameSizeAndKeepsConstants) {
  cv::Mat flat(37, 53, CV_8UC3, cv::Scalar(7, 128, 250));
  for (auto size : {cv::Size(20, 11), cv::Size(224, 224), cv::Size(53, 90)}) {
    auto out = pil_bicubic_resize(flat, size.width, size.height);
    EXPECT_EQ(cv::norm(out, cv::Mat(size, CV_8UC3, cv::Scalar(7, 128, 250)), cv::NORM_INF), 0);
  }
}

// Tolerance 0: our resampler is a bit-exact port of PIL's 8-bit path, and ToTensor/Normalize
// run in the same float32 order, so every pixel value must be identical.
TEST(Preprocess, EncoderViewMatchesUpstreamPixelValuesExactly) {
  auto ref = reference_pixels();
  auto ours = encoder_views(Resampler::PilBicubic);
  ASSERT_EQ(ours.sizes(), ref.sizes());
  const double max_abs = (ours - ref).abs().max().item<double>();
  EXPECT_EQ(max_abs, 0.0);
}

// The measurement behind the default: PIL-compatible < INTER_AREA / INTER_CUBIC. One uint8 step
// is 1/255/0.26 ≈ 0.015 after normalisation; OpenCV's kernels differ by several steps.
TEST(Preprocess, PilResamplerIsClosestToUpstreamOfTheThree) {
  auto ref = reference_pixels();
  double best = 1e9;
  Resampler best_r{};
  for (auto [r, name] : {std::pair{Resampler::PilBicubic, "pil"}, std::pair{Resampler::CvCubic, "cv-cubic"},
                         std::pair{Resampler::CvArea, "cv-area"}}) {
    auto d = (encoder_views(r) - ref).abs();
    const double max_abs = d.max().item<double>(), mean_abs = d.mean().item<double>();
    std::printf("resampler %-8s max-abs %.6f mean-abs %.6f\n", name, max_abs, mean_abs);
    if (mean_abs < best) best = mean_abs, best_r = r;
  }
  EXPECT_EQ(best_r, Resampler::PilBicubic);
}

TEST(Preprocess, MapViewResizesWholeImageWithoutCrop) {
  auto rgb = decode_file(test::fixture("imagebind_tiny/images/coffee.png"));
  auto m = clip_map_view(rgb, 224);
  EXPECT_EQ(m.sizes(), (std::vector<int64_t>{3, 224, 224}));
  // A square image: map view = encoder view (METHOD §1.1).
  auto sq = decode_file(test::fixture("imagebind_tiny/images/astronaut.png"));
  EXPECT_TRUE(torch::equal(clip_map_view(sq, 224), clip_encoder_view(sq, 224)));
}

TEST(Preprocess, RejectsTooElongatedImages) {
  cv::Mat thin(1, 20000, CV_8UC3, cv::Scalar::all(1));
  EXPECT_THROW(clip_encoder_view(thin, 224), InputError);
}

}  // namespace
