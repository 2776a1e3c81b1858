// gtest entry point shared by every test binary: fails loudly when ../shared is absent,
// so a missing fixture is never a silent skip.
#include <gtest/gtest.h>
#include <torch/torch.h>

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
  return RUN_ALL_TESTS();
}
