// Paths the tests read: ../shared beside the checkout (or $IADGPT_SHARED), the built program.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <string>
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

// A fresh scratch directory per test binary run.
inline std::filesystem::path scratch(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("iadgpt-test-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace iadgpt::test
