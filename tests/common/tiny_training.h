// The smallest real models for training tests: the tiny ImageBind (all four taps) with its CLIP
// vocabulary, and the tiny LLaMA with the stories260K tokenizer. Each test adds its own data,
// stages and options with `update`:
//
//   auto cfg = iadgpt::test::tiny_training_config(out);
//   cfg.update({{"stages", {{{"stage", 2}, {"steps", 2}}}}, {"batch_size", 4}});
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>

#include "common/shared.h"

namespace iadgpt::test {

inline nlohmann::json tiny_training_config(const std::filesystem::path& out) {
  return {
      {"out", out.string()},
      {"vision", fixture("imagebind_tiny/imagebind_tiny.safetensors").string()},
      {"vision_config", fixture("imagebind_tiny/config.json").string()},
      {"vocab", data("tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz").string()},
      {"taps", {0, 1, 2, 3}},
      {"llm", fixture("llama_tiny").string()},
      {"tokenizer", fixture("stories260K/tokenizer.model").string()},
  };
}

}  // namespace iadgpt::test
