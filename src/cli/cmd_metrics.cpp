// `iadgpt metrics --input FILE.safetensors [--pro-fpr 0.3]`: image/pixel AUROC, AP, F1-max and
// AUPRO of a dump of scores, maps and ground truth (METHOD §4.2), printed as one JSON object.
// The AUPRO key names its limit: `aupro_0.3` by default, `aupro_<limit>` otherwise.
#include <fmt/format.h>

#include <chrono>
#include <iostream>

#include "cli/commands.h"
#include "eval/metrics.h"
#include "io/checkpoint.h"

namespace iadgpt::cli {

void add_metrics(CLI::App& app) {
  struct Options {
    std::string input;
    double pro_fpr = 0.3;
  };
  auto opt = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "metrics",
      "Image/pixel AUROC, AP, F1-max (scikit-learn semantics) and AUPRO (MVTec AD official) of a safetensors "
      "file with image_scores F32 [N], image_labels U8 [N], anomaly_maps F32 [N,H,W], masks U8 [N,H,W] (0/1)");
  cmd->add_option("--input", opt->input, "safetensors file with the four tensors")->required();
  cmd->add_option("--pro-fpr", opt->pro_fpr,
                  "AUPRO integration limit (FPR in (0,1]); the JSON key is aupro_<limit>, e.g. aupro_0.3")
      ->capture_default_str();
  cmd->callback([opt] {
    const auto t0 = std::chrono::steady_clock::now();
    const auto tensors = io::load_safetensors(opt->input);
    const auto report = eval::compute_metrics(tensors, opt->pro_fpr, opt->input);
    std::cout << eval::to_json(report).dump(2) << "\n";
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cerr << fmt::format("metrics: {} images, {} pixels in {:.3f} s\n", tensors.at("image_scores").numel(),
                             tensors.at("anomaly_maps").numel(), s);
  });
}

}  // namespace iadgpt::cli
