// A read-only view of a whole file through mmap (private, copy-on-write mapping).
//
//   auto file = iadgpt::io::MappedFile::open("model.safetensors");   // shared_ptr
//   std::span<const uint8_t> bytes = file->bytes();
//
// Tensors that point into the mapping (MappedFile::tensor) hold the shared_ptr in their
// storage, so the mapping lives exactly as long as the last tensor. The mapping is MAP_PRIVATE
// with write access: an in-place op on such a tensor copies the touched pages instead of
// faulting or writing through to the file.
//
// A loader that converts a mapped tensor (fp32 → bf16, or quantized) reads its pages once; they
// would stay resident, counted in the process's memory, until the whole file is unmapped.
// release_mapped_pages(source) drops them as soon as the copy is made.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>

#include "io/aten.h"

namespace iadgpt::io {

class MappedFile {
 public:
  // Throws InputError when the file cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  // A tensor of `shape` and `dtype` viewing the mapping from byte `offset` (the caller checks the
  // bounds and the alignment); its storage keeps `file` alive.
  static at::Tensor tensor(const std::shared_ptr<MappedFile>& file, size_t offset, at::IntArrayRef shape,
                           at::ScalarType dtype);

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  uint8_t* mutable_data() const { return data_; }
  size_t size() const { return size_; }

 private:
  MappedFile(uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// When `t` views a file mapping (MappedFile::tensor), drops the whole pages of its storage from
// the process's memory (madvise MADV_DONTNEED) and returns the bytes dropped; otherwise does
// nothing and returns 0. A hint for data read once: a later read of those bytes, through `t` or
// any other view, faults them back in from the file unchanged. (Bytes written through an
// in-place op on the mapping would be lost; loaders never write to it.)
size_t release_mapped_pages(const at::Tensor& t);

}  // namespace iadgpt::io
