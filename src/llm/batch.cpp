#include "llm/batch.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>

#include "io/error.h"

namespace iadgpt::llm {

DecodeLoop::DecodeLoop(LlamaModel model, int max_batch, int threads)
    : model_(std::move(model)), max_batch_(max_batch), threads_(threads) {
  if (max_batch < 1) throw InputError(fmt::format("decode batch must be >= 1, got {}", max_batch));
  thread_ = std::thread([this] { run(); });
}

DecodeLoop::~DecodeLoop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

Generation DecodeLoop::generate(const Tokenizer& tokenizer, KvCache& cache, std::span<const Segment> prompt,
                                const GenerateOptions& options) {
  auto entry = std::make_unique<Entry>();
  entry->seq = std::make_unique<Sequence>(model_, tokenizer, cache, options, prefill(model_, cache, prompt, options));
  // The first token comes from the prefill's logits: sampled here, so an answer of one token
  // never waits for the loop.
  if (!entry->seq->step(entry->seq->first_logits())) return entry->seq->finish();
  auto done = entry->done.get_future();
  {
    std::lock_guard lock(mutex_);
    if (stopping_) throw std::runtime_error("the decode loop is shutting down");
    pending_.push_back(std::move(entry));
  }
  wake_.notify_all();
  return done.get();
}

DecodeLoopStats DecodeLoop::stats() const {
  std::lock_guard lock(mutex_);
  auto s = stats_;
  s.waiting = static_cast<int>(pending_.size());
  return s;
}

// Moves waiting sequences into the batch (between two steps); waits while there is nothing to do.
bool DecodeLoop::admit(std::vector<std::unique_ptr<Entry>>& active) {
  std::unique_lock lock(mutex_);
  if (active.empty()) wake_.wait(lock, [&] { return stopping_ || !pending_.empty(); });
  while (static_cast<int>(active.size()) < max_batch_ && !pending_.empty()) {
    active.push_back(std::move(pending_.front()));
    pending_.pop_front();
  }
  return !active.empty();  // empty only when stopping with nothing left
}

void DecodeLoop::step(std::vector<std::unique_ptr<Entry>>& active) {
  std::vector<int64_t> ids;
  std::vector<KvCache*> caches;
  for (auto& e : active) {
    ids.push_back(e->seq->next_token());
    caches.push_back(&e->seq->cache());
  }
  torch::Tensor logits;
  try {
    logits = decode_batch(model_, caches, model_.embed(ids));
  } catch (...) {
    for (auto& e : active) e->done.set_exception(std::current_exception());
    active.clear();
    return;
  }
  std::vector<std::unique_ptr<Entry>> still;
  uint64_t finished = 0;
  for (size_t i = 0; i < active.size(); ++i) {
    auto& e = active[i];
    try {
      if (e->seq->step(logits[static_cast<int64_t>(i)])) {
        still.push_back(std::move(e));
        continue;
      }
      e->done.set_value(e->seq->finish());
    } catch (...) {
      e->done.set_exception(std::current_exception());
    }
    ++finished;
  }
  std::lock_guard lock(mutex_);
  ++stats_.steps;
  stats_.rows += active.size();
  stats_.sequences += finished;
  stats_.max_seen = std::max(stats_.max_seen, static_cast<int>(active.size()));
  active = std::move(still);
}

void DecodeLoop::run() {
  torch::NoGradGuard no_grad;
  if (threads_ > 0) torch::set_num_threads(threads_);
  std::vector<std::unique_ptr<Entry>> active;
  while (admit(active)) step(active);
}

PrefillBatch::PrefillBatch(LlamaModel model, int seats, int threads)
    : model_(std::move(model)), threads_(threads), open_(seats), seats_(static_cast<size_t>(std::max(seats, 0))) {
  if (seats < 1) throw InputError(fmt::format("a prefill batch needs >= 1 seat, got {}", seats));
}

PrefillBatch::Seat& PrefillBatch::seat_at(int seat) {
  if (seat < 0 || seat >= static_cast<int>(seats_.size()))
    throw InputError(fmt::format("prefill batch: seat {} of {}", seat, seats_.size()));
  return seats_[static_cast<size_t>(seat)];
}

torch::Tensor PrefillBatch::forward(int seat, KvCache& cache, const torch::Tensor& x) {
  std::unique_lock lock(mutex_);
  auto& s = seat_at(seat);
  if (s.state != Seat::State::Open) throw InputError(fmt::format("prefill batch: seat {} has already been used", seat));
  s.state = Seat::State::Arrived;
  s.cache = &cache;
  s.x = x;
  close_one(lock);
  done_.wait(lock, [&] { return ran_; });
  if (s.error) std::rethrow_exception(s.error);
  return s.logits;
}

void PrefillBatch::leave(int seat) {
  std::unique_lock lock(mutex_);
  auto& s = seat_at(seat);
  if (s.state != Seat::State::Open) return;
  s.state = Seat::State::Left;
  close_one(lock);
}

int PrefillBatch::batched() const {
  std::lock_guard lock(mutex_);
  return batched_;
}

void PrefillBatch::close_one(std::unique_lock<std::mutex>& lock) {
  if (--open_ > 0) return;
  // Every seat has arrived or left: nobody touches the seats until ran_ is set.
  lock.unlock();
  const int together = run();
  lock.lock();
  batched_ = together;
  ran_ = true;
  done_.notify_all();
}

int PrefillBatch::run() {
  torch::NoGradGuard no_grad;
  const int before = at::get_num_threads();
  if (threads_ > 0) at::set_num_threads(threads_);
  // A seat's own bad input fails it alone: checked here, before the batch.
  std::vector<Seat*> ready;
  for (auto& s : seats_) {
    if (s.state != Seat::State::Arrived) continue;
    try {
      if (s.x.dim() != 2 || s.x.size(0) < 1 || s.x.size(1) != model_.config.hidden_size)
        throw InputError(fmt::format("prefill: input shape {}, expected [T >= 1, {}]", shape_text(s.x.sizes()),
                                     model_.config.hidden_size));
      if (s.cache->pos + s.x.size(0) > s.cache->capacity())
        throw InputError(fmt::format("context full: {} positions requested, the KV cache holds {}",
                                     s.cache->pos + s.x.size(0), s.cache->capacity()));
      ready.push_back(&s);
    } catch (...) {
      s.error = std::current_exception();
    }
  }
  bool together = ready.size() > 1;
  if (together) {
    std::vector<KvCache*> caches;
    std::vector<torch::Tensor> inputs;
    for (auto* s : ready) caches.push_back(s->cache), inputs.push_back(s->x);
    try {
      const auto logits = forward_batch(model_, caches, inputs);
      for (size_t i = 0; i < ready.size(); ++i) ready[i]->logits = logits.narrow(0, static_cast<int64_t>(i), 1);
    } catch (...) {
      together = false;  // each alone below, with its own result or error
    }
  }
  if (!together)
    for (auto* s : ready) {
      try {
        s->logits = llm::forward(model_, *s->cache, s->x, Logits::Last);
      } catch (...) {
        s->error = std::current_exception();
      }
    }
  if (threads_ > 0) at::set_num_threads(before);
  return together ? static_cast<int>(ready.size()) : 0;
}

}  // namespace iadgpt::llm
