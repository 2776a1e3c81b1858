// `--device cpu|cuda|cuda:N` (issue 16), declared once for every command that runs a model:
// detect, eval, chat, serve, train, train-decoder, apg and the bench commands.
#pragma once
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <string>

#include "nn/device.h"

namespace iadgpt::cli {

struct DeviceFlag {
  std::string name;  // empty: the bundle's or config's device, else cpu

  void add_to(CLI::App& cmd, std::string_view default_text = "cpu") {
    cmd.add_option("--device", name,
                   fmt::format("where the model runs: cpu, cuda or cuda:N (default: {}; cuda needs a build against "
                               "a CUDA libtorch)", default_text));
  }
  // InputError (exit 2) for an unknown name, or CUDA on a build or machine without it.
  torch::Device device() const { return nn::parse_device(name.empty() ? "cpu" : name); }
  // The flag overrides a bundle's `device` field; checked at once, before anything loads.
  void apply(std::string& bundle_device) const {
    if (!name.empty()) bundle_device = name;
    nn::parse_device(bundle_device, name.empty() ? "bundle device" : "--device");
  }
};

}  // namespace iadgpt::cli
