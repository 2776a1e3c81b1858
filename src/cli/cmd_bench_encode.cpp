// `iadgpt bench encode`: speed and memory of a real-size vision tower with random weights (no
// download), next to the GEMM throughput of this machine measured in the same run.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <numeric>
#include <vector>

#include "cli/commands.h"
#include "cli/device_flag.h"
#include "io/error.h"
#include "io/heap.h"
#include "nn/quant.h"
#include "vision/vit.h"

namespace iadgpt::cli {
namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

// Peak resident set (VmHWM) in MiB; -1 when /proc is unavailable.
double peak_rss_mib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;  // kB
  }
  return -1;
}

// Resets VmHWM to the current RSS (Linux: writing 5 to clear_refs), so that each dtype's peak is
// its own even when both run in one process.
void reset_peak_rss() {
  io::release_free_heap();  // freed blocks the heap keeps would count in the next peak
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
}

// A square GEMM of the same dtype: what this CPU can do at best on the same threads.
double gemm_gflops(torch::Dtype dtype, const torch::Device& device, int64_t n = 2048, int reps = 3) {
  torch::NoGradGuard ng;
  auto a = torch::randn({n, n}).to(device, dtype), b = torch::randn({n, n}).to(device, dtype);
  auto c = torch::matmul(a, b);  // warm-up (oneDNN/OpenBLAS set-up)
  nn::synchronize(device);
  const auto t0 = clock_type::now();
  for (int i = 0; i < reps; ++i) c = torch::matmul(a, b);
  nn::synchronize(device);
  return 2.0 * n * n * n * reps / seconds_since(t0) / 1e9;
}

void bench_one(const std::string& arch, torch::Dtype dtype, nn::QuantFormat quant, int iters, int batch,
               const torch::Device& device, bool sync_check) {
  const auto cfg = vision::vit_preset(arch);
  reset_peak_rss();
  const double rss0 = peak_rss_mib();
  auto t0 = clock_type::now();
  auto weights = vision::random_weights(cfg, dtype, 0);
  vision::quantize_weights(weights, quant);
  vision::move_weights(weights, device);
  const double init_s = seconds_since(t0);
  const auto pixels = torch::randn({batch, 3, cfg.image_size, cfg.image_size}).to(device);
  const std::vector<int64_t> taps = cfg.default_taps();
  vision::vit_forward(weights, cfg, pixels, taps);  // warm-up: first-touch of activation memory
  nn::synchronize(device);
  // Each forward timed on its own (waiting for the device after each), so that the best and the
  // median can be read beside the mean, as scripts/pytorch-vit-bench.py reports PyTorch's: on a
  // shared VM one slow forward moves the mean.
  std::vector<double> seconds;
  {
    nn::SyncCheck check(sync_check);  // --sync-check: the encode loop makes no host copy at all
    for (int i = 0; i < iters; ++i) {
      const auto start = clock_type::now();
      vision::vit_forward(weights, cfg, pixels, taps);
      nn::PlannedSync planned;
      nn::synchronize(device);
      seconds.push_back(seconds_since(start));
    }
  }
  const double per_batch = std::accumulate(seconds.begin(), seconds.end(), 0.0) / iters;
  std::sort(seconds.begin(), seconds.end());
  const double best_ms = seconds.front() * 1e3 / batch, median_ms = seconds[seconds.size() / 2] * 1e3 / batch;
  const double rss = peak_rss_mib();
  const double gflops = cfg.flops_per_image() * batch / per_batch / 1e9;
  const double peak = gemm_gflops(dtype, device);
  // With q8 the blocks' matrices run as int8 (quant.h), faster than the dtype's GEMM: the ratio
  // to its peak can pass 100 %.
  const std::string format = fmt::format("{}{}", dtype == torch::kBFloat16 ? "bf16" : "f32",
                                         quant == nn::QuantFormat::None ? "" : std::string("+") + nn::quant_format_name(quant));
  std::cout << fmt::format(
      "{} {:>4}: {} params, {:.1f} GFLOP/image, init {:.1f} s | {:.1f} ms/image (batch {}, {} iters; best {:.1f}, "
      "median {:.1f}) | {:.1f} GFLOP/s vs GEMM peak {:.1f} GFLOP/s ({:.0f}%) | peak RSS {:.0f} MiB (start {:.0f} MiB) | "
      "{} threads\n",
      arch, format, cfg.parameter_count(), cfg.flops_per_image() / 1e9, init_s,
      per_batch * 1e3 / batch, batch, iters, best_ms, median_ms, gflops, peak, 100.0 * gflops / peak, rss, rss0,
      torch::get_num_threads());
}

}  // namespace

void add_bench_encode(CLI::App& bench) {
  struct Opts {
    std::string arch = "imagebind-huge", dtype = "both", quant = "none";
    int iters = 3, batch = 1;
    bool sync_check = false;
    DeviceFlag device;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = bench.add_subcommand("encode", "Time a real-size vision tower (random weights) in fp32 and bf16");
  cmd->add_option("--arch", o->arch, "imagebind-huge or clip-vit-l-14-336")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "f32, bf16 or both")->capture_default_str();
  cmd->add_option("--quant", o->quant,
                  "none, or q8: the blocks' matrices in int8 (weights per block of 32, activations quantized per "
                  "row as they come; CPU only)")
      ->capture_default_str();
  cmd->add_option("--iters", o->iters, "Timed forwards after one warm-up")->capture_default_str();
  cmd->add_option("--batch", o->batch, "Images per forward")->capture_default_str();
  cmd->add_flag("--sync-check", o->sync_check,
                "on CUDA: fail on any device-host copy or synchronisation inside the timed encode loop (c10's "
                "sync-debug mode; nothing on the CPU)");
  o->device.add_to(*cmd);
  cmd->callback([o] {
    const auto device = o->device.device();
    vision::vit_preset(o->arch);  // validates the name before any allocation
    if (o->iters < 1 || o->batch < 1) throw InputError("--iters and --batch must be at least 1");
    if (o->dtype != "f32" && o->dtype != "bf16" && o->dtype != "both") {
      throw InputError(fmt::format("--dtype: '{}' (expected f32, bf16 or both)", o->dtype));
    }
    const auto quant = vision::parse_vision_quant(o->quant, "--quant");
    if (quant != nn::QuantFormat::None && !device.is_cpu()) throw InputError("--quant q8 runs on the CPU only");
    // bf16 first: its peak RSS is then not inflated by fp32 pages the allocator keeps.
    if (o->dtype != "f32") bench_one(o->arch, torch::kBFloat16, quant, o->iters, o->batch, device, o->sync_check);
    if (o->dtype != "bf16") bench_one(o->arch, torch::kFloat32, quant, o->iters, o->batch, device, o->sync_check);
  });
}

}  // namespace iadgpt::cli
