#include "train/checkpoints.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <regex>

#include "io/error.h"
#include "io/safetensors.h"

namespace iadgpt::train {
namespace fs = std::filesystem;

namespace {

void fsync_path(const fs::path& p, int flags) {
  const int fd = ::open(p.c_str(), flags);
  if (fd < 0) throw std::runtime_error(fmt::format("{}: cannot open to sync: {}", p.string(), std::strerror(errno)));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw std::runtime_error(fmt::format("{}: fsync failed: {}", p.string(), std::strerror(errno)));
}

const std::regex kName(R"(^step-(\d+)\.safetensors$)");

}  // namespace

void write_file_atomic(const fs::path& path, const std::string& bytes, const std::function<void(size_t)>& after_bytes) {
  const auto dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  const auto tmp = dir / ("." + path.filename().string() + ".tmp");
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(fmt::format("{}: cannot create: {}", tmp.string(), std::strerror(errno)));
  constexpr size_t kChunk = 1 << 20;
  size_t done = 0;
  while (done < bytes.size()) {
    const size_t n = std::min(kChunk, bytes.size() - done);
    const ssize_t w = ::write(fd, bytes.data() + done, n);
    if (w < 0) {
      if (errno == EINTR) continue;  // a signal (SIGINT handler) interrupted the write: retry
      const int err = errno;
      ::close(fd);
      throw std::runtime_error(fmt::format("{}: write failed: {}", tmp.string(), std::strerror(err)));
    }
    done += static_cast<size_t>(w);
    if (after_bytes) after_bytes(done);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0)
    throw std::runtime_error(fmt::format("{}: fsync/close failed: {}", tmp.string(), std::strerror(errno)));
  fs::rename(tmp, path);               // atomic on POSIX: readers see the old or the new file
  fsync_path(dir, O_RDONLY | O_DIRECTORY);  // the rename itself survives a power cut
}

CheckpointStore::CheckpointStore(fs::path directory, int64_t keep) : directory_(std::move(directory)), keep_(keep) {}

fs::path CheckpointStore::save(int64_t step, const io::TensorMap& tensors, const std::map<std::string, std::string>& metadata,
                               const std::function<void(size_t)>& after_bytes) const {
  fs::create_directories(directory_);
  const auto path = directory_ / fmt::format("step-{:09d}.safetensors", step);
  write_file_atomic(path, io::serialize_safetensors(tensors, metadata), after_bytes);
  auto all = list();
  for (size_t i = 0; i + keep_ < all.size(); ++i) fs::remove(all[i].second);
  return path;
}

std::vector<std::pair<int64_t, fs::path>> CheckpointStore::list() const {
  std::vector<std::pair<int64_t, fs::path>> out;
  if (!fs::is_directory(directory_)) return out;
  for (const auto& entry : fs::directory_iterator(directory_)) {
    std::smatch m;
    const auto name = entry.path().filename().string();
    if (std::regex_match(name, m, kName)) out.emplace_back(std::stoll(m[1]), entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::optional<LoadedCheckpoint> CheckpointStore::latest() const {
  auto all = list();
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    try {
      LoadedCheckpoint c;
      c.step = it->first;
      c.path = it->second;
      std::ifstream in(it->second, std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (!in && !in.eof()) throw std::runtime_error("read failed");
      c.tensors = io::parse_safetensors(
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), it->second.string(),
          &c.metadata);
      return c;
    } catch (const std::exception& e) {
      std::cerr << "iadgpt: warning: skipping unreadable checkpoint " << it->second.string() << ": " << e.what() << "\n";
    }
  }
  return std::nullopt;
}

}  // namespace iadgpt::train
