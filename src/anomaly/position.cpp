#include "anomaly/position.h"

#include <cctype>

#include <fmt/format.h>

#include <opencv2/imgproc.hpp>

#include <algorithm>

#include "io/error.h"
#include "nn/weights.h"

namespace iadgpt::anomaly {

const std::vector<std::string>& cell_names() {
  static const std::vector<std::string> names = {"top left", "top",    "top right",
                                                 "left",     "center", "right",
                                                 "bottom left", "bottom", "bottom right"};
  return names;
}

std::string cell_name(double x, double y, int64_t width, int64_t height) {
  auto third = [](double v, int64_t extent) {
    return std::clamp(static_cast<int>(3.0 * v / static_cast<double>(extent)), 0, 2);
  };
  return cell_names()[third(y, height) * 3 + third(x, width)];
}

std::vector<std::string> cells_named(std::string_view text) {
  std::string rest(text);
  for (auto& c : rest) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::vector<bool> named(9, false);
  // Two-word names first, blanked out once found, so that "top left" does not also count as "top".
  for (const int pass : {0, 1})
    for (size_t k = 0; k < 9; ++k) {
      const auto& name = cell_names()[k];
      if ((name.find(' ') != std::string::npos) != (pass == 0)) continue;
      for (size_t at = rest.find(name); at != std::string::npos; at = rest.find(name, at + 1)) {
        const bool starts = at == 0 || !std::isalpha(static_cast<unsigned char>(rest[at - 1]));
        const size_t end = at + name.size();
        const bool ends = end == rest.size() || !std::isalpha(static_cast<unsigned char>(rest[end]));
        if (!starts || !ends) continue;
        named[k] = true;
        std::fill(rest.begin() + static_cast<std::ptrdiff_t>(at), rest.begin() + static_cast<std::ptrdiff_t>(end), ' ');
      }
    }
  std::vector<std::string> out;
  for (size_t k = 0; k < 9; ++k)
    if (named[k]) out.push_back(cell_names()[k]);
  return out;
}

std::vector<std::string> cells_of_mask(const torch::Tensor& mask) {
  auto m = mask.squeeze();
  if (m.dim() != 2) throw InputError(fmt::format("cells_of_mask needs a 2-D mask, got {}", nn::shape_string(mask.sizes())));
  const int64_t h = m.size(0), w = m.size(1);
  auto on = (m.to(torch::kFloat32) > 0);
  std::vector<std::string> out;
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t c = 0; c < 3; ++c) {
      // The same cell boundaries as cell_name: pixel x is in column floor(3x / w).
      const int64_t y0 = (r * h + 2) / 3, y1 = ((r + 1) * h + 2) / 3, x0 = (c * w + 2) / 3, x1 = ((c + 1) * w + 2) / 3;
      if (y1 > y0 && x1 > x0 && on.slice(0, y0, y1).slice(1, x0, x1).any().item<bool>())
        out.push_back(cell_names()[r * 3 + c]);
    }
  return out;
}

std::vector<Region> find_regions(const torch::Tensor& map, double threshold, int64_t min_area) {
  auto m = map.squeeze();
  if (m.dim() != 2) throw InputError(fmt::format("find_regions needs a 2-D map, got {}", nn::shape_string(map.sizes())));
  auto binary = (m.to(torch::kFloat32) > threshold).to(torch::kUInt8).contiguous();
  const int height = static_cast<int>(binary.size(0)), width = static_cast<int>(binary.size(1));
  cv::Mat mask(height, width, CV_8U, binary.data_ptr<uint8_t>());
  cv::Mat labels, stats, centroids;
  const int count = cv::connectedComponentsWithStats(mask, labels, stats, centroids, 8, CV_32S);
  std::vector<Region> regions;
  for (int label = 1; label < count; ++label) {  // 0 is the background
    const int64_t area = stats.at<int>(label, cv::CC_STAT_AREA);
    if (area < min_area) continue;
    Region r;
    r.centroid_x = centroids.at<double>(label, 0);
    r.centroid_y = centroids.at<double>(label, 1);
    r.area = area;
    r.position = cell_name(r.centroid_x, r.centroid_y, width, height);
    regions.push_back(std::move(r));
  }
  std::stable_sort(regions.begin(), regions.end(), [](const Region& a, const Region& b) { return a.area > b.area; });
  return regions;
}

std::string describe(const std::vector<Region>& regions) {
  if (regions.empty()) return "No, there is no anomaly in the image.";
  if (regions.size() == 1) {
    return fmt::format("Yes, there is an anomaly in the image, at the {} of the image.", regions[0].position);
  }
  std::string places;
  for (size_t i = 0; i < regions.size(); ++i) {
    if (i > 0) places += (i + 1 == regions.size()) ? " and " : ", ";
    places += regions[i].position;
  }
  return fmt::format("Yes, there are {} anomalies in the image, they are at the {} of the image.",
                     regions.size(), places);
}

}  // namespace iadgpt::anomaly
