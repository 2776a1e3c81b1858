// Helpers shared by the llm tests: fixture paths and reference tensors.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/shared.h"
#include "common/tensors.h"
#include "io/checkpoint.h"
#include "llm/model.h"

namespace iadgpt::test {

inline std::filesystem::path llama_tiny(const std::string& rel = "") {
  return rel.empty() ? fixture("llama_tiny") : fixture("llama_tiny/" + rel);
}

inline nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  if (!in) throw std::runtime_error("missing fixture " + p.string());
  return nlohmann::json::parse(in);
}

inline const io::TensorMap& llama_tiny_reference() {
  static const io::TensorMap ref = io::load_safetensors(llama_tiny("reference.safetensors"));
  return ref;
}

// The real trained stories260K model, loaded once per test binary.
inline const llm::LlamaModel& stories_model() {
  static const llm::LlamaModel m = llm::load_model(fixture("stories260K"));
  return m;
}

// stories260K in bf16 (the hand-written decode kernels' path), loaded once per test binary.
inline const llm::LlamaModel& stories_bf16() {
  static const auto m = llm::load_model(fixture("stories260K"), {.dtype = torch::kBFloat16});
  return m;
}

inline std::vector<int64_t> to_ids(const torch::Tensor& t) {
  auto c = t.to(torch::kInt64).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

// Copies every regular file of `from` into a fresh scratch dir (to corrupt a copy, not the fixture).
inline std::filesystem::path copy_dir(const std::filesystem::path& from, const std::string& name) {
  auto dir = scratch(name);
  for (const auto& e : std::filesystem::directory_iterator(from))
    if (e.is_regular_file())
      std::filesystem::copy_file(e.path(), dir / e.path().filename(), std::filesystem::copy_options::overwrite_existing);
  for (const auto& e : std::filesystem::directory_iterator(dir))
    std::filesystem::permissions(e.path(), std::filesystem::perms::owner_write, std::filesystem::perm_options::add);
  return dir;
}

}  // namespace iadgpt::test
