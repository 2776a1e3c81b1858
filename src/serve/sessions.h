// Conversations of the web page and POST /v1/chat: what was inspected, on which worker, and the
// questions asked since, so a worker that served someone else in between can rebuild the
// conversation (greedy decoding replays to the same answers). Thread-safe.
//
// Memory is bounded twice: at most `capacity` sessions, and at most `budget` bytes of what they
// hold (decoded images — up to 17 of 40 MP each — plus the text of their turns). Room is
// reserved before the work starts; the least recently used sessions that no request is using
// are evicted to make it:
//
//   auto room = store.reserve(session_bytes(input), SessionStore::Purpose::new_session);  // may evict
//   auto session = store.create(std::move(room), worker, input);
//   auto turn_room = store.reserve(turn_bytes(message), SessionStore::Purpose::turn);
//   store.add_turn(*session, std::move(turn_room), {message, max_tokens});
//
// reserve() throws SessionTooLarge when the request alone is above the whole budget (HTTP 413)
// and SessionMemoryFull when the sessions still held are all in use by requests (HTTP 429).
// Sessions also expire `ttl` after their last use.
#pragma once
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
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
  // Owned by the store (its mutex): bytes counted against the budget, recency.
  int64_t bytes = 0;
  uint64_t used_stamp = 0;            // larger = used more recently (LRU order)
  std::chrono::steady_clock::time_point last_used;
};

// The request alone needs more than the whole budget: no eviction can help (HTTP 413).
struct SessionTooLarge : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Every session that could be evicted is in use by a request right now (HTTP 429, retry).
struct SessionMemoryFull : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Bytes a session holds for `input`: decoded pixels of the image and references + its text.
int64_t session_bytes(const DetectInput& input);
// Bytes a follow-up turn adds to its session.
int64_t turn_bytes(const std::string& message);

class SessionStore {
 public:
  // budget_bytes: what all sessions and pending reservations may hold together.
  SessionStore(std::chrono::seconds ttl, size_t capacity, int64_t budget_bytes);

  enum class Purpose { new_session, turn };  // a new session also needs a free slot of `capacity`

  // Bytes set aside until handed to create()/add_turn(); given back when dropped unused. Must not
  // outlive its store (the server's requests end before the store goes).
  class Reservation {
   public:
    Reservation() = default;
    Reservation(Reservation&& other) noexcept;
    Reservation& operator=(Reservation&& other) noexcept;
    Reservation(const Reservation&) = delete;
    Reservation& operator=(const Reservation&) = delete;
    ~Reservation();
    int64_t bytes() const { return bytes_; }

   private:
    friend class SessionStore;
    Reservation(SessionStore* store, int64_t bytes) : store_(store), bytes_(bytes) {}
    void release();
    SessionStore* store_ = nullptr;
    int64_t bytes_ = 0;
  };

  // Evicts least recently used idle sessions until `bytes` fit; throws SessionTooLarge or
  // SessionMemoryFull (messages name the sizes and the budget).
  Reservation reserve(int64_t bytes, Purpose purpose);
  // SessionTooLarge when `bytes` alone are above the budget (requests check while they decode).
  void check_fits(int64_t bytes) const;
  std::shared_ptr<Session> create(Reservation room, int worker, DetectInput input);
  void add_turn(Session& session, Reservation room, Session::Turn turn);

  enum class Miss { none, unknown, expired, evicted };
  // nullptr when unknown, expired or evicted (`why` says which); refreshes the expiry and recency.
  // A session is "in use" (never evicted) while someone besides the store holds its pointer.
  std::shared_ptr<Session> find(const std::string& id, Miss* why = nullptr);

  size_t size() const;
  int64_t bytes() const;  // held by sessions + pending reservations
  int64_t budget() const { return budget_; }
  uint64_t evictions() const;

 private:
  using Map = std::map<std::string, std::shared_ptr<Session>>;
  // All with mutex_ held.
  void purge(std::chrono::steady_clock::time_point now);
  Map::iterator least_recent_idle();
  void forget(Map::iterator it, Miss why);
  void give_back(int64_t bytes);

  std::chrono::seconds ttl_;
  size_t capacity_;
  int64_t budget_;
  mutable std::mutex mutex_;
  Map sessions_;
  int64_t used_ = 0;       // sessions_' bytes + outstanding reservations
  uint64_t stamp_ = 0;
  uint64_t evictions_ = 0;
  // Recently dropped ids (bounded), so a late request is told why its session is gone.
  std::map<std::string, Miss> dropped_;
  std::deque<std::string> dropped_order_;
};

// 128 random bits as 32 hex digits (std::random_device).
std::string random_id();

}  // namespace iadgpt::serve
