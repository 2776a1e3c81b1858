// gtest entry point shared by every test binary: fails loudly when ../shared is absent,
// so a missing fixture is never a silent skip; removes this run's scratch directories when
// every test passed (a failed run keeps them, and names them, for a look).
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "common/shared.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  torch::set_num_threads(2);
  const auto root = iadgpt::test::shared_dir();
  if (!std::filesystem::is_directory(root)) {
    std::cerr << "error: shared fixtures not found at " << root
              << " (expected ../shared beside the checkout, or IADGPT_SHARED)\n";
    return 2;
  }
  const int rc = RUN_ALL_TESTS();
  const auto scratches = iadgpt::test::scratch_dirs_of(::getpid());
  const char* keep = std::getenv("IADGPT_KEEP_SCRATCH");
  for (const auto& dir : scratches) {
    if (rc == 0 && !(keep && *keep)) {
      std::error_code ec;  // a directory that cannot be removed is not a test failure
      std::filesystem::remove_all(dir, ec);
    } else {
      std::cerr << "scratch kept: " << dir.string() << "\n";
    }
  }
  return rc;
}
