// `iadgpt llm-logits`: logits of the decoder at every position of a token sequence, optionally
// fed in two chunks through the KV cache (N tokens, then the rest) — the runtime's parity check.
#include <fmt/format.h>

#include <chrono>
#include <iostream>

#include "cli/commands.h"
#include "cli/device_flag.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "llm/model.h"
#include "llm/options.h"

namespace iadgpt::cli {

void add_llm_logits(CLI::App& app) {
  struct Opts {
    std::string model, lora, dtype = "f32", tokens, out;
    double lora_alpha = 32;
    int64_t chunk = 0;
    DeviceFlag device;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("llm-logits", "Write the LLM's logits [T, V] for a token sequence");
  cmd->add_option("--model", o->model, "Hugging Face model directory (config.json + weights)")->required();
  cmd->add_option("--lora", o->lora, "PEFT adapter directory or PandaGPT-style delta file, merged");
  cmd->add_option("--lora-alpha", o->lora_alpha, "LoRA alpha for delta files (PEFT reads it from adapter_config.json)")
      ->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "weights: f32 | bf16 | auto")->capture_default_str();
  cmd->add_option("--tokens", o->tokens, "comma-separated token ids, e.g. 1,2,3")->required();
  cmd->add_option("--chunk", o->chunk, "feed N tokens first, then the rest through the KV cache (0 = one pass)")
      ->capture_default_str();
  cmd->add_option("--out", o->out, "output .safetensors (tensor `logits`)")->required();
  o->device.add_to(*cmd);
  cmd->callback([o] {
    const auto device = o->device.device();
    const auto ids = llm::parse_ids(o->tokens);
    if (o->chunk < 0 || o->chunk > static_cast<int64_t>(ids.size()))
      throw InputError(fmt::format("--chunk {} must be between 0 and the number of tokens ({})", o->chunk, ids.size()));
    auto t0 = std::chrono::steady_clock::now();
    auto model = llm::load_model_with_lora(o->model, llm::resolve_dtype(o->dtype, o->model), o->lora, o->lora_alpha);
    llm::move_model(model, device);
    auto t1 = std::chrono::steady_clock::now();
    llm::KvCache cache(model, static_cast<int64_t>(ids.size()));
    std::span<const int64_t> all(ids);
    torch::Tensor logits;
    if (o->chunk > 0 && o->chunk < static_cast<int64_t>(ids.size())) {
      auto a = llm::forward_tokens(model, cache, all.first(o->chunk), llm::Logits::All);
      auto b = llm::forward_tokens(model, cache, all.subspan(o->chunk), llm::Logits::All);
      logits = torch::cat({a, b});
    } else {
      logits = llm::forward_tokens(model, cache, all, llm::Logits::All);
    }
    auto t2 = std::chrono::steady_clock::now();
    io::save_safetensors(o->out, {{"logits", logits.contiguous()}});
    std::cerr << fmt::format("load {:.0f} ms, forward {:.1f} ms for {} tokens\n",
                             std::chrono::duration<double, std::milli>(t1 - t0).count(),
                             std::chrono::duration<double, std::milli>(t2 - t1).count(), ids.size());
  });
}

}  // namespace iadgpt::cli
