// The optimiser of a stage (METHOD §3.3): libtorch's AdamW (PyTorch's decoupled weight decay) over
// the tensors the stage trains, one learning rate for the adapters and one for the LLM, and its
// moments as named tensors for checkpoints ("adam.m.<name>", "adam.v.<name>").
//
//   Optimiser opt(trained, cfg);              // (name, tensor, is_llm) of each trained tensor
//   ... gradients in p.grad() ...
//   const double norm = opt.clip(cfg.clip);   // torch::nn::utils::clip_grad_norm_
//   opt.step(lr_adapters, lr_llm);
//
// Internal to the train module.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "train/config.h"

namespace iadgpt::train {

struct TrainedTensor {
  std::string name;
  torch::Tensor tensor;
  bool is_llm = false;
};

class Optimiser {
 public:
  Optimiser(std::vector<TrainedTensor> trained, const TrainConfig& cfg);

  const std::vector<torch::Tensor>& params() const { return params_; }
  // Scales every gradient so their global L2 norm is at most `max_norm` (0: no clipping);
  // returns the norm before clipping.
  double clip(double max_norm);
  // One AdamW update with these learning rates (the schedule is the caller's).
  void step(double lr_adapters, double lr_llm);

  int64_t steps() const { return steps_; }
  // The moments under "adam.m.<name>" / "adam.v.<name>" (zeros before the first step).
  void save(io::TensorMap& out) const;
  // Restores moments and step count; InputError naming a missing or misshapen key of `source`.
  void load(const io::TensorMap& in, int64_t steps, const std::string& source);

 private:
  std::vector<std::string> names_;
  std::vector<torch::Tensor> params_;
  std::vector<bool> is_llm_;
  std::unique_ptr<torch::optim::AdamW> adamw_;  // null when the stage trains nothing
  int64_t llm_group_ = -1;                      // index of the LLM's parameter group (-1: none)
  int64_t steps_ = 0;
};

}  // namespace iadgpt::train
