// `iadgpt bench train`: training steps of one stage at a real size with random weights (issue 16;
// train/bench.h). Prints the median step time (the first step, a warm-up, left out when there are
// several) and, on CUDA, the allocator's peak; --json for scripts/gpu-check.sh.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <iostream>

#include "cli/commands.h"
#include "cli/device_flag.h"
#include "train/bench.h"

namespace iadgpt::cli {
namespace {

struct Flags {
  train::TrainBenchOptions options;
  bool no_autocast = false, json = false;
  DeviceFlag device;
};

double median_after_warmup(std::vector<double> s) {
  if (s.size() > 1) s.erase(s.begin());
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

}  // namespace

void add_bench_train(CLI::App& bench) {
  auto f = std::make_shared<Flags>();
  auto& o = f->options;
  auto* cmd = bench.add_subcommand("train", "Training steps of one stage at a real size with random weights");
  cmd->add_option("--arch", o.arch, "VISION+LLM presets, e.g. imagebind-huge+llama-7b (vit-tiny+llama-tiny for tests)")
      ->capture_default_str();
  cmd->add_option("--stage", o.stage, "1 (TGE), 2 (decoder + MMF, map loss), 3 (TGE + MMF); the LoRA in each")
      ->capture_default_str();
  cmd->add_option("--steps", o.steps, "optimiser steps")->capture_default_str();
  cmd->add_option("--batch", o.batch, "examples per step")->capture_default_str();
  cmd->add_option("--prompt-tokens", o.prompt_tokens, "prompt token ids around the 19 injected rows")->capture_default_str();
  cmd->add_option("--answer-tokens", o.answer_tokens, "answer tokens (the CE's)")->capture_default_str();
  cmd->add_option("--llm-dtype", o.llm_dtype, "the frozen LLM weights: bf16 | f32")->capture_default_str();
  cmd->add_option("--lora-rank", o.lora_rank, "LoRA rank on q/k/v/o")->capture_default_str();
  cmd->add_flag("--gradient-checkpointing", o.gradient_checkpointing, "recompute each decoder layer in backward");
  cmd->add_flag("--no-autocast", f->no_autocast, "fp32 matmuls (default: bf16 autocast on the device)");
  cmd->add_flag("--json", f->json, "print the figures as JSON");
  f->device.add_to(*cmd);
  cmd->callback([f] {
    auto o = f->options;
    o.bf16_autocast = !f->no_autocast;
    o.device = f->device.device();
    const auto r = train::bench_training(o);
    const double step = median_after_warmup(r.step_seconds);
    const double gib = static_cast<double>(1ll << 30);
    std::cerr << fmt::format("bench train: {} stage {}, {} steps of {} × {} tokens{}{}: step {:.1f} ms (median) | "
                             "{:.3f} M trained parameters | loss {:.3f} -> {:.3f}{}\n",
                             o.arch, o.stage, o.steps, o.batch, r.tokens_per_example,
                             o.gradient_checkpointing ? ", checkpointing" : "", o.bf16_autocast ? ", bf16 autocast" : "",
                             step * 1e3, static_cast<double>(r.trained_parameters) / 1e6, r.losses.front(),
                             r.losses.back(),
                             r.peak_device_bytes >= 0 ? fmt::format(" | peak {:.2f} GiB", r.peak_device_bytes / gib) : "");
    if (f->json)
      std::cout << nlohmann::json{{"arch", o.arch}, {"stage", o.stage}, {"steps", o.steps}, {"batch", o.batch},
                                  {"tokens", r.tokens_per_example}, {"gradient_checkpointing", o.gradient_checkpointing},
                                  {"bf16_autocast", o.bf16_autocast}, {"step_ms", step * 1e3},
                                  {"step_seconds", r.step_seconds}, {"losses", r.losses},
                                  {"trained_parameters", r.trained_parameters},
                                  {"peak_device_bytes", r.peak_device_bytes}}
                       .dump()
                << "\n";
  });
}

}  // namespace iadgpt::cli
