// Text generation on top of the decoder: prefill a prompt (segments: ids or embedding rows), then
// decode token by token through the KV cache with a Sampler, stopping at EOS, a stop string
// (e.g. "###" for Vicuna v0) or max_tokens; text is streamed through a callback as it becomes final.
//
//   llm::GenerateOptions opt;  opt.max_tokens = 64;  opt.stop = {"###"};
//   opt.on_text = [](std::string_view s) { std::cout << s << std::flush; return true; };
//   auto out = llm::generate(model, tokenizer, cache, prompt_segments, opt);
//
//   // Fast Yes/No decision (METHOD §1.10): one prefill, probabilities of candidate first tokens.
//   auto p = llm::first_token_probs(model, cache, prompt_segments, {yes_id, no_id});
#pragma once
#include <chrono>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "llm/model.h"
#include "llm/sampler.h"
#include "llm/tokenizer.h"

namespace iadgpt::llm {

struct GenerateOptions {
  SamplingParams sampling;
  int64_t max_tokens = 256;
  std::vector<std::string> stop;  // stop strings; the text is cut before the first match
  bool stop_at_eos = true;
  // Added to the first generated token's logits only (token id, bias): a calibrated decision
  // (model::Bundle::decision_bias) shifts "Yes" against "No" without touching the rest.
  std::vector<std::pair<int64_t, float>> first_token_bias;
  // Receives text as soon as it can no longer be part of a stop string; return false to stop.
  std::function<bool(std::string_view)> on_text;
};

struct Generation {
  std::vector<int64_t> tokens;  // generated ids (the EOS, if produced, is included)
  std::string text;             // decoded, cut at the stop string
  std::string stop_reason;      // "eos", "stop", "length", "callback"
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
};

// Runs the prompt starting at cache.pos (so a conversation can continue in the same cache).
Generation generate(const LlamaModel& model, const Tokenizer& tokenizer, KvCache& cache,
                    std::span<const Segment> prompt, const GenerateOptions& options);

// generate() in two halves, for a caller that steps several sequences together (DecodeLoop,
// batch.h): the prefill of one prompt, then a Sequence fed the logits of each decode step.
struct Prefilled {
  torch::Tensor logits;          // [1, V] at the last prompt position, GenerateOptions::first_token_bias added
  std::vector<int64_t> context;  // the prompt's ids (what the repetition penalty sees)
  int64_t prompt_tokens = 0;
  double seconds = 0;
};
Prefilled prefill(const LlamaModel& model, KvCache& cache, std::span<const Segment> prompt, const GenerateOptions& options);

// One sequence being generated: sampling, stop strings, EOS, max_tokens, the context limit and
// the text stream of generate(), one token per step(). `cache` holds the prompt; the sequence
// appends to it through the decode steps its driver runs.
//
//   Sequence seq(model, tokenizer, cache, options, prefill(model, cache, prompt, options));
//   for (bool more = seq.step(seq.first_logits()); more; more = seq.step(<logits of seq.next_token()>)) {}
//   Generation g = seq.finish();
class Sequence {
 public:
  Sequence(const LlamaModel& model, const Tokenizer& tokenizer, KvCache& cache, GenerateOptions options, Prefilled prefilled);
  const torch::Tensor& first_logits() const { return first_logits_; }
  // Samples the next token from `logits` ([V] or [1, V]) and streams the text that became final.
  // True: another step is wanted, with next_token() as its input at position cache().pos; false:
  // finished (EOS, stop string, max_tokens, the context, or the stream's callback said stop).
  bool step(const torch::Tensor& logits);
  int64_t next_token() const { return next_; }
  KvCache& cache() { return cache_; }
  // The result, once step() has returned false: the held-back text flushed (and streamed).
  Generation finish();

 private:
  bool done();
  const Tokenizer& tokenizer_;
  KvCache& cache_;
  GenerateOptions options_;
  std::vector<int64_t> eos_;
  Sampler sampler_;
  StreamDecoder decoder_;
  std::vector<int64_t> context_;
  torch::Tensor first_logits_;
  Generation out_;
  size_t emitted_ = 0;
  int64_t steps_ = 0, next_ = -1;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
};

struct CandidateProbs {
  std::vector<double> probs;       // softmax over the whole vocabulary, at each candidate
  std::vector<double> restricted;  // softmax over the candidates' logits only (sums to 1)
  std::vector<double> logits;
};

// One prefill of `prompt` (from cache.pos); the distribution of the next token at the candidates.
CandidateProbs first_token_probs(const LlamaModel& model, KvCache& cache, std::span<const Segment> prompt,
                                 std::span<const int64_t> candidates);
// The same from the prompt's last logits [1, V] or [V], computed elsewhere (a batched prefill).
CandidateProbs candidate_probs(const torch::Tensor& last_logits, std::span<const int64_t> candidates);

}  // namespace iadgpt::llm
