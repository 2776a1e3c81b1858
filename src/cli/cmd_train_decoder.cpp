// `iadgpt train-decoder`: stage-2 map learning (METHOD §3.2–3.3) of the visual decoder on a
// category's normal training images + CutPaste anomalies, encoder and text frozen; writes a
// decoder safetensors that `iadgpt detect --decoder` loads.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <fstream>
#include <iostream>

#include "anomaly/detector.h"
#include "cli/commands.h"
#include "cli/device_flag.h"
#include "data/dataset.h"
#include "image/decode.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "train/config.h"
#include "train/decoder_training.h"
#include "vision/loader.h"

using namespace iadgpt;

namespace {

struct TrainFlags {
  std::string vision, config, vocab, dataset, category, out;
  std::vector<int64_t> taps;
  int64_t per_image = 40, loss_size = 56;
  double jitter = 0.5;
  train::DecoderTrainingOptions options{.steps = 2000, .batch_size = 8, .log_every = 100};
  cli::DeviceFlag device;
};

void run_train_decoder(const TrainFlags& f) {
  // The decoder's own training (train/decoder_training.h) has no device path yet; `train` does.
  if (!train::training_device(f.device.name.empty() ? "cpu" : f.device.name).is_cpu())
    throw InputError(fmt::format("train-decoder --device {}: the decoder-only trainer runs on the CPU so far "
                                 "(`iadgpt train` trains on CUDA); use --device cpu", f.device.name));
  const auto colon = f.dataset.find(':');
  if (colon == std::string::npos) throw InputError("--dataset must be KIND:DIR (mvtec, visa, mvtec3d, folder)");
  const auto kind = data::parse_kind(f.dataset.substr(0, colon));
  const std::filesystem::path root = f.dataset.substr(colon + 1);
  if (!std::filesystem::is_directory(root)) throw InputError(fmt::format("dataset folder not found: {}", root.string()));

  std::optional<nlohmann::json> config;
  if (!f.config.empty()) config = vision::read_config_file(f.config);
  auto encoder = train::load_encoder(f.vision, config, f.taps);

  anomaly::DetectorOptions dopt;
  dopt.vision = f.vision;
  dopt.config = config;
  if (!f.vocab.empty()) dopt.vocab = f.vocab;
  dopt.taps = encoder.taps;
  anomaly::Detector detector(dopt);
  detector.set_class(f.category);
  const auto f_text = detector.text_features().f_text;

  std::vector<cv::Mat> normals;
  std::vector<data::Sample> test_split;
  for (const auto& s : data::list_samples(kind, root, f.category)) {
    if (s.split == data::Split::Train && s.label == 0) normals.push_back(image::decode_file(s.image));
    else if (s.split == data::Split::Test) test_split.push_back(s);
  }
  if (normals.empty()) throw InputError(fmt::format("{}: no normal training images for '{}'", root.string(), f.category));

  data::CutPasteOptions cutpaste;
  cutpaste.jitter = f.jitter;
  auto pool = train::encode_views(
      train::synthetic_views(normals, encoder.size(), f.per_image, f.options.seed, true, cutpaste), encoder);
  fmt::print("pool: {} normal images -> {} examples; taps {}\n", normals.size(), pool.count(),
             fmt::join(encoder.taps, ","));
  auto options = f.options;
  options.loss_size = f.loss_size;
  auto result = train::train_decoder(pool, f_text, options, [](const train::LogEntry& e) {
    fmt::print("step {:6d}  loss {:.4f}  focal {:.4f}  dice {:.4f}  lr {:.3e}\n", e.step, e.loss, e.focal, e.dice, e.lr);
    std::fflush(stdout);
  });
  const std::filesystem::path out(f.out);
  if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
  io::save_safetensors(out, anomaly::decoder_tensors(result.decoder));
  fmt::print("trained {} steps in {:.1f} s; decoder written to {}\n", options.steps, result.seconds, out.string());

  // Real-defect pixel AUROC of the test split, when it has both normal and defective pixels.
  if (!test_split.empty()) {
    auto real = train::encode_views(train::sample_views(test_split, encoder.size()), encoder);
    const double marked = real.masks.sum().item<double>();
    if (marked > 0 && marked < static_cast<double>(real.masks.numel())) {
      fmt::print("test split: pixel AUROC {:.4f} ({} images)\n",
                 train::pixel_auroc(train::predict_maps(result.decoder, real, f_text), real.masks), real.count());
    }
  }
}

}  // namespace

namespace iadgpt::cli {

void add_train_decoder(CLI::App& app) {
  auto f = std::make_shared<TrainFlags>();
  auto* cmd = app.add_subcommand("train-decoder", "Train the visual decoder (stage-2 map learning) on normal images + CutPaste");
  cmd->add_option("--vision", f->vision, "Vision tower checkpoint (frozen)")->required();
  cmd->add_option("--config", f->config, "config.json for towers whose shapes do not tell");
  cmd->add_option("--vocab", f->vocab, "CLIP BPE vocabulary (default: beside the checkpoint)");
  cmd->add_option("--taps", f->taps, "Tapped blocks (default: the family's four)");
  cmd->add_option("--dataset", f->dataset, "KIND:DIR with KIND mvtec, visa, mvtec3d or folder")->required();
  cmd->add_option("--category", f->category, "Category (its normal training images are used)")->required();
  cmd->add_option("--steps", f->options.steps, "Optimiser steps")->capture_default_str();
  cmd->add_option("--batch", f->options.batch_size, "Batch size")->capture_default_str();
  cmd->add_option("--lr", f->options.lr, "Peak learning rate (10 % warm-up, cosine)")->capture_default_str();
  cmd->add_option("--seed", f->options.seed, "Seed (CutPaste pool, init, batch order)")->capture_default_str();
  cmd->add_option("--log-every", f->options.log_every, "Progress line every N steps")->capture_default_str();
  cmd->add_option("--per-image", f->per_image, "CutPaste variants per normal image in the cached pool")->capture_default_str();
  cmd->add_option("--jitter", f->jitter, "CutPaste colour jitter")->capture_default_str();
  cmd->add_option("--loss-size", f->loss_size, "Map side the loss is taken on (0 = full map size)")->capture_default_str();
  cmd->add_option("--out", f->out, "decoder.safetensors")->required();
  f->device.add_to(*cmd);
  cmd->callback([f] { run_train_decoder(*f); });
}

}  // namespace iadgpt::cli
