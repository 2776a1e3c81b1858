#include "nn/weights.h"

#include <fmt/format.h>

#include "io/error.h"
#include "io/mapped_file.h"

namespace iadgpt::nn {

std::string shape_string(at::IntArrayRef shape) { return fmt::format("[{}]", fmt::join(shape, ",")); }

bool has(const io::TensorMap& tensors, const std::string& key) { return tensors.count(key) != 0; }

torch::Tensor take(const io::TensorMap& tensors, const std::string& key,
                   const std::vector<int64_t>& shape, std::string_view source, torch::Dtype dtype) {
  auto it = tensors.find(key);
  if (it == tensors.end()) {
    throw InputError(fmt::format("{}: missing tensor '{}' (expected shape {})", source, key,
                                 shape_string(shape)));
  }
  const auto& tensor = it->second;
  bool fits = tensor.dim() == static_cast<int64_t>(shape.size());
  for (size_t i = 0; fits && i < shape.size(); ++i) {
    fits = shape[i] < 0 || tensor.size(static_cast<int64_t>(i)) == shape[i];
  }
  if (!fits) {
    throw InputError(fmt::format("{}: tensor '{}' has shape {}, expected {}", source, key,
                                 shape_string(tensor.sizes()), shape_string(shape)));
  }
  if (!tensor.is_floating_point()) {
    throw InputError(fmt::format("{}: tensor '{}' has dtype {}, expected a floating type", source,
                                 key, std::string(c10::toString(tensor.scalar_type()))));
  }
  return convert_weight(tensor, dtype);
}

torch::Tensor convert_weight(const torch::Tensor& t, torch::Dtype dtype) {
  auto out = t.to(dtype).contiguous();
  if (!out.is_alias_of(t)) io::release_mapped_pages(t);
  return out;
}

}  // namespace iadgpt::nn
