// safetensors: in-memory parser behind load_safetensors (also the fuzzing entry point).
//
//   auto header = iadgpt::io::parse_safetensors_header(bytes, "model.safetensors");
//   for (const auto& e : header.entries) ...   // validated: dtype, shape, offsets
//   TensorMap t = iadgpt::io::parse_safetensors(bytes, "model.safetensors");  // copies
//
// Layout (huggingface/safetensors): u64 little-endian header length N, N bytes of JSON
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the data section; offsets are relative to the data section.
// Everything is validated before a single data byte is interpreted.
#pragma once
#include "io/aten.h"

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace iadgpt::io {

struct SafetensorsEntry {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section, end exclusive
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // sorted by name
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // offset of the data section in the file (8 + header length)
};

// The header of a whole file held in `bytes`; `what` names the file in errors.
// Throws InputError on any inconsistency.
SafetensorsHeader parse_safetensors_header(std::span<const uint8_t> bytes, std::string_view what);

// Parses and copies every tensor out of `bytes` (no reference to `bytes` is kept).
std::map<std::string, at::Tensor> parse_safetensors(std::span<const uint8_t> bytes, std::string_view what,
                                                       std::map<std::string, std::string>* metadata = nullptr);

// "F32" <-> at::kFloat ...; throws InputError for a dtype this port does not handle.
std::string_view safetensors_dtype_name(at::ScalarType dtype);

// The serialized file for `tensors` (what save_safetensors writes).
std::string serialize_safetensors(const std::map<std::string, at::Tensor>& tensors,
                                  const std::map<std::string, std::string>& metadata);

}  // namespace iadgpt::io
