#include "serve/pool.h"

#include <torch/torch.h>

#include <fmt/format.h>

#include <exception>

#include "io/error.h"

namespace iadgpt::serve {

WorkerPool::WorkerPool(int workers, size_t capacity, const EngineFactory& factory, int threads_per_worker)
    : capacity_(capacity), threads_per_worker_(threads_per_worker) {
  if (workers < 1) throw InputError(fmt::format("--workers must be >= 1, got {}", workers));
  for (int i = 0; i < workers; ++i) {
    auto w = std::make_unique<Worker>();
    w->index = i;
    w->engine = factory(i);
    workers_.push_back(std::move(w));
  }
  pinned_.resize(workers);
  for (auto& w : workers_) threads_.emplace_back([this, &w] { run(*w); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : threads_) t.join();
}

std::future<void> WorkerPool::submit(Job job, int worker) {
  Task task{std::move(job), {}};
  auto future = task.done.get_future();
  {
    std::lock_guard lock(mutex_);
    if (stopping_) throw QueueFull("the server is shutting down");
    if (queued_ >= capacity_) {
      ++rejected_;
      throw QueueFull(fmt::format("all {} workers are busy and {} requests are waiting; retry later",
                                  workers_.size(), queued_));
    }
    if (worker >= 0 && worker < static_cast<int>(pinned_.size())) {
      pinned_[worker].push_back(std::move(task));
    } else {
      shared_.push_back(std::move(task));
    }
    ++queued_;
  }
  // Pinned work must reach its own worker: wake everyone (a handful of threads).
  wake_.notify_all();
  return future;
}

bool WorkerPool::next(Worker& worker, Task& task) {
  std::unique_lock lock(mutex_);
  auto& own = pinned_[worker.index];
  wake_.wait(lock, [&] { return stopping_ || !own.empty() || !shared_.empty(); });
  // Drain on shutdown too: every accepted request gets its answer.
  auto& from = !own.empty() ? own : shared_;
  if (from.empty()) return false;
  task = std::move(from.front());
  from.pop_front();
  --queued_;
  ++busy_;
  return true;
}

void WorkerPool::run(Worker& worker) {
  // Inference only; autograd state is per thread.
  torch::NoGradGuard no_grad;
  if (threads_per_worker_ > 0) torch::set_num_threads(threads_per_worker_);
  Task task;
  while (next(worker, task)) {
    std::exception_ptr error;
    try {
      task.job(worker);
    } catch (...) {
      error = std::current_exception();
    }
    {
      std::lock_guard lock(mutex_);
      --busy_;
      ++completed_;
    }
    // Counted before the waiter wakes: a client that has its answer sees this worker free
    // (`/v1/health` right after the last response said busy 1 in a loaded run).
    if (error) task.done.set_exception(error);
    else task.done.set_value();
  }
}

PoolStats WorkerPool::stats() const {
  std::lock_guard lock(mutex_);
  return {static_cast<int>(workers_.size()), busy_, queued_, capacity_, completed_, rejected_};
}

}  // namespace iadgpt::serve
