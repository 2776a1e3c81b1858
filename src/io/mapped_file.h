// A read-only view of a whole file through mmap (private, copy-on-write mapping).
//
//   auto file = iadgpt::io::MappedFile::open("model.safetensors");   // shared_ptr
//   std::span<const uint8_t> bytes = file->bytes();
//
// Tensors that point into the mapping hold the shared_ptr in their deleter, so the mapping
// lives exactly as long as the last tensor. The mapping is MAP_PRIVATE with write access:
// an in-place op on such a tensor copies the touched pages instead of faulting or writing
// through to the file.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>

namespace iadgpt::io {

class MappedFile {
 public:
  // Throws InputError when the file cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  uint8_t* mutable_data() const { return data_; }
  size_t size() const { return size_; }

 private:
  MappedFile(uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace iadgpt::io
