// iadgpt: industrial anomaly detection with a multimodal LLM. Entry point and exit codes:
// 0 success, 2 bad input (one line `iadgpt: error: <what>` on stderr), 3 a check the user asked
// for failed (`iadgpt: check failed: <what>`, e.g. `demo --min-accuracy`), 1 internal failure.
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <cstdio>
#include <exception>
#include <iostream>
#include <thread>

#include "cli/commands.h"
#include "io/error.h"

namespace iadgpt::cli {

void configure_threads(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(threads);
}

}  // namespace iadgpt::cli

int main(int argc, char** argv) {
  using namespace iadgpt::cli;
  CLI::App app{"iadgpt — industrial anomaly detection with a multimodal large language model"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "iadgpt 0.1.0");
  int threads = 0;
  app.add_option("--threads", threads, "CPU threads for tensor math (0 = all cores)")->capture_default_str();
  app.parse_complete_callback([&] { configure_threads(threads); });

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

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "iadgpt: error: " << e.what() << "\n";
    return 2;
  } catch (const iadgpt::InputError& e) {
    std::cerr << "iadgpt: error: " << e.what() << "\n";
    return 2;
  } catch (const iadgpt::CheckFailed& e) {
    std::cerr << "iadgpt: check failed: " << e.what() << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "iadgpt: internal error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
