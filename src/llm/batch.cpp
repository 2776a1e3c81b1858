#include "llm/batch.h"

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

}  // namespace iadgpt::llm
