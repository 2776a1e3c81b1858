// The benchmark protocol of METHOD §4 as a library: every test image of every category of a
// dataset through an anomaly::Detector, in 0-shot or k-shot rounds (references drawn per round),
// the field's metrics at S×S and at full resolution per category and as the mean, optional
// F1-adaptive calibration on normal validation images (+ CutPaste), anomalib-style grids and the
// raw maps. `iadgpt eval` only parses flags and prints; the model's own protocol (p_yes, answers)
// is `model_protocol.h`.
//
//   eval::MapProtocol p{.kind = data::Kind::MVTecAD, .root = "mvtec", .shots = 4, .rounds = 5};
//   auto r = eval::run_map_protocol(detector, p, [](int64_t done, int64_t total) { ... });
//   std::ofstream("results.json") << r.results.dump(2);  write markdown(r.results, p.resolutions)
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "anomaly/detector.h"
#include "data/dataset.h"

namespace iadgpt::eval {

// Called after each test image: (images done, images in all).
using ProgressFn = std::function<void(int64_t done, int64_t total)>;

struct MapProtocol {
  data::Kind kind = data::Kind::MVTecAD;
  std::filesystem::path root;
  std::vector<std::string> categories;            // empty: every category found
  int64_t shots = 0, rounds = 5, batch = 4;       // rounds count only with shots > 0
  uint64_t seed = 0;                              // round r draws its references with seed + r
  std::vector<std::string> resolutions = {"224", "full"};  // "224": maps and masks at S×S; "full": the mask's own size
  double pro_fpr = 0.3;
  int64_t calibrate = 4;                          // normal validation images for the thresholds (0: off)
  std::filesystem::path grids;                    // anomalib-style grids of round 0 (empty: none)
  std::filesystem::path save_maps;                // raw maps per category/round/resolution (empty: none)
};

struct MapProtocolResult {
  nlohmann::ordered_json results;     // dataset, size, shots, rounds, categories{metrics, calibration}, mean, timing
  nlohmann::ordered_json thresholds;  // per category, `detect --post`'s format (empty without calibration)
  int64_t images = 0;
};

// InputError before any encoding when the layout, a category or a flag is wrong.
MapProtocolResult run_map_protocol(anomaly::Detector& detector, const MapProtocol& protocol,
                                   const ProgressFn& progress = {});

// k references drawn from a category's normal training images for one round (METHOD §4.1):
// a permutation from `seed`, its first k. InputError when there are fewer than k.
std::vector<data::Sample> draw_references(const std::vector<data::Sample>& train_good, int64_t shots, uint64_t seed);

// Mean over rounds (or categories) of every numeric key present in all entries.
nlohmann::ordered_json mean_of(const std::vector<nlohmann::ordered_json>& entries);

// The papers' layout: one table per resolution, categories as rows, metrics as columns, the mean last.
std::string markdown(const nlohmann::ordered_json& results, const std::vector<std::string>& resolutions);

// A ground-truth mask [H, W] at size × size (nearest, then > 0.5), uint8.
torch::Tensor resize_mask_nearest(const torch::Tensor& mask, int64_t size);

}  // namespace iadgpt::eval
