// Helpers for the server tests: a scripted engine, an in-process server on a free port, raw
// sockets for requests that a well-behaved client would never send.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "common/shared.h"
#include "serve/engine.h"
#include "serve/map_engine.h"
#include "serve/server.h"

namespace iadgpt::test {

// Scores by mean brightness; answers say which image and turn they belong to; can be held at a
// gate to fill the queue. Counters are shared by every engine of a factory.
struct FakeCounters {
  std::atomic<int> detects{0}, asks{0};
  std::mutex mutex;
  std::condition_variable cv;
  bool gate_open = true;
  void open() {
    {
      std::lock_guard lock(mutex);
      gate_open = true;
    }
    cv.notify_all();
  }
};

class FakeEngine : public serve::Engine {
 public:
  explicit FakeEngine(std::shared_ptr<FakeCounters> c) : c_(std::move(c)) {}
  serve::DetectOutput detect(const serve::DetectInput& in) override {
    {
      std::unique_lock lock(c_->mutex);
      c_->cv.wait(lock, [&] { return c_->gate_open; });
    }
    ++c_->detects;
    serve::DetectOutput out;
    const double mean = cv::mean(in.image)[0] / 255.0;
    out.pred_score = static_cast<float>(mean);
    out.p_yes = mean;
    out.pred_label = mean > 0.5;
    out.map = torch::full({in.image.rows, in.image.cols}, mean);
    out.answer = "image " + std::to_string(in.image.cols) + "x" + std::to_string(in.image.rows);
    // Fixed stage times and token count, so /metrics can be checked against known numbers.
    out.timings = {{"encode", 0.003}, {"prefill", 0.02}, {"generate", 0.2}};
    out.generated_tokens = 10;
    image_ = out.answer;
    turns_ = 0;
    return out;
  }
  std::string ask(std::string_view message, int64_t) override {
    ++c_->asks;
    return image_ + " turn " + std::to_string(++turns_) + ": " + std::string(message);
  }
  nlohmann::json describe() const override { return {{"name", "fake"}, {"engine", "fake"}}; }

 private:
  std::shared_ptr<FakeCounters> c_;
  std::string image_;
  int turns_ = 0;
};

// A server running on its own thread for the lifetime of the object.
class TestServer {
 public:
  TestServer(serve::ServerOptions options, serve::EngineFactory factory) {
    options.port = 0;
    server_ = std::make_unique<serve::Server>(options, factory);
    port_ = server_->bind();
    thread_ = std::thread([this] { server_->run(); });
    // listen_after_bind starts accepting at once; a health probe confirms it.
    for (int i = 0; i < 100; ++i) {
      if (client().Get("/v1/health")) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ~TestServer() {
    server_->stop();
    thread_.join();
  }
  int port() const { return port_; }
  serve::Server& server() { return *server_; }
  httplib::Client client(int timeout_s = 30) const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(timeout_s, 0);
    c.set_connection_timeout(5, 0);
    return c;
  }

 private:
  std::unique_ptr<serve::Server> server_;
  int port_ = 0;
  std::thread thread_;
};

// One worker, four waiting jobs: queue limits are reached with a handful of requests.
inline serve::ServerOptions small_options() {
  serve::ServerOptions o;
  o.workers = 1;
  o.queue = 4;
  return o;
}

inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  if (ss.str().empty()) throw std::runtime_error("test input missing or empty: " + path.string());
  return ss.str();
}

inline std::string hazelnut(const std::string& rel) { return read_bytes(data("hazelnut_toy/hazelnut/" + rel)); }

inline httplib::MultipartFormDataItems detect_form(const std::string& image, const std::string& cls = "hazelnut") {
  return {{"image", image, "part.jpg", "image/jpeg"}, {"class", cls, "", ""}};
}

inline nlohmann::json body_json(const httplib::Result& r) {
  if (!r) return nlohmann::json();
  try {
    return nlohmann::json::parse(r->body);
  } catch (const std::exception&) {
    return nlohmann::json();
  }
}

// A raw TCP connection to the server (for malformed, partial and slow requests).
class RawSocket {
 public:
  explicit RawSocket(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) throw std::runtime_error("connect failed");
    timeval tv{10, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  ~RawSocket() {
    if (fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }
  bool send_all(std::string_view data) {
    while (!data.empty()) {
      const auto n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // Everything until the server closes the connection (or the 10 s receive timeout).
  std::string read_all() {
    std::string out;
    char buf[4096];
    for (;;) {
      const auto n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    return out;
  }

 private:
  int fd_ = -1;
};

// The HTTP status of a raw response ("HTTP/1.1 400 Bad Request" → 400), 0 if none.
inline int raw_status(const std::string& response) {
  if (response.rfind("HTTP/1.", 0) != 0 || response.size() < 12) return 0;
  return std::atoi(response.c_str() + 9);
}

inline serve::EngineFactory fake_factory(std::shared_ptr<FakeCounters> c) {
  return [c](int) { return std::make_unique<FakeEngine>(c); };
}

}  // namespace iadgpt::test
