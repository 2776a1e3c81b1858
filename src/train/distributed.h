// Data-parallel training across processes (METHOD §3.3, issue 6): PyTorch's c10d with a Gloo
// process group (training on the CPU) or an NCCL one (training on CUDA, issue 16), rendezvousing
// through a TCPStore that rank 0 hosts. The same flags either way.
//
//   train::Distributed dist({.world_size = 2, .rank = r, .master = "127.0.0.1:29500", .device = d});
//   dist.all_reduce_sum(flat_gradients);   // in place; a no-op for world size 1
//
// Every rank runs the same code on its own shard of each global batch; gradients are summed
// (the per-example loss weights already divide by the global batch, so the sum is the mean
// over the global batch), and only rank 0 writes checkpoints, logs and the bundle.
#pragma once
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace iadgpt::train {

struct DistributedOptions {
  int64_t world_size = 1;
  int64_t rank = 0;
  std::string master;  // HOST:PORT of rank 0's TCPStore; unused for world size 1
  std::chrono::seconds timeout{120};
  // The training device: CPU → Gloo, CUDA → NCCL (each rank its own GPU, e.g. --device cuda:R).
  torch::Device device{torch::kCPU};
};

// "gloo" or "nccl": the backend a run on `device` uses; InputError when this build has none for it
// (CUDA without NCCL in the libtorch found: the run can still use one GPU, world size 1).
std::string backend_for(const torch::Device& device);

// "HOST:PORT" -> (host, port); InputError naming `what` otherwise.
std::pair<std::string, uint16_t> parse_master(const std::string& master, const std::string& what = "--master");

class Distributed {
 public:
  explicit Distributed(const DistributedOptions& options = {});
  ~Distributed();
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  int64_t world_size() const { return world_size_; }
  int64_t rank() const { return rank_; }
  bool is_main() const { return rank_ == 0; }

  void all_reduce_sum(torch::Tensor& tensor);  // fp32 contiguous, on the training device, in place
  void barrier();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t world_size_ = 1, rank_ = 0;
  torch::Device device_{torch::kCPU};
};

}  // namespace iadgpt::train
