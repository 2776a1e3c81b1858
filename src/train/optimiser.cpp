#include "train/optimiser.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "io/error.h"
#include "nn/weights.h"

namespace iadgpt::train {

namespace {

// libtorch keys its per-parameter state by the tensor's implementation (as torch::optim's own
// serialisation does).
std::string state_key(const torch::Tensor& p) { return c10::guts::to_string(p.unsafeGetTensorImpl()); }

}  // namespace

Optimiser::Optimiser(std::vector<TrainedTensor> trained, const TrainConfig& cfg) {
  std::vector<torch::Tensor> adapters, llm;
  for (auto& t : trained) {
    names_.push_back(t.name);
    params_.push_back(t.tensor);
    is_llm_.push_back(t.is_llm);
    (t.is_llm ? llm : adapters).push_back(t.tensor);
  }
  auto options = [&](double lr) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(lr).betas({cfg.beta1, cfg.beta2}).eps(cfg.eps).weight_decay(cfg.weight_decay));
  };
  // One group for the adapters, one for the LLM (an empty group is left out).
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!adapters.empty()) groups.emplace_back(adapters, options(0.0));
  if (!llm.empty()) {
    llm_group_ = static_cast<int64_t>(groups.size());
    groups.emplace_back(llm, options(0.0));
  }
  if (!groups.empty()) adamw_ = std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(0.0));
}

double Optimiser::clip(double max_norm) {
  if (params_.empty()) return 0.0;
  if (max_norm > 0) return torch::nn::utils::clip_grad_norm_(params_, max_norm);
  // No clipping: the norm alone, computed as clip_grad_norm_ does (for the log).
  std::vector<torch::Tensor> norms;
  for (const auto& p : params_) norms.push_back(p.grad().norm(2));
  return torch::stack(norms).norm(2).item<double>();
}

void Optimiser::step(double lr_adapters, double lr_llm) {
  ++steps_;
  if (!adamw_) return;
  auto& groups = adamw_->param_groups();
  for (size_t g = 0; g < groups.size(); ++g)
    static_cast<torch::optim::AdamWOptions&>(groups[g].options()).lr(static_cast<int64_t>(g) == llm_group_ ? lr_llm : lr_adapters);
  adamw_->step();
}

void Optimiser::save(io::TensorMap& out) const {
  for (size_t i = 0; i < params_.size(); ++i) {
    torch::Tensor m, v;
    if (adamw_) {
      auto it = adamw_->state().find(state_key(params_[i]));
      if (it != adamw_->state().end()) {
        const auto& st = static_cast<const torch::optim::AdamWParamState&>(*it->second);
        m = st.exp_avg().clone();
        v = st.exp_avg_sq().clone();
      }
    }
    out.emplace("adam.m." + names_[i], m.defined() ? m : torch::zeros_like(params_[i]));
    out.emplace("adam.v." + names_[i], v.defined() ? v : torch::zeros_like(params_[i]));
  }
}

void Optimiser::load(const io::TensorMap& in, int64_t steps, const std::string& source) {
  steps_ = steps;
  auto get = [&](const std::string& key, const torch::Tensor& like) {
    auto it = in.find(key);
    if (it == in.end()) throw InputError(fmt::format("{}: no tensor '{}'", source, key));
    if (it->second.sizes() != like.sizes())
      throw InputError(fmt::format("{}: tensor '{}' has shape {}, expected {}", source, key,
                                   nn::shape_string(it->second.sizes()), nn::shape_string(like.sizes())));
    return it->second.to(like.device(), like.scalar_type()).clone();
  };
  if (!adamw_) return;
  for (size_t i = 0; i < params_.size(); ++i) {
    auto st = std::make_unique<torch::optim::AdamWParamState>();
    st->step(steps);
    st->exp_avg(get("adam.m." + names_[i], params_[i]));
    st->exp_avg_sq(get("adam.v." + names_[i], params_[i]));
    adamw_->state()[state_key(params_[i])] = std::move(st);
  }
}

}  // namespace iadgpt::train
