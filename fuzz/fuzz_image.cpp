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
    // A small S keeps each run fast; the code paths are those of S = 224.
    (void)iadgpt::image::clip_encoder_view(rgb, 32);
    (void)iadgpt::image::clip_map_view(rgb, 32);
  } catch (const iadgpt::InputError&) {
  }
  return 0;
}
