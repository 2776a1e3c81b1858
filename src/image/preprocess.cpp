#include "image/preprocess.h"

#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

#include <cmath>
#include <vector>

#include "io/error.h"

namespace iadgpt::image {
namespace {

// PIL's bicubic kernel (Resample.c), a = -0.5.
double bicubic(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// Per output pixel: the first input index and integer weights (22 fractional bits).
struct Taps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;  // [out][ksize]
};

constexpr int kPrecisionBits = 32 - 8 - 2;

// PIL precompute_coeffs + normalize_coeffs_8bpc: support scales with the downscale factor
// (that is PIL's antialiasing), weights normalised to sum 1, then rounded half away from zero.
Taps precompute(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  Taps t;
  t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  t.weights.assign(static_cast<size_t>(out_size) * t.ksize, 0);
  std::vector<double> k(t.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);  // C truncation, as PIL
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[x] = bicubic((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (int x = 0; x < xmax; ++x) {
      const double w = ww != 0.0 ? k[x] / ww : k[x];
      t.weights[static_cast<size_t>(xx) * t.ksize + x] =
          static_cast<int32_t>(w * (1 << kPrecisionBits) + (w < 0 ? -0.5 : 0.5));
    }
    t.first[xx] = xmin;
    t.count[xx] = xmax;
  }
  return t;
}

inline uint8_t clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

cv::Mat resample_horizontal(const cv::Mat& src, int out_w) {
  const Taps t = precompute(src.cols, out_w);
  const int ch = src.channels();
  cv::Mat dst(src.rows, out_w, src.type());
  for (int y = 0; y < src.rows; ++y) {
    const uint8_t* in = src.ptr<uint8_t>(y);
    uint8_t* out = dst.ptr<uint8_t>(y);
    for (int xx = 0; xx < out_w; ++xx) {
      const int32_t* w = &t.weights[static_cast<size_t>(xx) * t.ksize];
      for (int c = 0; c < ch; ++c) {
        int32_t acc = 1 << (kPrecisionBits - 1);
        for (int x = 0; x < t.count[xx]; ++x) acc += in[(t.first[xx] + x) * ch + c] * w[x];
        out[xx * ch + c] = clip8(acc);
      }
    }
  }
  return dst;
}

cv::Mat resample_vertical(const cv::Mat& src, int out_h) {
  const Taps t = precompute(src.rows, out_h);
  const int row = src.cols * src.channels();
  cv::Mat dst(out_h, src.cols, src.type());
  std::vector<int32_t> acc(row);
  for (int yy = 0; yy < out_h; ++yy) {
    const int32_t* w = &t.weights[static_cast<size_t>(yy) * t.ksize];
    std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
    for (int y = 0; y < t.count[yy]; ++y) {
      const uint8_t* in = src.ptr<uint8_t>(t.first[yy] + y);
      for (int i = 0; i < row; ++i) acc[i] += in[i] * w[y];
    }
    uint8_t* out = dst.ptr<uint8_t>(yy);
    for (int i = 0; i < row; ++i) out[i] = clip8(acc[i]);
  }
  return dst;
}

void check_target(const cv::Mat& src, int w, int h) {
  if (src.empty() || src.depth() != CV_8U) throw InputError("resize: expected a non-empty 8-bit image");
  if (w <= 0 || h <= 0) throw InputError(fmt::format("resize: invalid target size {}x{}", w, h));
}

}  // namespace

Resampler parse_resampler(std::string_view name) {
  if (name == "pil") return Resampler::PilBicubic;
  if (name == "cv-cubic") return Resampler::CvCubic;
  if (name == "cv-area") return Resampler::CvArea;
  throw InputError(fmt::format("unknown resampler '{}' (expected pil, cv-cubic or cv-area)", name));
}

cv::Mat pil_bicubic_resize(const cv::Mat& src, int out_w, int out_h) {
  check_target(src, out_w, out_h);
  // PIL: horizontal pass first (when the width changes), then vertical, each rounded to uint8.
  cv::Mat tmp = src.cols != out_w ? resample_horizontal(src, out_w) : src;
  return src.rows != out_h ? resample_vertical(tmp, out_h) : tmp.clone();
}

cv::Mat resize(const cv::Mat& rgb8, int out_w, int out_h, Resampler r) {
  check_target(rgb8, out_w, out_h);
  if (r == Resampler::PilBicubic) return pil_bicubic_resize(rgb8, out_w, out_h);
  cv::Mat out;
  cv::resize(rgb8, out, cv::Size(out_w, out_h), 0, 0, r == Resampler::CvCubic ? cv::INTER_CUBIC : cv::INTER_AREA);
  return out;
}

cv::Size short_side_size(cv::Size in, int size) {
  if (in.width <= 0 || in.height <= 0) return {0, 0};
  if (in.width <= in.height) {
    return {size, static_cast<int>(static_cast<int64_t>(size) * in.height / in.width)};
  }
  return {static_cast<int>(static_cast<int64_t>(size) * in.width / in.height), size};
}

cv::Rect center_crop_rect(cv::Size in, int size) {
  // std::nearbyint in the default rounding mode = round half to even, like Python's round().
  const int left = static_cast<int>(std::nearbyint((in.width - size) / 2.0));
  const int top = static_cast<int>(std::nearbyint((in.height - size) / 2.0));
  return {left, top, size, size};
}

at::Tensor normalize_clip(const cv::Mat& rgb8) {
  if (rgb8.empty() || rgb8.type() != CV_8UC3) throw InputError("normalize: expected an RGB 8-bit image");
  auto out = io::empty_tensor({3, rgb8.rows, rgb8.cols}, at::kFloat);
  float* o = out.data_ptr<float>();
  const int64_t plane = static_cast<int64_t>(rgb8.rows) * rgb8.cols;
  for (int y = 0; y < rgb8.rows; ++y) {
    const uint8_t* p = rgb8.ptr<uint8_t>(y);
    for (int x = 0; x < rgb8.cols; ++x) {
      for (int c = 0; c < 3; ++c) {
        float v = static_cast<float>(p[x * 3 + c]) / 255.0f;  // separate statements: one rounding each
        v = v - kClipMean[c];
        v = v / kClipStd[c];
        o[c * plane + static_cast<int64_t>(y) * rgb8.cols + x] = v;
      }
    }
  }
  return out;
}

at::Tensor clip_encoder_view(const cv::Mat& rgb8, int size, Resampler r) {
  if (rgb8.empty() || rgb8.type() != CV_8UC3) throw InputError("preprocess: expected an RGB 8-bit image");
  const cv::Size s = short_side_size(rgb8.size(), size);
  if (s.width > 32768 || s.height > 32768 || s.width <= 0 || s.height <= 0) {
    throw InputError(fmt::format("preprocess: a {}x{} image is too elongated to resize its short side to {}",
                                 rgb8.cols, rgb8.rows, size));
  }
  cv::Mat resized = resize(rgb8, s.width, s.height, r);
  return normalize_clip(resized(center_crop_rect(resized.size(), size)));
}

at::Tensor clip_map_view(const cv::Mat& rgb8, int size, Resampler r) {
  if (rgb8.empty() || rgb8.type() != CV_8UC3) throw InputError("preprocess: expected an RGB 8-bit image");
  return normalize_clip(resize(rgb8, size, size, r));
}

}  // namespace iadgpt::image
