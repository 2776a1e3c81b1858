#include "serve/sessions.h"

#include <fmt/format.h>

#include <algorithm>
#include <random>

namespace iadgpt::serve {

namespace {

constexpr size_t kDroppedIdsKept = 4096;  // 32-byte ids: 128 KiB at most

double mib(int64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

int64_t mat_bytes(const cv::Mat& m) { return m.empty() ? 0 : static_cast<int64_t>(m.total() * m.elemSize()); }

}  // namespace

std::string random_id() {
  thread_local std::random_device device;
  std::string id;
  for (int i = 0; i < 4; ++i) id += fmt::format("{:08x}", device());
  return id;
}

int64_t session_bytes(const DetectInput& input) {
  int64_t bytes = mat_bytes(input.image) + static_cast<int64_t>(input.class_name.size() + input.question.size());
  for (const auto& r : input.references) bytes += mat_bytes(r);
  return bytes + static_cast<int64_t>(sizeof(Session));
}

int64_t turn_bytes(const std::string& message) {
  return static_cast<int64_t>(message.size() + sizeof(Session::Turn));
}

// ---- Reservation ------------------------------------------------------------------------------

SessionStore::Reservation::Reservation(Reservation&& other) noexcept
    : store_(std::exchange(other.store_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

SessionStore::Reservation& SessionStore::Reservation::operator=(Reservation&& other) noexcept {
  if (this != &other) {
    release();
    store_ = std::exchange(other.store_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

SessionStore::Reservation::~Reservation() { release(); }

void SessionStore::Reservation::release() {
  if (store_) store_->give_back(bytes_);
  store_ = nullptr;
  bytes_ = 0;
}

void SessionStore::give_back(int64_t bytes) {
  std::lock_guard lock(mutex_);
  used_ -= bytes;
}

// ---- SessionStore ------------------------------------------------------------------------------

SessionStore::SessionStore(std::chrono::seconds ttl, size_t capacity, int64_t budget_bytes)
    : ttl_(ttl), capacity_(std::max<size_t>(1, capacity)), budget_(std::max<int64_t>(1, budget_bytes)) {}

// The store holds one reference; a request that found or created the session holds another
// while it runs. Only the store hands out references (under mutex_), so a count of 1 seen here
// cannot grow behind our back; a stale count > 1 only makes us keep a session a little longer.
SessionStore::Map::iterator SessionStore::least_recent_idle() {
  auto best = sessions_.end();
  for (auto it = sessions_.begin(); it != sessions_.end(); ++it) {
    if (it->second.use_count() > 1) continue;
    if (best == sessions_.end() || it->second->used_stamp < best->second->used_stamp) best = it;
  }
  return best;
}

void SessionStore::forget(Map::iterator it, Miss why) {
  used_ -= it->second->bytes;
  if (why == Miss::evicted) ++evictions_;
  if (dropped_.emplace(it->first, why).second) {
    dropped_order_.push_back(it->first);
    if (dropped_order_.size() > kDroppedIdsKept) {
      dropped_.erase(dropped_order_.front());
      dropped_order_.pop_front();
    }
  }
  sessions_.erase(it);
}

void SessionStore::purge(std::chrono::steady_clock::time_point now) {
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    auto next = std::next(it);
    // A session in use is not expired under its request (it was found fresh for it).
    if (now - it->second->last_used > ttl_ && it->second.use_count() == 1) forget(it, Miss::expired);
    it = next;
  }
}

void SessionStore::check_fits(int64_t bytes) const {
  if (bytes > budget_) {
    throw SessionTooLarge(fmt::format("the request's images need {:.1f} MB once decoded, more than the whole session "
                                      "memory budget of {:.1f} MB (--session-memory); send fewer or smaller images",
                                      mib(bytes), mib(budget_)));
  }
}

SessionStore::Reservation SessionStore::reserve(int64_t bytes, Purpose purpose) {
  check_fits(bytes);
  std::lock_guard lock(mutex_);
  purge(std::chrono::steady_clock::now());
  auto too_full = [&] {
    return used_ + bytes > budget_ || (purpose == Purpose::new_session && sessions_.size() >= capacity_);
  };
  while (too_full()) {
    auto victim = least_recent_idle();
    if (victim == sessions_.end()) {
      throw SessionMemoryFull(fmt::format(
          "session memory is full: {} session(s) in use by running requests hold {:.1f} MB of the {:.1f} MB budget "
          "(--session-memory) and this request needs {:.1f} MB more; retry shortly",
          sessions_.size(), mib(used_), mib(budget_), mib(bytes)));
    }
    forget(victim, Miss::evicted);
  }
  used_ += bytes;
  return Reservation(this, bytes);
}

std::shared_ptr<Session> SessionStore::create(Reservation room, int worker, DetectInput input) {
  auto s = std::make_shared<Session>();
  s->id = random_id();
  s->worker = worker;
  s->input = std::move(input);
  std::lock_guard lock(mutex_);
  s->bytes = std::exchange(room.bytes_, 0);  // the reservation's bytes now belong to the session
  room.store_ = nullptr;  // (mutex_ is held: the reservation must not give them back itself)
  s->last_used = std::chrono::steady_clock::now();
  s->used_stamp = ++stamp_;
  sessions_[s->id] = s;
  return s;
}

void SessionStore::add_turn(Session& session, Reservation room, Session::Turn turn) {
  std::lock_guard lock(mutex_);
  session.turns.push_back(std::move(turn));
  const auto bytes = std::exchange(room.bytes_, 0);
  room.store_ = nullptr;
  if (sessions_.contains(session.id)) {
    session.bytes += bytes;  // the reservation's bytes now belong to the session
  } else {
    used_ -= bytes;  // the session was dropped meanwhile (its own bytes left with it)
  }
}

std::shared_ptr<Session> SessionStore::find(const std::string& id, Miss* why) {
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mutex_);
  if (why) *why = Miss::none;
  auto it = sessions_.find(id);
  if (it != sessions_.end() && now - it->second->last_used > ttl_ && it->second.use_count() == 1) {
    forget(it, Miss::expired);
    it = sessions_.end();
  }
  if (it == sessions_.end()) {
    if (why) {
      auto d = dropped_.find(id);
      *why = d == dropped_.end() ? Miss::unknown : d->second;
    }
    return nullptr;
  }
  it->second->last_used = now;
  it->second->used_stamp = ++stamp_;
  return it->second;
}

size_t SessionStore::size() const {
  std::lock_guard lock(mutex_);
  return sessions_.size();
}

int64_t SessionStore::bytes() const {
  std::lock_guard lock(mutex_);
  return used_;
}

uint64_t SessionStore::evictions() const {
  std::lock_guard lock(mutex_);
  return evictions_;
}

}  // namespace iadgpt::serve
