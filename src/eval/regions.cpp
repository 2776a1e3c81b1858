#include "eval/regions.h"

#include <stdexcept>
#include <vector>

namespace iadgpt::eval {

int label_regions_8(std::span<const uint8_t> mask, int64_t h, int64_t w, std::span<int32_t> labels) {
  if (h < 0 || w < 0 || static_cast<int64_t>(mask.size()) != h * w ||
      static_cast<int64_t>(labels.size()) != h * w) {
    throw std::invalid_argument("label_regions_8: mask/labels size does not match h*w");
  }
  std::fill(labels.begin(), labels.end(), 0);
  // Flood fill with an explicit stack: no recursion depth limit for 1-px scratches thousands long.
  std::vector<int64_t> stack;
  int32_t next = 0;
  for (int64_t start = 0; start < h * w; ++start) {
    if (!mask[start] || labels[start]) continue;
    labels[start] = ++next;
    stack.push_back(start);
    while (!stack.empty()) {
      const int64_t p = stack.back();
      stack.pop_back();
      const int64_t y = p / w, x = p % w;
      for (int64_t dy = -1; dy <= 1; ++dy) {
        const int64_t yy = y + dy;
        if (yy < 0 || yy >= h) continue;
        for (int64_t dx = -1; dx <= 1; ++dx) {
          const int64_t xx = x + dx;
          if (xx < 0 || xx >= w) continue;
          const int64_t q = yy * w + xx;
          if (mask[q] && !labels[q]) {
            labels[q] = next;
            stack.push_back(q);
          }
        }
      }
    }
  }
  return next;
}

}  // namespace iadgpt::eval
