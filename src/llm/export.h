// Writes a decoder as a Hugging Face LLaMA directory: `config.json` (LlamaForCausalLM) and
// `model.safetensors` under the HF key names (the table of weights.cpp, read the other way).
// The demo writes its random tiny LLM with it; `bench llm --write-hf` writes the benchmark's random
// weights, which llama.cpp's convert_hf_to_gguf.py turns into a GGUF of the same shape
// (docs/LLAMA_CPP_COMPARISON.md).
//
//   llm::save_hf_checkpoint("out/llm", config, weights, {{"iadgpt_note", "random"}});
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>

#include "llm/config.h"
#include "llm/weights.h"

namespace iadgpt::llm {

// config.json holds every LlamaConfig field that from_json reads back, plus `extra` (merged last);
// `torch_dtype` names the dtype of the matrices. A tied head (lm_head is embed) is written once.
void save_hf_checkpoint(const std::filesystem::path& dir, const LlamaConfig& config, const LlamaWeights& weights,
                        const nlohmann::json& extra = nlohmann::json::object());

}  // namespace iadgpt::llm
