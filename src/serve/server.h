// The HTTP server of `iadgpt serve` (cpp-httplib): the JSON API, the OpenAI-compatible chat
// endpoint and the web page, in front of a WorkerPool of engines.
//
//   serve::Server server(options, factory);   // builds the engines (a bad model throws here)
//   int port = server.bind();                  // options.port 0 = any free port
//   server.run();                              // blocks until stop() or shutdown() (another thread)
//
// Endpoints (README.md beside this file has the request and response fields):
//   GET  /                       web page (embedded in the binary)
//   GET  /v1/health              liveness + queue state (never queued behind inference)
//   GET  /v1/model, /v1/models   what is served
//   POST /v1/detect              multipart (image, class, reference..., question) or JSON
//   POST /v1/chat                {session_id, message} → follow-up answer
//   POST /v1/chat/completions    OpenAI-style messages with image_url data URIs
//   GET  /metrics                Prometheus text format (metrics.h)
// With API keys (ServerOptions::api_keys) every route but /v1/health and the page's static files
// needs `Authorization: Bearer <key>` (401 otherwise).
// Errors are JSON {"error": {"message", "type", "param", "code"}} (OpenAI's shape): 400 bad
// input, 401 missing or wrong API key, 404 unknown route or session (expired or evicted), 413
// body too large or images above the session memory budget, 429 queue full or session memory
// held by running requests (with Retry-After), 500 internal, 503 shutting down.
#pragma once
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "serve/engine.h"

namespace iadgpt::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";  // loopback: only this machine can connect
  int port = 8080;                 // 0 = any free port
  int workers = 1;                 // engines (one model copy each)
  int threads_per_worker = 0;      // torch threads of each worker (0 = leave as set)
  int queue = 16;                  // requests allowed to wait for a worker before 429
  // Detect batching (pool.h BatchPolicy): a worker runs up to `batch` queued inspections through
  // one vision tower forward, waiting up to `batch_wait_ms` for more while it has fewer.
  // 1 = each inspection alone (as before batching existed).
  int batch = 1;
  int batch_wait_ms = 0;
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
  // Bearer keys a request must present (auth.h); empty = no authentication, which only loopback
  // hosts allow unless `insecure` is set.
  std::vector<std::string> api_keys;
  bool insecure = false;
  int drain_timeout_s = 30;        // what shutdown() waits for requests in flight (the CLI's use)
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
  // Graceful shutdown (SIGTERM): from now on every request but /v1/health gets 503 (health too
  // answers 503, "draining", so a load balancer takes the server out); waits up to `timeout` for
  // the requests in flight, then stop()s. Returns how many were still running at the timeout
  // (0: all answered, run() returns). When some are left the listener stays up: stopping would
  // wait for them, so the caller decides (the CLI exits the process).
  int64_t shutdown(std::chrono::milliseconds timeout);
  int port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// InputError naming the flag for an option out of range, or for a non-loopback host without API
// keys (unless `insecure`). The Server constructor calls it; the CLI too, before loading a model.
void validate(const ServerOptions& options);

// True for 127.0.0.0/8, ::1 and "localhost".
bool is_loopback(const std::string& host);

}  // namespace iadgpt::serve
