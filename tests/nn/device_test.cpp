// `--device` names (nn/device.h): what parses, what is refused and with which words.
#include <gtest/gtest.h>

#include "io/error.h"
#include "nn/device.h"

using namespace iadgpt;

namespace {

std::string error_of(std::string_view name) {
  try {
    nn::parse_device(name);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Device, CpuParsesAndNamesItself) {
  const auto d = nn::parse_device("cpu");
  EXPECT_TRUE(d.is_cpu());
  EXPECT_EQ(nn::device_name(d), "cpu");
  EXPECT_EQ(nn::device_name(torch::Device(torch::kCUDA, 1)), "cuda:1");
}

TEST(Device, MisspelledNamesAreRefusedNamingTheValue) {
  for (const char* bad : {"gpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "cuda:1a", "cuda:999", "", "cuda 0"}) {
    const auto message = error_of(bad);
    EXPECT_NE(message.find(std::string("--device ") + bad + ":"), std::string::npos) << bad << " -> " << message;
    EXPECT_NE(message.find("cpu, cuda or cuda:N"), std::string::npos) << message;
    EXPECT_FALSE(nn::is_device_name(bad)) << bad;
  }
  for (const char* good : {"cpu", "cuda", "cuda:0", "cuda:7"}) EXPECT_TRUE(nn::is_device_name(good)) << good;
}

TEST(Device, CudaOnThisBuildIsOneClearError) {
  if (nn::built_with_cuda()) {
    // A CUDA build: the error, if any, counts the visible devices (scripts/gpu-check.sh runs there).
    if (torch::cuda::device_count() == 0) EXPECT_NE(error_of("cuda").find("0 CUDA device(s) visible"), std::string::npos);
    else EXPECT_TRUE(nn::parse_device("cuda:0").is_cuda());
    return;
  }
  for (const char* name : {"cuda", "cuda:0", "cuda:3"}) {
    const auto message = error_of(name);
    EXPECT_NE(message.find("CUDA is not available in this build"), std::string::npos) << message;
  }
  // Where the value came from is named.
  try {
    nn::parse_device("cuda", "bundle device");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("bundle device cuda: ", 0), 0u) << e.what();
  }
}

TEST(Device, ToDeviceLeavesUndefinedTensorsUndefinedAndDoesNotCopyInPlace) {
  torch::Tensor none;
  nn::to_device(none, torch::kCPU);
  EXPECT_FALSE(none.defined());
  auto t = torch::ones({3});
  const auto* before = t.data_ptr<float>();
  nn::to_device(t, torch::kCPU);
  EXPECT_EQ(t.data_ptr<float>(), before);  // already there: the same storage
}

// The counting mode (SyncCheck / PlannedSync): on CUDA a device→host read inside a SyncCheck
// throws unless a PlannedSync covers it, and the mode is restored afterwards; on the CPU both are
// no-ops (a read works).
TEST(SyncCheck, AnUnplannedDeviceReadThrowsAndAPlannedOneDoesNot) {
  {
    nn::SyncCheck check(true);
    EXPECT_EQ(torch::ones({2}).sum().item<float>(), 2.0f);  // CPU tensors never synchronise
  }
  if (!nn::built_with_cuda() || torch::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device here";
  const auto t = torch::ones({2}, torch::Device("cuda:0"));
  {
    nn::SyncCheck check(true);
    EXPECT_THROW(t.sum().item<float>(), c10::Error);
    nn::PlannedSync planned;
    EXPECT_EQ(t.sum().item<float>(), 2.0f);
  }
  EXPECT_EQ(t.sum().item<float>(), 2.0f);  // the mode was restored
}
