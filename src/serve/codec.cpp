#include "serve/codec.h"

#include <fmt/format.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <array>

#include "image/decode.h"
#include "io/error.h"

namespace iadgpt::serve {
namespace {

constexpr std::string_view kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::array<int8_t, 256> decode_table() {
  std::array<int8_t, 256> t{};
  t.fill(-1);
  for (size_t i = 0; i < kAlphabet.size(); ++i) t[static_cast<uint8_t>(kAlphabet[i])] = static_cast<int8_t>(i);
  // URL-safe variants decode too.
  t['-'] = 62;
  t['_'] = 63;
  return t;
}

bool starts_with_ci(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(s[i])) != prefix[i]) return false;
  }
  return true;
}

}  // namespace

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i < bytes.size()) {
    uint32_t v = uint8_t(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= uint8_t(bytes[i + 1]) << 8;
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string base64_decode(std::string_view text, std::string_view what) {
  static const auto table = decode_table();
  std::string out;
  out.reserve(text.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  size_t padding = 0;
  for (char c : text) {
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      ++padding;
      continue;
    }
    const int8_t v = table[static_cast<uint8_t>(c)];
    if (v < 0 || padding > 0) {
      throw InputError(fmt::format("{}: not valid base64 (unexpected character '{}')", what,
                                   std::isprint(static_cast<unsigned char>(c)) ? std::string(1, c) : "\\x??"));
    }
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  if (bits >= 6 || padding > 2) throw InputError(fmt::format("{}: not valid base64 (truncated)", what));
  return out;
}

DataUri parse_data_uri(std::string_view uri, std::string_view what) {
  if (!starts_with_ci(uri, "data:")) {
    const auto shown = uri.substr(0, std::min<size_t>(uri.size(), 40));
    throw InputError(fmt::format(
        "{}: only data: URIs are accepted (data:image/png;base64,...); the server never reads files or "
        "fetches URLs, got '{}{}'",
        what, shown, uri.size() > 40 ? "..." : ""));
  }
  const auto comma = uri.find(',');
  if (comma == std::string_view::npos) throw InputError(fmt::format("{}: data URI without ','", what));
  std::string_view header = uri.substr(5, comma - 5);
  const auto payload = uri.substr(comma + 1);
  DataUri result;
  bool base64 = false;
  if (header.size() >= 7 && starts_with_ci(header.substr(header.size() - 7), ";base64")) {
    base64 = true;
    header.remove_suffix(7);
  }
  result.media_type = std::string(header.substr(0, header.find(';')));
  if (!base64) throw InputError(fmt::format("{}: data URI must be base64-encoded (';base64,')", what));
  result.bytes = base64_decode(payload, what);
  return result;
}

cv::Mat decode_image_bytes(std::string_view bytes, std::string_view what) {
  if (bytes.empty()) throw InputError(fmt::format("{}: empty image", what));
  return image::decode_bytes({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, what);
}

cv::Mat decode_image_field(std::string_view value, std::string_view what) {
  if (starts_with_ci(value, "data:")) return decode_image_bytes(parse_data_uri(value, what).bytes, what);
  // Bare base64 is accepted; anything that looks like a path or URL is refused by name.
  // (A path is never opened: it either fails as base64 or decodes to bytes that are no image.)
  if (value.find("://") != std::string_view::npos || value.starts_with("~") || value.starts_with(".")) {
    parse_data_uri(value, what);  // throws the "only data: URIs" error
  }
  return decode_image_bytes(base64_decode(value, what), what);
}

std::string encode_png(const cv::Mat& rgb8) {
  cv::Mat bgr;
  cv::cvtColor(rgb8, bgr, cv::COLOR_RGB2BGR);
  std::vector<uint8_t> buf;
  if (!cv::imencode(".png", bgr, buf)) throw std::runtime_error("PNG encoding failed");
  return {buf.begin(), buf.end()};
}

}  // namespace iadgpt::serve
