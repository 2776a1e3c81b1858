// Continuous batching of decode steps: sequences of different requests, each with its own KV
// cache, step together, so every weight matrix is read once per step for all of them (decode
// is bound by reading the weights: on CPU, n sequences cost little more than one).
//
//   llm::DecodeLoop loop(model, /*max_batch=*/8, /*threads=*/2);      // one for a server
//   auto g = loop.generate(tokenizer, cache, prompt, options);         // any thread; blocks
//
// generate() prefills the prompt on the calling thread (its own cache), samples the first token
// there, then hands the sequence to the loop's thread, which joins it to the running batch
// between two steps; it leaves at EOS, a stop string, max_tokens, the context limit or when its
// stream's callback says stop, and generate() returns its Generation, the same as
// llm::generate() would have returned (bf16 models: bit for bit, decode_step_bf16_batch; fp32:
// the rows are run one by one through forward(), so also the same). on_text is called on the
// loop's thread while the caller waits.
// Thread-safety: generate() may be called from any number of threads at once. The model's
// weights are only read.
//
// PrefillBatch: the prefills of a known group of sequences (the inspections of one serve detect
// batch, each on its own thread) run as one forward_batch (model.h) when the last of them arrives.
//
//   llm::PrefillBatch group(model, 3);                       // three seats
//   // on seat i's thread:  auto logits = group.forward(i, cache_i, x_i);   or   group.leave(i);
#pragma once
#include <condition_variable>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "llm/generate.h"
#include "llm/model.h"

namespace iadgpt::llm {

struct DecodeLoopStats {
  uint64_t steps = 0;     // batched decode steps run
  uint64_t rows = 0;      // sequence-steps in them (rows / steps = the mean batch)
  uint64_t sequences = 0; // sequences finished
  int max_seen = 0;       // the largest batch stepped
  int waiting = 0;        // sequences handed over, not yet joined
};

class DecodeLoop {
 public:
  // max_batch: sequences stepped together (more wait to join); threads > 0: torch intra-op
  // threads of the loop's thread.
  DecodeLoop(LlamaModel model, int max_batch, int threads = 0);
  ~DecodeLoop();  // finishes every sequence handed to it, then joins its thread
  DecodeLoop(const DecodeLoop&) = delete;
  DecodeLoop& operator=(const DecodeLoop&) = delete;

  Generation generate(const Tokenizer& tokenizer, KvCache& cache, std::span<const Segment> prompt,
                      const GenerateOptions& options);
  DecodeLoopStats stats() const;
  int max_batch() const { return max_batch_; }
  const void* model_weights() const { return model_.weights.embed.data_ptr(); }  // which weights it runs

 private:
  struct Entry {
    std::unique_ptr<Sequence> seq;
    std::promise<Generation> done;
  };
  void run();
  bool admit(std::vector<std::unique_ptr<Entry>>& active);  // false: stop
  void step(std::vector<std::unique_ptr<Entry>>& active);

  LlamaModel model_;
  int max_batch_ = 1, threads_ = 0;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Entry>> pending_;
  bool stopping_ = false;
  DecodeLoopStats stats_;
  std::thread thread_;
};

// Seats 0..n-1 each either forward() once or leave() (a request that failed before its prefill);
// the call that completes the group runs the batch on its thread, with `threads` torch threads
// (0: as that thread has them), while the others wait. A seat's own bad input (context full,
// wrong width) fails that seat alone; if the batched forward throws, each seat is run alone, so
// each gets its own result or error. Thread-safety: one call per seat, from any threads.
class PrefillBatch {
 public:
  PrefillBatch(LlamaModel model, int seats, int threads = 0);
  PrefillBatch(const PrefillBatch&) = delete;
  PrefillBatch& operator=(const PrefillBatch&) = delete;
  // Runs x [T, D] from cache.pos with the other seats' prompts; blocks until the group is
  // complete. Returns fp32 logits [1, V] at the last row (forward(..., Logits::Last), within
  // forward_batch's tolerance).
  torch::Tensor forward(int seat, KvCache& cache, const torch::Tensor& x);
  void leave(int seat);  // a no-op for a seat that has arrived or left
  int batched() const;   // sequences that ran as one forward (0: before it ran, or each alone)

 private:
  struct Seat {
    enum class State { Open, Arrived, Left } state = State::Open;
    KvCache* cache = nullptr;
    torch::Tensor x, logits;
    std::exception_ptr error;
  };
  Seat& seat_at(int seat);  // under the lock: range-checked
  void close_one(std::unique_lock<std::mutex>& lock);  // a seat arrived or left: the last runs the batch
  int run();  // every seat arrived or left; returns how many ran as one batch (0: none)

  LlamaModel model_;
  int threads_ = 0, open_ = 0, batched_ = 0;
  bool ran_ = false;
  std::vector<Seat> seats_;
  mutable std::mutex mutex_;
  std::condition_variable done_;
};

}  // namespace iadgpt::llm
