// Strict lookup of checkpoint tensors: a loader asks for a key with the shape its config implies
// and gets either the tensor or an InputError naming the file, the key, expected and found shape.
//
//   auto w = iadgpt::nn::take(ckpt.tensors, "modality_heads.vision.2.weight", {D, Dv}, source);
#pragma once
#include <torch/torch.h>

#include <string>
#include <string_view>
#include <vector>

#include "io/checkpoint.h"

namespace iadgpt::nn {

// Returns tensors[key] as a float tensor of `dtype` after checking its shape ({} = scalar).
// A -1 in `shape` accepts any size in that dimension.
torch::Tensor take(const io::TensorMap& tensors, const std::string& key,
                   const std::vector<int64_t>& shape, std::string_view source,
                   torch::Dtype dtype = torch::kFloat32);

// True when the key exists.
bool has(const io::TensorMap& tensors, const std::string& key);

std::string shape_string(at::IntArrayRef shape);

// `t` as a contiguous tensor of `dtype`, for a loader converting weights once. When that copies
// a view of a memory-mapped checkpoint, the view's pages are released at once
// (io::release_mapped_pages): converting a model then never holds the whole source file resident
// beside the converted copy (an fp32 TinyLlama loaded as bf16 peaked at 3× the model).
torch::Tensor convert_weight(const torch::Tensor& t, torch::Dtype dtype);

}  // namespace iadgpt::nn
