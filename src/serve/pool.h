// A fixed set of worker threads, each owning one Engine, fed by a bounded queue.
//
//   serve::WorkerPool pool(2, 16, factory);                 // 2 workers, at most 16 jobs waiting
//   auto done = pool.submit([&](serve::Worker& w) { out = w.engine->detect(in); });
//   done.get();                                              // rethrows the job's exception
//
// submit() throws QueueFull when `capacity` jobs already wait (the server answers 429) instead of
// letting work pile up without bound. A job may be pinned to one worker (its conversation's KV
// cache lives there); pinned jobs count against the same capacity.
//
// Batching (serve --batch N --batch-wait T): submit_detect() queues an inspection like any job;
// a worker that takes one also takes up to N-1 more from the queue, waiting at most T for them
// to arrive while it has fewer than N, and runs them as one Engine::detect_batch (one vision
// tower forward for all the images). Then each job's `then` runs in queue order on that worker.
// Each inspection is one queue place (the same 429s as without batching).
#pragma once
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
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
  uint64_t batches = 0, batched = 0;  // detect batches run, and the inspections in them
};

struct BatchPolicy {
  int max = 1;                          // inspections per engine call; 1 = no batching
  std::chrono::milliseconds wait{0};    // how long a worker holding fewer than `max` waits for more
};

class WorkerPool {
 public:
  using Job = std::function<void(Worker&)>;

  // Builds the engines on the calling thread (so a bad model fails before serving), then starts
  // one thread per worker.
  // threads_per_worker > 0: torch intra-op threads set on each worker thread (OpenMP keeps the
  // setting per thread), so N workers share the cores instead of oversubscribing them.
  WorkerPool(int workers, size_t capacity, const EngineFactory& factory, int threads_per_worker = 0,
             BatchPolicy batch = {});
  ~WorkerPool();  // finishes queued jobs, then joins
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // worker = -1: any worker.
  std::future<void> submit(Job job, int worker = -1);
  // An inspection that may share an engine call with others (BatchPolicy): `*output` is set to
  // the engine's result for `input`, then `then` runs on the same worker (its engine holds that
  // conversation when `then` runs, unless a later inspection of the batch replaced it: the
  // worker's `session` is cleared before the engine runs, and the last `then` to set it wins).
  // `input` and `output` must outlive the future. Never pinned.
  std::future<void> submit_detect(const DetectInput& input, DetectOutput& output, Job then);
  PoolStats stats() const;
  nlohmann::json shared_stats() const { return workers_.front()->engine->shared_stats(); }  // Engine::shared_stats
  int size() const { return static_cast<int>(workers_.size()); }

 private:
  struct Task {
    Job job;
    std::promise<void> done;
    const DetectInput* input = nullptr;  // set: an inspection (submit_detect), `job` its `then`
    DetectOutput* output = nullptr;
  };
  std::future<void> enqueue(Task task, int worker);
  void run(Worker& worker);
  bool next(Worker& worker, Task& task);  // false: shutting down
  // The inspections to run with `first`: more from the shared queue, up to the policy's max.
  std::vector<Task> gather(Task first);
  bool take_detect(std::vector<Task>& batch);  // under the lock: moves one queued inspection
  void run_batch(Worker& worker, std::vector<Task>& batch, std::vector<std::exception_ptr>& errors);
  void finish(std::vector<Task>& tasks, std::vector<std::exception_ptr>& errors);

  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Task> shared_;
  std::vector<std::deque<Task>> pinned_;
  size_t capacity_ = 0, queued_ = 0;
  int busy_ = 0;
  uint64_t completed_ = 0, rejected_ = 0, batches_ = 0, batched_ = 0;
  bool stopping_ = false;
  int threads_per_worker_ = 0;
  BatchPolicy batch_;
};

}  // namespace iadgpt::serve
