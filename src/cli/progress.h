// A one-line progress bar with ETA on stderr (only when stderr is a terminal, or forced).
#pragma once
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace iadgpt::cli {

using Clock = std::chrono::steady_clock;
// Seconds from t0 to now (bench timings).
inline double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

class Progress {
 public:
  Progress(std::string label, int64_t total)
      : label_(std::move(label)), total_(total), start_(std::chrono::steady_clock::now()),
        enabled_(isatty(STDERR_FILENO) != 0) {}
  ~Progress() { finish(); }

  void step(int64_t done) {
    done_ = done;
    if (!enabled_ || total_ <= 0) return;
    const double elapsed = seconds();
    const double eta = done > 0 ? elapsed / done * (total_ - done) : 0.0;
    const int width = 30, filled = static_cast<int>(width * done / total_);
    std::fprintf(stderr, "\r%s [%s%s] %lld/%lld  %.1fs elapsed  ETA %.1fs ", label_.c_str(),
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                 static_cast<long long>(done), static_cast<long long>(total_), elapsed, eta);
    std::fflush(stderr);
  }
  void finish() {
    if (enabled_ && !finished_ && total_ > 0) std::fprintf(stderr, "\n");
    finished_ = true;
  }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::string label_;
  int64_t total_, done_ = 0;
  std::chrono::steady_clock::time_point start_;
  bool enabled_, finished_ = false;
};

}  // namespace iadgpt::cli
