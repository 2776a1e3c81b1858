#include "nn/device.h"

#include <ATen/autocast_mode.h>
#include <fmt/format.h>
#include <torch/version.h>

#include <charconv>
#include <optional>

#include "io/error.h"

#ifdef IADGPT_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace iadgpt::nn {

bool built_with_cuda() {
#ifdef IADGPT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

namespace {

// The CUDA index of "cuda" (0) or "cuda:N"; nullopt for "cpu"; InputError for anything else.
std::optional<int> cuda_index(std::string_view name, std::string_view what) {
  if (name == "cpu") return std::nullopt;
  if (name == "cuda") return 0;
  if (!name.starts_with("cuda:"))
    throw InputError(fmt::format("{} {}: unknown device (expected cpu, cuda or cuda:N)", what, name));
  const auto digits = name.substr(5);
  int index = -1;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || index < 0 || index > 255)
    throw InputError(fmt::format("{} {}: expected cpu, cuda or cuda:N with N a device number", what, name));
  return index;
}

}  // namespace

bool is_device_name(std::string_view name) {
  try {
    cuda_index(name, "");
    return true;
  } catch (const InputError&) {
    return false;
  }
}

torch::Device parse_device(std::string_view name, std::string_view what) {
  const auto index = cuda_index(name, what);
  if (!index) return torch::Device(torch::kCPU);
  if (!built_with_cuda())
    throw InputError(fmt::format("{} {}: CUDA is not available in this build (it was built against a "
                                 "CPU-only libtorch; scripts/gpu-check.sh builds against a CUDA one)", what, name));
  const auto count = static_cast<int>(torch::cuda::device_count());
  if (*index >= count)
    throw InputError(fmt::format("{} {}: {} CUDA device(s) visible{}", what, name, count,
                                 count == 0 ? " (no driver, or CUDA_VISIBLE_DEVICES hides them)" : ""));
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(*index));
}

std::string device_name(const torch::Device& device) {
  if (device.is_cpu()) return "cpu";
  return fmt::format("{}:{}", device.is_cuda() ? "cuda" : c10::DeviceTypeName(device.type(), true),
                     device.has_index() ? device.index() : 0);
}

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

// libtorch 1.13 and 2.x: getDeviceStats / resetPeakStats under c10::cuda::CUDACachingAllocator,
// the aggregate statistic first in each array (StatType::AGGREGATE = 0).
int64_t peak_device_bytes(const torch::Device& device) {
#ifdef IADGPT_WITH_CUDA
  if (device.is_cuda())
    return c10::cuda::CUDACachingAllocator::getDeviceStats(device.has_index() ? device.index() : 0).allocated_bytes[0].peak;
#endif
  (void)device;
  return -1;
}

void reset_peak_device_bytes(const torch::Device& device) {
#ifdef IADGPT_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.has_index() ? device.index() : 0);
#endif
  (void)device;
}

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool autocast_enabled(c10::DeviceType type) { return at::autocast::is_autocast_enabled(type); }
at::ScalarType autocast_dtype(c10::DeviceType type) { return at::autocast::get_autocast_dtype(type); }
void set_autocast(c10::DeviceType type, bool enabled, at::ScalarType dtype) {
  at::autocast::set_autocast_dtype(type, dtype);
  at::autocast::set_autocast_enabled(type, enabled);
}
#else
bool autocast_enabled(c10::DeviceType type) {
  return type == c10::DeviceType::CUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
}
at::ScalarType autocast_dtype(c10::DeviceType type) {
  return type == c10::DeviceType::CUDA ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
}
void set_autocast(c10::DeviceType type, bool enabled, at::ScalarType dtype) {
  if (type == c10::DeviceType::CUDA) {
    at::autocast::set_autocast_gpu_dtype(dtype);
    at::autocast::set_enabled(enabled);
  } else {
    at::autocast::set_autocast_cpu_dtype(dtype);
    at::autocast::set_cpu_enabled(enabled);
  }
}
#endif

namespace {

// c10::cuda::warning_state()'s mode as an int (0 off, 1 warn, 2 error: SyncDebugMode's values in
// libtorch 1.13 and 2.x); sets `mode` and returns the previous one. 0 without CUDA.
int exchange_sync_mode(int mode) {
#ifdef IADGPT_WITH_CUDA
  auto& state = c10::cuda::warning_state();
  const int previous = static_cast<int>(state.get_sync_debug_mode());
  state.set_sync_debug_mode(static_cast<c10::cuda::SyncDebugMode>(mode));
  return previous;
#else
  (void)mode;
  return 0;
#endif
}

}  // namespace

SyncCheck::SyncCheck(bool on) : on_(on) {
  if (on_) previous_ = exchange_sync_mode(2);
}

SyncCheck::~SyncCheck() {
  if (on_) exchange_sync_mode(previous_);
}

PlannedSync::PlannedSync() : previous_(exchange_sync_mode(0)) {}

PlannedSync::~PlannedSync() { exchange_sync_mode(previous_); }

void to_device(torch::Tensor& t, const torch::Device& device) {
  if (t.defined() && t.device() != device) t = t.to(device);
}

}  // namespace iadgpt::nn
