// Bytes in and out of requests: base64, data URIs (the only way a request can carry an image in
// JSON: a request never names a server-side file or a URL for the server to fetch), PNG bytes.
#pragma once
#include <opencv2/core.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace iadgpt::serve {

std::string base64_encode(std::string_view bytes);
// InputError on characters outside the alphabet (whitespace is skipped) or a bad length.
std::string base64_decode(std::string_view text, std::string_view what);

struct DataUri {
  std::string media_type;  // e.g. "image/png"
  std::string bytes;
};
// Parses `data:[<type>][;base64],<data>`. Anything else (a file path, http://, file://) is an
// InputError saying that only data URIs are accepted. `what` names the field in messages.
DataUri parse_data_uri(std::string_view uri, std::string_view what);

// An image field of a JSON request: a data URI or bare base64, decoded to RGB8.
cv::Mat decode_image_field(std::string_view value, std::string_view what);
// Upload bytes → RGB8 (InputError naming `what` when not an image).
cv::Mat decode_image_bytes(std::string_view bytes, std::string_view what);

// RGB8 → PNG file bytes.
std::string encode_png(const cv::Mat& rgb8);

}  // namespace iadgpt::serve
