// One training or evaluation forward (METHOD §3.2–§3.3): pool examples through the heads
// (model/heads.h) and the LLM, with the answer CE, the decision CE and the map loss.
//
//   Runner runner{cfg, pools.train, pools.cats, tok, trainable, cfg.image_size, decision};
//   runner.cache_frozen(stage);                          // what the stage keeps frozen, computed once
//   auto out = runner.run({i}, {with_references}, {dropout_seed}, /*map_rows=*/{stage == 2}, false);
//   out.ce.sum().backward();
//
// Internal to the train module.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <vector>

#include "llm/tokenizer.h"
#include "model/pipeline.h"
#include "train/config.h"
#include "train/pool.h"
#include "train/trainable.h"

namespace iadgpt::train {

struct BatchOut {
  torch::Tensor ce;          // [n] per-example answer CE
  torch::Tensor decision_ce; // [n] CE of the Yes/No token alone (decision_weight > 0), else undefined
  torch::Tensor map_total;   // scalar, mean over the map rows (stage 2), else undefined
  int64_t map_rows = 0;      // rows in map_total (focal and dice are means over them too)
  double focal = 0, dice = 0;
  std::vector<int> predicted;  // 1 = "Yes" won over "No" at the first answer position
  torch::Tensor text_map;    // [n, S, S] (eval)
};

struct Runner {
  const TrainConfig& cfg;
  const Pool& pool;
  const std::vector<Category>& cats;
  const llm::Tokenizer& tok;
  Trainable& model;
  int64_t size;
  model::DecisionTokens decision;  // the answer's forced prefix, then the token that says Yes or No
  torch::Device device{torch::kCPU};  // where `model` is; the pools stay in host memory
  // Caches of frozen parts (the encoder side never changes; the decoder is frozen in stages 1
  // and 3, the MMF in stage 1): the step then runs only what trains.
  torch::Tensor cached_layer_maps;  // [P, 4, S, S] abnormal channels
  torch::Tensor cached_expert;      // [P, 2, 18, H]: without / with the few-shot map
  std::map<int64_t, anomaly::TextFeatures> device_text;  // the categories' text features on `device`

  void cache_frozen(int64_t stage);
  // `idx` pool indices; `substitute[j]`: use the few-shot map; dropout seeds per row (empty: no
  // dropout); `map_rows[j]`: row j takes the map loss (empty: no row does).
  BatchOut run(const std::vector<int64_t>& idx, const std::vector<bool>& substitute, const std::vector<uint64_t>& seeds,
               const std::vector<bool>& map_rows, bool keep_maps);

 private:
  // E_img, E_expert and (stage 2) the layer probabilities of the examples `rows` of one category.
  model::HeadOutputs heads_of(int64_t category, const std::vector<int64_t>& pidx, const std::vector<bool>& substitute);
  // A category's text features on `device` (moved once).
  const anomaly::TextFeatures& text_of(int64_t category);
};

// Autocast for one step's forward and backward (config `bf16_autocast`) on the training device:
// matmuls and convs in bf16 (oneDNN on the CPU, cuBLAS/cuDNN on CUDA), reductions and the
// optimiser in fp32 on fp32 weights. Off: nothing changes.
class Autocast {
 public:
  Autocast(bool on, const torch::Device& device);
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  bool on_;
  bool cuda_;
};

}  // namespace iadgpt::train
