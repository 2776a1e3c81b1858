// Loading a vision tower from any CLIP-family checkpoint: detect the family, infer the
// hyper-parameters from tensor shapes (and config.json where shapes cannot tell, e.g. heads),
// then fill VitWeights through the family's key-map table, checking every shape first.
//
//   auto ckpt = iadgpt::io::load_checkpoint("imagebind_huge.pth");
//   auto model = iadgpt::vision::load_vision(ckpt, {.dtype = torch::kBFloat16});
//
// Keys of other modalities (text, audio, depth, thermal, imu) and `log_logit_scale`,
// `logit_scale`, `position_ids` are not read. Errors are InputError naming file and key.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>

#include "io/checkpoint.h"
#include "vision/family.h"
#include "vision/vit.h"

namespace iadgpt::vision {

struct VisionOptions {
  std::optional<Family> family;          // override detection (--family)
  std::optional<nlohmann::json> config;  // --config: HF config.json, ImageBind config.json, or {"heads": n, "family": "..."}
  torch::Dtype dtype = torch::kFloat32;  // fp32 or bf16 weights
};

struct VisionModel {
  VitConfig config;
  VitWeights weights;
};

// Hyper-parameters from shapes and config; InputError when the checkpoint does not fit the family.
VitConfig infer_vit_config(const io::Checkpoint& ckpt, const VisionOptions& options = {});
VisionModel load_vision(const io::Checkpoint& ckpt, const VisionOptions& options = {});

// Reads a --config JSON file; InputError naming the file when it cannot be read or parsed.
nlohmann::json read_config_file(const std::filesystem::path& path);

}  // namespace iadgpt::vision
