// `iadgpt bench llm`: the real-size decoder with random weights (created directly in bf16), or
// loaded from files with --model (memory-mapped, as a user's converted checkpoint runs and as
// llama.cpp runs a GGUF), timing prefill and decode next to the limit measured in the same run:
// decoding one token reads every weight once, so the bytes a step reads ÷ memory bandwidth bounds
// the time per token from below.
#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "cli/device_flag.h"
#include "cli/progress.h"
#include "io/error.h"
#include "llm/export.h"
#include "llm/gemm_peak.h"
#include "nn/matvec.h"
#include "llm/model.h"
#include "llm/options.h"
#include "nn/quant.h"

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

// Bytes one decode step reads: every matrix once, the norms, and one embedding row (the
// embedding table itself is read only when the head shares it).
int64_t decode_bytes_per_token(const llm::LlamaWeights& w) {
  const int64_t all = llm::weight_bytes(w);
  if (w.lm_head.is_same(w.embed)) return all;
  return all - w.embed.numel() * w.embed.element_size() + w.embed.size(1) * w.embed.element_size();
}

// Decode of `batch` sequences stepped together (llm::decode_batch, serve --batch): each a copy of
// `cache` (so each attends over as many positions as the single-sequence measurement did), `steps`
// steps; the mean ms per step after the first (which faults in the sequences' decode buffers).
double batched_decode_ms(const llm::LlamaModel& model, const llm::KvCache& cache, int64_t batch, int64_t steps) {
  std::vector<llm::KvCache> caches;
  for (int64_t i = 0; i < batch; ++i) {
    caches.emplace_back(model, cache.capacity());
    caches.back().k.copy_(cache.k);
    caches.back().v.copy_(cache.v);
    caches.back().pos = cache.pos;
  }
  std::vector<llm::KvCache*> pointers;
  for (auto& c : caches) pointers.push_back(&c);
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < batch; ++i) ids.push_back(3 + i);
  double total = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const auto t0 = Clock::now();
    llm::decode_batch(model, pointers, model.embed(ids));
    if (s > 0 || steps == 1) total += since(t0);
  }
  return total / static_cast<double>(steps > 1 ? steps - 1 : 1) * 1e3;
}

struct LlmBenchOpts {
  std::string arch = "tinyllama-1.1b", dtype = "bf16", quant = "none", model;
  int64_t prefill = 64, decode = 16, batch = 1;
  uint64_t seed = 0;
  bool json = false, sync_check = false;
  std::string write_hf;
  DeviceFlag device;
};

// The model under test: random weights of --arch (written out first with --write-hf), or the
// checkpoint in --model as `generate` loads it. The weights of a bf16 or stored quantized
// safetensors file stay memory-mapped, so its pages are the page cache's, as llama.cpp's GGUF are.
// `seconds`: creating (and quantizing) or loading them, the --write-hf output not counted.
llm::LlamaModel bench_model(const LlmBenchOpts& o, torch::Dtype dtype, nn::QuantFormat quant, double& seconds) {
  auto t0 = Clock::now();
  if (!o.model.empty()) {
    auto model = llm::load_model(o.model, {.dtype = dtype, .quant = quant});
    seconds = since(t0);
    return model;
  }
  const auto config = llm::LlamaConfig::preset(o.arch);
  auto weights = llm::random_weights(config, dtype, o.seed);
  seconds = since(t0);
  if (!o.write_hf.empty()) {  // before quantization: the GGUF converter wants the unquantized weights
    const auto write_start = Clock::now();
    llm::save_hf_checkpoint(o.write_hf, config, weights,
                            {{"iadgpt_note", fmt::format("random weights of `iadgpt bench llm --arch {} --seed {}`", o.arch, o.seed)}});
    std::cerr << fmt::format("wrote {} (config.json, model.safetensors) in {:.1f} s\n", o.write_hf, since(write_start));
  }
  t0 = Clock::now();
  llm::quantize_weights(weights, quant);  // matrix by matrix, each bf16 source freed at once
  llm::LlamaModel model(config, std::move(weights), dtype, o.arch);
  seconds += since(t0);
  return model;
}

// Untimed, as llama-bench's warm-up run: tokens through every layer fault in the pages of weights
// mapped from a file (and the decode buffers), which would otherwise land in the prefill. Two of
// them: the second read of a page moves it to the kernel's active list, so that when the page
// cache is short (LLaMA-7B's file beside llama.cpp's GGUF of it exceed 24 GiB) the timed run does
// not read evicted weights from disk again (it did after one token: 61 k major faults and half the
// prefill rate).
void warm_up(const llm::LlamaModel& model) {
  llm::KvCache warm(model, 2);
  for (const int64_t token : {3, 4}) llm::forward_tokens(model, warm, std::span(&token, 1), llm::Logits::Last);
}

}  // namespace

void add_bench_llm(CLI::App& bench) {
  auto o = std::make_shared<LlmBenchOpts>();
  auto* cmd = bench.add_subcommand("llm", "Decoder speed and memory at real size (random weights, or --model)");
  auto* arch = cmd->add_option("--arch", o->arch, "llama-7b | tinyllama-1.1b")->capture_default_str();
  auto* model = cmd->add_option("--model", o->model,
                                "time a checkpoint from files instead (Hugging Face directory, or one written by "
                                "`iadgpt quantize`): bf16 and stored quantized weights stay memory-mapped, as a "
                                "user runs them and as llama.cpp runs a GGUF");
  model->excludes(arch);
  cmd->add_option("--dtype", o->dtype, "weights: bf16 | f32")->capture_default_str();
  cmd->add_option("--quant", o->quant, "projections quantized in memory: none | q8 | q4 (head q8; needs bf16)")
      ->capture_default_str();
  cmd->add_option("--prefill", o->prefill, "prompt tokens for the prefill measurement")->capture_default_str();
  cmd->add_option("--decode", o->decode, "tokens to decode after the prefill")->capture_default_str();
  cmd->add_option("--batch", o->batch,
                  "also decode this many sequences together (continuous batching, serve --batch): ms per step "
                  "and tokens/s of all of them")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "seed of the random weights and prompt")->capture_default_str();
  cmd->add_flag("--json", o->json, "print the figures as JSON");
  cmd->add_flag("--sync-check", o->sync_check,
                "on CUDA: fail on any device-host copy or synchronisation in the decode loop but the sampled token's "
                "(c10's sync-debug mode; nothing on the CPU)");
  cmd->add_option("--write-hf", o->write_hf,
                  "also write the random weights as a Hugging Face directory (config.json + model.safetensors), "
                  "e.g. for llama.cpp's convert_hf_to_gguf.py: docs/LLAMA_CPP_COMPARISON.md")
      ->excludes(model);
  o->device.add_to(*cmd, "cpu; the bandwidth limit and GEMM peak are always the CPU's");
  cmd->callback([o] {
    if (o->prefill < 1 || o->decode < 1) throw InputError("--prefill and --decode must be >= 1");
    const auto device = o->device.device();
    if (o->batch < 1 || o->batch > 256) throw InputError(fmt::format("--batch must be in [1, 256], got {}", o->batch));
    if (o->batch > 1 && !device.is_cpu())
      throw InputError("--batch measures the shared decode step of the CPU kernels: use it with --device cpu");
    const auto dtype = llm::resolve_dtype(o->dtype, o->model);
    const auto quant = nn::parse_quant_format(o->quant, "--quant");
    if (quant != nn::QuantFormat::None && dtype != torch::kBFloat16)
      throw InputError("--quant q8|q4 needs --dtype bf16 (embeddings and the KV cache stay bf16)");
    // The header comes before the long creation of random weights, but after a checkpoint loaded,
    // so that a bad --model gets its one line of error alone.
    auto header = [&] {
      std::cerr << fmt::format("bench llm: {}, {} weights, {} threads ({} in the decode kernels)\n",
                               o->model.empty() ? o->arch : o->model, o->dtype, torch::get_num_threads(),
                               nn::kernel_threads());
    };
    if (o->model.empty()) {
      llm::LlamaConfig::preset(o->arch);  // an unknown --arch fails before any output
      header();
    }
    // A streaming read of a buffer 16x the 32 MiB last-level cache of the machines we measure on,
    // with the decode kernels' threads and vector width: the bandwidth a decode step can reach.
    // Measured before the weights exist, so its buffer does not raise the peak RSS reported below.
    const auto isa = nn::best_matvec_isa();
    const int64_t probe_bytes = int64_t{512} << 20;
    const double bandwidth = nn::measure_read_bandwidth(probe_bytes, 10, isa);
    double init_s = 0;
    auto model = bench_model(*o, dtype, quant, init_s);
    auto t0 = Clock::now();
    llm::move_model(model, device);
    init_s += since(t0);
    if (!o->model.empty()) header();
    const auto& config = model.config;
    const auto stored_quant = model.weights.quant;
    const int64_t bytes = llm::weight_bytes(model.weights);
    std::cerr << fmt::format("weights: {:.2f} B parameters, {:.2f} GB, projections {}, {} in {:.1f} s\n",
                             config.parameter_count() / 1e9, bytes / 1e9, nn::quant_format_name(stored_quant),
                             o->model.empty() ? "created" : "loaded", init_s);
    warm_up(model);

    const std::string kernels = dtype != torch::kBFloat16 ? "torch GEMM (f32 weights)"
                                : stored_quant == nn::QuantFormat::None
                                    ? nn::matvec_isa_name(isa)
                                    : fmt::format("{} {}", nn::quant_format_name(stored_quant), nn::matvec_isa_name(isa));
    const int64_t token_bytes = decode_bytes_per_token(model.weights);
    const double limit_ms = token_bytes / bandwidth * 1e3;
    std::cerr << fmt::format(
        "memory read bandwidth ({} MiB streaming read, {} threads, {} loads, best of 10 plain + 10 prefetched): {:.1f} GB/s\n"
        "decode reads {:.3f} GB/token -> {:.1f} ms/token limit; decode kernels: {}\n",
        probe_bytes >> 20, torch::get_num_threads(), nn::matvec_isa_name(isa), bandwidth / 1e9, token_bytes / 1e9,
        limit_ms, kernels);

    llm::KvCache cache(model, o->prefill + 2 * o->decode);  // room for the batched steps' copies
    torch::manual_seed(o->seed);
    auto prompt_t = torch::randint(3, config.vocab_size, {o->prefill}, torch::kInt64);
    std::vector<int64_t> prompt(prompt_t.data_ptr<int64_t>(), prompt_t.data_ptr<int64_t>() + o->prefill);
    t0 = Clock::now();
    auto logits = llm::forward_tokens(model, cache, prompt, llm::Logits::Last);
    nn::synchronize(device);
    const double prefill_s = since(t0);
    // The GEMM rate at a large bf16/f32 shape of this model (the widest matrix, 512 rows): what
    // prefill could reach if all of it were GEMM.
    const double gemm_peak = llm::measure_gemm_flops(512, config.hidden_size, config.intermediate_size, dtype, 5);
    const double prefill_rate = llm::prefill_flops(config, o->prefill) / prefill_s;
    std::cerr << fmt::format("prefill: {} tokens in {:.2f} s = {:.1f} tok/s ({:.0f} GFLOP/s; GEMM peak {:.0f} GFLOP/s at "
                             "512x{}x{}: {:.0f}% of peak)\n",
                             o->prefill, prefill_s, o->prefill / prefill_s, prefill_rate / 1e9, gemm_peak / 1e9,
                             config.hidden_size, config.intermediate_size, 100.0 * prefill_rate / gemm_peak);

    std::vector<double> steps;
    {
      // --sync-check: the token is the loop's one planned device→host copy (and the timer's wait).
      nn::SyncCheck check(o->sync_check);
      for (int64_t i = 0; i < o->decode; ++i) {
        int64_t next[1];
        {
          nn::PlannedSync planned;
          next[0] = logits.argmax().item<int64_t>();
        }
        t0 = Clock::now();
        logits = llm::forward_tokens(model, cache, next, llm::Logits::Last);
        nn::PlannedSync planned;
        nn::synchronize(device);
        steps.push_back(since(t0));
      }
    }
    // The first step also faults in the decode buffers; report the mean of the rest when possible.
    const size_t skip = steps.size() > 2 ? 1 : 0;
    double total = 0;
    for (size_t i = skip; i < steps.size(); ++i) total += steps[i];
    const double decode_ms = total / static_cast<double>(steps.size() - skip) * 1e3;
    const int64_t peak = proc_status_kb("VmHWM");
    std::cerr << fmt::format("decode: {:.1f} ms/token = {:.2f} tok/s (limit {:.1f} ms/token = {:.2f} tok/s; {:.0f}% of limit)\n",
                             decode_ms, 1e3 / decode_ms, limit_ms, 1e3 / limit_ms, 100.0 * limit_ms / decode_ms);
    std::cerr << fmt::format("peak RSS (VmHWM): {:.2f} GiB\n", peak / double(1 << 30));
    double batch_ms = decode_ms;
    if (o->batch > 1) {
      batch_ms = batched_decode_ms(model, cache, o->batch, o->decode);
      std::cerr << fmt::format("batched decode: {} sequences: {:.1f} ms/step = {:.2f} tok/s ({:.2f}x one sequence's)\n",
                               o->batch, batch_ms, 1e3 * o->batch / batch_ms, decode_ms * o->batch / batch_ms);
    }
    nlohmann::json j{{"arch", o->model.empty() ? o->arch : std::string()},
                     {"model", o->model},
                     {"dtype", o->dtype},
                     {"threads", torch::get_num_threads()},
                     {"kernel_threads", nn::kernel_threads()},
                     {"parameters", config.parameter_count()},
                     {"weight_bytes", bytes},
                     {"init_seconds", init_s},
                     {"read_bandwidth_gb_s", bandwidth / 1e9},
                     {"decode_bytes_per_token", token_bytes},
                     {"quant", nn::quant_format_name(stored_quant)},
                     {"decode_kernels", kernels},
                     {"prefill_tokens", o->prefill},
                     {"prefill_tok_s", o->prefill / prefill_s},
                     {"prefill_gflop_s", prefill_rate / 1e9},
                     {"gemm_peak_gflop_s", gemm_peak / 1e9},
                     {"decode_tokens", o->decode},
                     {"decode_ms_per_token", decode_ms},
                     {"decode_tok_s", 1e3 / decode_ms},
                     {"decode_limit_ms_per_token", limit_ms},
                     {"peak_rss_bytes", peak},
                     {"batch", o->batch},
                     {"batch_decode_ms_per_step", batch_ms},
                     {"batch_decode_tok_s", 1e3 * o->batch / batch_ms}};
    if (o->json) std::cout << j.dump() << "\n";
  });
}

}  // namespace iadgpt::cli
