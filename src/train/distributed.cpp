#include "train/distributed.h"

#include <fmt/format.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if defined(IADGPT_WITH_CUDA) && defined(USE_C10D_NCCL)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "io/error.h"
#include "nn/device.h"

namespace iadgpt::train {

std::pair<std::string, uint16_t> parse_master(const std::string& master, const std::string& what) {
  const auto colon = master.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == master.size())
    throw InputError(fmt::format("{}: expected HOST:PORT, found '{}'", what, master));
  int port = 0;
  try {
    size_t used = 0;
    port = std::stoi(master.substr(colon + 1), &used);
    if (used != master.size() - colon - 1) port = -1;
  } catch (const std::exception&) {
    port = -1;
  }
  if (port <= 0 || port > 65535) throw InputError(fmt::format("{}: port must be 1..65535, found '{}'", what, master));
  return {master.substr(0, colon), static_cast<uint16_t>(port)};
}

std::string backend_for(const torch::Device& device) {
  if (device.is_cpu()) return "gloo";
#if defined(IADGPT_WITH_CUDA) && defined(USE_C10D_NCCL)
  if (device.is_cuda()) return "nccl";
#endif
  throw InputError(fmt::format("--world-size > 1 on {}: this build has no NCCL (CMake found no nccl.h or c10d NCCL "
                               "header beside the CUDA libtorch); train on one GPU (--world-size 1) or on the CPU",
                               c10::DeviceTypeName(device.type(), true)));
}

// One of the two process groups. libtorch 1.13 derives both from c10d::ProcessGroup, 2.x from
// c10d::Backend; their allreduce(tensors, options) is the same call, so each is kept as its own type.
struct Distributed::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
#if defined(IADGPT_WITH_CUDA) && defined(USE_C10D_NCCL)
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;
#endif
  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<torch::Tensor>& tensors, const c10d::AllreduceOptions& opts) {
#if defined(IADGPT_WITH_CUDA) && defined(USE_C10D_NCCL)
    if (nccl) return nccl->allreduce(tensors, opts);
#endif
    return gloo->allreduce(tensors, opts);
  }
};

Distributed::Distributed(const DistributedOptions& options)
    : world_size_(options.world_size), rank_(options.rank), device_(options.device) {
  if (options.world_size < 1) throw InputError(fmt::format("--world-size must be ≥ 1 (got {})", options.world_size));
  if (options.rank < 0 || options.rank >= options.world_size)
    throw InputError(fmt::format("--rank must be in [0, {}) (got {})", options.world_size, options.rank));
  if (world_size_ == 1) return;
  const auto backend = backend_for(options.device);  // before any rendezvous: a bad device fails at once
  const auto [host, port] = parse_master(options.master);
  impl_ = std::make_unique<Impl>();
  c10d::TCPStoreOptions store_options;
  store_options.port = port;
  store_options.isServer = rank_ == 0;  // rank 0 hosts the rendezvous
  store_options.numWorkers = static_cast<int>(world_size_);
  store_options.waitWorkers = true;
  store_options.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(options.timeout);
  impl_->store = c10::make_intrusive<c10d::TCPStore>(host, store_options);
  const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(options.timeout);
#if defined(IADGPT_WITH_CUDA) && defined(USE_C10D_NCCL)
  if (backend == "nccl") {
    auto nccl = c10d::ProcessGroupNCCL::Options::create();
    nccl->timeout = timeout;
    impl_->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, static_cast<int>(rank_),
                                                              static_cast<int>(world_size_), nccl);
    return;
  }
#endif
  auto gloo = c10d::ProcessGroupGloo::Options::create(timeout);
  // Loopback or the host's own interface, whichever reaches the master.
  gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
  impl_->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, static_cast<int>(rank_),
                                                              static_cast<int>(world_size_), gloo);
}

Distributed::~Distributed() = default;

void Distributed::all_reduce_sum(torch::Tensor& tensor) {
  if (world_size_ == 1) return;
  std::vector<torch::Tensor> tensors{tensor};
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  impl_->allreduce(tensors, opts)->wait();
}

// A barrier as a one-element all-reduce on the group's device: NCCL's own barrier guesses the GPU
// from the rank in libtorch 1.13, which need not be the one this rank trains on.
void Distributed::barrier() {
  if (world_size_ == 1) return;
  auto one = torch::ones({1}, torch::dtype(torch::kFloat32).device(device_));
  all_reduce_sum(one);
  nn::synchronize(device_);
}

}  // namespace iadgpt::train
