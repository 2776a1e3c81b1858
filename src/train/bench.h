// Training steps of a real-size architecture with random weights (issue 16): what one step of a
// stage costs on a device, without datasets, tokenizer or pool building.
//
//   auto r = train::bench_training({.arch = "imagebind-huge+llama-7b", .stage = 2, .steps = 20,
//                                   .device = torch::Device("cuda")});
//   // r.step_seconds (per step, after the device finished it), r.peak_device_bytes
//
// A step is the trainer's (step.h, trainer.cpp) on a synthetic batch: the frozen encoder's taps
// and embedding drawn at their real shapes (the trainer reads them from its pool in host memory
// and copies the step's rows to the device: so does the bench, every step), the heads, the
// METHOD §1.9 sequence (random token ids around the image token and the 18 expert tokens, the
// answer at the end), the LLM's training forward, the answer CE (+ focal and dice in stage 2),
// the backward and one AdamW update of what the stage trains (trainable.h) and the LoRA.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace iadgpt::train {

struct TrainBenchOptions {
  std::string arch = "imagebind-huge+llama-7b";  // VISION+LLM presets (vision::vit_preset, llm::LlamaConfig::preset)
  int64_t stage = 1;                             // 1, 2 or 3 (METHOD §3.3)
  int64_t steps = 20;
  int64_t batch = 4;                             // examples per step (one micro-batch)
  int64_t prompt_tokens = 130;                   // token ids around the 19 injected rows
  int64_t answer_tokens = 30;                    // at the end, where the CE is taken
  std::string llm_dtype = "bf16";                // the frozen base: bf16 | f32 (LoRA pairs are fp32)
  int64_t lora_rank = 32;                        // PandaGPT/AnomalyGPT: r 32, alpha 32, dropout 0.1
  bool bf16_autocast = true;
  bool gradient_checkpointing = false;
  torch::Device device{torch::kCPU};
};

struct TrainBenchResult {
  std::vector<double> step_seconds;  // each after nn::synchronize
  std::vector<double> losses;        // each step's loss, before its update
  int64_t trained_parameters = 0;    // what the stage's optimiser updates
  int64_t tokens_per_example = 0;
  int64_t peak_device_bytes = -1;    // the CUDA allocator's peak over the steps; -1 on the CPU
};

// InputError for an unknown arch, a stage other than 1–3, steps/batch/tokens < 1 or an llm_dtype
// other than bf16/f32.
TrainBenchResult bench_training(const TrainBenchOptions& options);

}  // namespace iadgpt::train
