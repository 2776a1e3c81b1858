// Which c10d backend a data-parallel run uses (train/distributed.h): Gloo on the CPU, NCCL on
// CUDA, and a clear error where the build has no NCCL (this CPU-only build).
#include <gtest/gtest.h>

#include "io/error.h"
#include "train/distributed.h"

using namespace iadgpt;

TEST(DistributedBackend, GlooOnTheCpuNcclOnCudaOrAnErrorNamingIt) {
  EXPECT_EQ(train::backend_for(torch::Device("cpu")), "gloo");
#if defined(IADGPT_WITH_CUDA) && defined(USE_C10D_NCCL)
  EXPECT_EQ(train::backend_for(torch::Device("cuda:0")), "nccl");
#else
  try {
    train::backend_for(torch::Device("cuda:0"));
    FAIL() << "a build without NCCL accepted a multi-process CUDA run";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("no NCCL"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--world-size 1"), std::string::npos) << e.what();
  }
#endif
}
