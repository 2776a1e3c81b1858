// The trainer's example pool (METHOD §3.1): every example's frozen inputs — taps, e, soft mask,
// few-shot map, answer tokens — computed once, since the encoder and the text side never train.
//
//   auto frozen = train::load_frozen(cfg);                  // the vision checkpoint, read once
//   auto pools = train::build_pools(cfg, frozen, tok, max_positions);
//   pools.train.size();  pools.eval;  pools.val;            // training, held-out pairs, validation parts
//
// Internal to the train module (trainer.cpp, step.cpp, evaluation.cpp) and its tests.
#pragma once
#include <torch/torch.h>

#include <opencv2/core.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "anomaly/detector.h"
#include "anomaly/prompts.h"
#include "llm/tokenizer.h"
#include "train/config.h"
#include "train/decoder_training.h"

namespace iadgpt::train {

struct Category {
  std::string name;
  anomaly::TextFeatures text;
  std::string question;  // class description + question (METHOD §1.9)
};

// Frozen inputs of every example, stacked: index i is one (image, answer, mask).
struct Pool {
  std::vector<torch::Tensor> taps;  // per layer [P, 1+N, D_v]
  torch::Tensor embedding;          // [P, D]
  torch::Tensor masks;              // [P, S, S] soft label in [0, 1]
  torch::Tensor few_shot;           // [P, S, S] M_fs from augmented normal references
  std::vector<int64_t> category;
  std::vector<int> label;           // 1 anomalous, 0 normal, -1 instruction example (no Yes/No)
  std::vector<std::string> question;  // instruction examples: their own question (else empty: the category's)
  std::vector<int64_t> original;    // pool index of the example's original (an original: itself)
  std::vector<std::vector<int64_t>> answer_ids;  // tok(answer + "\n###")
  int64_t size() const { return static_cast<int64_t>(label.size()); }
};

// The question of pool example i: an instruction example's own, else its category's.
const std::string& question_of(const Pool& pool, const std::vector<Category>& cats, int64_t i);

// The frozen towers: the image encoder with its taps, and a detector for the text side (sharing
// the encoder's tensors: the vision checkpoint is read once).
struct Frozen {
  FrozenEncoder encoder;
  std::optional<anomaly::Detector> detector;  // text features only
  int64_t size = 224;
};
Frozen load_frozen(const TrainConfig& cfg);

struct Encoded {
  std::vector<torch::Tensor> taps;  // per layer [n, 1+N, D_v]
  torch::Tensor embedding;          // [n, D]
};
// Taps of the map view and e (encoder view) of each image, fp32, as inference computes them
// (anomaly::Detector::encode_images).
Encoded encode(Frozen& frozen, const std::vector<cv::Mat>& images);

struct Pools {
  std::vector<Category> cats;                      // dataset categories, then "object" for instructions
  std::vector<std::vector<cv::Mat>> train_images;  // per dataset category (the map warm-up's)
  std::vector<cv::Mat> textures;                   // `synthesis` perlin's
  Pool train, eval, val;                           // training examples, held-out pairs, validation parts
  std::vector<int64_t> instruction_items;          // pool indices (in `train`) of the instruction examples
};
// Every rank builds the same pools (deterministic, and tiny next to training). InputError when an
// example's prompt + answer would not fit `max_positions`.
Pools build_pools(const TrainConfig& cfg, Frozen& frozen, const llm::Tokenizer& tok, int64_t max_positions);

// The map warm-up (config `map_warmup`): one decoder for every category, each view against its
// own category's F_text, trained from the training images only (never the held-out ones).
DecoderTrainingResult warm_up_decoder(const TrainConfig& cfg, const Frozen& frozen, const Pools& pools, uint64_t seed);

// Pool indices of one epoch: every synthetic example once, every original once per synthetic
// example made from it (pool order; per_image 1 gives the pool itself).
std::vector<int64_t> balanced_items(const Pool& pool);

}  // namespace iadgpt::train
