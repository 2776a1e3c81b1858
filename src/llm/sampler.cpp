#include "llm/sampler.h"

#include <fmt/format.h>

#include <unordered_set>

#include "io/error.h"

namespace iadgpt::llm {

Sampler::Sampler(SamplingParams p) : params_(p), rng_(p.seed) {
  if (p.temperature < 0) throw InputError(fmt::format("temperature must be >= 0, got {}", p.temperature));
  if (p.top_p <= 0 || p.top_p > 1) throw InputError(fmt::format("top-p must be in (0, 1], got {}", p.top_p));
  if (p.top_k < 0) throw InputError(fmt::format("top-k must be >= 0, got {}", p.top_k));
  if (p.repetition_penalty <= 0)
    throw InputError(fmt::format("repetition penalty must be > 0, got {}", p.repetition_penalty));
}

int64_t Sampler::sample(const torch::Tensor& logits_in, std::span<const int64_t> context) {
  // The one host copy of a decode step (nn/device.h): the logits row the token is drawn from.
  auto logits = logits_in.reshape({-1}).to(torch::kCPU, torch::kFloat32).contiguous().clone();
  const int64_t V = logits.numel();
  float* l = logits.data_ptr<float>();
  if (params_.repetition_penalty != 1.0) {
    std::unordered_set<int64_t> seen(context.begin(), context.end());
    for (int64_t id : seen) {
      if (id < 0 || id >= V) continue;
      l[id] = l[id] > 0 ? l[id] / params_.repetition_penalty : l[id] * params_.repetition_penalty;
    }
  }
  if (params_.temperature == 0.0) return logits.argmax().item<int64_t>();

  // Candidates sorted by logit; top-k then top-p cut the tail, then draw from the renormalised rest.
  auto [sorted, order] = logits.div(params_.temperature).sort(/*dim=*/0, /*descending=*/true);
  int64_t keep = params_.top_k > 0 ? std::min(params_.top_k, V) : V;
  auto probs = torch::softmax(sorted.narrow(0, 0, keep), 0).to(torch::kFloat64);
  const double* p = probs.data_ptr<double>();
  if (params_.top_p < 1.0) {
    double cum = 0;
    int64_t n = 0;
    while (n < keep) {
      cum += p[n++];
      if (cum >= params_.top_p) break;
    }
    keep = n;
  }
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += p[i];
  double u = std::uniform_real_distribution<double>(0.0, total)(rng_);
  for (int64_t i = 0; i < keep; ++i) {
    u -= p[i];
    if (u < 0) return order[i].item<int64_t>();
  }
  return order[keep - 1].item<int64_t>();
}

}  // namespace iadgpt::llm
