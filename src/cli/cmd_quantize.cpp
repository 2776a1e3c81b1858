// `iadgpt quantize --in <HF LLaMA dir | bundle dir> --format q8|q4 --out DIR`: writes the LLM's
// weights as a stored quantized checkpoint (llm/README "Stored quantized checkpoints"). A bundle's
// LoRAs are merged first, and a bundle comes out (model::quantize_bundle). Flags and printing
// only; the work is llm::quantize_checkpoint / model::quantize_bundle.
#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <optional>

#include "cli/commands.h"
#include "cli/progress.h"
#include "io/error.h"
#include "llm/export.h"
#include "nn/quant.h"
#include "model/bundle.h"

namespace iadgpt::cli {

void add_quantize(CLI::App& app) {
  struct Opts {
    std::string in, out, format;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand(
      "quantize", "Write an LLM (Hugging Face LLaMA dir) or a bundle's LLM with its LoRAs merged, weight-only quantized");
  cmd->add_option("--in", o->in, "Hugging Face LLaMA directory (config.json + weights) or model bundle (iadgpt.json)")
      ->required();
  cmd->add_option("--format", o->format, "q8 (int8, fp16 scale per 32) | q4 (4-bit, fp16 scale per 32); head q8")
      ->required();
  cmd->add_option("--out", o->out, "Output directory: the quantized LLM dir, or for a bundle the new bundle (LLM in <out>/llm)")
      ->required();
  cmd->callback([o] {
    namespace fs = std::filesystem;
    const auto format = nn::parse_quant_format(o->format, "--format");
    if (format == nn::QuantFormat::None) throw InputError("--format: expected q8 or q4");
    if (!fs::is_directory(o->in)) throw InputError(fmt::format("--in {}: no such directory", o->in));
    if (fs::weakly_canonical(o->in) == fs::weakly_canonical(o->out))
      throw InputError(fmt::format("--out {}: must differ from --in (the input would be overwritten)", o->out));
    const auto t0 = std::chrono::steady_clock::now();
    const bool bundle = fs::exists(fs::path(o->in) / "iadgpt.json");
    if (bundle) model::quantize_bundle(model::read_bundle(o->in), format, o->out);
    else {
      std::optional<Progress> bar;
      llm::quantize_checkpoint(o->in, format, o->out, [&](int64_t done, int64_t total) {
        if (!bar) bar.emplace("quantize", total);
        bar->step(done);
      });
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto weights = bundle ? fs::path(o->out) / "llm" / "model.safetensors" : fs::path(o->out) / "model.safetensors";
    std::cout << fmt::format("wrote {} {}: {} ({:.1f} MB weights, {:.1f} s)\n", bundle ? "bundle" : "LLM", o->out,
                             o->format, static_cast<double>(fs::file_size(weights)) / 1e6, s);
  });
}

}  // namespace iadgpt::cli
