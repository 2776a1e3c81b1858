// Connected components of a binary mask with 8-connectivity: the ground-truth regions of MVTec's
// official PRO computation (scipy.ndimage.label with a 3x3 structure of ones, METHOD §4.2).
//
//   std::vector<int32_t> labels(h * w);
//   int n = iadgpt::eval::label_regions_8(mask, h, w, labels);   // labels: 0 = background, 1..n
//
// Thread-safety: pure function. Labels are numbered in raster order of each region's first pixel.
#pragma once
#include <cstdint>
#include <span>

namespace iadgpt::eval {

// mask: h*w bytes, row-major, nonzero = foreground. labels: h*w ints, written in full.
// Returns the number of regions.
int label_regions_8(std::span<const uint8_t> mask, int64_t h, int64_t w, std::span<int32_t> labels);

}  // namespace iadgpt::eval
