// scripts/gpu-check.sh on a machine that cannot run it: exit 2 and one line saying why, before
// any build. (Its GPU path runs only where a GPU is: never in `make test`.)
#include <gtest/gtest.h>

#include "common/run.h"
#include "common/shared.h"

using namespace iadgpt;

namespace {

test::RunResult run_script(const std::string& env) {
  const auto dir = test::scratch("gpu-check");
  const std::string script = std::string(IADGPT_SOURCE_DIR) + "/scripts/gpu-check.sh";
  const auto out = dir / "stdout", err = dir / "stderr";
  const std::string cmd = env + " bash '" + script + "' '" + (dir / "out").string() + "' >'" + out.string() + "' 2>'" +
                          err.string() + "'";
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, test::slurp(out), test::slurp(err)};
}

}  // namespace

TEST(GpuCheck, WithoutAGpuItExitsTwoWithOneLine) {
  const auto r = run_script("NVIDIA_SMI=/bin/false");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(r.err, "gpu-check: no NVIDIA GPU found ('/bin/false -L' lists none); run this on a machine with one\n");
  EXPECT_EQ(r.out, "");
}

TEST(GpuCheck, WithAGpuButNoCudaPyTorchItSaysSo) {
  const auto fake = test::scratch("gpu-check") / "fake-nvidia-smi";
  std::ofstream(fake) << "#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n";
  std::filesystem::permissions(fake, std::filesystem::perms::owner_all);
  const auto r = run_script("NVIDIA_SMI='" + fake.string() + "' PYTHON=/bin/false");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(r.err.rfind("gpu-check: no CUDA PyTorch", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_FALSE(std::filesystem::exists(test::scratch("gpu-check") / "out" / "build"));  // nothing was built
}
