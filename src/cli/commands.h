// One function per subcommand; each adds itself to the parent app (CLI11) with its options
// declared once and a callback that does the work. Callbacks throw iadgpt::InputError for bad
// input (exit 2) and anything else for internal failures (exit 1); main() maps them.
#pragma once
#include <CLI/CLI.hpp>

namespace iadgpt::cli {

void add_info(CLI::App& app);          // cmd_info.cpp
void add_convert(CLI::App& app);       // cmd_convert.cpp
void add_quantize(CLI::App& app);      // cmd_quantize.cpp
void add_encode_image(CLI::App& app);  // cmd_encode_image.cpp
void add_encode_text(CLI::App& app);   // cmd_encode_text.cpp
void add_tokenize(CLI::App& app);      // cmd_tokenize.cpp
void add_metrics(CLI::App& app);       // cmd_metrics.cpp
void add_llm_logits(CLI::App& app);    // cmd_llm_logits.cpp
void add_generate(CLI::App& app);      // cmd_generate.cpp
void add_chat(CLI::App& app);          // cmd_chat.cpp
void add_detect(CLI::App& app);       // cmd_detect.cpp
void add_eval(CLI::App& app);         // cmd_eval.cpp
void add_synth(CLI::App& app);        // cmd_synth.cpp
void add_train_decoder(CLI::App& app);  // cmd_train_decoder.cpp
void add_train(CLI::App& app);          // cmd_train.cpp
void add_bundle(CLI::App& app);       // cmd_bundle.cpp
void add_apg(CLI::App& app);           // cmd_apg.cpp
void add_serve(CLI::App& app);        // cmd_serve.cpp
void add_demo_data(CLI::App& app);     // cmd_demo_data.cpp
void add_demo(CLI::App& app);          // cmd_demo.cpp
void add_bench_encode(CLI::App& bench);  // cmd_bench_encode.cpp (under `iadgpt bench`)
void add_bench_llm(CLI::App& bench);     // cmd_bench_llm.cpp (under `iadgpt bench`)
void add_bench_maps(CLI::App& bench);    // cmd_bench_maps.cpp (under `iadgpt bench`)
void add_bench_model(CLI::App& bench);   // cmd_bench_model.cpp (under `iadgpt bench`)
void add_bench_train(CLI::App& bench);   // cmd_bench_train.cpp (under `iadgpt bench`)

}  // namespace iadgpt::cli
