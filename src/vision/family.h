// Which CLIP-family checkpoint is this? One answer for the whole checkpoint, shared by the vision
// and text towers (they come from the same file and must agree on activation and eps).
//
//   auto ckpt = iadgpt::io::load_checkpoint(path);
//   auto fam = iadgpt::vision::detect_family(ckpt);                 // or detect_family(ckpt, Family::OpenClip)
//   auto act = iadgpt::vision::family_activation(fam, ckpt.hf_config, "vision_config");
//
// Detection rule (first match wins):
//   1. an explicit override (`--family`, or `"family"` in a --config file) is taken as is;
//   2. a Hugging Face config (`model_type` clip / clip_vision_model / clip_text_model) or keys under
//      `vision_model.` / `text_model.` → HfClip;
//   3. keys under `modality_preprocessors.` / `modality_trunks.` → ImageBind;
//   4. OpenAI/OpenCLIP key names (`visual.conv1.weight`, `visual.transformer.resblocks.*`,
//      `token_embedding.weight`, ...) are identical, so:
//        - a TorchScript archive, or the `input_resolution` buffer OpenAI's archives carry → OpenAiClip;
//        - a file name containing `open_clip` / `openclip` / `laion` → OpenClip;
//        - a 1280-wide, 32-block vision tower (ViT-H-14 exists only in OpenCLIP) → OpenClip;
//        - otherwise OpenAiClip (QuickGELU, OpenAI's released ViT-B/L models).
// OpenClip differs from OpenAiClip only in the activation (erf GELU instead of QuickGELU).
// Thread-safety: pure functions.
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "io/checkpoint.h"
#include "nn/transformer.h"

namespace iadgpt::vision {

enum class Family {
  ImageBind,   // facebookresearch/ImageBind `imagebind_huge.pth` (modality_* keys)
  OpenAiClip,  // openai/CLIP TorchScript archive or state dict (visual.*, QuickGELU)
  OpenClip,    // mlfoundations/open_clip state dict (OpenAI key names, erf GELU)
  HfClip,      // transformers CLIPModel / CLIPVisionModel / CLIPTextModel directory
};

// "imagebind", "openai", "openclip", "hf".
std::string_view family_name(Family family);
// Accepts the names above (and "openai-clip", "open_clip", "hf-clip", "huggingface"); InputError otherwise.
Family parse_family(std::string_view name);

struct DetectHints {
  std::optional<Family> override_family;  // explicit choice: wins over everything
  std::optional<io::Format> format;       // TorchScript → OpenAI
  std::filesystem::path path;             // file name hints OpenCLIP
};

// nullopt when the tensors are not a CLIP-family model (e.g. a LLaMA checkpoint).
std::optional<Family> try_detect_family(const io::TensorMap& tensors,
                                        const std::optional<nlohmann::json>& hf_config,
                                        const DetectHints& hints = {});
// As above; InputError naming what was looked for when nothing matches.
Family detect_family(const io::TensorMap& tensors, const std::optional<nlohmann::json>& hf_config,
                     const DetectHints& hints = {});
Family detect_family(const io::Checkpoint& ckpt, std::optional<Family> override_family = {});

// The MLP activation and LayerNorm eps of a family's towers. For HfClip they are read from
// `hf_config[config_section]` (`hidden_act`, `layer_norm_eps`; section "vision_config" or
// "text_config", or the top level for CLIPVisionModel/CLIPTextModel configs).
nn::Activation family_activation(Family family, const std::optional<nlohmann::json>& hf_config = {},
                                 std::string_view config_section = "vision_config");
double family_eps(Family family, const std::optional<nlohmann::json>& hf_config = {},
                  std::string_view config_section = "vision_config");

}  // namespace iadgpt::vision
