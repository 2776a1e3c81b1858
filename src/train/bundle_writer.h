// The end of a run: the trained parts written as a model bundle (model/bundle.h) in cfg.out —
// decoder, TGE and MMF as safetensors, the LLM's LoRA as a PEFT directory (or the full weights),
// and iadgpt.json with the settings inference must use to read the heads as training did.
//
// Internal to the train module.
#pragma once
#include <cstdint>
#include <vector>

#include "train/config.h"
#include "train/trainable.h"

namespace iadgpt::train {

void write_trained_bundle(const TrainConfig& cfg, Trainable& trained, const std::vector<int64_t>& taps);

}  // namespace iadgpt::train
