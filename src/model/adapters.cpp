#include "model/adapters.h"

#include <fmt/format.h>

#include <cmath>

#include "io/error.h"
#include "nn/weights.h"

namespace iadgpt::model {
namespace F = torch::nn::functional;

TextGuidedEnhancerImpl::TextGuidedEnhancerImpl(int64_t embed_dim, int64_t llm_hidden) {
  llama_proj = register_module("llama_proj", torch::nn::Linear(embed_dim, llm_hidden));
  normal_path = register_module("normal_path", torch::nn::Linear(2 * embed_dim, llm_hidden));
  abnormal_path = register_module("abnormal_path", torch::nn::Linear(2 * embed_dim, llm_hidden));
  gate_log_scale = register_parameter("gate_log_scale", torch::full({}, std::log(1.0 / 0.07)));
  // Zero pathways: an untrained TGE adds nothing, so E_img equals PandaGPT's llama_proj(e).
  torch::NoGradGuard no_grad;
  for (auto* path : {&normal_path, &abnormal_path}) {
    (*path)->weight.zero_();
    (*path)->bias.zero_();
  }
}

torch::Tensor TextGuidedEnhancerImpl::forward(const torch::Tensor& e, const torch::Tensor& normal_sentences,
                                              const torch::Tensor& abnormal_sentences, const torch::Tensor& f_text) {
  auto pathway = [&](const torch::Tensor& sentences, torch::nn::Linear& path) {
    auto attention = torch::softmax(torch::matmul(e, sentences.t()) / kAttentionTemperature, -1);  // [B, K]
    auto context = torch::matmul(attention, sentences);                                             // [B, D]
    return path->forward(torch::cat({e, context}, -1));                                             // [B, H]
  };
  auto gate = torch::softmax(torch::matmul(e, f_text.t()) * gate_log_scale.exp(), -1);  // [B, 2]
  return llama_proj->forward(e) + gate.slice(1, 0, 1) * pathway(normal_sentences, normal_path) +
         gate.slice(1, 1, 2) * pathway(abnormal_sentences, abnormal_path);
}

int64_t TextGuidedEnhancerImpl::enhancer_parameter_count() {
  return parameter_count(*this) - parameter_count(*llama_proj);
}

namespace {

// conv 3×3 (padding 1) → ReLU → 2×2 max-pool, the stage both expert modules repeat.
void add_stage(torch::nn::Sequential& seq, int64_t in, int64_t out) {
  seq->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1)));
  seq->push_back(torch::nn::ReLU());
  seq->push_back(torch::nn::MaxPool2d(2));
}

}  // namespace

MultiMaskFusionImpl::MultiMaskFusionImpl(int64_t llm_hidden) {
  convs = torch::nn::Sequential();
  int64_t in = kMasks;
  for (int64_t out : {16, 64, 256, 512, 1024}) {
    add_stage(convs, in, out);
    in = out;
  }
  register_module("convs", convs);
  cell_proj = register_module("cell_proj", torch::nn::Linear(1024, llm_hidden));
  base_tokens = register_parameter("base_tokens", torch::randn({9, llm_hidden}));
}

torch::Tensor MultiMaskFusionImpl::forward(const torch::Tensor& masks) {
  if (masks.dim() != 4 || masks.size(1) != kMasks) {
    throw InputError(fmt::format("multi-mask fusion expects [B, 6, S, S] masks, got {}", nn::shape_string(masks.sizes())));
  }
  auto features = F::adaptive_avg_pool2d(convs->forward(masks), F::AdaptiveAvgPool2dFuncOptions({3, 3}));
  auto cells = features.flatten(2).transpose(1, 2);  // [B, 9, 1024], row-major cells
  auto map_tokens = cell_proj->forward(cells);       // [B, 9, H]
  return torch::cat({base_tokens.unsqueeze(0).expand({masks.size(0), -1, -1}), map_tokens}, 1);
}

PromptLearnerImpl::PromptLearnerImpl(int64_t hidden, int64_t maps_in) : llm_hidden(hidden) {
  meta_net = torch::nn::Sequential();
  int64_t in = maps_in;
  for (int64_t mult : {4, 16, 64, 256, 1024}) {
    add_stage(meta_net, in, maps_in * mult);
    in = maps_in * mult;
  }
  // 7×7 → 3×3 with a 5×5 kernel and no padding: one H-wide token per cell.
  meta_net->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, hidden, 5)));
  register_module("meta_net", meta_net);
  base_prompts = register_parameter("base_prompts", torch::randn({9, hidden}));
}

torch::Tensor PromptLearnerImpl::forward(const torch::Tensor& map) {
  auto tokens = meta_net->forward(map);  // [B, H, 3, 3]
  const int64_t batch = map.size(0);
  tokens = tokens.reshape({batch, llm_hidden, 9}).transpose(-2, -1);
  return torch::cat({base_prompts.unsqueeze(0).expand({batch, -1, -1}), tokens}, 1);
}

int64_t parameter_count(torch::nn::Module& module) {
  int64_t count = 0;
  for (const auto& p : module.parameters()) count += p.numel();
  return count;
}

void load_parameters(torch::nn::Module& module, const io::TensorMap& tensors, std::string_view prefix,
                     std::string_view source) {
  torch::NoGradGuard no_grad;
  for (auto& item : module.named_parameters()) {
    const auto key = std::string(prefix) + item.key();
    auto it = tensors.find(key);
    if (it == tensors.end()) throw InputError(fmt::format("{}: missing tensor '{}'", source, key));
    if (it->second.sizes() != item.value().sizes()) {
      throw InputError(fmt::format("{}: tensor '{}' has shape {}, expected {}", source, key,
                                   nn::shape_string(it->second.sizes()), nn::shape_string(item.value().sizes())));
    }
    item.value().copy_(it->second.to(item.value().scalar_type()));
  }
}

io::TensorMap parameter_tensors(torch::nn::Module& module, std::string_view prefix) {
  io::TensorMap out;
  for (const auto& item : module.named_parameters()) {
    out[std::string(prefix) + item.key()] = item.value().detach().clone();
  }
  return out;
}

}  // namespace iadgpt::model
