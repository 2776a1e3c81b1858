// Anomaly synthesis for self-supervised training on normal images only (METHOD §3.1): NSA
// (Natural Synthetic Anomalies, AnomalyGPT's default), CutPaste (synth.h) and Perlin noise +
// texture (DRAEM), and the training pair each normal image yields (METHOD §3.1, answers of §1.10).
//
//   std::mt19937_64 rng(seed);
//   data::SynthesisOptions opt;  opt.nsa.cls = data::nsa_class("hazelnut");
//   auto s = data::synthesize(data::SynthesisMethod::Nsa, normal, others, textures, rng, opt);
//   // s.image RGB8, s.soft [H,W] float in [0,1], s.mask [H,W] U8 = soft > 0.3
//   auto pair = data::make_pair(normal, s);   // pair.normal_answer "No, ...", pair.anomaly_answer "Yes, ..."
//
// Deterministic for a given rng state. Thread-safety: re-entrant (no global state).
#pragma once
#include <torch/torch.h>

#include <opencv2/core.hpp>

#include <random>
#include <span>
#include <string>
#include <string_view>

#include "data/synth.h"

namespace iadgpt::data {

enum class SynthesisMethod { Nsa, CutPaste, Perlin };
SynthesisMethod parse_synthesis_method(std::string_view name);  // "nsa", "cutpaste", "perlin"; InputError otherwise
std::string_view synthesis_method_name(SynthesisMethod method);

// The soft label is binarised at this value for the mask losses (METHOD §3.2).
inline constexpr double kMaskThreshold = 0.3;

// Per-class NSA settings. Widths/heights are fractions of the image side. A class with a plain
// background gets an object mask by "background skipping": pixels whose mean absolute difference
// to the border colour exceeds `background_tolerance` (0..255) are object.
struct NsaClass {
  double min_width = 0.03, max_width = 0.4;
  double min_height = 0.03, max_height = 0.4;
  int min_patches = 1, max_patches = 2;
  bool plain_background = false;
  double background_tolerance = 20;
};
// Our table for the 15 MVTec AD classes; any other name gets the defaults above.
NsaClass nsa_class(std::string_view category);

struct NsaOptions {
  NsaClass cls;
  double min_scale = 0.7, max_scale = 1.3;  // resize factor of the patch
  double min_overlap = 0.25;                // fraction of a patch that must lie on the object (source and target)
  double k = 1.0 / 6.0, x0 = 20.0;          // logistic of the intensity change (0..255 scale)
  int seam = 2;                             // width in pixels of the zeroed ring at the pasted region's border
  int max_tries = 50;                       // placement attempts per patch
  int max_restarts = 10;                    // whole-sample retries while the binarised mask is empty
};

struct PerlinOptions {
  int min_scale_log2 = 0, max_scale_log2 = 6;  // grid resolution 2^u per axis, u uniform in [min, max]
  double threshold = 0.5;                      // noise > threshold is anomalous
  double min_beta = 0.1, max_beta = 1.0;       // β: weight of the original inside the mask (METHOD §3.1)
  int max_restarts = 20;                       // redraws while the thresholded noise is empty
};

struct SynthesisOptions {
  NsaOptions nsa;
  CutPasteOptions cutpaste;
  PerlinOptions perlin;
};

// U8 [H,W] 0/1 object mask by background skipping (all ones when `cls.plain_background` is false,
// or when the threshold leaves less than 5 % of the image, i.e. the background was not plain).
torch::Tensor object_mask(const cv::Mat& rgb, const NsaClass& cls);

// NSA: 1–2 patches of `source` (another normal image, resized to the target's size first) pasted
// into `target` by Poisson blending; soft = logistic(k(|Δ| − x0)) inside the pasted regions, 0 on
// their seams and outside; mask = soft > kMaskThreshold.
SyntheticSample nsa(const cv::Mat& target, const cv::Mat& source, std::mt19937_64& rng,
                    const NsaOptions& options = {});

// Perlin gradient noise [H,W] float (about [-0.7, 0.7]) on a res_y × res_x grid of random unit gradients.
cv::Mat perlin_noise(int height, int width, int res_y, int res_x, std::mt19937_64& rng);

// DRAEM: m = perlin > threshold; out = img(1−m) + (1−β) tex m + β img m, β uniform in
// [min_beta, max_beta]; mask = m. `texture` is resized to the target's size. `beta_out` (optional)
// receives the β used.
SyntheticSample perlin(const cv::Mat& target, const cv::Mat& texture, std::mt19937_64& rng,
                       const PerlinOptions& options = {}, double* beta_out = nullptr);

// One entry point: Nsa needs `other_normals` (one is drawn), Perlin needs `textures` (one is
// drawn); CutPaste takes its patch from a drawn other normal image, or from `normal` itself when
// there is none. InputError when a required list is empty.
SyntheticSample synthesize(SynthesisMethod method, const cv::Mat& normal, std::span<const cv::Mat> other_normals,
                           std::span<const cv::Mat> textures, std::mt19937_64& rng,
                           const SynthesisOptions& options = {});

// The answer for a mask (U8 or float [H,W]): components (8-connectivity) of mask > 0.5, after a
// closing with a disc of `merge_fraction` of the shorter side (fragments of one anomaly count
// once), of at least `min_area_fraction` of the image area (the largest one when none is that
// big), named on the 3×3 grid by their centroids (METHOD §1.10).
std::string answer_for_mask(const torch::Tensor& mask, double min_area_fraction = 0.002, double merge_fraction = 0.03);

// What one normal image yields for training (METHOD §3.1).
struct TrainingPair {
  cv::Mat normal;                 // the original
  std::string normal_answer;      // "No, there is no anomaly in the image."
  torch::Tensor normal_mask;      // zeros [H,W] U8
  SyntheticSample synthetic;
  std::string anomaly_answer;     // "Yes, ..." with the positions of the synthetic mask
};
TrainingPair make_pair(const cv::Mat& normal, SyntheticSample synthetic, double min_area_fraction = 0.002,
                       double merge_fraction = 0.03);

}  // namespace iadgpt::data
