// Conversations of the web page and POST /v1/chat: what was inspected, on which worker, and the
// questions asked since, so a worker that served someone else in between can rebuild the
// conversation (greedy decoding replays to the same answers). Sessions expire `ttl` after their
// last use; at most `capacity` are kept (the least recently used goes first), which bounds the
// memory that uploaded images hold. Thread-safe.
#pragma once
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "serve/engine.h"

namespace iadgpt::serve {

struct Session {
  std::string id;
  int worker = 0;
  DetectInput input;                  // the inspected image, class, references, question
  struct Turn {
    std::string message;
    int64_t max_tokens = 64;
  };
  std::vector<Turn> turns;            // follow-up questions asked so far, in order
  std::chrono::steady_clock::time_point last_used;
};

class SessionStore {
 public:
  SessionStore(std::chrono::seconds ttl, size_t capacity);

  std::shared_ptr<Session> create(int worker, DetectInput input);
  // nullptr when unknown or expired; refreshes the expiry.
  std::shared_ptr<Session> find(const std::string& id);
  size_t size() const;

 private:
  void purge(std::chrono::steady_clock::time_point now);  // mutex_ held

  std::chrono::seconds ttl_;
  size_t capacity_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Session>> sessions_;
};

// 128 random bits as 32 hex digits (std::random_device).
std::string random_id();

}  // namespace iadgpt::serve
