#include "train/distributed.h"

#include <fmt/format.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "io/error.h"

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

struct Distributed::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
};

Distributed::Distributed(const DistributedOptions& options)
    : world_size_(options.world_size), rank_(options.rank) {
  if (options.world_size < 1) throw InputError(fmt::format("--world-size must be ≥ 1 (got {})", options.world_size));
  if (options.rank < 0 || options.rank >= options.world_size)
    throw InputError(fmt::format("--rank must be in [0, {}) (got {})", options.world_size, options.rank));
  if (world_size_ == 1) return;
  const auto [host, port] = parse_master(options.master);
  impl_ = std::make_unique<Impl>();
  c10d::TCPStoreOptions store_options;
  store_options.port = port;
  store_options.isServer = rank_ == 0;  // rank 0 hosts the rendezvous
  store_options.numWorkers = static_cast<int>(world_size_);
  store_options.waitWorkers = true;
  store_options.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(options.timeout);
  impl_->store = c10::make_intrusive<c10d::TCPStore>(host, store_options);
  auto gloo = c10d::ProcessGroupGloo::Options::create(std::chrono::duration_cast<std::chrono::milliseconds>(options.timeout));
  // Loopback or the host's own interface, whichever reaches the master.
  gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
  impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, static_cast<int>(rank_),
                                                              static_cast<int>(world_size_), gloo);
}

Distributed::~Distributed() = default;

void Distributed::all_reduce_sum(torch::Tensor& tensor) {
  if (world_size_ == 1) return;
  std::vector<torch::Tensor> tensors{tensor};
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  impl_->group->allreduce(tensors, opts)->wait();
}

void Distributed::barrier() {
  if (world_size_ == 1) return;
  impl_->group->barrier()->wait();
}

}  // namespace iadgpt::train
