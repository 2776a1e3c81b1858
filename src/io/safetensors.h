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
#include <filesystem>
#include <map>
#include <memory>
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

class AtomicFile;

// A safetensors file written one tensor at a time: the header (every name, dtype and shape) is
// written first, then each tensor's bytes in name order, through AtomicFile. A converter holds
// only what it has read and not yet written, not the whole file (save_safetensors is this writer
// over a map). Names must be unique and valid; write() takes the entries in the order entries()
// gives (sorted by name) and checks dtype and shape; commit() needs every entry written, else
// InputError and the target is left as it was.
class SafetensorsWriter {
 public:
  SafetensorsWriter(const std::filesystem::path& path, std::vector<SafetensorsEntry> entries,
                    const std::map<std::string, std::string>& metadata);
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  const std::vector<SafetensorsEntry>& entries() const { return entries_; }  // offsets filled in
  void write(const std::string& name, const at::Tensor& tensor);
  void commit();

 private:
  std::filesystem::path path_;
  std::vector<SafetensorsEntry> entries_;
  size_t next_ = 0;
  std::unique_ptr<AtomicFile> file_;
};

}  // namespace iadgpt::io
