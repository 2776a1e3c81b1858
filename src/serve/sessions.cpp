#include "serve/sessions.h"

#include <fmt/format.h>

#include <algorithm>
#include <random>

namespace iadgpt::serve {

std::string random_id() {
  thread_local std::random_device device;
  std::string id;
  for (int i = 0; i < 4; ++i) id += fmt::format("{:08x}", device());
  return id;
}

SessionStore::SessionStore(std::chrono::seconds ttl, size_t capacity) : ttl_(ttl), capacity_(std::max<size_t>(1, capacity)) {}

void SessionStore::purge(std::chrono::steady_clock::time_point now) {
  std::erase_if(sessions_, [&](const auto& kv) { return now - kv.second->last_used > ttl_; });
  while (sessions_.size() >= capacity_) {
    auto oldest = std::min_element(sessions_.begin(), sessions_.end(), [](const auto& a, const auto& b) {
      return a.second->last_used < b.second->last_used;
    });
    sessions_.erase(oldest);
  }
}

std::shared_ptr<Session> SessionStore::create(int worker, DetectInput input) {
  auto s = std::make_shared<Session>();
  s->id = random_id();
  s->worker = worker;
  s->input = std::move(input);
  s->last_used = std::chrono::steady_clock::now();
  std::lock_guard lock(mutex_);
  purge(s->last_used);
  sessions_[s->id] = s;
  return s;
}

std::shared_ptr<Session> SessionStore::find(const std::string& id) {
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mutex_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return nullptr;
  if (now - it->second->last_used > ttl_) {
    sessions_.erase(it);
    return nullptr;
  }
  it->second->last_used = now;
  return it->second;
}

size_t SessionStore::size() const {
  std::lock_guard lock(mutex_);
  return sessions_.size();
}

}  // namespace iadgpt::serve
