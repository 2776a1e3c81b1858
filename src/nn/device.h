// Where the tensors of a model live (issue 16): `--device cpu|cuda|cuda:N` parsed and checked
// once, so that every command gives the same error for a device it cannot use.
//
//   const auto device = nn::parse_device("cuda:1");  // InputError on this CPU build:
//                                                     // "--device cuda:1: CUDA is not available in this build"
//   nn::to_device(weights.embed, device);             // once, after loading
//
// The program is device-generic: weights move once after loading, buffers (KV cache, RoPE
// tables, masks, scratch) are made with the options of the tensors they serve, and host copies
// happen only where a result leaves the model (the sampled token, the map for the PNG, JSON).
// The hand-written CPU kernels (bf16/q8/q4 matvec) are used only when the weights are on the CPU.
#pragma once
#include <torch/torch.h>

#include <string>
#include <string_view>

namespace iadgpt::nn {

// "cpu", "cuda" (= cuda:0) or "cuda:N". InputError naming the flag value when the name is not
// one of those, when this build has no CUDA ("CUDA is not available in this build"), or when
// the build has CUDA but device N is not visible (naming how many are).
// `what` names where the value came from in the message ("--device", "bundle field 'device'").
torch::Device parse_device(std::string_view name, std::string_view what = "--device");

// Whether `name` is spelled as a device (cpu, cuda, cuda:N), whatever this build can run: a
// bundle written on a GPU machine stays readable on a CPU one (its device is overridden there).
bool is_device_name(std::string_view name);

// Whether this program was built against a libtorch with CUDA (CMake: TORCH_CUDA_LIBRARIES).
bool built_with_cuda();

// "cpu", "cuda:0": the canonical name written to bundles, configs and logs.
std::string device_name(const torch::Device& device);

// t = t.to(device) for a defined tensor (undefined ones stay undefined); no copy when it is there.
void to_device(torch::Tensor& t, const torch::Device& device);

// The caching allocator's peak of allocated bytes on a CUDA device since the last reset; -1 on
// the CPU (no allocator statistics there) or in a build without CUDA.
int64_t peak_device_bytes(const torch::Device& device);
void reset_peak_device_bytes(const torch::Device& device);

// Autocast's switch and lower-precision dtype for one device type (kCPU or kCUDA), the thread's.
// One spelling for libtorch 1.13 to 2.3 (set_cpu_enabled / set_enabled and their dtype setters)
// and 2.4+ (set_autocast_enabled(device_type, …), where the old names are deprecated).
bool autocast_enabled(c10::DeviceType type);
at::ScalarType autocast_dtype(c10::DeviceType type);
void set_autocast(c10::DeviceType type, bool enabled, at::ScalarType dtype);

// Counting mode for the GPU check (issue 16): while a SyncCheck that is on lives, every CUDA
// operation that makes the host wait for the device — a device→host copy (`.item()`, `.to(cpu)`),
// a blocking host→device copy, a synchronisation — throws (c10's sync-debug mode set to error),
// except inside a PlannedSync: the copies a loop means to make (the sampled token, a timer's
// synchronize). The mode is c10's, process-wide; both guards restore what they found. No-ops in a
// build without CUDA.
//
//   nn::SyncCheck check(flags.sync_check);
//   for (…) {
//     { nn::PlannedSync planned; next = logits.argmax().item<int64_t>(); }
//     logits = llm::forward_tokens(model, cache, {next});   // an unplanned copy in here throws
//   }
class SyncCheck {
 public:
  explicit SyncCheck(bool on);
  ~SyncCheck();
  SyncCheck(const SyncCheck&) = delete;
  SyncCheck& operator=(const SyncCheck&) = delete;

 private:
  bool on_;
  int previous_ = 0;
};

class PlannedSync {
 public:
  PlannedSync();
  ~PlannedSync();
  PlannedSync(const PlannedSync&) = delete;
  PlannedSync& operator=(const PlannedSync&) = delete;

 private:
  int previous_ = 0;
};

// Waits for the device's queued work (CUDA runs asynchronously): a timer reads the clock after
// it. Nothing to wait for on the CPU.
void synchronize(const torch::Device& device);

}  // namespace iadgpt::nn
