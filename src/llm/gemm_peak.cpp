#include "llm/gemm_peak.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>

#include "io/error.h"

namespace iadgpt::llm {

double measure_gemm_flops(int64_t rows, int64_t inner, int64_t outer, torch::Dtype dtype, int passes) {
  if (rows < 1 || inner < 1 || outer < 1 || passes < 1)
    throw InputError(fmt::format("measure_gemm_flops: sizes {}x{}x{} and passes {} must be positive", rows, inner,
                                 outer, passes));
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({rows, inner}).to(dtype);
  const auto w = torch::randn({outer, inner}).mul_(0.02).to(dtype);
  auto y = torch::linear(x, w);  // warm-up: first touch of the output, oneDNN's primitive cache
  double best = 1e30;
  for (int i = 0; i < passes; ++i) {
    const auto start = std::chrono::steady_clock::now();
    y = torch::linear(x, w);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return 2.0 * static_cast<double>(rows) * static_cast<double>(inner) * static_cast<double>(outer) / best;
}

double prefill_flops(const LlamaConfig& c, int64_t tokens) {
  const double d = static_cast<double>(c.hidden_size), f = static_cast<double>(c.intermediate_size);
  const double q = static_cast<double>(c.q_dim()), kv = static_cast<double>(c.kv_dim());
  const double t = static_cast<double>(tokens);
  const double matrices = d * q + 2 * d * kv + q * d + 3 * d * f;  // q, k, v, o; gate, up, down
  // Token i attends to i + 1 positions: Σ (i + 1) = t(t + 1)/2 score rows, each q_dim wide, for
  // q·k and again for p·v.
  const double attention = 2.0 * 2.0 * q * t * (t + 1) / 2.0;
  return static_cast<double>(c.num_layers) * (2.0 * t * matrices + attention) +
         2.0 * d * static_cast<double>(c.vocab_size);
}

}  // namespace iadgpt::llm
