// Stage-2 map learning (METHOD §3.2–3.3): train AnomalyGPT's visual decoder (one Linear(D_v→D)
// per tapped layer) on normal images and CutPaste anomalies, with the image encoder and the text
// features FROZEN.
//
//   train::FrozenEncoder encoder = train::load_encoder("imagebind_tiny.safetensors", config, {1, 3});
//   auto views = train::synthetic_views(normals, 224, /*per_image=*/6, /*seed=*/1);
//   auto pool = train::encode_views(views, encoder);            // taps cached once
//   auto result = train::train_decoder(pool, f_text, {.steps = 200, .batch_size = 8});
//   io::save_safetensors("decoder.safetensors", anomaly::decoder_tensors(result.decoder));
//
// Why a fixed pool: the encoder is frozen, so a synthetic image's taps never change; drawing a
// fresh CutPaste per step would spend nearly all the time in the encoder. We draw a fixed pool of
// (image, mask) pairs once — every normal image gives (original, empty mask) and `per_image`
// CutPaste variants — encode it once, and sample batches from the cached taps. The pool size
// bounds the variety of anomalies seen; raise `per_image` for longer runs.
//
// Optimiser (METHOD §3.3): AdamW β = (0.9, 0.95), weight decay 0.001, lr 1e-3 with linear warm-up
// over the first 10 % of the steps then cosine decay to 0, gradient-norm clipping at 1.0.
// Deterministic for a seed: decoder init and batch order use local generators (no global seed).
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <vector>

#include "anomaly/maps.h"
#include "data/dataset.h"
#include "data/synth.h"
#include "vision/loader.h"

namespace iadgpt::train {

// A frozen vision tower and the blocks it taps: pixels [B, 3, S, S] -> taps [B, 1+N, D_v] fp32.
struct FrozenEncoder {
  vision::VisionModel model;
  std::vector<int64_t> taps;
  std::vector<torch::Tensor> operator()(const torch::Tensor& pixels) const;
  int64_t size() const { return model.config.image_size; }
  int64_t width() const { return model.config.width; }
};
// `taps` empty: the family's default four. InputError on an out-of-range tap.
FrozenEncoder load_encoder(const std::filesystem::path& checkpoint, const std::optional<nlohmann::json>& config,
                           std::vector<int64_t> taps);

// One training or evaluation example in the map view: the image resized to S×S (the map view
// takes the whole image, no crop) and its mask at the same size.
struct LabelledView {
  cv::Mat image;       // RGB8 S×S
  torch::Tensor mask;  // [S, S] float 0/1
};

// Every normal image resized to S×S; with `include_originals` it contributes (itself, empty mask),
// plus `per_image` CutPaste variants whose source is another normal image (itself when alone).
std::vector<LabelledView> synthetic_views(const std::vector<cv::Mat>& normals, int64_t size, int64_t per_image,
                                          uint64_t seed, bool include_originals = true,
                                          const data::CutPasteOptions& cutpaste = {});
// Dataset samples (real images and masks) in the map view; masks resized nearest, then > 0.5.
std::vector<LabelledView> sample_views(const std::vector<data::Sample>& samples, int64_t size);

// Cached taps of a set of views: taps[l] [P, 1+N, D_v], masks [P, S, S] float 0/1.
struct TapPool {
  std::vector<torch::Tensor> taps;
  torch::Tensor masks;
  std::vector<int64_t> text_index;  // per view: its class's F_text in a [C, 2, D] stack (empty: one F_text)
  int64_t count() const { return masks.defined() ? masks.size(0) : 0; }
  int64_t map_size() const { return masks.size(-1); }
};
TapPool encode_views(const std::vector<LabelledView>& views, const FrozenEncoder& encoder, int64_t chunk = 16);

struct DecoderTrainingOptions {
  int64_t steps = 200;
  int64_t batch_size = 8;
  double lr = 1e-3;
  double warmup_fraction = 0.1;
  double weight_decay = 1e-3;
  double beta1 = 0.9, beta2 = 0.95;
  double clip_norm = 1.0;
  uint64_t seed = 0;
  int64_t log_every = 20;  // a log entry (and a progress call) every N steps and at the last step
  // Side of the maps the loss is taken on; 0 = the pool's map size S (AnomalyGPT: 224). A smaller
  // side (masks area-resized, then binarised at 0.3) makes a step ~(S/side)² cheaper on CPU.
  int64_t loss_size = 0;
};

struct LogEntry {
  int64_t step = 0;  // 1-based, after the update
  double loss = 0, focal = 0, dice = 0, lr = 0;
};
using Progress = std::function<void(const LogEntry&)>;

struct DecoderTrainingResult {
  anomaly::VisualDecoder decoder{nullptr};
  std::vector<LogEntry> log;
  double seconds = 0;
};

// lr at 0-based `step`: linear warm-up to `base` over ceil(warmup_fraction·steps) steps, then cosine to 0.
double learning_rate(int64_t step, int64_t steps, double base, double warmup_fraction);

// A decoder initialised as torch.nn.Linear does (U(±1/√D_v) for weight and bias), from `seed`.
anomaly::VisualDecoder initial_decoder(int64_t vision_width, int64_t embed_dim, int64_t layers, uint64_t seed);

// Trains a fresh `initial_decoder(…, options.seed)` on the pool against f_text [2, D], or against
// per-class F_text [C, 2, D] picked per view by `pool.text_index` (one decoder for several classes).
DecoderTrainingResult train_decoder(const TapPool& pool, const torch::Tensor& f_text,
                                    const DecoderTrainingOptions& options, const Progress& progress = {});

// Fused abnormal maps [P, S, S] of the pool's taps (no grad, in chunks).
torch::Tensor predict_maps(anomaly::VisualDecoder& decoder, const TapPool& pool, const torch::Tensor& f_text,
                           int64_t chunk = 16);
// Pixel AUROC of maps [P, S, S] against the pool's masks (eval::binary_metrics, sklearn semantics).
double pixel_auroc(const torch::Tensor& maps, const torch::Tensor& masks);

}  // namespace iadgpt::train
