#include "io/atomic_file.h"

#include <algorithm>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fmt/format.h>

#include "io/error.h"

namespace iadgpt::io {
namespace {

std::string errno_text() { return std::strerror(errno); }

void fsync_directory(const std::filesystem::path& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // some filesystems refuse; the rename itself is still atomic
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

AtomicFile::AtomicFile(std::filesystem::path path) : path_(std::move(path)) {
  // Hidden and fixed per target: a temporary left by a killed writer is overwritten by the next
  // write instead of piling up, and never matches the target's own name pattern.
  tmp_ = path_.parent_path() / ("." + path_.filename().string() + ".tmp");
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw InputError(fmt::format("{}: cannot open for writing: {}", tmp_.string(), errno_text()));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    std::error_code ec;
    std::filesystem::remove(tmp_, ec);
  }
}

void AtomicFile::write(const void* data, std::size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw InputError(fmt::format("{}: write failed: {}", tmp_.string(), errno_text()));
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) throw InputError(fmt::format("{}: fsync failed: {}", tmp_.string(), errno_text()));
  ::close(fd_);
  fd_ = -1;
  std::error_code ec;
  std::filesystem::rename(tmp_, path_, ec);
  if (ec) {
    std::filesystem::remove(tmp_, ec);
    throw InputError(fmt::format("{}: cannot replace: {}", path_.string(), ec.message()));
  }
  fsync_directory(path_.parent_path());
}

void write_file_atomic(const std::filesystem::path& path, std::string_view bytes,
                       const std::function<void(std::size_t)>& after_bytes) {
  AtomicFile out(path);
  constexpr std::size_t kChunk = 1 << 20;
  for (std::size_t done = 0; done < bytes.size();) {
    const std::size_t n = std::min(kChunk, bytes.size() - done);
    out.write(bytes.data() + done, n);
    done += n;
    if (after_bytes) after_bytes(done);
  }
  out.commit();
}

}  // namespace iadgpt::io
