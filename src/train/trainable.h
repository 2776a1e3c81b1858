// What a run trains (METHOD §3.3): the heads (decoder, TGE with llama_proj, MMF) and the LLM's
// LoRA or all its weights, each tensor under a stable name (checkpoint keys), and which stage
// trains which part.
//
//   auto m = train::make_trainable(cfg, /*embed_dim=*/D, /*vision_width=*/Dv);   // fixed seeds
//   for (auto& [name, t] : m.named()) t.requires_grad_(m.trains(name, stage));
//
// Internal to the train module.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "llm/model.h"
#include "llm/train_forward.h"
#include "model/heads.h"
#include "train/config.h"

namespace iadgpt::train {

struct Trainable {
  model::Heads heads;
  llm::LlamaModel llm;
  std::optional<llm::TrainableLora> lora;
  llm::NamedParameters full;  // llm_tuning "full": every LLM weight

  // Every trainable tensor with a stable name: decoder.*, tge.*, mmf.*, then lora.* or llm.*.
  std::vector<std::pair<std::string, torch::Tensor>> named();
  static bool is_llm(const std::string& name);
  // Stage 1 trains the TGE, 2 the decoder and the MMF, 3 the TGE and the MMF; the LLM part in every
  // stage (the stage's `llm` flag can still leave it frozen).
  static bool trains(const std::string& name, int64_t stage);
};

// A fresh run's parts from cfg.seed: the decoder (train::initial_decoder), the TGE's llama_proj
// (torch's defaults), the MMF (config `mmf_init`) and its base tokens N(0, 1), the LLM from cfg.llm
// with a trainable LoRA (or every weight trainable, or frozen) per `llm_tuning`.
// Everything is made on the host (the same values on every device), then moved to `device`
// before the LLM's trainable tensors are made, so that they are leaves there.
Trainable make_trainable(const TrainConfig& cfg, int64_t embed_dim, int64_t vision_width,
                         const torch::Device& device = torch::kCPU);
// The same around an LLM already in memory (bench train: random weights at a real size).
Trainable make_trainable(const TrainConfig& cfg, int64_t embed_dim, int64_t vision_width, llm::LlamaModel llm,
                         const torch::Device& device);
// The heads and the LLM (its LoRA included) to `device`, after training (no gradients follow).
void move_trainable(Trainable& trained, const torch::Device& device);

}  // namespace iadgpt::train
