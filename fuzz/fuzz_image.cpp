// libFuzzer target: arbitrary bytes → decode (any OpenCV format) → both CLIP views.
// Must never crash, leak or hang: bad input is an iadgpt::InputError, which is fine here.
//   build-fuzz/fuzz/fuzz_image -max_total_time=600 -rss_limit_mb=2048 fuzz/corpus-image
#include <cstddef>
#include <cstdint>
#include <span>

#include "image/decode.h"
#include "image/preprocess.h"
#include "io/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto rgb = iadgpt::image::decode_bytes(std::span<const uint8_t>(data, size), "fuzz");
    // Resampling cost grows with the pixel count (≈ 12 multiply-adds per input pixel); under
    // ASan+UBSan a legitimate 10-Mpixel image takes ~20 s, which only slows the search down.
    if (static_cast<int64_t>(rgb.rows) * rgb.cols > 4'000'000) return 0;
    // A small S keeps each run fast; the code paths are those of S = 224.
    (void)iadgpt::image::clip_encoder_view(rgb, 32);
    (void)iadgpt::image::clip_map_view(rgb, 32);
  } catch (const iadgpt::InputError&) {
  }
  return 0;
}
