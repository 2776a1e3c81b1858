// Helpers for the programs that drive the decoder (CLI, server): dtype names, id lists, loading a
// model with an optional LoRA merged in.
//
//   auto model = llm::load_model_with_lora("vicuna-7b", llm::resolve_dtype("auto", "vicuna-7b"), "delta.pt", 32);
//   auto ids = llm::parse_ids("1,15043,3186");
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <string_view>
#include <vector>

#include "llm/model.h"

namespace iadgpt::llm {

// "f32" | "bf16" | "auto" (bf16 unless config.json says torch_dtype float32). InputError otherwise.
torch::Dtype resolve_dtype(std::string_view name, const std::filesystem::path& model_dir);

// The dtype that holds a checkpoint's values exactly, from config.json's torch_dtype: bf16 for
// bfloat16 checkpoints, f32 otherwise (float32, float16, absent). What quantization reads from.
torch::Dtype source_dtype(const std::filesystem::path& model_dir);

// "1,2,3" (spaces allowed) -> ids. InputError naming the bad item.
std::vector<int64_t> parse_ids(std::string_view text);

// load_model, then (when lora_path is non-empty) load_lora + merge_lora.
LlamaModel load_model_with_lora(const std::filesystem::path& model_dir, torch::Dtype dtype,
                                const std::filesystem::path& lora_path, double lora_alpha);

}  // namespace iadgpt::llm
