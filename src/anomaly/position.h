// Where the anomalies are, in words (METHOD §1.10): connected regions (8-connectivity) of the
// thresholded map, each named by the 3×3 cell of its centroid, and AnomalyGPT's answer phrasing.
//
//   auto regions = anomaly::find_regions(map, 0.5);        // map: [H, W] float
//   std::string text = anomaly::describe(regions);          // "Yes, there is an anomaly ... at the top left ..."
#pragma once
#include <torch/torch.h>

#include <string>
#include <string_view>
#include <vector>

namespace iadgpt::anomaly {

struct Region {
  double centroid_x = 0, centroid_y = 0;  // pixels
  int64_t area = 0;                       // pixels
  std::string position;                   // one of the nine cell names
};

// The nine names, row-major: top left, top, top right, left, center, right, bottom left, bottom, bottom right.
const std::vector<std::string>& cell_names();

// Name of the 3×3 cell that holds (x, y) in an image of width × height.
std::string cell_name(double x, double y, int64_t width, int64_t height);

// Regions of `map > threshold`, largest first; regions smaller than `min_area` pixels are dropped.
std::vector<Region> find_regions(const torch::Tensor& map, double threshold, int64_t min_area = 1);

// The cells a sentence names ("at the top left and center of the image" → top left, center), in
// grid order; a longer name wins over the shorter one inside it ("top left" is not also "top").
std::vector<std::string> cells_named(std::string_view text);

// The cells that hold at least one pixel of `mask > 0` ([H, W]), in grid order.
std::vector<std::string> cells_of_mask(const torch::Tensor& mask);

// AnomalyGPT's phrasing for zero, one or several regions.
std::string describe(const std::vector<Region>& regions);

}  // namespace iadgpt::anomaly
