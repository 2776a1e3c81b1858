// The slice of ATen the io module uses. Deliberately not <torch/torch.h>: the io module (and
// its fuzz drivers) must also compile with clang 14 in C++20, which cannot parse ATen's full
// operator headers (std::vector<IValue> of an incomplete type, a clang 14 constexpr bug).
// torch::Tensor and torch::Dtype are aliases of at::Tensor and at::ScalarType, so callers that
// include <torch/torch.h> use these types unchanged.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_ops.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/ScalarType.h>

namespace iadgpt::io {

// at::empty without <ATen/Functions.h>: uninitialised CPU tensor of `dtype`.
inline at::Tensor empty_tensor(at::IntArrayRef shape, at::ScalarType dtype) {
  return at::_ops::empty_memory_format::call(c10::fromIntArrayRef(shape), dtype, c10::nullopt, c10::nullopt,
                                             c10::nullopt, c10::nullopt);
}

// A tensor with a shape and dtype but no data (device meta): what headers-only loading returns.
inline at::Tensor meta_tensor(at::IntArrayRef shape, at::ScalarType dtype) {
  return at::_ops::empty_memory_format::call(c10::fromIntArrayRef(shape), dtype, c10::nullopt, at::Device(at::kMeta),
                                             c10::nullopt, c10::nullopt);
}

inline at::Tensor zeros_tensor(at::IntArrayRef shape, at::ScalarType dtype) { return empty_tensor(shape, dtype).zero_(); }

}  // namespace iadgpt::io
