#include "anomaly/prompts.h"

#include <fmt/format.h>

#include <array>
#include <fstream>
#include <functional>
#include <thread>

#include <unistd.h>

#include "io/checkpoint.h"
#include "io/error.h"

namespace iadgpt::anomaly {
namespace {

// AnomalyGPT's state lists (code/model/openllama.py), METHOD §1.3.
constexpr std::array<std::string_view, 7> kNormalStates = {
    "{}", "flawless {}", "perfect {}", "unblemished {}",
    "{} without flaw", "{} without defect", "{} without damage"};
constexpr std::array<std::string_view, 5> kAbnormalStates = {
    "damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage"};

constexpr std::array<std::string_view, 2> kAnomalyGptTemplates = {"a photo of a {}.", "a photo of the {}."};

constexpr std::array<std::string_view, 35> kAprilGanTemplates = {
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a bright photo of a {}.", "a dark photo of the {}.",
    "a photo of my {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a photo of one {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "a low resolution photo of a {}.", "a photo of a large {}.",
    "a blurry photo of a {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a photo of the small {}.", "a photo of the large {}.", "a black and white photo of a {}.",
    "a dark photo of a {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "there is a {} in the scene.", "there is the {} in the scene.", "this is a {} in the scene.",
    "this is the {} in the scene.", "this is one {} in the scene."};

constexpr std::array<std::string_view, 22> kWinClipTemplates = {
    "a cropped photo of the {}.", "a cropped photo of a {}.", "a close-up photo of a {}.",
    "a close-up photo of the {}.", "a bright photo of a {}.", "a bright photo of the {}.",
    "a dark photo of the {}.", "a dark photo of a {}.", "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.", "a blurry photo of a {}.",
    "a photo of a {}.", "a photo of the {}.", "a photo of a small {}.", "a photo of the small {}.",
    "a photo of a large {}.", "a photo of the large {}.", "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.", "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection."};

// Pre-built views: std::span<const std::string_view> over the constexpr arrays.
std::string fill(std::string_view pattern, std::string_view value) {
  std::string out(pattern);
  const auto at = out.find("{}");
  if (at != std::string::npos) out.replace(at, 2, value);
  return out;
}

template <size_t N>
std::vector<std::string> expand(const std::array<std::string_view, N>& states,
                                std::span<const std::string_view> tmpl, std::string_view cls) {
  std::vector<std::string> out;
  out.reserve(N * tmpl.size());
  for (auto state : states) {
    const auto described = fill(state, cls);
    for (auto t : tmpl) out.push_back(fill(t, described));
  }
  return out;
}

// 64-bit FNV-1a: stable across runs and platforms, enough to key a cache.
uint64_t fnv1a(std::string_view data, uint64_t hash = 1469598103934665603ull) {
  for (unsigned char c : data) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return hash;
}

}  // namespace

TemplateSet parse_template_set(std::string_view name) {
  if (name == "anomalygpt") return TemplateSet::AnomalyGpt;
  if (name == "april-gan" || name == "aprilgan") return TemplateSet::AprilGan;
  if (name == "winclip") return TemplateSet::WinClip;
  throw InputError(fmt::format("unknown prompt template set '{}' (expected anomalygpt, april-gan or winclip)", name));
}

std::string_view template_set_name(TemplateSet set) {
  switch (set) {
    case TemplateSet::AnomalyGpt: return "anomalygpt";
    case TemplateSet::AprilGan: return "april-gan";
    case TemplateSet::WinClip: return "winclip";
  }
  return "?";
}

std::span<const std::string_view> templates(TemplateSet set) {
  switch (set) {
    case TemplateSet::AnomalyGpt: return kAnomalyGptTemplates;
    case TemplateSet::AprilGan: return kAprilGanTemplates;
    case TemplateSet::WinClip: return kWinClipTemplates;
  }
  return {};
}

std::string display_class_name(std::string_view class_name) {
  std::string out(class_name);
  std::replace(out.begin(), out.end(), '_', ' ');
  return out.empty() ? "object" : out;
}

PromptEnsemble build_prompts(std::string_view class_name, TemplateSet set,
                             std::span<const std::string> extra_abnormal) {
  PromptEnsemble prompts;
  prompts.class_name = display_class_name(class_name);
  prompts.normal = expand(kNormalStates, templates(set), prompts.class_name);
  prompts.abnormal = expand(kAbnormalStates, templates(set), prompts.class_name);
  prompts.abnormal.insert(prompts.abnormal.end(), extra_abnormal.begin(), extra_abnormal.end());
  return prompts;
}

torch::Tensor side_embedding(const torch::Tensor& sentence_embeddings) {
  auto rows = torch::nn::functional::normalize(sentence_embeddings.to(torch::kFloat32),
                                               torch::nn::functional::NormalizeFuncOptions().dim(-1));
  return torch::nn::functional::normalize(rows.mean(0), torch::nn::functional::NormalizeFuncOptions().dim(-1));
}

TextFeatures reduce_text_features(const torch::Tensor& normal_embeddings,
                                  const torch::Tensor& abnormal_embeddings) {
  namespace F = torch::nn::functional;
  if (normal_embeddings.dim() != 2 || abnormal_embeddings.dim() != 2 ||
      normal_embeddings.size(1) != abnormal_embeddings.size(1) || normal_embeddings.size(0) == 0 ||
      abnormal_embeddings.size(0) == 0) {
    throw InputError("prompt embeddings must be two non-empty [n, D] matrices of the same width");
  }
  TextFeatures feats;
  feats.normal_sentences = F::normalize(normal_embeddings.to(torch::kFloat32), F::NormalizeFuncOptions().dim(-1));
  feats.abnormal_sentences = F::normalize(abnormal_embeddings.to(torch::kFloat32), F::NormalizeFuncOptions().dim(-1));
  feats.f_text = torch::stack({side_embedding(normal_embeddings), side_embedding(abnormal_embeddings)});
  return feats;
}

TextFeatures encode_prompts(const PromptEnsemble& prompts, const SentenceEncoder& encode) {
  return reduce_text_features(encode(prompts.normal), encode(prompts.abnormal));
}

PromptCache::PromptCache(std::filesystem::path directory) : directory_(std::move(directory)) {}

std::string PromptCache::key(std::string_view model_identity, const PromptEnsemble& prompts) const {
  uint64_t h = fnv1a(model_identity);
  h = fnv1a("\x1f" + prompts.class_name, h);
  for (const auto& s : prompts.normal) h = fnv1a("\x1en" + s, h);
  for (const auto& s : prompts.abnormal) h = fnv1a("\x1e" "a" + s, h);
  return fmt::format("{:016x}", h);
}

std::optional<TextFeatures> PromptCache::load(const std::string& key) const {
  const auto path = directory_ / (key + ".safetensors");
  if (!std::filesystem::exists(path)) return std::nullopt;
  try {
    auto tensors = io::load_safetensors(path);
    TextFeatures feats;
    feats.normal_sentences = tensors.at("normal_sentences").to(torch::kFloat32);
    feats.abnormal_sentences = tensors.at("abnormal_sentences").to(torch::kFloat32);
    feats.f_text = tensors.at("f_text").to(torch::kFloat32);
    return feats;
  } catch (const std::exception&) {
    return std::nullopt;  // a damaged cache entry is recomputed, never trusted
  }
}

void PromptCache::store(const std::string& key, const TextFeatures& features) const {
  std::filesystem::create_directories(directory_);
  const auto final_path = directory_ / (key + ".safetensors");
  // A temporary name of this process and thread: detectors that share a cache directory (server
  // workers, several processes) may store the same key at once.
  const auto temp_path = directory_ / fmt::format("{}.safetensors.tmp.{}.{}", key, ::getpid(),
                                                  std::hash<std::thread::id>{}(std::this_thread::get_id()));
  io::save_safetensors(temp_path, {{"normal_sentences", features.normal_sentences},
                                   {"abnormal_sentences", features.abnormal_sentences},
                                   {"f_text", features.f_text}});
  std::filesystem::rename(temp_path, final_path);  // readers never see a half-written entry
}

TextFeatures PromptCache::get(std::string_view model_identity, const PromptEnsemble& prompts,
                              const SentenceEncoder& encode) const {
  const auto k = key(model_identity, prompts);
  if (auto cached = load(k)) return *cached;
  auto feats = encode_prompts(prompts, encode);
  store(k, feats);
  return feats;
}

}  // namespace iadgpt::anomaly
