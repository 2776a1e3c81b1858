// iadgpt-min: the commands that need nothing but libtorch (IADGPT_MINIMAL=ON, CMakeLists.txt):
// `bench encode`, `bench llm` and `llm-logits`, for a machine that has a CUDA PyTorch and none of
// OpenCV, SentencePiece or cpp-httplib (scripts/gpu-check.sh). Same flags and exit codes as iadgpt.
#include <CLI/CLI.hpp>

#include "cli/app.h"
#include "cli/commands.h"

int main(int argc, char** argv) {
  using namespace iadgpt::cli;
  CLI::App app{"iadgpt-min — the model-only commands of iadgpt (no image codecs, tokenizers or server)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "iadgpt-min 0.1.0");
  add_threads_option(app);
  add_llm_logits(app);
  auto* bench = app.add_subcommand("bench", "Measure speed and memory of real-size architectures");
  bench->require_subcommand(1);
  add_bench_encode(*bench);
  add_bench_llm(*bench);
  return run_app(app, argc, argv);
}
