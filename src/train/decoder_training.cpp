#include "train/decoder_training.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numbers>
#include <numeric>
#include <map>
#include <random>

#include "data/synth.h"
#include "eval/metrics.h"
#include "image/decode.h"
#include "image/preprocess.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "train/losses.h"

namespace iadgpt::train {
namespace F = torch::nn::functional;

std::vector<torch::Tensor> FrozenEncoder::operator()(const torch::Tensor& pixels) const {
  torch::NoGradGuard no_grad;
  auto dtype = model.weights.patch_weight.scalar_type();
  return vision::vit_forward(model.weights, model.config, pixels.to(dtype), taps).taps;
}

FrozenEncoder load_encoder(const std::filesystem::path& checkpoint, const std::optional<nlohmann::json>& config,
                           std::vector<int64_t> taps) {
  vision::VisionOptions options;
  options.config = config;
  FrozenEncoder encoder{vision::load_vision(checkpoint, options), std::move(taps)};
  if (encoder.taps.empty()) encoder.taps = encoder.model.config.default_taps();
  for (auto t : encoder.taps) {
    if (t < 0 || t >= encoder.model.config.layers) {
      throw InputError(fmt::format("{}: tap {} is outside the tower's {} blocks", checkpoint.string(), t,
                                   encoder.model.config.layers));
    }
  }
  return encoder;
}

namespace {

cv::Mat map_view_image(const cv::Mat& rgb8, int64_t size) {
  if (rgb8.cols == size && rgb8.rows == size) return rgb8;
  return image::resize(rgb8, static_cast<int>(size), static_cast<int>(size));
}

}  // namespace

std::vector<LabelledView> synthetic_views(const std::vector<cv::Mat>& normals, int64_t size, int64_t per_image,
                                          uint64_t seed, bool include_originals,
                                          const data::CutPasteOptions& cutpaste) {
  if (normals.empty()) throw InputError("synthetic anomalies need at least one normal image");
  std::vector<cv::Mat> resized;
  for (const auto& n : normals) resized.push_back(map_view_image(n, size));
  std::mt19937_64 rng(seed);
  std::vector<LabelledView> views;
  for (size_t i = 0; i < resized.size(); ++i) {
    if (include_originals) views.push_back({resized[i], torch::zeros({size, size})});
    for (int64_t k = 0; k < per_image; ++k) {
      size_t source = i;
      if (resized.size() > 1) {  // another normal image, as CutPaste pastes foreign patches
        source = std::uniform_int_distribution<size_t>(0, resized.size() - 2)(rng);
        if (source >= i) ++source;
      }
      auto s = data::cutpaste(resized[i], resized[source], rng, cutpaste);
      views.push_back({s.image, s.mask.to(torch::kFloat32)});
    }
  }
  return views;
}

std::vector<LabelledView> sample_views(const std::vector<data::Sample>& samples, int64_t size) {
  std::vector<LabelledView> views;
  for (const auto& s : samples) {
    auto rgb = image::decode_file(s.image);
    auto mask = data::sample_mask(s, rgb.rows, rgb.cols).to(torch::kFloat32).unsqueeze(0).unsqueeze(0);
    mask = F::interpolate(mask, F::InterpolateFuncOptions()
                                    .size(std::vector<int64_t>{size, size})
                                    .mode(torch::kNearest));
    views.push_back({map_view_image(rgb, size), mask[0][0].gt(0.5).to(torch::kFloat32)});
  }
  return views;
}

TapPool encode_views(const std::vector<LabelledView>& views, const FrozenEncoder& encoder, int64_t chunk) {
  if (views.empty()) throw InputError("no images to encode");
  const int64_t size = encoder.size();
  std::vector<std::vector<torch::Tensor>> per_layer(encoder.taps.size());
  std::vector<torch::Tensor> masks;
  for (size_t start = 0; start < views.size(); start += chunk) {
    const size_t end = std::min(views.size(), start + static_cast<size_t>(chunk));
    std::vector<torch::Tensor> pixels;
    for (size_t i = start; i < end; ++i) {
      if (views[i].image.cols != size || views[i].image.rows != size || views[i].mask.size(-1) != size) {
        throw InputError(fmt::format("view {} is not {}×{} (the encoder's input size)", i, size, size));
      }
      pixels.push_back(image::clip_map_view(views[i].image, static_cast<int>(size)));
      masks.push_back(views[i].mask);
    }
    auto taps = encoder(torch::stack(pixels));
    for (size_t l = 0; l < taps.size(); ++l) per_layer[l].push_back(taps[l].to(torch::kFloat32));
  }
  TapPool pool;
  for (auto& layer : per_layer) pool.taps.push_back(torch::cat(layer));
  pool.masks = torch::stack(masks);
  return pool;
}

double learning_rate(int64_t step, int64_t steps, double base, double warmup_fraction) {
  const auto warmup = static_cast<int64_t>(std::ceil(warmup_fraction * static_cast<double>(steps)));
  if (step < warmup) return base * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double span = static_cast<double>(std::max<int64_t>(1, steps - warmup));
  const double progress = static_cast<double>(step - warmup) / span;
  return base * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

anomaly::VisualDecoder initial_decoder(int64_t vision_width, int64_t embed_dim, int64_t layers, uint64_t seed) {
  anomaly::VisualDecoder decoder(vision_width, embed_dim, layers);
  // torch.nn.Linear's default init (kaiming_uniform(a=√5) = U(±1/√fan_in), bias the same), but
  // from a local generator so that the seed alone fixes it.
  auto gen = at::detail::createCPUGenerator(seed);
  const double bound = 1.0 / std::sqrt(static_cast<double>(vision_width));
  torch::NoGradGuard no_grad;
  for (auto& p : decoder->parameters()) p.uniform_(-bound, bound, gen);
  return decoder;
}

DecoderTrainingResult train_decoder(const TapPool& pool, const torch::Tensor& f_text,
                                    const DecoderTrainingOptions& options, const Progress& progress) {
  if (pool.count() == 0 || pool.taps.empty()) throw InputError("decoder training: empty training pool");
  const bool per_class = f_text.dim() == 3;
  if (!(f_text.dim() == 2 && f_text.size(0) == 2) && !(per_class && f_text.size(1) == 2))
    throw InputError("decoder training: F_text must be [2, D] or [C, 2, D]");
  if (per_class && static_cast<int64_t>(pool.text_index.size()) != pool.count())
    throw InputError("decoder training: per-class F_text needs a class index per view");
  for (const auto c : pool.text_index)
    if (per_class && (c < 0 || c >= f_text.size(0)))
      throw InputError(fmt::format("decoder training: class index {} outside the {} F_text", c, f_text.size(0)));
  if (options.steps < 1 || options.batch_size < 1) throw InputError("decoder training: steps and batch size must be ≥ 1");
  const auto start_time = std::chrono::steady_clock::now();

  DecoderTrainingResult result;
  result.decoder = initial_decoder(pool.taps[0].size(2), f_text.size(-1), static_cast<int64_t>(pool.taps.size()),
                                   options.seed);
  result.decoder->train();
  torch::optim::AdamW optimizer(result.decoder->parameters(),
                                torch::optim::AdamWOptions(options.lr)
                                    .betas({options.beta1, options.beta2})
                                    .weight_decay(options.weight_decay));
  const auto text = f_text.detach().to(torch::kFloat32);
  const int64_t count = pool.count();
  const int64_t size = options.loss_size > 0 ? options.loss_size : pool.map_size();
  auto targets = pool.masks.to(torch::kFloat32);
  if (size != pool.map_size()) {
    targets = F::interpolate(targets.unsqueeze(1), F::InterpolateFuncOptions()
                                                       .size(std::vector<int64_t>{size, size})
                                                       .mode(torch::kArea))
                  .squeeze(1);
  }
  targets = binarize_mask(targets);
  const int64_t batch = std::min(options.batch_size, count);

  // Batches walk through a reshuffled permutation of the pool (epochs without replacement).
  std::mt19937_64 rng(options.seed ^ 0x9e3779b97f4a7c15ULL);
  std::vector<int64_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  int64_t cursor = 0;

  for (int64_t step = 0; step < options.steps; ++step) {
    std::vector<int64_t> picked;
    for (int64_t b = 0; b < batch; ++b) {
      if (cursor == count) {
        std::shuffle(order.begin(), order.end(), rng);
        cursor = 0;
      }
      picked.push_back(order[cursor++]);
    }
    const double lr = learning_rate(step, options.steps, options.lr, options.warmup_fraction);
    for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);

    optimizer.zero_grad();
    // Rows grouped by class (one F_text per forward); each group's mean loss weighs by its share
    // of the batch, so a single class reduces to the plain batch mean.
    std::map<int64_t, std::vector<int64_t>> groups;
    for (const auto i : picked) groups[per_class ? pool.text_index[i] : 0].push_back(i);
    MapLoss loss;
    for (const auto& [cls, rows] : groups) {
      auto idx = torch::tensor(rows, torch::kLong);
      std::vector<torch::Tensor> taps;
      for (const auto& t : pool.taps) taps.push_back(t.index_select(0, idx));
      auto maps = result.decoder->forward(taps, per_class ? text[cls] : text, size);
      auto part = map_loss(maps.layers, targets.index_select(0, idx));
      const double share = static_cast<double>(rows.size()) / static_cast<double>(batch);
      loss.total = loss.total.defined() ? loss.total + part.total * share : part.total * share;
      loss.focal = loss.focal.defined() ? loss.focal + part.focal * share : part.focal * share;
      loss.dice = loss.dice.defined() ? loss.dice + part.dice * share : part.dice * share;
    }
    loss.total.backward();
    torch::nn::utils::clip_grad_norm_(result.decoder->parameters(), options.clip_norm);
    optimizer.step();

    if ((options.log_every > 0 && (step + 1) % options.log_every == 0) || step + 1 == options.steps) {
      LogEntry e{step + 1, loss.total.item<double>(), loss.focal.item<double>(), loss.dice.item<double>(), lr};
      result.log.push_back(e);
      if (progress) progress(e);
    }
  }
  result.decoder->eval();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
  return result;
}

torch::Tensor predict_maps(anomaly::VisualDecoder& decoder, const TapPool& pool, const torch::Tensor& f_text,
                           int64_t chunk) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> out;
  for (int64_t start = 0; start < pool.count(); start += chunk) {
    const int64_t end = std::min(pool.count(), start + chunk);
    std::vector<torch::Tensor> taps;
    for (const auto& t : pool.taps) taps.push_back(t.slice(0, start, end));
    out.push_back(decoder->forward(taps, f_text.to(torch::kFloat32), pool.map_size()).fused.squeeze(1));
  }
  return torch::cat(out);
}

double pixel_auroc(const torch::Tensor& maps, const torch::Tensor& masks) {
  auto scores = maps.to(torch::kFloat32).contiguous().reshape({-1});
  auto labels = masks.gt(0.5).to(torch::kUInt8).contiguous().reshape({-1});
  if (scores.numel() != labels.numel()) throw InputError("pixel AUROC: maps and masks differ in size");
  return eval::binary_metrics({scores.data_ptr<float>(), static_cast<size_t>(scores.numel())},
                              {labels.data_ptr<uint8_t>(), static_cast<size_t>(labels.numel())}, "pixel")
      .auroc;
}

}  // namespace iadgpt::train
