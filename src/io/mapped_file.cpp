#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <ATen/ops/set_ops.h>
#include <fmt/format.h>

#include <algorithm>

#include "io/error.h"

namespace iadgpt::io {

std::shared_ptr<MappedFile> MappedFile::open(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw InputError(fmt::format("{}: cannot open: {}", path.string(), std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InputError(fmt::format("{}: not a regular file", path.string()));
  }
  const auto size = static_cast<size_t>(st.st_size);
  uint8_t* data = nullptr;
  if (size > 0) {  // mmap of length 0 is an error; an empty file is an empty span
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      throw InputError(fmt::format("{}: cannot mmap: {}", path.string(), std::strerror(err)));
    }
    data = static_cast<uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file alive
  return std::shared_ptr<MappedFile>(new MappedFile(data, size));
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_);
}

namespace {

// The storage context of a tensor viewing a mapping: a reference that keeps the mapping alive.
// The deleter's address identifies such storages (release_mapped_pages).
void delete_mapping_ref(void* ref) { delete static_cast<std::shared_ptr<MappedFile>*>(ref); }

}  // namespace

at::Tensor MappedFile::tensor(const std::shared_ptr<MappedFile>& file, size_t offset, at::IntArrayRef shape,
                              at::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  c10::DataPtr ptr(file->data_ + offset, new std::shared_ptr<MappedFile>(file), &delete_mapping_ref,
                   at::Device(at::kCPU));
  c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, std::move(ptr), /*allocator=*/nullptr,
                       /*resizable=*/false);
  return empty_tensor({0}, dtype).set_(storage, 0, shape);
}

size_t release_mapped_pages(const at::Tensor& t) {
  if (!t.defined() || !t.has_storage()) return 0;
  const auto& ptr = t.storage().data_ptr();
  if (ptr.get_deleter() != &delete_mapping_ref) return 0;
  const auto& file = *static_cast<std::shared_ptr<MappedFile>*>(ptr.get_context());
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(ptr.get()), end = begin + t.storage().nbytes();
  const auto mapping_end = reinterpret_cast<uintptr_t>(file->bytes().data()) + file->size();
  // Whole pages only: a page shared with a neighbouring tensor stays.
  const uintptr_t first = (begin + page - 1) / page * page, last = std::min(end, mapping_end) / page * page;
  if (last <= first) return 0;
  if (::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED) != 0) return 0;
  return last - first;
}

}  // namespace iadgpt::io
