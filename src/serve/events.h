// Server-sent events from a worker to the connection thread that writes them: the worker pushes
// each event as the answer grows, the connection thread waits for the next one. When the client
// goes away the connection thread cancels the stream, and the worker's text sink sees it at the
// next token and stops generating (the worker is free again).
//
//   auto events = std::make_shared<EventStream>();
//   worker:      events->push(sse(chunk)); ... events->finish();
//   connection:  while (events->next(e, 1s) != EventStream::Next::done) write(e) or events->cancel();
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>

namespace iadgpt::serve {

class EventStream {
 public:
  enum class Next { event, timeout, done };

  void push(std::string event) {
    {
      std::lock_guard lock(mutex_);
      events_.push_back(std::move(event));
    }
    cv_.notify_one();
  }
  // No more events after those queued.
  void finish() {
    {
      std::lock_guard lock(mutex_);
      finished_ = true;
    }
    cv_.notify_one();
  }
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

  // The next event into `out`; `timeout` when none came within `wait`; `done` once finished and drained.
  Next next(std::string& out, std::chrono::milliseconds wait) {
    std::unique_lock lock(mutex_);
    if (!cv_.wait_for(lock, wait, [&] { return !events_.empty() || finished_; })) return Next::timeout;
    if (events_.empty()) return Next::done;
    out = std::move(events_.front());
    events_.pop_front();
    return Next::event;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::string> events_;
  bool finished_ = false;
  std::atomic<bool> cancelled_{false};
};

}  // namespace iadgpt::serve
