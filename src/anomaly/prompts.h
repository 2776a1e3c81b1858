// Text side of the anomaly maps (METHOD §1.3): normal/abnormal prompt ensembles per class, their
// embeddings reduced to F_text = [t_n; t_a], and an on-disk cache keyed by model identity,
// class and prompt set. The text tower is passed in as a callback so this module stays
// independent of which family encodes the sentences.
//
//   auto prompts = anomaly::build_prompts("metal_nut", anomaly::TemplateSet::AnomalyGpt);
//   auto feats = anomaly::encode_prompts(prompts, encode_sentences);   // feats.f_text: [2, D]
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace iadgpt::anomaly {

enum class TemplateSet {
  AnomalyGpt,  // 2 templates (AnomalyGPT's default)
  AprilGan,    // 35 templates (APRIL-GAN)
  WinClip,     // 22 templates (WinCLIP, as anomalib lists them)
};

TemplateSet parse_template_set(std::string_view name);  // "anomalygpt" | "april-gan" | "winclip"
std::string_view template_set_name(TemplateSet set);
std::span<const std::string_view> templates(TemplateSet set);

// "metal_nut" -> "metal nut"; empty -> "object".
std::string display_class_name(std::string_view class_name);

struct PromptEnsemble {
  std::string class_name;              // as displayed in the sentences
  std::vector<std::string> normal;     // state × template sentences
  std::vector<std::string> abnormal;   // state × template sentences, then extra (APG) sentences
};

PromptEnsemble build_prompts(std::string_view class_name, TemplateSet set,
                             std::span<const std::string> extra_abnormal = {});

// Sentences -> L2-normalised embeddings [n, D] (one row per sentence).
using SentenceEncoder = std::function<torch::Tensor(const std::vector<std::string>&)>;

struct TextFeatures {
  torch::Tensor normal_sentences;    // [K_n, D], rows normalised (U_n of METHOD §1.7)
  torch::Tensor abnormal_sentences;  // [K_a, D], rows normalised (U_a)
  torch::Tensor f_text;              // [2, D] = [t_n; t_a], each the normalised mean of its side
};

// Each side: normalise rows, mean, normalise (METHOD §1.3).
torch::Tensor side_embedding(const torch::Tensor& sentence_embeddings);
TextFeatures reduce_text_features(const torch::Tensor& normal_embeddings,
                                  const torch::Tensor& abnormal_embeddings);
TextFeatures encode_prompts(const PromptEnsemble& prompts, const SentenceEncoder& encode);

// Disk cache of TextFeatures, one safetensors file per (model identity, class, prompt set, extra
// sentences). The key is a hash of all of them, so a changed APG file never hits a stale entry.
class PromptCache {
 public:
  explicit PromptCache(std::filesystem::path directory);
  std::string key(std::string_view model_identity, const PromptEnsemble& prompts) const;
  std::optional<TextFeatures> load(const std::string& key) const;
  void store(const std::string& key, const TextFeatures& features) const;

  // Cached lookup: encodes on a miss and stores the result.
  TextFeatures get(std::string_view model_identity, const PromptEnsemble& prompts,
                   const SentenceEncoder& encode) const;

 private:
  std::filesystem::path directory_;
};

}  // namespace iadgpt::anomaly
