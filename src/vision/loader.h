// Loading a vision tower from any CLIP-family checkpoint: detect the family, infer the
// hyper-parameters from tensor shapes (and config.json where shapes cannot tell, e.g. heads),
// then fill VitWeights through the family's key-map table, checking every shape first.
//
//   auto model = iadgpt::vision::load_vision("imagebind_huge.pth", {.dtype = torch::kBFloat16});  // lazy
//   auto ckpt = iadgpt::io::load_checkpoint("imagebind_huge.pth");   // or from a loaded checkpoint
//   auto model2 = iadgpt::vision::load_vision(ckpt, {.dtype = torch::kBFloat16});
//
// Keys of other modalities (text, audio, depth, thermal, imu) and `log_logit_scale`,
// `logit_scale`, `position_ids` are not read. Errors are InputError naming file and key.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <set>
#include <string>

#include "io/checkpoint.h"
#include "nn/quant.h"
#include "vision/family.h"
#include "vision/vit.h"

namespace iadgpt::vision {

struct VisionOptions {
  std::optional<Family> family;          // override detection (--family)
  std::optional<nlohmann::json> config;  // --config: HF config.json, ImageBind config.json, or {"heads": n, "family": "..."}
  torch::Dtype dtype = torch::kFloat32;  // fp32 or bf16 weights
  // Weight-only int8 for the blocks' matrices (none or q8; README "int8 tower"): quantized as they
  // are loaded, from `dtype`; the rest of the tower stays in `dtype`. CPU only. A checkpoint stored
  // quantized (stored_vision_quant) is read as stored, whatever this asks.
  nn::QuantFormat quant = nn::QuantFormat::None;
};

struct VisionModel {
  VitConfig config;
  VitWeights weights;
  nn::QuantFormat quant = nn::QuantFormat::None;  // the blocks' matrices: as stored, or as VisionOptions::quant
};

// Hyper-parameters from shapes and config; InputError when the checkpoint does not fit the family.
// Works on a headers-only checkpoint (io::LoadOptions::headers_only): only shapes are read.
VitConfig infer_vit_config(const io::Checkpoint& ckpt, const VisionOptions& options = {});
VisionModel load_vision(const io::Checkpoint& ckpt, const VisionOptions& options = {});

// A vision tower stored quantized (`iadgpt convert --keys vision --quant q8`): the blocks' four
// matrices (attention in/out, MLP fc1/fc2) are each `<key>.q` (int8) and `<key>.scale` (fp16),
// nn/quant.h's layout, under the checkpoint's own key names, and the safetensors metadata
// `vision_quant` names the format. Everything else is as in the source checkpoint.
inline constexpr const char* kStoredVisionQuantKey = "vision_quant";
// The format a checkpoint's tower is stored in: none without the metadata; q4 or an unknown name
// → InputError naming the file.
nn::QuantFormat stored_vision_quant(const io::Checkpoint& ckpt);
// Rewrites the blocks' matrices of `ckpt` (a tower of config `c`, in checkpoint key names) as
// stored quants of `format`, each from the tensor as held (its dtype), which is dropped at once;
// sets the metadata. None, or a checkpoint already stored quantized: nothing. Errors name the key.
void quantize_vision_tensors(io::Checkpoint& ckpt, const VitConfig& c, nn::QuantFormat format);

// The checkpoint keys the vision tower reads, for the config inferred from `headers`, and among
// them those read in fp32 whatever the dtype (ImageBind's stem: its two frames are summed in
// fp32, so that a bf16 model rounds once) and those read as stored (the quants and scales of a
// tower stored quantized).
struct VisionKeys {
  VitConfig config;
  std::set<std::string> keys;
  std::set<std::string> fp32_keys;
  std::set<std::string> stored_keys;
};
VisionKeys vision_keys(const io::Checkpoint& headers, const VisionOptions& options = {});

// The vision tower's tensors of a file under their checkpoint names, read one at a time and
// converted to options.dtype as each is read (a .pth of all modalities is never held in fp32),
// except fp32_keys, kept in fp32, and stored_keys, kept as stored; plus the family hint
// `input_resolution` when present (so a file written from them is detected as the same family).
// With options.quant, the blocks' matrices are then quantized (quantize_vision_tensors), one at a
// time. `config` (optional) receives the tower's config. What `iadgpt convert --keys vision` writes.
io::Checkpoint read_vision_tensors(const std::filesystem::path& path, const VisionOptions& options = {},
                                   VitConfig* config = nullptr);

// load_vision from a file through read_vision_tensors. Same result as
// load_vision(io::load_checkpoint(path), options), without reading the other modalities.
VisionModel load_vision(const std::filesystem::path& path, const VisionOptions& options = {});

// Reads a --config JSON file; InputError naming the file when it cannot be read or parsed.
nlohmann::json read_config_file(const std::filesystem::path& path);

}  // namespace iadgpt::vision
