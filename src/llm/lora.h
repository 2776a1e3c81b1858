// LoRA adapters for the decoder: PEFT directories (adapter_config.json + adapter_model.safetensors
// or .bin) and PandaGPT/AnomalyGPT delta checkpoints (`llama_model.base_model.model.…` keys,
// r from the tensors, alpha given by the caller: PandaGPT/AnomalyGPT train with r 32, alpha 32).
//
//   auto lora = iadgpt::llm::load_lora("vicuna-lora/");          // PEFT dir or delta .pt
//   iadgpt::llm::merge_lora(model, lora);                         // W += alpha/r · B·A
//   // or attach_lora(model, lora): keep A, B separate (training; forward adds them).
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "llm/model.h"

namespace iadgpt::llm {

struct LoraModule {
  int64_t layer = 0;
  std::string name;  // q_proj k_proj v_proj o_proj gate_proj up_proj down_proj
  torch::Tensor a;   // [r, in] fp32
  torch::Tensor b;   // [out, r] fp32
  std::string key;   // checkpoint key of A, for error messages
};

struct LoraAdapter {
  double scale = 1.0;  // alpha / r (alpha / sqrt(r) with rsLoRA)
  int64_t rank = 0;
  std::vector<LoraModule> modules;
  io::TensorMap other;  // tensors of the file that are not LoRA (e.g. llama_proj in a delta)
  std::string source;
};

// PEFT adapter directory.
LoraAdapter load_peft_adapter(const std::filesystem::path& dir);
// PandaGPT/AnomalyGPT delta file (`pytorch_model.pt`); keys with or without `.default`.
LoraAdapter load_pandagpt_delta(const std::filesystem::path& file, double lora_alpha);
// Dispatch: a directory with adapter_config.json -> PEFT, otherwise a delta checkpoint.
LoraAdapter load_lora(const std::filesystem::path& path, double delta_alpha = 32.0);

// Both check every module against the model (layer index, name, shapes) first and throw
// InputError naming the key.
void merge_lora(LlamaModel& model, const LoraAdapter& adapter);
void attach_lora(LlamaModel& model, const LoraAdapter& adapter);

}  // namespace iadgpt::llm
