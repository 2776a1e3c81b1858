// `iadgpt demo-data`: the procedural parts dataset of `make demo` (data/procedural.h) written as an
// MVTec AD tree, so `eval`, `detect`, `synth` and `train-decoder` read it like any benchmark.
#include <fmt/format.h>

#include <iostream>

#include "cli/commands.h"
#include "data/procedural.h"
#include "io/error.h"

namespace iadgpt::cli {

void add_demo_data(CLI::App& app) {
  auto* cmd = app.add_subcommand("demo-data", "Write the procedural industrial-parts dataset (MVTec AD layout)");
  auto split = std::make_shared<data::ProceduralSplit>();
  auto out = std::make_shared<std::string>();
  cmd->add_option("--out", *out, "Output folder (MVTec AD layout: <class>/train/good, test/<defect>, ground_truth)")
      ->required();
  cmd->add_option("--classes", split->classes, "Classes (default: washer screw pcb fabric wood)");
  cmd->add_option("--train", split->train, "Normal training images per class")->capture_default_str();
  cmd->add_option("--test-good", split->test_good, "Held-out normal images per class")->capture_default_str();
  cmd->add_option("--test-defect", split->test_defect, "Held-out images per class and defect type")
      ->capture_default_str();
  cmd->add_option("--size", split->size, "Image side in pixels")->capture_default_str();
  cmd->add_option("--seed", split->seed, "Dataset seed (same seed, same pixels)")->capture_default_str();
  cmd->callback([split, out] {
    if (split->train < 0 || split->test_good < 0 || split->test_defect < 0)
      throw InputError("--train, --test-good and --test-defect must not be negative");
    for (const auto& c : split->classes) {
      const auto& known = data::procedural_classes();
      if (std::find(known.begin(), known.end(), c) == known.end()) data::make_part(c, 0);  // throws, naming the classes
    }
    const int n = data::write_procedural_dataset(*out, *split);
    std::cout << fmt::format("demo-data: {} images in {} (MVTec AD layout; defects: scratch spot missing crack "
                             "contamination)\n", n, *out);
  });
}

}  // namespace iadgpt::cli
