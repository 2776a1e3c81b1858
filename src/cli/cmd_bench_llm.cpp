// `iadgpt bench llm`: the real-size decoder with random weights (created directly in bf16), timing
// prefill and decode next to the limit measured in the same run: decoding one token reads every
// weight once, so weight bytes ÷ memory bandwidth bounds the time per token from below.
#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "cli/progress.h"
#include "io/error.h"
#include "llm/model.h"
#include "llm/options.h"

namespace iadgpt::cli {
namespace {


// VmHWM / VmRSS from /proc/self/status, in bytes.
int64_t proc_status_kb(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1)) * 1024;
  return -1;
}

// Read bandwidth: sum every weight matrix (each byte read once, as a decode step does); best of `passes`.
double read_bandwidth(const llm::LlamaWeights& w, int64_t bytes, int passes) {
  std::vector<torch::Tensor> mats{w.embed};
  if (!w.lm_head.is_same(w.embed)) mats.push_back(w.lm_head);
  for (const auto& L : w.layers) mats.insert(mats.end(), {L.wq, L.wk, L.wv, L.wo, L.w_gate, L.w_up, L.w_down});
  double best = 1e30;
  for (int p = 0; p < passes; ++p) {
    auto t0 = Clock::now();
    double sink = 0;
    // Viewed as fp32 pairs: the reduction is then vectorised and memory-bound (ATen's bf16
    // reduction is not); the values are meaningless, only the bytes read count.
    for (const auto& m : mats) sink += m.view(torch::kFloat32).sum().item<double>();
    best = std::min(best, since(t0));
    if (sink == 12345.678) std::cerr << "";  // keep the sums observable
  }
  return static_cast<double>(bytes) / best;
}

}  // namespace

void add_bench_llm(CLI::App& bench) {
  struct Opts {
    std::string arch = "tinyllama-1.1b", dtype = "bf16";
    int64_t prefill = 64, decode = 16;
    uint64_t seed = 0;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = bench.add_subcommand("llm", "Decoder speed and memory at real size (random weights)");
  cmd->add_option("--arch", o->arch, "llama-7b | tinyllama-1.1b")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "weights: bf16 | f32")->capture_default_str();
  cmd->add_option("--prefill", o->prefill, "prompt tokens for the prefill measurement")->capture_default_str();
  cmd->add_option("--decode", o->decode, "tokens to decode after the prefill")->capture_default_str();
  cmd->add_option("--seed", o->seed, "seed of the random weights and prompt")->capture_default_str();
  cmd->add_flag("--json", o->json, "print the figures as JSON");
  cmd->callback([o] {
    if (o->prefill < 1 || o->decode < 1) throw InputError("--prefill and --decode must be >= 1");
    const auto config = llm::LlamaConfig::preset(o->arch);
    const auto dtype = llm::resolve_dtype(o->dtype, "");
    std::cerr << fmt::format("bench llm: {} ({:.2f} B parameters), {} weights, {} threads\n", o->arch,
                             config.parameter_count() / 1e9, o->dtype, torch::get_num_threads());
    auto t0 = Clock::now();
    llm::LlamaModel model(config, llm::random_weights(config, dtype, o->seed), dtype, o->arch);
    const double init_s = since(t0);
    const int64_t bytes = llm::weight_bytes(model.weights);
    std::cerr << fmt::format("weights: {:.2f} GB created in {:.1f} s\n", bytes / 1e9, init_s);

    const double bandwidth = read_bandwidth(model.weights, bytes, 2);
    const double limit_ms = bytes / bandwidth * 1e3;
    std::cerr << fmt::format("memory read bandwidth (sum over all weights): {:.1f} GB/s -> {:.1f} ms/token limit\n",
                             bandwidth / 1e9, limit_ms);

    llm::KvCache cache(model, o->prefill + o->decode);
    torch::manual_seed(o->seed);
    auto prompt_t = torch::randint(3, config.vocab_size, {o->prefill}, torch::kInt64);
    std::vector<int64_t> prompt(prompt_t.data_ptr<int64_t>(), prompt_t.data_ptr<int64_t>() + o->prefill);
    t0 = Clock::now();
    auto logits = llm::forward_tokens(model, cache, prompt, llm::Logits::Last);
    const double prefill_s = since(t0);
    std::cerr << fmt::format("prefill: {} tokens in {:.2f} s = {:.1f} tok/s\n", o->prefill, prefill_s, o->prefill / prefill_s);

    std::vector<double> steps;
    for (int64_t i = 0; i < o->decode; ++i) {
      const int64_t next[] = {logits.argmax().item<int64_t>()};
      t0 = Clock::now();
      logits = llm::forward_tokens(model, cache, next, llm::Logits::Last);
      steps.push_back(since(t0));
    }
    // The first step also warms up oneDNN's GEMV kernels; report the mean of the rest when possible.
    const size_t skip = steps.size() > 2 ? 1 : 0;
    double total = 0;
    for (size_t i = skip; i < steps.size(); ++i) total += steps[i];
    const double decode_ms = total / static_cast<double>(steps.size() - skip) * 1e3;
    const int64_t peak = proc_status_kb("VmHWM");
    std::cerr << fmt::format("decode: {:.1f} ms/token = {:.2f} tok/s (limit {:.1f} ms/token = {:.2f} tok/s; {:.0f}% of limit)\n",
                             decode_ms, 1e3 / decode_ms, limit_ms, 1e3 / limit_ms, 100.0 * limit_ms / decode_ms);
    std::cerr << fmt::format("peak RSS (VmHWM): {:.2f} GiB\n", peak / double(1 << 30));
    nlohmann::json j{{"arch", o->arch},
                     {"dtype", o->dtype},
                     {"threads", torch::get_num_threads()},
                     {"parameters", config.parameter_count()},
                     {"weight_bytes", bytes},
                     {"init_seconds", init_s},
                     {"read_bandwidth_gb_s", bandwidth / 1e9},
                     {"prefill_tokens", o->prefill},
                     {"prefill_tok_s", o->prefill / prefill_s},
                     {"decode_tokens", o->decode},
                     {"decode_ms_per_token", decode_ms},
                     {"decode_tok_s", 1e3 / decode_ms},
                     {"decode_limit_ms_per_token", limit_ms},
                     {"peak_rss_bytes", peak}};
    if (o->json) std::cout << j.dump() << "\n";
  });
}

}  // namespace iadgpt::cli
