#include "image/decode.h"

#include <fmt/format.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <fstream>
#include <vector>

#include "io/error.h"

namespace iadgpt::image {
namespace {

uint32_t be32(const uint8_t* p) { return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3]; }
uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
uint32_t le32(const uint8_t* p) { return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24); }

cv::Size jpeg_size(std::span<const uint8_t> b) {
  size_t i = 2;
  while (i + 4 <= b.size()) {
    // libjpeg skips garbage before a marker ("extraneous bytes"), so must we, or a forged SOF
    // behind garbage would escape the size check (found by fuzz_image).
    if (b[i] != 0xFF) { ++i; continue; }
    const uint8_t marker = b[i + 1];
    if (marker == 0xFF || marker == 0x00) { ++i; continue; }
    if (marker == 0xD8 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) { i += 2; continue; }
    const uint16_t len = be16(&b[i + 2]);
    const bool sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (sof && i + 9 <= b.size()) return {be16(&b[i + 7]), be16(&b[i + 5])};
    if (len < 2) return {0, 0};
    i += 2 + len;
  }
  return {0, 0};
}

void check_size(cv::Size s, std::string_view name) {
  const int64_t w = s.width, h = s.height;
  if (w > kMaxSide || h > kMaxSide || w * h > kMaxPixels) {
    throw InputError(fmt::format("{}: image of {}x{} pixels is too large (limit {} per side, {} in total)", name, w,
                                 h, kMaxSide, kMaxPixels));
  }
}

// OpenCV's channel orders (BGR/BGRA) and counts → RGB.
cv::Mat to_rgb(const cv::Mat& m) {
  cv::Mat out;
  switch (m.channels()) {
    case 1: cv::cvtColor(m, out, cv::COLOR_GRAY2RGB); break;
    case 2: {  // grey + alpha
      cv::Mat grey;
      cv::extractChannel(m, grey, 0);
      cv::cvtColor(grey, out, cv::COLOR_GRAY2RGB);
      break;
    }
    case 3: cv::cvtColor(m, out, cv::COLOR_BGR2RGB); break;
    case 4: cv::cvtColor(m, out, cv::COLOR_BGRA2RGB); break;
    default: return {};
  }
  return out;
}

}  // namespace

cv::Size peek_size(std::span<const uint8_t> b) {
  static constexpr uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (b.size() >= 24 && std::equal(png_sig, png_sig + 8, b.begin())) {
    return {static_cast<int>(std::min<uint32_t>(be32(&b[16]), INT32_MAX)),
            static_cast<int>(std::min<uint32_t>(be32(&b[20]), INT32_MAX))};
  }
  if (b.size() >= 4 && b[0] == 0xFF && b[1] == 0xD8) return jpeg_size(b);
  if (b.size() >= 26 && b[0] == 'B' && b[1] == 'M') {
    const auto w = static_cast<int32_t>(le32(&b[18])), h = static_cast<int32_t>(le32(&b[22]));
    auto mag = [](int32_t v) { return v == INT32_MIN ? INT32_MAX : std::abs(v); };  // negative height = top-down
    return {mag(w), mag(h)};
  }
  return {0, 0};
}

cv::Mat to_rgb8(const cv::Mat& rgb) {
  cv::Mat out;
  switch (rgb.depth()) {
    case CV_8U: return rgb;
    case CV_16U: rgb.convertTo(out, CV_8U, 1.0 / 257.0); return out;  // rounds and saturates
    case CV_32F:
    case CV_64F: rgb.convertTo(out, CV_8U, 255.0); return out;
    default: rgb.convertTo(out, CV_8U); return out;
  }
}

at::Tensor to_float_tensor(const cv::Mat& rgb) {
  cv::Mat f;
  const double scale = rgb.depth() == CV_8U ? 1.0 / 255 : rgb.depth() == CV_16U ? 1.0 / 65535 : 1.0;
  rgb.convertTo(f, CV_32F, scale);
  auto out = io::empty_tensor({3, f.rows, f.cols}, at::kFloat);
  float* o = out.data_ptr<float>();
  const int64_t plane = static_cast<int64_t>(f.rows) * f.cols;
  for (int y = 0; y < f.rows; ++y) {
    const float* p = f.ptr<float>(y);
    for (int x = 0; x < f.cols; ++x) {
      for (int c = 0; c < 3; ++c) o[c * plane + static_cast<int64_t>(y) * f.cols + x] = p[x * 3 + c];
    }
  }
  return out;
}

cv::Mat decode_bytes(std::span<const uint8_t> bytes, std::string_view name, Depth depth) {
  if (bytes.empty()) throw InputError(fmt::format("{}: empty image data", name));
  check_size(peek_size(bytes), name);
  cv::Mat decoded, rgb;
  try {
    // OpenCV wants a non-const Mat header; imdecode does not write to it.
    const cv::Mat buf(1, static_cast<int>(std::min<size_t>(bytes.size(), INT32_MAX)), CV_8U,
                      const_cast<uint8_t*>(bytes.data()));
    decoded = cv::imdecode(buf, cv::IMREAD_UNCHANGED);
    if (decoded.empty() || decoded.rows <= 0 || decoded.cols <= 0 || decoded.dims != 2) {
      throw InputError(fmt::format("{}: cannot decode image (not a PNG, JPEG, BMP or TIFF file, or corrupt)", name));
    }
    check_size(decoded.size(), name);
    if (decoded.depth() != CV_8U && decoded.depth() != CV_16U && decoded.depth() != CV_32F) {
      cv::Mat f;
      decoded.convertTo(f, CV_32F);  // e.g. 64-bit float or 32-bit integer TIFF
      decoded = f;
    }
    rgb = to_rgb(decoded);
    if (rgb.empty()) throw InputError(fmt::format("{}: unsupported image with {} channels", name, decoded.channels()));
    return depth == Depth::U8 ? to_rgb8(rgb) : rgb;
  } catch (const cv::Exception& e) {
    throw InputError(fmt::format("{}: cannot decode image ({})", name, e.what()));
  }
}

cv::Mat decode_file(const std::filesystem::path& path, Depth depth) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(fmt::format("{}: cannot open image file", path.string()));
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw InputError(fmt::format("{}: cannot read image file ({})", path.string(), ec.message()));
  if (size > (uint64_t{1} << 31)) throw InputError(fmt::format("{}: image file larger than 2 GiB", path.string()));
  std::vector<uint8_t> bytes(size);
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
  if (!in) throw InputError(fmt::format("{}: cannot read image file", path.string()));
  return decode_bytes(bytes, path.string(), depth);
}

}  // namespace iadgpt::image
