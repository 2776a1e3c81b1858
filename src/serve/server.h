// The HTTP server of `iadgpt serve` (cpp-httplib): the JSON API, the OpenAI-compatible chat
// endpoint and the web page, in front of a WorkerPool of engines.
//
//   serve::Server server(options, factory);   // builds the engines (a bad model throws here)
//   int port = server.bind();                  // options.port 0 = any free port
//   server.run();                              // blocks until stop() (from another thread or a signal)
//
// Endpoints (README.md beside this file has the request and response fields):
//   GET  /                       web page (embedded in the binary)
//   GET  /v1/health              liveness + queue state (never queued behind inference)
//   GET  /v1/model, /v1/models   what is served
//   POST /v1/detect              multipart (image, class, reference..., question) or JSON
//   POST /v1/chat                {session_id, message} → follow-up answer
//   POST /v1/chat/completions    OpenAI-style messages with image_url data URIs
// Errors are JSON {"error": {"message", "type", "code"}}: 400 bad input, 404 unknown route or
// session (expired or evicted), 413 body too large or images above the session memory budget,
// 429 queue full or session memory held by running requests (with Retry-After), 500 internal.
#pragma once
#include <chrono>
#include <memory>
#include <string>

#include "serve/engine.h"

namespace iadgpt::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";  // loopback: only this machine can connect
  int port = 8080;                 // 0 = any free port
  int workers = 1;                 // engines (one model copy each)
  int threads_per_worker = 0;      // torch threads of each worker (0 = leave as set)
  int queue = 16;                  // requests allowed to wait for a worker before 429
  int64_t max_body_mb = 32;        // request body limit (413 above it)
  int timeout_s = 30;              // socket read/write timeout
  int session_ttl_s = 600;         // chat sessions expire this long after their last use
  size_t max_sessions = 256;       // least recently used idle session dropped beyond this
  // Bytes all chat sessions may hold (decoded images + turn text), in MiB. The default fits the
  // largest request the other limits allow (17 images x 40 MP x 3 bytes = 1.9 GiB).
  int64_t session_memory_mb = 2048;
  int max_references = 16;         // reference images per request
  int64_t max_image_pixels = 40'000'000;  // per uploaded image (decoded RGB8 size bound)
  int64_t max_tokens = 256;        // upper bound on a request's max_tokens
  int64_t answer_tokens = 64;      // max_tokens of a request that does not say
};

class Server {
 public:
  Server(const ServerOptions& options, const EngineFactory& factory);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int bind();   // InputError when the address cannot be bound; returns the port
  void run();   // serves until stop()
  void stop();  // thread-safe; run() returns once in-flight requests are answered
  int port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// True for 127.0.0.0/8, ::1 and "localhost".
bool is_loopback(const std::string& host);

}  // namespace iadgpt::serve
