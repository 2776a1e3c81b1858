// The anomaly-map pipeline for one class (METHOD §1.1–1.6): image → map view → tapped tokens →
// map (zero-shot, trained decoder, few-shot memory bank, or decoder + few-shot blend) → score.
//
//   anomaly::DetectorOptions opt{.vision = "imagebind_huge.pth", .vocab = "bpe_simple_vocab_16e6.txt.gz"};
//   anomaly::Detector detector(opt);
//   detector.set_class("hazelnut");
//   detector.set_references({good1, good2});                // optional: few-shot
//   auto d = detector.detect({part});                       // d[0].map: [S, S], d[0].score
//
// Not thread-safe (it caches the class's text features and the memory bank); one per worker.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "anomaly/maps.h"
#include "anomaly/prompts.h"
#include "vision/loader.h"

namespace iadgpt::anomaly {

enum class MapMode {
  Auto,      // few-shot with references (blended with the decoder when one is given), else the
             // decoder when given, else zero-shot
  ZeroShot,  // METHOD §1.6
  Decoder,   // §1.4 (needs --decoder)
  FewShot,   // §1.5 (needs references)
  Blend,     // (M_text + M_fs) / 2 (needs both)
};
MapMode parse_map_mode(std::string_view name);
std::string_view map_mode_name(MapMode mode);

struct DetectorOptions {
  std::filesystem::path vision;                 // any CLIP-family checkpoint
  // The tower already loaded from `vision` (its tensors are shared, not copied): a caller that
  // holds it (the trainer) spares a second read of the checkpoint. Must be in `dtype`.
  std::optional<vision::VisionModel> vision_model;
  std::optional<std::filesystem::path> text;    // text tower checkpoint (default: `vision`)
  std::optional<std::filesystem::path> vocab;   // CLIP BPE vocabulary (default: beside the checkpoint)
  std::optional<nlohmann::json> config;         // --config for towers whose shapes do not tell
  std::optional<std::filesystem::path> decoder; // trained decoder: our safetensors or AnomalyGPT's delta
  TemplateSet templates = TemplateSet::AnomalyGpt;
  std::vector<std::string> extra_abnormal;      // APG sentences
  std::vector<int64_t> taps;                    // empty: the family's default four
  int64_t size = 0;                             // map view side S; 0: the tower's native size
  MapMode mode = MapMode::Auto;
  bool rotations = false;                       // add 90/180/270° views of the references
  int64_t top_k = 0;                            // image score: 0 = max, else top-k mean
  torch::Dtype dtype = torch::kFloat32;         // tower compute dtype
  // q8: the vision blocks' matrices in int8 (vision/vit.h quantize_weights; also applied to a
  // given vision_model's copy); CPU only.
  nn::QuantFormat vision_quant = nn::QuantFormat::None;
  torch::Device device = torch::kCPU;           // where the towers, decoder and bank live (nn/device.h)
  std::optional<std::filesystem::path> cache_dir;  // prompt-embedding cache
  bool features = false;                        // also return e and the patch features (IAD-GPT, model::IadGpt)
};

// Every tensor on the detector's device (DetectorOptions::device): the IAD-GPT heads read them
// there. A caller that writes or measures the maps copies them with to_host first.
struct Detection {
  torch::Tensor map;         // [S, S] float in [0, 1]
  torch::Tensor layer_maps;  // [L, S, S] per-tap abnormal maps (zeros for few-shot only)
  torch::Tensor few_shot;    // [S, S] M_fs, undefined without references
  float score = 0;
  // With DetectorOptions::features: e [D] (encoder view; the map view when the image is square,
  // METHOD §1.1) and the patch features [L, N, D] that were compared with F_text (P_l of the
  // decoder, or the joint-space patch tokens of the zero-shot map; undefined in few-shot mode).
  torch::Tensor embedding, patch_features;
  double encode_seconds = 0, map_seconds = 0;  // of the whole batch
};

// The maps (and e, the patch features) copied to host memory: where a detection leaves the model
// (PNG, safetensors, metrics). No copy on the CPU.
void to_host(Detection& detection);

class Detector {
 public:
  explicit Detector(const DetectorOptions& options);
  ~Detector();
  Detector(Detector&&) noexcept;
  Detector& operator=(Detector&&) noexcept;

  // A detector on the same weights: the vision tower, text tower, tokenizer and decoder are
  // shared (their tensors alias, nothing is copied); the class, text features and memory bank are
  // the new detector's own. One per worker of a server (serve::shared_weights_factory). The
  // shared weights are only read, so detectors that share them may run on different threads;
  // one detector is still used by one thread at a time.
  Detector share();

  void set_class(std::string_view class_name);         // recomputes F_text (cached on disk)
  void set_extra_abnormal(std::vector<std::string> sentences);  // APG sentences for the next set_class
  void set_references(const std::vector<cv::Mat>& rgb8);  // replaces the memory bank; {} clears
  std::vector<Detection> detect(const std::vector<cv::Mat>& rgb8);

  MapMode effective_mode() const;  // what `detect` will compute now
  const DetectorOptions& options() const;
  int64_t size() const;            // S
  std::vector<int64_t> taps() const;
  const TextFeatures& text_features() const;  // InputError before set_class in a text mode
  // Sentences through the text tower: L2-normalised rows [n, D] (APG keyword embeddings).
  torch::Tensor encode_text(const std::vector<std::string>& sentences);

  // Pixel tensors of the map view [B, 3, S, S] (CLIP-normalised), for callers that need them.
  torch::Tensor map_view(const std::vector<cv::Mat>& rgb8) const;
  // The inputs of the maps and the heads, exactly as `detect` computes them (the trainer builds its
  // examples with these, so training and inference see one view, METHOD §1.1/§1.5): the taps of
  // the map view (per tapped block [B, 1+N, D_v], in the tower's dtype) and e [B, D] from the
  // encoder view (the map view when the image is square).
  struct Encoded {
    std::vector<torch::Tensor> taps;
    torch::Tensor embedding;
    double seconds = 0;  // of the tower forwards that made it
    // Image i alone ([1, ...] slices, sharing storage): what encoding it by itself gives, up to
    // the summation order of the batched GEMMs.
    Encoded image(int64_t i) const;
    int64_t batch() const { return taps.empty() ? 0 : taps.front().size(0); }
  };
  // Each image's e from its own view: the map view when square, else the encoder view (those
  // forwarded together), so an image gets the same e alone or in any batch.
  Encoded encode_images(const std::vector<cv::Mat>& rgb8);
  // What `detect` runs the tower for: encode_images with DetectorOptions::features, else the map
  // view's taps only. Class- and reference-independent, so a server encodes the images of
  // several requests (different classes, references) in one forward, then maps each with
  // detect_encoded on its own worker's detector.
  Encoded encode(const std::vector<cv::Mat>& rgb8);
  // The maps of images encoded before (by this detector or a share() of it): detect(rgb8) is
  // detect_encoded(encode(rgb8)). Encoded::seconds becomes each Detection's encode_seconds.
  std::vector<Detection> detect_encoded(const Encoded& encoded);
  // The taps `set_references` puts in the memory bank: the map views of `rgb8`, followed by their
  // 90/180/270° rotations (torch::rot90 of the S×S view) with DetectorOptions::rotations.
  std::vector<torch::Tensor> reference_taps(const std::vector<cv::Mat>& rgb8);

 private:
  struct State;
  explicit Detector(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// Resizes a map [S, S] to height × width (bilinear), for output at the image's own size.
torch::Tensor resize_map(const torch::Tensor& map, int64_t height, int64_t width);

}  // namespace iadgpt::anomaly
