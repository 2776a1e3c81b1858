#include "train/checkpoints.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <regex>

#include "io/atomic_file.h"
#include "io/error.h"
#include "io/safetensors.h"

namespace iadgpt::train {
namespace fs = std::filesystem;

namespace {

const std::regex kName(R"(^step-(\d+)\.safetensors$)");

}  // namespace

CheckpointStore::CheckpointStore(fs::path directory, int64_t keep) : directory_(std::move(directory)), keep_(keep) {}

fs::path CheckpointStore::save(int64_t step, const io::TensorMap& tensors, const std::map<std::string, std::string>& metadata,
                               const std::function<void(size_t)>& after_bytes) const {
  fs::create_directories(directory_);
  const auto path = directory_ / fmt::format("step-{:09d}.safetensors", step);
  io::write_file_atomic(path, io::serialize_safetensors(tensors, metadata), after_bytes);
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
