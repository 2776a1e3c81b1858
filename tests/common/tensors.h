// Comparing tensors in the tests: differences taken in float64, whatever the dtypes.
#pragma once
#include <torch/torch.h>

namespace iadgpt::test {

inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

}  // namespace iadgpt::test
