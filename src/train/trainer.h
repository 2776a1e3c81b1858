// The IAD-GPT trainer (METHOD §3): self-supervised multi-stage training from normal images only.
//
//   auto cfg = train::read_train_config("train.json");
//   train::Distributed dist;                                   // or {.world_size = 2, .rank = r, ...}
//   auto result = train::train(cfg, dist, {.on_step = print});  // writes cfg.out/iadgpt.json (a bundle)
//
// Data: every normal training image of each category yields the pair (original, "No, …", empty
// mask) and `per_image` synthetic anomalies (NSA / CutPaste / Perlin, data/synthesis.h) with
// "Yes, … {positions}" answers (data::answer_for_mask). The encoder and the text side are frozen,
// so the pool of examples is built and encoded once (taps, e, few-shot map from `references`
// augmented normal references) and steps index into it.
// Stages (METHOD §3.3): 1 = TGE (llama_proj included), CE; 2 = decoder + MMF, CE + focal + dice;
// 3 = TGE + MMF, CE. Optional LoRA (or full fine-tune) of the LLM in every stage. Parts outside
// the stage have requires_grad off, so autograd allocates nothing for them.
// Determinism: no global RNG. The data order of a stage is a permutation per epoch drawn from
// (seed, stage, epoch); each example of a step draws its few-shot substitution and LoRA-dropout
// masks from (seed, stage, step, index in the global batch). Nothing random is carried between
// steps, so a checkpoint needs only weights, AdamW moments and the step counters for a resumed
// run to be bitwise identical to an uninterrupted one, and W ranks with batch b compute what one
// process with batch W·b computes.
#pragma once
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>

#include "train/config.h"
#include "train/distributed.h"

namespace iadgpt::train {

struct StepLog {
  int64_t step = 0;        // global, 1-based, after the update
  int64_t total_steps = 0;
  int64_t stage = 0;       // 1, 2 or 3
  int64_t stage_step = 0;  // 1-based within the stage
  double loss = 0, ce = 0, focal = 0, dice = 0, lr = 0, grad_norm = 0, seconds = 0;
  double accuracy = 0;     // Yes/No accuracy of the first answer token on this step's Yes/No examples
  int64_t instructions = 0;  // instruction examples in this step's global batch
};

struct EvalResult {
  int64_t step = 0;
  int64_t examples = 0;         // held-out originals + synthetic anomalies
  int64_t pairs = 0;            // (original, synthetic) pairs: eval_per_image per held-out image
  // First answer token, restricted to "Yes"/"No", against the label; each pair scores the mean of
  // its two answers (so originals and anomalies weigh the same).
  double yes_no_accuracy = 0;
  double yes_no_accuracy_few_shot = 0;  // the same with the references' few-shot map in the MMF input
  double yes_on_normal = 0, yes_on_anomalous = 0;  // share answered "Yes" (self-supervised)
  double ce = 0;               // mean answer cross-entropy
  double pixel_auroc = 0;      // M_text vs the synthetic masks (binarised at 0.3)
  double image_auroc = 0;      // max M_text vs original/synthetic: what the map alone separates
  // Config `validation`: real labelled parts (normal parts and real defects), plain accuracy of the
  // first answer token, without and with the references' few-shot map (0 parts: not configured).
  int64_t validation_parts = 0;
  double validation_accuracy = 0, validation_accuracy_few_shot = 0;
  nlohmann::json to_json() const;
};

struct TrainHooks {
  std::function<void(const StepLog&)> on_step;
  std::function<void(const EvalResult&)> on_eval;
  std::function<void(const std::string&)> on_message;   // "resumed from …", pool sizes
  const std::atomic<bool>* stop = nullptr;             // set by SIGINT/SIGTERM: save and return
  std::function<void(size_t)> checkpoint_write_hook;   // tests: called while a checkpoint is written
  // Tests: each step's gradients summed over the global batch (flattened in the optimiser's order)
  // with the global step they are for, before clipping.
  std::function<void(int64_t, const torch::Tensor&)> on_gradients;
};

struct TrainResult {
  int64_t steps_done = 0;   // global steps completed (including those before a resume)
  int64_t resumed_from = 0; // global step of the checkpoint resumed from (0: fresh start)
  bool interrupted = false; // stopped by the stop flag (a checkpoint was saved)
  double seconds = 0;
  EvalResult final_eval;    // on the held-out pairs (rank 0; empty when interrupted)
};

TrainResult train(const TrainConfig& config, Distributed& dist, const TrainHooks& hooks = {});

}  // namespace iadgpt::train
