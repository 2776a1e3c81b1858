// Procedural industrial parts with ground-truth defects, for the first-contact demo (`make demo`)
// and for tests that need an anomaly dataset without downloads. Our own generator (OpenCV drawing
// and noise), deterministic per seed: the same (class, seed) gives the same pixels on any run.
//
//   auto part = iadgpt::data::make_part("washer", /*seed=*/7);            // a normal part
//   auto bad = iadgpt::data::add_defect(part, "scratch", /*seed=*/8);      // bad.mask covers the drawing
//   iadgpt::data::write_procedural_dataset("demo-data", {});               // MVTec-style folders
//
// Classes (textures, printed marks, shapes): `washer` (brushed-metal ring on a dark bench),
// `screw` (slotted metal head with an embossed mark), `pcb` (green plate with copper traces, pads
// and a silkscreen label), `fabric` (woven texture, full frame), `wood` (ring-grain board with a
// printed stamp). Normal parts sit in a fixture (same position, orientation ± 3°) and vary
// in material noise, brushing, weave, grain, and lighting; printed marks (PCB silkscreen, wood stamp) are part of every normal part.
// Defects (drawn only inside their mask, so every changed pixel is in the mask): `scratch` (a thin
// bright or dark random-walk line), `spot` (a shaded dent / stain ellipse), `missing` (a chunk of
// the part replaced by what is behind it), `crack` (a dark jagged branching line), `contamination`
// (a translucent coloured blob of overlapping drops).
// Thread-safety: pure functions (each call owns its random generator).
#pragma once
#include <opencv2/core.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace iadgpt::data {

const std::vector<std::string>& procedural_classes();  // washer, screw, pcb, fabric, wood
const std::vector<std::string>& procedural_defects();  // scratch, spot, missing, crack, contamination

struct ProceduralPart {
  cv::Mat image;       // RGB8, size × size
  cv::Mat object;      // 8U 0/255: where the part is (all of it for full-frame textures)
  cv::Mat background;  // RGB8: what is behind the part (shown through a missing piece)
  cv::Mat mask;        // 8U 0/255: the defect (all zero for a normal part)
  std::string class_name;
  std::string defect = "good";
};

// A normal part; InputError for an unknown class name (the message lists the classes).
ProceduralPart make_part(std::string_view class_name, uint64_t seed, int size = 224);
// A copy of a normal `part` with one defect drawn on the part; InputError for an unknown defect.
ProceduralPart add_defect(const ProceduralPart& part, std::string_view defect, uint64_t seed);

struct ProceduralSplit {
  std::vector<std::string> classes;  // empty: all of procedural_classes()
  int train = 16;                    // normal training images per class
  int test_good = 8;                 // held-out normal images per class
  int test_defect = 2;               // held-out images per class and defect type
  int size = 224;
  uint64_t seed = 0;
  std::string test_seeds = "test";   // split name in the test images' seeds ("val": a validation split)
};

// Writes an MVTec AD tree under `root`: <class>/train/good/NNN.png, <class>/test/good/NNN.png,
// <class>/test/<defect>/NNN.png, <class>/ground_truth/<defect>/NNN_mask.png (0/255). Every image has
// its own seed derived from (split seed, class, split, defect, index); train, test-good and
// defective images never share a seed. Returns the number of images written.
int write_procedural_dataset(const std::filesystem::path& root, const ProceduralSplit& split);

// The seed of image `index` of (class, split name, defect) under `base`: what
// write_procedural_dataset uses, exposed so callers can regenerate one image in memory.
uint64_t procedural_seed(uint64_t base, std::string_view class_name, std::string_view split, std::string_view defect,
                         int index);

}  // namespace iadgpt::data
