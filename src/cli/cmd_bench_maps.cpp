// `iadgpt bench maps`: the cost of the few-shot map next to the encode it follows, at real size
// (random weights): METHOD §1.5 with k references plus rotations against one query image.
#include <fmt/format.h>

#include <chrono>
#include <iostream>

#include "anomaly/maps.h"
#include "cli/commands.h"
#include "cli/device_flag.h"
#include "io/error.h"
#include "vision/vit.h"

namespace iadgpt::cli {
namespace {

double seconds_of(const std::function<void()>& work, int iters) {
  work();  // warm-up: first touch of the buffers
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) work();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
}

}  // namespace

void add_bench_maps(CLI::App& bench) {
  struct Opts {
    std::string arch = "imagebind-huge", dtype = "bf16";
    int shots = 4, iters = 3;
    bool rotations = true;
    DeviceFlag device;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = bench.add_subcommand("maps", "Time the few-shot map against the encode of one image (real size)");
  cmd->add_option("--arch", o->arch, "imagebind-huge or clip-vit-l-14-336")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "Encoder dtype: f32 or bf16")->capture_default_str();
  cmd->add_option("--shots", o->shots, "Reference images in the memory bank")->capture_default_str();
  cmd->add_option("--rotations", o->rotations, "Add the 3 rotations of each reference")->capture_default_str();
  cmd->add_option("--iters", o->iters, "Timed repetitions")->capture_default_str();
  o->device.add_to(*cmd);
  cmd->callback([o] {
    const auto device = o->device.device();
    const auto cfg = vision::vit_preset(o->arch);
    if (o->shots < 1 || o->iters < 1) throw InputError("--shots and --iters must be at least 1");
    if (o->dtype != "f32" && o->dtype != "bf16") throw InputError("--dtype must be f32 or bf16");
    const auto dtype = o->dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
    torch::NoGradGuard no_grad;
    auto weights = vision::random_weights(cfg, dtype, 0);
    vision::move_weights(weights, device);
    const auto taps = cfg.default_taps();
    auto pixels = torch::randn({1, 3, cfg.image_size, cfg.image_size}).to(device, dtype);
    vision::VitOutput query;
    const double encode_s = seconds_of([&] {
      query = vision::vit_forward(weights, cfg, pixels, taps);
      nn::synchronize(device);
    }, o->iters);

    // The bank holds the taps of shots × (1 or 4) views; random tokens stand in for them at the
    // real shapes (the map's cost depends on shapes only).
    const int64_t views = o->shots * (o->rotations ? 4 : 1);
    std::vector<torch::Tensor> bank_taps;
    for (size_t l = 0; l < taps.size(); ++l) bank_taps.push_back(torch::randn({views, cfg.tokens(), cfg.width}).to(device));
    anomaly::MemoryBank bank(1024, dtype);  // the bank keeps the encoder's precision
    bank.add(bank_taps);
    torch::Tensor map;
    const double map_s = seconds_of([&] {
      map = bank.query(query.taps, cfg.image_size);
      nn::synchronize(device);
    }, o->iters);
    std::cout << fmt::format(
        "{} {}: encode {:.1f} ms/image | few-shot map {:.2f} ms/image ({} references{}, bank {} patches × {} layers) "
        "= {:.2f}% of the encode (goal < 5%) | {} threads\n",
        o->arch, o->dtype, encode_s * 1e3, map_s * 1e3, o->shots, o->rotations ? " + rotations" : "", bank.size(),
        taps.size(), 100.0 * map_s / encode_s, torch::get_num_threads());
  });
}

}  // namespace iadgpt::cli
