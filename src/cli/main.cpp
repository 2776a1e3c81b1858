// iadgpt: industrial anomaly detection with a multimodal LLM. Entry point; the exit codes are
// cli/app.h's: 0 success, 2 bad input (one line `iadgpt: error: <what>` on stderr), 3 a check the
// user asked for failed (`iadgpt: check failed: <what>`, e.g. `demo --min-accuracy`), 1 internal failure.
#include <CLI/CLI.hpp>

#include <cstdlib>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "cli/app.h"
#include "cli/commands.h"

namespace {

// Tensors of any size come from the heap, and freed ones stay there for the next op: ATen
// allocates and frees its temporaries per op (attention scores, casts), and glibc's default hands
// blocks over its mmap threshold back at once, so each op faults in fresh pages (~14 us per 4 KiB
// on the test machines). Measured 2026-12-05, `bench encode --dtype bf16 --iters 3`, 2 threads:
// CLIP ViT-L/14-336 2651 -> 2322 ms/image, ImageBind-Huge 1748 -> 1716; the ImageBind-Huge + 7B q4
// bundle's peak RSS 5.81 -> 5.83 GiB. Loaders give what they freed back (io::release_free_heap).
// MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ set in the environment still decide.
void keep_freed_memory() {
#if defined(__GLIBC__)
  if (!std::getenv("MALLOC_MMAP_THRESHOLD_")) mallopt(M_MMAP_THRESHOLD, 1 << 30);
  if (!std::getenv("MALLOC_TRIM_THRESHOLD_")) mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

}  // namespace

int main(int argc, char** argv) {
  using namespace iadgpt::cli;
  keep_freed_memory();
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
