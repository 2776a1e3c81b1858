// `iadgpt serve` as a child process on a free port, for end-to-end tests of the real program
// with a bundle made from the tiny fixtures.
#pragma once
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/shared.h"
#include "model/tiny_bundle.h"

namespace iadgpt::test {

class ServeProcess {
 public:
  // Runs `iadgpt serve --model <bundle> --port 0 <extra...>` and waits (up to 120 s) for the
  // "listening on http://host:port" line.
  ServeProcess(const std::filesystem::path& bundle, const std::vector<std::string>& extra) {
    log_ = scratch("serve-process") / ("serve-" + std::to_string(counter_++) + ".log");
    std::vector<std::string> args = {program().string(), "serve", "--model", bundle.string(), "--port", "0"};
    args.insert(args.end(), extra.begin(), extra.end());
    int out[2];
    if (::pipe(out) != 0) throw std::runtime_error("pipe failed");
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::dup2(out[1], 1);
      const int err = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (err >= 0) ::dup2(err, 2);
      ::close(out[0]);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    out_ = out[0];
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    std::string text;
    const std::regex listening("listening on http://([^:]+):([0-9]+)");
    std::smatch m;
    while (!std::regex_search(text, m, listening)) {
      pollfd p{out_, POLLIN, 0};
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
        stop();
        throw std::runtime_error("iadgpt serve did not start in 120 s; log: " + slurp_log());
      }
      char buf[512];
      const auto n = ::read(out_, buf, sizeof(buf));
      if (n <= 0) {
        stop();
        throw std::runtime_error("iadgpt serve exited before listening; log: " + slurp_log());
      }
      text.append(buf, static_cast<size_t>(n));
    }
    port_ = std::stoi(m[2]);
  }
  ~ServeProcess() { stop(); }

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  bool alive() const { return pid_ > 0 && ::waitpid(pid_, nullptr, WNOHANG) == 0; }

  void signal(int sig) const {
    if (pid_ > 0) ::kill(pid_, sig);
  }

  // Waits up to `seconds` for the process to end by itself; its exit code (-signal when killed),
  // or nullopt while it still runs.
  std::optional<int> wait_exit(double seconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (pid_ > 0) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        if (out_ >= 0) ::close(out_);
        out_ = -1;
        return status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
      }
      if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return status_;
  }

  // SIGTERM, then SIGKILL after 10 s; returns the exit code (-signal when killed).
  int stop() {
    if (pid_ <= 0) return status_;
    ::kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 200; ++i) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        if (out_ >= 0) ::close(out_);
        out_ = -1;
        return status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    if (out_ >= 0) ::close(out_);
    out_ = -1;
    return status_ = -SIGKILL;
  }

  std::string slurp_log() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  static inline int counter_ = 0;
  std::filesystem::path log_;
  pid_t pid_ = -1;
  int out_ = -1, port_ = 0, status_ = -1;
};

}  // namespace iadgpt::test
