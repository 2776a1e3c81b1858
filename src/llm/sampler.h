// Next-token choice from logits: greedy, or temperature / top-k / top-p sampling with a seeded
// generator, after an optional repetition penalty (CTRL / HF: divide positive logits, multiply
// negative ones, for every token already in the context).
//
//   iadgpt::llm::Sampler s({.temperature = 0.7, .top_p = 0.9, .seed = 42});
//   int64_t id = s.sample(logits, context_ids);
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <random>
#include <span>

namespace iadgpt::llm {

struct SamplingParams {
  double temperature = 0.0;  // 0 = greedy (argmax)
  int64_t top_k = 0;         // 0 = all tokens
  double top_p = 1.0;        // nucleus; 1 = off
  double repetition_penalty = 1.0;
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplingParams params);
  // logits: [V] or [1, V] fp32. `context`: ids the repetition penalty applies to.
  int64_t sample(const torch::Tensor& logits, std::span<const int64_t> context = {});
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace iadgpt::llm
