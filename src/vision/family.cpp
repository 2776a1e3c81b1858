#include "vision/family.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

#include "io/error.h"

namespace iadgpt::vision {
namespace {

bool has_prefix(const io::TensorMap& tensors, std::string_view prefix) {
  auto it = tensors.lower_bound(std::string(prefix));
  return it != tensors.end() && std::string_view(it->first).starts_with(prefix);
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// Number of `visual.transformer.resblocks.<i>.` blocks present.
int64_t count_openai_vision_blocks(const io::TensorMap& tensors) {
  int64_t n = 0;
  while (tensors.count(fmt::format("visual.transformer.resblocks.{}.ln_1.weight", n))) ++n;
  return n;
}

bool is_hf_clip_config(const nlohmann::json& cfg) {
  if (!cfg.is_object()) return false;
  const auto type = cfg.value("model_type", std::string());
  return type == "clip" || type == "clip_vision_model" || type == "clip_text_model";
}

const nlohmann::json* config_section(const std::optional<nlohmann::json>& cfg, std::string_view section) {
  if (!cfg || !cfg->is_object()) return nullptr;
  if (auto it = cfg->find(std::string(section)); it != cfg->end() && it->is_object()) return &*it;
  return &*cfg;  // CLIPVisionModel / CLIPTextModel configs keep the fields at the top level
}

}  // namespace

std::string_view family_name(Family family) {
  switch (family) {
    case Family::ImageBind: return "imagebind";
    case Family::OpenAiClip: return "openai";
    case Family::OpenClip: return "openclip";
    case Family::HfClip: return "hf";
  }
  return "?";
}

Family parse_family(std::string_view name) {
  const std::string n = lower(std::string(name));
  if (n == "imagebind") return Family::ImageBind;
  if (n == "openai" || n == "openai-clip" || n == "clip") return Family::OpenAiClip;
  if (n == "openclip" || n == "open_clip" || n == "open-clip") return Family::OpenClip;
  if (n == "hf" || n == "hf-clip" || n == "huggingface") return Family::HfClip;
  throw InputError(fmt::format("unknown model family '{}' (expected imagebind, openai, openclip or hf)", name));
}

std::optional<Family> try_detect_family(const io::TensorMap& tensors,
                                        const std::optional<nlohmann::json>& hf_config,
                                        const DetectHints& hints) {
  if (hints.override_family) return hints.override_family;
  if ((hf_config && is_hf_clip_config(*hf_config)) || has_prefix(tensors, "vision_model.") ||
      has_prefix(tensors, "text_model.")) {
    return Family::HfClip;
  }
  if (has_prefix(tensors, "modality_preprocessors.") || has_prefix(tensors, "modality_trunks.")) {
    return Family::ImageBind;
  }
  const bool openai_names = tensors.count("visual.conv1.weight") || tensors.count("token_embedding.weight") ||
                            has_prefix(tensors, "visual.transformer.resblocks.");
  if (!openai_names) return std::nullopt;
  if (hints.format == io::Format::TorchScript || tensors.count("input_resolution")) return Family::OpenAiClip;
  const std::string file = lower(hints.path.filename().string());
  if (file.find("open_clip") != std::string::npos || file.find("openclip") != std::string::npos ||
      file.find("laion") != std::string::npos) {
    return Family::OpenClip;
  }
  if (auto it = tensors.find("visual.class_embedding"); it != tensors.end() && it->second.numel() == 1280 &&
                                                         count_openai_vision_blocks(tensors) == 32) {
    return Family::OpenClip;  // ViT-H-14: only released by OpenCLIP
  }
  return Family::OpenAiClip;
}

Family detect_family(const io::TensorMap& tensors, const std::optional<nlohmann::json>& hf_config,
                     const DetectHints& hints) {
  if (auto f = try_detect_family(tensors, hf_config, hints)) return *f;
  throw InputError(fmt::format(
      "{}: not a CLIP-family checkpoint (no 'modality_trunks.*' (ImageBind), 'visual.*' (OpenAI/OpenCLIP) "
      "or 'vision_model.*' (Hugging Face) keys among {} tensors)",
      hints.path.empty() ? std::string("checkpoint") : hints.path.string(), tensors.size()));
}

Family detect_family(const io::Checkpoint& ckpt, std::optional<Family> override_family) {
  return detect_family(ckpt.tensors, ckpt.hf_config,
                       DetectHints{.override_family = override_family, .format = ckpt.format, .path = ckpt.path});
}

nn::Activation family_activation(Family family, const std::optional<nlohmann::json>& hf_config,
                                 std::string_view section) {
  switch (family) {
    case Family::ImageBind:
    case Family::OpenClip: return nn::Activation::Gelu;
    case Family::OpenAiClip: return nn::Activation::QuickGelu;
    case Family::HfClip: {
      const auto* cfg = config_section(hf_config, section);
      const std::string act = cfg ? cfg->value("hidden_act", std::string("quick_gelu")) : "quick_gelu";
      if (act == "quick_gelu") return nn::Activation::QuickGelu;
      if (act == "gelu") return nn::Activation::Gelu;
      throw InputError(fmt::format("config.json: {}.hidden_act '{}' is not supported (quick_gelu or gelu)",
                                   section, act));
    }
  }
  return nn::Activation::Gelu;
}

double family_eps(Family family, const std::optional<nlohmann::json>& hf_config, std::string_view section) {
  switch (family) {
    case Family::ImageBind: return 1e-6;
    case Family::OpenAiClip:
    case Family::OpenClip: return 1e-5;
    case Family::HfClip: {
      const auto* cfg = config_section(hf_config, section);
      return cfg ? cfg->value("layer_norm_eps", 1e-5) : 1e-5;
    }
  }
  return 1e-5;
}

}  // namespace iadgpt::vision
