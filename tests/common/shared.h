// Paths the tests read: ../shared beside the checkout (or $IADGPT_SHARED), the built program.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>
#include <unistd.h>

namespace iadgpt::test {

inline std::filesystem::path shared_dir() {
  if (const char* env = std::getenv("IADGPT_SHARED"); env && *env) return env;
  return std::filesystem::path(IADGPT_SOURCE_DIR) / ".." / "shared";
}

inline std::filesystem::path fixture(const std::string& rel) { return shared_dir() / "fixtures" / rel; }
inline std::filesystem::path data(const std::string& rel) { return shared_dir() / "data" / rel; }

// The iadgpt program under test.
inline std::filesystem::path program() {
  if (const char* env = std::getenv("IADGPT_BIN"); env && *env) return env;
  return std::filesystem::path(IADGPT_BINARY_DIR) / "iadgpt";
}

// A scratch directory per test binary run: iadgpt-test-<name>-<pid> in the temporary directory.
// test_main removes this run's directories when every test passed (IADGPT_KEEP_SCRATCH=1 keeps them).
inline std::filesystem::path scratch(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("iadgpt-test-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

// The scratch directories that the process `pid` made (by the naming above).
inline std::vector<std::filesystem::path> scratch_dirs_of(pid_t pid) {
  const std::string suffix = "-" + std::to_string(pid);
  std::vector<std::filesystem::path> dirs;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(std::filesystem::temp_directory_path(), ec)) {
    const auto name = e.path().filename().string();
    if (name.rfind("iadgpt-test-", 0) == 0 && name.size() > suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0 && e.is_directory(ec))
      dirs.push_back(e.path());
  }
  return dirs;
}

}  // namespace iadgpt::test
