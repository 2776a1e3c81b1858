// A model bundle made from the tiny fixtures: imagebind_tiny (D_v 64, D 32, 4 blocks), llama_tiny
// (H 64) with the stories260K SentencePiece model (same 512-token vocabulary size), and random
// adapters written by init_random_adapters.
#pragma once
#include <functional>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

#include "common/shared.h"
#include "io/checkpoint.h"
#include "model/bundle.h"

namespace iadgpt::test {

inline nlohmann::json read_json_file(const std::filesystem::path& p) {
  std::ifstream in(p);
  if (!in) throw std::runtime_error("missing fixture " + p.string());
  return nlohmann::json::parse(in);
}

inline nlohmann::json imagebind_tiny_config() {
  std::ifstream in(fixture("imagebind_tiny/config.json"));
  if (!in) throw std::runtime_error("missing fixture imagebind_tiny/config.json");
  return nlohmann::json::parse(in);
}

// Fields only (no adapters yet): the bundle directory is scratch(name)/bundle.
inline model::Bundle tiny_bundle_fields(const std::string& name) {
  model::Bundle b;
  b.dir = scratch(name) / "bundle";
  b.vision = fixture("imagebind_tiny/imagebind_tiny.safetensors");
  b.vision_config = imagebind_tiny_config();
  b.vocab = data("tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz");
  b.llm = fixture("llama_tiny");
  b.tokenizer = fixture("stories260K/tokenizer.model");
  return b;
}

// Written to disk, read back (so every test goes through read_bundle's validation). `customize`
// sets fields (dtype, quant, ...) before the adapters are made.
inline model::Bundle tiny_bundle(const std::string& name, const std::function<void(model::Bundle&)>& customize,
                                 uint64_t seed = 1) {
  auto b = tiny_bundle_fields(name);
  if (customize) customize(b);
  model::init_random_adapters(b, seed);
  model::write_bundle(b, b.dir);
  return model::read_bundle(b.dir);
}

inline model::Bundle tiny_bundle(const std::string& name, uint64_t seed = 1) { return tiny_bundle(name, {}, seed); }

}  // namespace iadgpt::test
