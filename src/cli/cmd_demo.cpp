// `iadgpt demo`: the first-contact demo (what `make demo` runs). Makes procedural parts, tiny
// models from scratch, trains, inspects held-out parts and writes an HTML report (src/demo).
#include <fmt/format.h>

#include <iostream>

#include "cli/commands.h"
#include "demo/demo.h"
#include "io/error.h"

namespace iadgpt::cli {

void add_demo(CLI::App& app) {
  auto* cmd = app.add_subcommand("demo", "Procedural parts → tiny models from scratch → train → inspect → HTML report");
  auto o = std::make_shared<demo::DemoOptions>();
  auto out = std::make_shared<std::string>("demo-out");
  auto min_accuracy = std::make_shared<double>(0.0);
  cmd->add_option("--out", *out, "Output folder (data, models, report)")->capture_default_str();
  cmd->add_option("--classes", o->classes, "Part classes (default: washer screw pcb fabric wood)");
  cmd->add_option("--train", o->train, "Normal training parts per class")->capture_default_str();
  cmd->add_option("--val-good", o->val_good, "Validation normal parts per class (the trainer's check and the calibration)")->capture_default_str();
  cmd->add_option("--val-defect", o->val_defect, "Validation parts per class and defect type")->capture_default_str();
  cmd->add_option("--test-good", o->test_good, "Held-out normal parts per class")->capture_default_str();
  cmd->add_option("--test-defect", o->test_defect, "Held-out parts per class and defect type")->capture_default_str();
  cmd->add_option("--size", o->size, "Image side in pixels")->capture_default_str();
  cmd->add_option("--steps", o->steps, "Map warm-up steps (the decoder alone)")->capture_default_str();
  cmd->add_option("--llm-steps", o->llm_steps, "LLM training steps (stages 1/2/3: 10/40/50 %)")->capture_default_str();
  cmd->add_option("--per-image", o->per_image, "CutPaste variants per training part")->capture_default_str();
  cmd->add_option("--synthesis", o->synthesis, "Synthetic anomalies the trainer learns from: cutpaste or nsa")
      ->capture_default_str();
  cmd->add_option("--shots", o->shots, "Good reference parts per class for the few-shot map (1 .. train − 3)")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of data, models and training")->capture_default_str();
  cmd->add_option("--min-accuracy", *min_accuracy, "Exit 3 (check failed) when the held-out Yes/No accuracy is below this (0..1)")
      ->capture_default_str();
  cmd->callback([o, out, min_accuracy] {
    o->out = *out;
    o->log = [](std::string_view line) { std::cout << line << std::endl; };
    const auto r = demo::run_demo(*o);
    const auto& m = r.mean_metrics;
    auto value = [&](const char* key) { return m.contains(key) ? m[key].get<double>() : 0.0; };
    std::cout << fmt::format("mean over classes: image AUROC {:.3f} (map), {:.3f} (P(Yes)); pixel AUROC {:.3f}, "
                             "AUPRO {:.3f}\n",
                             value("image_auroc_map"), value("image_auroc"), value("pixel_auroc"), value("aupro_0.3"));
    std::cout << fmt::format("Yes/No accuracy on held-out parts: {:.1f} % ({}/{})\n", 100.0 * r.accuracy, r.correct,
                             r.total);
    std::cout << fmt::format("report: {}  (a DEMO model: tiny random encoders; for real weights see README.md, "
                             "\"Real weights\")\n", r.report.string());
    std::cout << fmt::format("total {:.0f} s\n", r.timings["total"].get<double>());
    if (r.accuracy < *min_accuracy)
      throw CheckFailed(fmt::format("the held-out Yes/No accuracy {:.3f} ({}/{}) is below --min-accuracy {:.3f}",
                                    r.accuracy, r.correct, r.total, *min_accuracy));
  });
}

}  // namespace iadgpt::cli
