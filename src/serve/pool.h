// A fixed set of worker threads, each owning one Engine, fed by a bounded queue.
//
//   serve::WorkerPool pool(2, 16, factory);                 // 2 workers, at most 16 jobs waiting
//   auto done = pool.submit([&](serve::Worker& w) { out = w.engine->detect(in); });
//   done.get();                                              // rethrows the job's exception
//
// submit() throws QueueFull when `capacity` jobs already wait (the server answers 429) instead of
// letting work pile up without bound. A job may be pinned to one worker (its conversation's KV
// cache lives there); pinned jobs count against the same capacity.
#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "serve/engine.h"

namespace iadgpt::serve {

struct QueueFull : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Worker {
  int index = 0;
  std::unique_ptr<Engine> engine;
  std::string session;  // the session whose conversation the engine holds now ("" = none)
};

struct PoolStats {
  int workers = 0, busy = 0;
  size_t queued = 0, capacity = 0;
  uint64_t completed = 0, rejected = 0;
};

class WorkerPool {
 public:
  using Job = std::function<void(Worker&)>;

  // Builds the engines on the calling thread (so a bad model fails before serving), then starts
  // one thread per worker.
  // threads_per_worker > 0: torch intra-op threads set on each worker thread (OpenMP keeps the
  // setting per thread), so N workers share the cores instead of oversubscribing them.
  WorkerPool(int workers, size_t capacity, const EngineFactory& factory, int threads_per_worker = 0);
  ~WorkerPool();  // finishes queued jobs, then joins
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // worker = -1: any worker.
  std::future<void> submit(Job job, int worker = -1);
  PoolStats stats() const;
  int size() const { return static_cast<int>(workers_.size()); }

 private:
  struct Task {
    Job job;
    std::promise<void> done;
  };
  void run(Worker& worker);
  bool next(Worker& worker, Task& task);  // false: shutting down

  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Task> shared_;
  std::vector<std::deque<Task>> pinned_;
  size_t capacity_ = 0, queued_ = 0;
  int busy_ = 0;
  uint64_t completed_ = 0, rejected_ = 0;
  bool stopping_ = false;
  int threads_per_worker_ = 0;
};

}  // namespace iadgpt::serve
