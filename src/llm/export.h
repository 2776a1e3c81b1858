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
#include <functional>

#include "llm/config.h"
#include "nn/quant.h"
#include "llm/weights.h"

namespace iadgpt::llm {

// config.json holds every LlamaConfig field that from_json reads back, plus `extra` (merged last);
// `torch_dtype` names the dtype of the matrices. A tied head (lm_head is embed) is written once.
void save_hf_checkpoint(const std::filesystem::path& dir, const LlamaConfig& config, const LlamaWeights& weights,
                        const nlohmann::json& extra = nlohmann::json::object());

// Writes a quantized model (quantize_model) as our stored quantized checkpoint (README "Stored
// quantized checkpoints"): config.json as above plus `iadgpt_quant` and torch_dtype bfloat16, and
// model.safetensors with quantized_tensors' layout and `iadgpt_quant` in its __metadata__.
// load_model reads it back without re-quantizing. Unquantized weights → InputError.
void save_quantized_checkpoint(const std::filesystem::path& dir, const LlamaConfig& config, const LlamaWeights& weights,
                               const nlohmann::json& extra = nlohmann::json::object());

// `iadgpt quantize` on a Hugging Face LLaMA directory: loads `in` in a dtype that holds its values
// exactly (a safetensors source stays memory-mapped) and writes `out` as save_quantized_checkpoint
// would after quantize_model, one tensor at a time (quantized_tensor_plan): each matrix is
// quantized, written and freed before the next, so memory holds about one matrix (7B q8: 1.2 GB
// peak RSS, was 7.8 GB). Copies tokenizer.model when `in` has one. The result equals
// load_model(in, {bf16, format}) bit for bit. `progress` (optional) is called after each tensor
// written with (tensors written, tensors in all).
// An input that is already quantized, or format none → InputError.
void quantize_checkpoint(const std::filesystem::path& in, nn::QuantFormat format, const std::filesystem::path& out,
                         const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace iadgpt::llm
