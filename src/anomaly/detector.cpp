#include "anomaly/detector.h"

#include <fmt/format.h>

#include <chrono>

#include "image/preprocess.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "nn/device.h"
#include "nn/transformer.h"
#include "text/clip_tokenizer.h"
#include "text/text_tower.h"
#include "vision/loader.h"

namespace iadgpt::anomaly {
namespace F = torch::nn::functional;

MapMode parse_map_mode(std::string_view name) {
  if (name == "auto") return MapMode::Auto;
  if (name == "zero-shot") return MapMode::ZeroShot;
  if (name == "decoder") return MapMode::Decoder;
  if (name == "few-shot") return MapMode::FewShot;
  if (name == "blend") return MapMode::Blend;
  throw InputError(fmt::format("unknown map mode '{}' (expected auto, zero-shot, decoder, few-shot or blend)", name));
}

std::string_view map_mode_name(MapMode mode) {
  switch (mode) {
    case MapMode::Auto: return "auto";
    case MapMode::ZeroShot: return "zero-shot";
    case MapMode::Decoder: return "decoder";
    case MapMode::FewShot: return "few-shot";
    case MapMode::Blend: return "blend";
  }
  return "?";
}

struct Detector::State {
  DetectorOptions options;
  vision::VisionModel vision;
  std::vector<int64_t> taps;
  int64_t size = 0;
  std::string model_identity;
  // Text side, loaded on first use: few-shot alone needs no text tower.
  std::optional<text::TextTower> text_tower;
  std::shared_ptr<const text::ClipTokenizer> tokenizer;  // read-only: shared by Detector::share
  std::optional<TextFeatures> features;
  std::optional<VisualDecoder> decoder;
  MemoryBank bank{1024, torch::kFloat32};

  bool needs_text(MapMode mode) const {
    return mode == MapMode::ZeroShot || mode == MapMode::Decoder || mode == MapMode::Blend;
  }

  void load_text() {
    if (text_tower) return;
    const auto path = options.text.value_or(options.vision);
    text::TextLoadOptions text_options;
    text_options.dtype = options.dtype;
    text_options.config = options.config;
    text_tower = text::load_text_tower(path, text_options);
    text::move_text_tower(*text_tower, options.device);
    auto vocab = options.vocab.value_or(text::ClipTokenizer::find_beside(path));
    if (vocab.empty()) {
      throw InputError(fmt::format("no CLIP BPE vocabulary beside {}; give --vocab bpe_simple_vocab_16e6.txt.gz",
                                   path.string()));
    }
    tokenizer = std::make_shared<const text::ClipTokenizer>(text::ClipTokenizer::load(vocab));
  }

  torch::Tensor encode_sentences(const std::vector<std::string>& sentences) {
    auto ids = tokenizer->tokenize_batch(sentences);
    return text::encode_text(*text_tower, ids).embedding;
  }

  // Taps of the map view, fp32 [B, 1+N, D_v] per tapped block.
  std::vector<torch::Tensor> encode(const torch::Tensor& pixels) { return forward(pixels).taps; }
  vision::VitOutput forward(const torch::Tensor& pixels) {
    torch::NoGradGuard no_grad;
    return vision::vit_forward(vision.weights, vision.config, pixels.to(options.device, options.dtype), taps);
  }

  // The family's own final norm + projection applied to patch tokens (METHOD §1.6).
  torch::Tensor to_joint_space(const torch::Tensor& tokens) const {
    const auto& w = vision.weights;
    auto normed = nn::layer_norm(tokens.to(torch::kFloat32), w.head_ln_weight.to(torch::kFloat32),
                                 w.head_ln_bias.to(torch::kFloat32), vision.config.eps);
    if (!w.proj.defined()) return normed;
    return torch::matmul(normed, w.proj.to(torch::kFloat32).t());
  }
};

Detector::Detector(const DetectorOptions& options) : state_(std::make_unique<State>()) {
  auto& s = *state_;
  s.options = options;
  s.bank = MemoryBank(1024, options.dtype);
  vision::VisionOptions vision_options;
  vision_options.config = options.config;
  vision_options.dtype = options.dtype;
  vision_options.quant = options.vision_quant;
  s.vision = options.vision_model ? *options.vision_model : vision::load_vision(options.vision, vision_options);
  // A given tower is quantized in the copy (new handles; the caller's tensors stay as they are).
  if (options.vision_model) vision::quantize_weights(s.vision.weights, options.vision_quant);
  s.options.vision_model.reset();  // held once, in s.vision
  vision::move_weights(s.vision.weights, options.device);
  s.taps = options.taps.empty() ? s.vision.config.default_taps() : options.taps;
  for (auto t : s.taps) {
    if (t < 0 || t >= s.vision.config.layers) {
      throw InputError(fmt::format("tap {} is outside the tower's {} blocks", t, s.vision.config.layers));
    }
  }
  s.size = options.size > 0 ? options.size : s.vision.config.image_size;
  if (s.size != s.vision.config.image_size) {
    // The positional embedding fixes the grid; other sizes would need interpolated positions.
    throw InputError(fmt::format("--size {} differs from the tower's native input size {}", s.size,
                                 s.vision.config.image_size));
  }
  s.model_identity = fmt::format("{}|{}|{}", std::filesystem::absolute(options.text.value_or(options.vision)).string(),
                                 std::filesystem::is_regular_file(options.vision) ? std::filesystem::file_size(options.vision) : 0,
                                 c10::toString(options.dtype));
  if (options.decoder) {
    auto ckpt = io::load_checkpoint(*options.decoder);
    s.decoder.emplace(VisualDecoder(s.vision.config.width, s.vision.config.embed_dim,
                                    static_cast<int64_t>(s.taps.size())));
    load_decoder(*s.decoder, ckpt.tensors, options.decoder->string());
    (*s.decoder)->to(options.device);
    (*s.decoder)->eval();
  }
  const auto mode = options.mode;
  if ((mode == MapMode::Decoder || mode == MapMode::Blend) && !options.decoder) {
    throw InputError(fmt::format("map mode '{}' needs --decoder", map_mode_name(mode)));
  }
}

Detector::Detector(std::unique_ptr<State> state) : state_(std::move(state)) {}

Detector Detector::share() {
  auto& s = *state_;
  // The text tower is loaded here when a text mode may need it, so that the copies share it
  // rather than each loading its own on first use.
  if (s.options.mode != MapMode::FewShot) s.load_text();
  auto copy = std::make_unique<State>();
  copy->options = s.options;
  copy->vision = s.vision;            // structs of tensors: the copies alias the same storage
  copy->taps = s.taps;
  copy->size = s.size;
  copy->model_identity = s.model_identity;
  copy->text_tower = s.text_tower;
  copy->tokenizer = s.tokenizer;
  copy->decoder = s.decoder;          // a module holder: the same module, used in eval mode only
  copy->bank = MemoryBank(1024, s.options.dtype);
  return Detector(std::move(copy));
}

Detector::~Detector() = default;
Detector::Detector(Detector&&) noexcept = default;
Detector& Detector::operator=(Detector&&) noexcept = default;

MapMode Detector::effective_mode() const {
  const auto& s = *state_;
  if (s.options.mode != MapMode::Auto) return s.options.mode;
  if (!s.bank.empty()) return s.decoder ? MapMode::Blend : MapMode::FewShot;
  return s.decoder ? MapMode::Decoder : MapMode::ZeroShot;
}

int64_t Detector::size() const { return state_->size; }
const DetectorOptions& Detector::options() const { return state_->options; }
std::vector<int64_t> Detector::taps() const { return state_->taps; }

const TextFeatures& Detector::text_features() const {
  if (!state_->features) throw InputError("no class set: text features are computed by set_class");
  return *state_->features;
}

void Detector::set_class(std::string_view class_name) {
  auto& s = *state_;
  s.load_text();
  auto prompts = build_prompts(class_name, s.options.templates, s.options.extra_abnormal);
  SentenceEncoder encode = [&](const std::vector<std::string>& sentences) { return s.encode_sentences(sentences); };
  if (s.options.cache_dir) {
    s.features = PromptCache(*s.options.cache_dir).get(s.model_identity, prompts, encode);
  } else {
    s.features = encode_prompts(prompts, encode);
  }
  // The cache reads to host memory; the maps compare on the towers' device.
  for (auto* t : {&s.features->normal_sentences, &s.features->abnormal_sentences, &s.features->f_text})
    nn::to_device(*t, s.options.device);
  if (s.features->f_text.size(1) != s.vision.config.embed_dim) {
    throw InputError(fmt::format("text embeddings are {} wide but the vision tower projects to {}",
                                 s.features->f_text.size(1), s.vision.config.embed_dim));
  }
}

void Detector::set_extra_abnormal(std::vector<std::string> sentences) {
  state_->options.extra_abnormal = std::move(sentences);
}

torch::Tensor Detector::encode_text(const std::vector<std::string>& sentences) {
  auto& s = *state_;
  s.load_text();
  torch::NoGradGuard no_grad;
  return s.encode_sentences(sentences);
}

torch::Tensor Detector::map_view(const std::vector<cv::Mat>& rgb8) const {
  std::vector<torch::Tensor> views;
  for (const auto& img : rgb8) views.push_back(image::clip_map_view(img, static_cast<int>(state_->size)));
  return torch::stack(views);
}

std::vector<torch::Tensor> Detector::reference_taps(const std::vector<cv::Mat>& rgb8) {
  auto& s = *state_;
  auto pixels = map_view(rgb8);
  if (s.options.rotations) pixels = with_rotations(pixels);
  return s.encode(pixels);
}

void Detector::set_references(const std::vector<cv::Mat>& rgb8) {
  auto& s = *state_;
  s.bank.clear();
  if (rgb8.empty()) return;
  s.bank.add(reference_taps(rgb8));
}

Detector::Encoded Detector::Encoded::image(int64_t i) const {
  Encoded one;
  for (const auto& t : taps) one.taps.push_back(t.slice(0, i, i + 1));
  if (embedding.defined()) one.embedding = embedding.slice(0, i, i + 1);
  one.seconds = seconds;
  return one;
}

Detector::Encoded Detector::encode_images(const std::vector<cv::Mat>& rgb8) {
  auto& s = *state_;
  const auto t0 = std::chrono::steady_clock::now();
  auto out = s.forward(map_view(rgb8));
  Encoded encoded{std::move(out.taps), out.embedding};
  // METHOD §1.1: e comes from the encoder view (short side resized, centre crop).
  std::vector<torch::Tensor> views;
  std::vector<int64_t> rows;
  for (size_t i = 0; i < rgb8.size(); ++i) {
    if (rgb8[i].rows == rgb8[i].cols) continue;
    views.push_back(image::clip_encoder_view(rgb8[i], static_cast<int>(s.size)));
    rows.push_back(static_cast<int64_t>(i));
  }
  if (!views.empty()) {
    auto e = s.forward(torch::stack(views)).embedding;
    if (rows.size() == rgb8.size()) {
      encoded.embedding = e;
    } else {
      encoded.embedding = encoded.embedding.clone();
      encoded.embedding.index_copy_(0, torch::tensor(rows, torch::kLong), e);
    }
  }
  encoded.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return encoded;
}

Detector::Encoded Detector::encode(const std::vector<cv::Mat>& rgb8) {
  auto& s = *state_;
  if (s.options.features) return encode_images(rgb8);
  const auto t0 = std::chrono::steady_clock::now();
  Encoded encoded{s.forward(map_view(rgb8)).taps, {}};
  encoded.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return encoded;
}

std::vector<Detection> Detector::detect(const std::vector<cv::Mat>& rgb8) { return detect_encoded(encode(rgb8)); }

std::vector<Detection> Detector::detect_encoded(const Encoded& encoded) {
  auto& s = *state_;
  const auto mode = effective_mode();
  if (s.needs_text(mode) && !s.features) set_class("");
  if ((mode == MapMode::FewShot || mode == MapMode::Blend) && s.bank.empty()) {
    throw InputError(fmt::format("map mode '{}' needs reference images", map_mode_name(mode)));
  }
  if (s.options.features && !encoded.embedding.defined())
    throw InputError("detect: the encoded images carry no embedding e (encode them with features on)");
  using clock = std::chrono::steady_clock;
  const auto t1 = clock::now();
  const auto& taps = encoded.taps;
  const torch::Tensor& embeddings = encoded.embedding;  // [B, D] e, from the encoder view (METHOD §1.1)
  torch::NoGradGuard no_grad;
  LayerMaps text_maps;
  if (mode == MapMode::ZeroShot) {
    text_maps = zero_shot_maps(taps, [&](const torch::Tensor& t) { return s.to_joint_space(t); },
                               s.features->f_text, s.size);
  } else if (mode == MapMode::Decoder || mode == MapMode::Blend) {
    text_maps = (*s.decoder)->forward(taps, s.features->f_text, s.size);
  }
  torch::Tensor few_shot;
  if (mode == MapMode::FewShot || mode == MapMode::Blend) few_shot = s.bank.query(taps, s.size);

  torch::Tensor fused;
  if (mode == MapMode::FewShot) fused = few_shot;
  else if (mode == MapMode::Blend) fused = blend(text_maps.fused, few_shot);
  else fused = text_maps.fused;

  // The patch features that were compared with F_text, for the defect type (METHOD §1.10).
  torch::Tensor patch_features;  // [B, L, N, D]
  if (s.options.features && mode != MapMode::FewShot) {
    std::vector<torch::Tensor> per_layer;
    if (mode == MapMode::ZeroShot) {
      for (const auto& t : taps) per_layer.push_back(s.to_joint_space(t.slice(1, 1)));
    } else {
      per_layer = (*s.decoder)->project(taps);
    }
    patch_features = torch::nn::functional::normalize(torch::stack(per_layer, 1),
                                                      torch::nn::functional::NormalizeFuncOptions().dim(-1));
  }
  auto scores = image_scores(fused, s.options.top_k);
  const double encode_seconds = encoded.seconds;
  const double map_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  std::vector<Detection> out;
  const int64_t batch = encoded.batch();
  for (int64_t b = 0; b < batch; ++b) {
    Detection d;
    d.map = fused[b][0].contiguous();
    if (!text_maps.layers.empty()) {
      std::vector<torch::Tensor> layers;
      for (const auto& m : text_maps.layers) layers.push_back(m[b][1]);
      d.layer_maps = torch::stack(layers);
    } else {
      d.layer_maps = torch::zeros({static_cast<int64_t>(s.taps.size()), s.size, s.size}, fused.options().dtype(torch::kFloat32));
    }
    if (few_shot.defined()) d.few_shot = few_shot[b][0].contiguous();
    d.score = scores[b].item<float>();
    if (embeddings.defined()) d.embedding = embeddings[b].contiguous();
    if (patch_features.defined()) d.patch_features = patch_features[b].contiguous();
    d.encode_seconds = encode_seconds;
    d.map_seconds = map_seconds;
    out.push_back(std::move(d));
  }
  return out;
}

void to_host(Detection& d) {
  for (auto* t : {&d.map, &d.layer_maps, &d.few_shot, &d.embedding, &d.patch_features})
    nn::to_device(*t, torch::kCPU);
}

torch::Tensor resize_map(const torch::Tensor& map, int64_t height, int64_t width) {
  auto grid = map.reshape({1, 1, map.size(-2), map.size(-1)}).to(torch::kFloat32);
  return F::interpolate(grid, F::InterpolateFuncOptions()
                                  .size(std::vector<int64_t>{height, width})
                                  .mode(torch::kBilinear)
                                  .align_corners(false))[0][0];
}

}  // namespace iadgpt::anomaly
