// Memory figures of this process from /proc/self/status, for the tests that bound memory.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <string>
#include <thread>

namespace iadgpt::test {

// A field of /proc/self/status in bytes: "VmRSS", "VmHWM" (peak), "RssAnon" (heap and other
// anonymous pages), "RssFile" (mapped file pages). -1 when absent.
inline int64_t proc_status_bytes(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string key;
  int64_t kib = -1;
  while (status >> key) {
    if (key == field + ":") {
      status >> kib;
      break;
    }
  }
  return kib < 0 ? -1 : kib * 1024;
}

// How far the resident set rises above its level at construction while `run` runs. The kernel's
// peak (VmHWM) is reset first (Linux: 5 written to clear_refs); where that is refused, VmRSS is
// sampled every millisecond instead (which can miss a spike shorter than that, never a held copy).
template <class F>
int64_t peak_rss_rise(F&& run) {
  { std::ofstream("/proc/self/clear_refs") << "5"; }
  const int64_t before = proc_status_bytes("VmRSS");
  if (proc_status_bytes("VmHWM") <= before + (4 << 20)) {
    run();
    return proc_status_bytes("VmHWM") - before;
  }
  std::atomic<bool> done{false};
  std::atomic<int64_t> peak{before};
  std::thread sampler([&] {
    while (!done) {
      peak = std::max<int64_t>(peak, proc_status_bytes("VmRSS"));
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  run();
  done = true;
  sampler.join();
  return std::max<int64_t>(peak, proc_status_bytes("VmRSS")) - before;
}

}  // namespace iadgpt::test
