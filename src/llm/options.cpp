#include "llm/options.h"

#include <fmt/format.h>

#include <charconv>
#include <fstream>

#include "io/error.h"
#include "llm/lora.h"

namespace iadgpt::llm {

torch::Dtype resolve_dtype(std::string_view name, const std::filesystem::path& model_dir) {
  if (name == "f32" || name == "fp32" || name == "float32") return torch::kFloat32;
  if (name == "bf16" || name == "bfloat16") return torch::kBFloat16;
  if (name != "auto") throw InputError(fmt::format("unknown dtype '{}' (expected f32, bf16 or auto)", name));
  // Checkpoints published in fp16/bf16 run in bf16; fp32 checkpoints (tests, small models) in fp32.
  const auto cfg = std::filesystem::is_directory(model_dir) ? model_dir / "config.json" : model_dir.parent_path() / "config.json";
  std::ifstream in(cfg);
  if (!in) return torch::kBFloat16;
  try {
    const auto j = nlohmann::json::parse(in);
    return j.value("torch_dtype", std::string("bfloat16")) == "float32" ? torch::kFloat32 : torch::kBFloat16;
  } catch (const nlohmann::json::exception&) {
    return torch::kBFloat16;  // load_model reports the broken config with its own message
  }
}

torch::Dtype source_dtype(const std::filesystem::path& model_dir) {
  const auto cfg = std::filesystem::is_directory(model_dir) ? model_dir / "config.json" : model_dir.parent_path() / "config.json";
  std::ifstream in(cfg);
  if (!in) return torch::kFloat32;
  try {
    const auto j = nlohmann::json::parse(in);
    return j.value("torch_dtype", std::string()) == "bfloat16" ? torch::kBFloat16 : torch::kFloat32;
  } catch (const nlohmann::json::exception&) {
    return torch::kFloat32;  // load_model reports the broken config with its own message
  }
}

std::vector<int64_t> parse_ids(std::string_view text) {
  std::vector<int64_t> ids;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string_view::npos) end = text.size();
    auto item = text.substr(start, end - start);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    int64_t v = 0;
    auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || p != item.data() + item.size() || v < 0)
      throw InputError(fmt::format("token list '{}': item '{}' is not a non-negative integer", text, item));
    ids.push_back(v);
    start = end + 1;
  }
  return ids;
}

LlamaModel load_model_with_lora(const std::filesystem::path& model_dir, torch::Dtype dtype,
                                const std::filesystem::path& lora_path, double lora_alpha) {
  auto model = load_model(model_dir, {.dtype = dtype});
  if (!lora_path.empty()) merge_lora(model, load_lora(lora_path, lora_alpha));
  return model;
}

}  // namespace iadgpt::llm
