// `iadgpt train --config train.json`: the whole run described by one JSON file (schema in
// src/train/README.md). Every field is validated by `parse_train_config` before any work starts;
// the error names the key, what was expected and what was found. Paths are relative to the
// config file's directory.
//
//   auto cfg = train::read_train_config("train.json");   // InputError on any bad field or path
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "llm/train_forward.h"

namespace iadgpt::train {

struct StageConfig {
  int64_t stage = 1;  // 1: TGE (+ llama_proj), CE; 2: decoder + MMF, CE + focal + dice; 3: TGE + MMF, CE
  int64_t steps = 100;
  double lr = 1e-3;   // adapters (METHOD §3.3)
  bool llm = true;    // the LLM's LoRA / weights train in this stage too (llm_tuning ≠ frozen)
};

// Ours, before the stages on a fresh start: the decoder alone learns the maps (focal + dice on
// loss_size² maps, train::train_decoder) from `per_image` synthetic anomalies of each training
// image, so that stage 2's expert tokens read useful maps from its first step. steps 0: off.
struct MapWarmupConfig {
  int64_t steps = 0;
  int64_t per_image = 20;
  int64_t batch_size = 8;
  double lr = 1e-3;
  int64_t loss_size = 56;
};

// Instruction data mixed into training (PandaGPT/LLaVA JSON: a list of {"image" | "image_name",
// "conversations" | "conversation": [{"from": "human", "value"}, {"from": "gpt", "value"}, …]});
// the first human/gpt exchange of each entry is used. With probability `share` an example of a
// step is an instruction example (its answer is the only CE target; no map loss, no Yes/No).
struct InstructionConfig {
  std::filesystem::path file, images;
  double share = 0.1;
  struct Entry {
    std::filesystem::path image;  // under `images`, checked to exist
    std::string question;         // the human turn, "<image>" and surrounding blank lines removed
    std::string answer;           // the gpt turn
  };
  std::vector<Entry> entries;     // read and checked by parse_train_config
};

struct DatasetConfig {
  std::string kind = "mvtec";          // data::parse_kind
  std::filesystem::path root;
  std::vector<std::string> categories;  // empty: every category of the dataset
};

struct TrainConfig {
  std::filesystem::path source;  // the config file (for messages)
  std::filesystem::path out;     // bundle directory; checkpoints under out/checkpoints
  // Frozen encoder and text side (as the bundle names them).
  std::filesystem::path vision;
  std::optional<nlohmann::json> vision_config;
  std::optional<std::filesystem::path> text, vocab;
  std::vector<int64_t> taps;  // empty: the family default (four blocks)
  int64_t image_size = 224;
  // LLM.
  std::filesystem::path llm;
  std::optional<std::filesystem::path> tokenizer;
  // Released weights to start from (METHOD §1.7; loaded as `bundle create` loads them): PandaGPT's
  // delta (llama_proj, the LLM's LoRA, merged into the LLM before any trainable LoRA) and
  // AnomalyGPT's (image_decoder: the decoder; its keys win over PandaGPT's). `lora_alpha`: the
  // delta LoRA's alpha (not in the file; PandaGPT/AnomalyGPT use 32).
  std::optional<std::filesystem::path> delta, anomalygpt;
  double delta_lora_alpha = 32;
  std::string llm_tuning = "lora";  // "frozen" | "lora" | "full"
  // The LLM's frozen weights: "f32" or "bf16" (half the memory: the 7B recipe on a 24 GB card,
  // docs/GPU_MEMORY.md); trainable LoRA pairs stay fp32. "full" needs f32.
  std::string llm_dtype = "f32";
  llm::LoraSpec lora;
  double llm_lr = 1e-4;             // LoRA / full fine-tune learning rate
  // Data.
  std::vector<DatasetConfig> datasets;
  std::string synthesis = "nsa";    // data::parse_synthesis_method
  std::optional<std::filesystem::path> textures;  // Perlin
  std::optional<InstructionConfig> instructions;
  // Labelled parts never trained on: the test split (normal parts and real defects with masks) of
  // these categories, each one a training category. Evaluated beside the synthetic held-out pairs
  // with the same decision (first answer token), so a run shows how it does on real defects.
  std::optional<DatasetConfig> validation;
  int64_t per_image = 1;            // synthetic variants per normal image (each with the original: a pair)
  int64_t holdout = 2;              // normal images per category kept out of training (evaluation)
  int64_t eval_per_image = 1;       // synthetic variants per held-out image (each with the original: a pair)
  int64_t references = 2;           // k normal references for the few-shot map
  double few_shot_probability = 0.5;
  // "few-shot": with references the MMF reads M_fs alone (model::mask_stack), and the bundle's `map`
  // is "few-shot" (drawn and read alike); needs few_shot_probability 1. "auto": every map.
  std::string map = "auto";
  // Ours: the Yes/No token's CE added once more with this weight (0: plain answer CE, METHOD §3.2).
  double decision_weight = 0;
  // Initialisation of a fresh run's MMF: "kaiming" (He convolutions, scale-preserving) or "torch"
  // (torch.nn's defaults, which shrink the maps' contrast ~200-fold by the expert tokens).
  std::string mmf_init = "kaiming";
  // Optimisation.
  MapWarmupConfig map_warmup;
  std::vector<StageConfig> stages;
  int64_t batch_size = 16;          // global batch (all ranks, all accumulation steps)
  int64_t grad_accum = 1;           // must divide the per-rank batch; "batched": micro-batches per rank
  // "per_example": one forward + backward per example, summed as a balanced tree (bitwise equal
  // across rank counts; the CPU default). "batched": one forward + backward per micro-batch of
  // the rank's share (per-rank batch / grad_accum examples; the default on other devices).
  // Empty: the device decides (`uses_batched_gradients`).
  std::string gradients;
  // Gradient checkpointing of the LLM's decoder layers (llm::TrainForwardOptions): activations of
  // one layer at a time for one more decoder forward per step. The same gradients (tested), so
  // not part of the trajectory in to_json.
  bool gradient_checkpointing = false;
  double warmup = 0.1, weight_decay = 1e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, clip = 1.0;
  bool bf16_autocast = false;       // forward + backward under CPU autocast (bf16 matmuls/convs); weights stay fp32
  // Where the run trains: "cpu", "cuda" or "cuda:N" (`train --device` overrides it). Not part of
  // the trajectory in to_json: a run may resume on another device.
  std::string device = "cpu";
  uint64_t seed = 0;
  // Bookkeeping.
  int64_t checkpoint_every = 50;    // steps; 0 = only at the end of each stage and on a signal
  int64_t keep = 3;                 // checkpoints kept
  int64_t eval_every = 0;           // steps; 0 = only at the end
  int64_t log_every = 1;            // progress line every N steps (the JSONL log has every step)
  bool resume = true;               // continue from the newest checkpoint in out/checkpoints
  // Test hook: stop (as if interrupted) after this many steps in total; 0 = off.
  int64_t stop_after = 0;

  nlohmann::json to_json() const;   // normalised, for the checkpoint's consistency check
};

TrainConfig parse_train_config(const nlohmann::json& j, const std::filesystem::path& source);
TrainConfig read_train_config(const std::filesystem::path& file);

// Whether a run computes its gradients batched: the config's `gradients`, else batched on any
// device but the CPU.
bool uses_batched_gradients(const TrainConfig& config, const torch::Device& device);

// The training device named `name` (TrainConfig::device, `--device`), checked by nn::parse_device
// ("training device cuda: CUDA is not available in this build" on a CPU-only build).
torch::Device training_device(std::string_view name);

}  // namespace iadgpt::train
