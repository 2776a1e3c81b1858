// `iadgpt train --config train.json [--world-size W --rank R --master HOST:PORT]`: the three
// training stages of METHOD §3 (schema: src/train/README.md). Writes a bundle to the config's
// `out` that `iadgpt detect --model` / `chat --model` load; resumes from out/checkpoints.
// SIGINT/SIGTERM: the current step finishes, a checkpoint is saved, exit code 130.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "cli/device_flag.h"
#include "io/error.h"
#include "train/config.h"
#include "train/distributed.h"
#include "train/trainer.h"

using namespace iadgpt;

namespace {

// The only process-wide state: what a signal handler may touch.
std::atomic<bool> g_stop{false};
extern "C" void on_stop_signal(int) { g_stop.store(true); }

struct Flags {
  std::string config;
  int64_t world_size = 1, rank = 0;
  std::string master = "127.0.0.1:29500";
  bool quiet = false;
  cli::DeviceFlag device;
};

std::string eta_string(double s) {
  if (s >= 3600) return fmt::format("{}h{:02}m", static_cast<int>(s / 3600), static_cast<int>(s / 60) % 60);
  if (s >= 60) return fmt::format("{}m{:02}s", static_cast<int>(s / 60), static_cast<int>(s) % 60);
  return fmt::format("{:.0f}s", s);
}

void run(const Flags& f) {
  // Everything is validated before any work: config fields, dataset layouts, distributed flags.
  auto cfg = train::read_train_config(f.config);
  if (!f.device.name.empty()) cfg.device = f.device.name;
  train::training_device(cfg.device);
  if (f.world_size < 1) throw InputError(fmt::format("--world-size must be ≥ 1 (got {})", f.world_size));
  if (f.rank < 0 || f.rank >= f.world_size)
    throw InputError(fmt::format("--rank must be in [0, {}) (got {})", f.world_size, f.rank));
  if (f.world_size > 1) train::parse_master(f.master);
  if (cfg.batch_size % (f.world_size * cfg.grad_accum) != 0)
    throw InputError(fmt::format("{}: 'batch_size' {} must be a multiple of world size × grad_accum = {}", f.config,
                                 cfg.batch_size, f.world_size * cfg.grad_accum));

  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  train::Distributed dist({.world_size = f.world_size, .rank = f.rank, .master = f.master,
                           .device = train::training_device(cfg.device)});

  const bool tty = isatty(STDERR_FILENO) != 0;
  double elapsed = 0;
  train::TrainHooks hooks;
  hooks.stop = &g_stop;
  hooks.on_message = [&](const std::string& m) {
    if (!f.quiet) std::cerr << "train: " << m << "\n";
  };
  hooks.on_step = [&](const train::StepLog& s) {
    elapsed += s.seconds;
    if (f.quiet || (s.step % cfg.log_every != 0 && s.step != s.total_steps)) return;
    const double eta = elapsed / s.step * static_cast<double>(s.total_steps - s.step);
    std::cerr << fmt::format("{}stage {} step {}/{} loss {:.4f} (ce {:.4f}{}) acc {:.2f} lr {:.2e} ETA {}{}",
                             tty ? "\r" : "", s.stage, s.step, s.total_steps, s.loss, s.ce,
                             s.stage == 2 ? fmt::format(" focal {:.4f} dice {:.4f}", s.focal, s.dice) : "", s.accuracy,
                             s.lr, eta_string(eta), tty ? "   " : "\n");
  };
  hooks.on_eval = [&](const train::EvalResult& r) {
    if (!f.quiet)
      std::cerr << fmt::format("{}eval at step {}: yes/no accuracy {:.3f} (few-shot {:.3f}, {} held-out), ce {:.4f}, pixel AUROC {:.4f}\n",
                               tty ? "\n" : "", r.step, r.yes_no_accuracy, r.yes_no_accuracy_few_shot, r.examples, r.ce, r.pixel_auroc);
  };
  auto result = train::train(cfg, dist, hooks);
  if (result.interrupted) {
    if (dist.is_main())
      std::cerr << fmt::format("\ntrain: stopped at step {}; checkpoint saved in {}\n", result.steps_done,
                               (cfg.out / "checkpoints").string());
    std::exit(130);
  }
  if (dist.is_main()) {
    nlohmann::json summary = {{"steps", result.steps_done}, {"resumed_from", result.resumed_from},
                              {"seconds", result.seconds}, {"bundle", cfg.out.string()},
                              {"eval", result.final_eval.to_json()}};
    std::cout << summary.dump() << std::endl;
  }
}

}  // namespace

namespace iadgpt::cli {

void add_train(CLI::App& app) {
  auto flags = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand("train", "Self-supervised multi-stage training (METHOD §3): writes a model bundle");
  cmd->add_option("--config", flags->config, "training configuration (JSON; schema in src/train/README.md)")->required();
  cmd->add_option("--world-size", flags->world_size, "data-parallel processes")->capture_default_str();
  cmd->add_option("--rank", flags->rank, "this process's rank (0 writes checkpoints and the bundle)")->capture_default_str();
  cmd->add_option("--master", flags->master, "HOST:PORT of rank 0's rendezvous (TCPStore)")->capture_default_str();
  flags->device.add_to(*cmd, "the config's 'device', else cpu");
  cmd->add_flag("--quiet", flags->quiet, "no progress output");
  cmd->callback([flags] { run(*flags); });
}

}  // namespace iadgpt::cli
