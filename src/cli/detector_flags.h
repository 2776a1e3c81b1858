// Flags shared by `detect` and `eval` that configure the anomaly-map pipeline, declared once.
#pragma once
#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "anomaly/detector.h"
#include "cli/device_flag.h"
#include "model/bundle.h"

namespace iadgpt::cli {

struct DetectorFlags {
  std::string vision, text, vocab, config, decoder, cache_dir;
  std::string mode = "auto", templates = "anomalygpt", dtype = "f32";
  std::string vision_quant;  // --vision-quant; empty: none (with --model: the bundle's)
  std::vector<int64_t> taps;
  int64_t size = 0, top_k = 0;
  bool rotations = false;
  DeviceFlag device;  // with --model it overrides the bundle's device

  void add_to(CLI::App& cmd);
  anomaly::DetectorOptions options() const;  // InputError on bad values or missing files
  // With --model: the flags that override the bundle's fields (--device, --vision-quant).
  void apply_to(model::Bundle& bundle) const;
};

// Image files of a list of files and folders (folders: *.png/jpg/jpeg/bmp/tif/tiff, sorted).
std::vector<std::filesystem::path> collect_images(const std::vector<std::string>& inputs);

}  // namespace iadgpt::cli
