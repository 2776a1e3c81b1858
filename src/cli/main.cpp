// iadgpt: industrial anomaly detection with a multimodal LLM. Entry point; the exit codes are
// cli/app.h's: 0 success, 2 bad input (one line `iadgpt: error: <what>` on stderr), 3 a check the
// user asked for failed (`iadgpt: check failed: <what>`, e.g. `demo --min-accuracy`), 1 internal failure.
#include <CLI/CLI.hpp>

#include "cli/app.h"
#include "cli/commands.h"

int main(int argc, char** argv) {
  using namespace iadgpt::cli;
  CLI::App app{"iadgpt — industrial anomaly detection with a multimodal large language model"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "iadgpt 0.1.0");
  add_threads_option(app);

  add_info(app);
  add_convert(app);
  add_quantize(app);
  add_encode_image(app);
  add_encode_text(app);
  add_tokenize(app);
  add_metrics(app);
  add_llm_logits(app);
  add_generate(app);
  add_chat(app);
  add_detect(app);
  add_eval(app);
  add_synth(app);
  add_train_decoder(app);
  add_train(app);
  add_bundle(app);
  add_apg(app);
  add_serve(app);
  add_demo_data(app);
  add_demo(app);
  auto* bench = app.add_subcommand("bench", "Measure speed and memory of real-size architectures");
  bench->require_subcommand(1);
  add_bench_encode(*bench);
  add_bench_llm(*bench);
  add_bench_maps(*bench);
  add_bench_model(*bench);
  add_bench_train(*bench);

  return run_app(app, argc, argv);
}
