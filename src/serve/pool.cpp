#include "serve/pool.h"

#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>
#include <exception>

#include "io/error.h"

namespace iadgpt::serve {

WorkerPool::WorkerPool(int workers, size_t capacity, const EngineFactory& factory, int threads_per_worker,
                       BatchPolicy batch)
    : capacity_(capacity), threads_per_worker_(threads_per_worker), batch_(batch) {
  if (workers < 1) throw InputError(fmt::format("--workers must be >= 1, got {}", workers));
  if (batch.max < 1) throw InputError(fmt::format("--batch must be >= 1, got {}", batch.max));
  if (batch.wait.count() < 0) throw InputError(fmt::format("--batch-wait must be >= 0 ms, got {}", batch.wait.count()));
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

std::future<void> WorkerPool::submit(Job job, int worker) { return enqueue(Task{std::move(job), {}}, worker); }

std::future<void> WorkerPool::submit_detect(const DetectInput& input, DetectOutput& output, Job then) {
  return enqueue(Task{std::move(then), {}, &input, &output}, -1);
}

std::future<void> WorkerPool::enqueue(Task task, int worker) {
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
    std::vector<Task> tasks;
    std::vector<std::exception_ptr> errors(1);
    if (task.input) {
      tasks = gather(std::move(task));
      run_batch(worker, tasks, errors);
    } else {
      try {
        task.job(worker);
      } catch (...) {
        errors[0] = std::current_exception();
      }
      tasks.push_back(std::move(task));
    }
    finish(tasks, errors);
  }
}

bool WorkerPool::take_detect(std::vector<Task>& batch) {
  auto it = std::find_if(shared_.begin(), shared_.end(), [](const Task& t) { return t.input != nullptr; });
  if (it == shared_.end()) return false;
  batch.push_back(std::move(*it));
  shared_.erase(it);
  --queued_;
  return true;
}

std::vector<WorkerPool::Task> WorkerPool::gather(Task first) {
  std::vector<Task> batch;
  batch.push_back(std::move(first));
  const size_t max = static_cast<size_t>(batch_.max);
  if (max <= 1) return batch;
  const auto deadline = std::chrono::steady_clock::now() + batch_.wait;
  std::unique_lock lock(mutex_);
  for (;;) {
    while (batch.size() < max && take_detect(batch)) {
    }
    if (batch.size() >= max || stopping_) break;
    const auto more = [&] {
      return stopping_ || std::any_of(shared_.begin(), shared_.end(), [](const Task& t) { return t.input != nullptr; });
    };
    if (!wake_.wait_until(lock, deadline, more)) break;  // waited batch_.wait: run what we have
  }
  return batch;
}

void WorkerPool::run_batch(Worker& worker, std::vector<Task>& batch, std::vector<std::exception_ptr>& errors) {
  errors.assign(batch.size(), nullptr);
  worker.session.clear();  // the engine's conversation is about to be replaced
  std::vector<DetectResult> results;
  if (batch.size() > 1) {
    std::vector<const DetectInput*> inputs;
    for (const auto& t : batch) inputs.push_back(t.input);
    try {
      results = worker.engine->detect_batch(inputs);
    } catch (...) {
      results.clear();  // the batch as a whole failed: each is run alone below, with its own error
    }
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    try {
      if (results.size() != batch.size()) {
        *batch[i].output = worker.engine->detect(*batch[i].input);
      } else if (results[i].error) {
        std::rethrow_exception(results[i].error);
      } else {
        *batch[i].output = std::move(results[i].output);
      }
      batch[i].job(worker);
    } catch (...) {
      errors[i] = std::current_exception();
    }
    // After a batched call the engine holds the last inspection's conversation only.
    if (results.size() == batch.size() && (i + 1 < batch.size() || errors[i])) worker.session.clear();
  }
}

void WorkerPool::finish(std::vector<Task>& tasks, std::vector<std::exception_ptr>& errors) {
  {
    std::lock_guard lock(mutex_);
    --busy_;
    completed_ += tasks.size();
    if (tasks.size() > 1) {
      ++batches_;
      batched_ += tasks.size();
    }
  }
  // Counted before the waiters wake: a client that has its answer sees this worker free
  // (`/v1/health` right after the last response said busy 1 in a loaded run).
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (errors[i]) tasks[i].done.set_exception(errors[i]);
    else tasks[i].done.set_value();
  }
}

PoolStats WorkerPool::stats() const {
  std::lock_guard lock(mutex_);
  return {static_cast<int>(workers_.size()), busy_, queued_, capacity_, completed_, rejected_, batches_, batched_};
}

}  // namespace iadgpt::serve
