#include "llm/generate.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>

#include "io/error.h"

namespace iadgpt::llm {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Length of the longest suffix of `text` that is a proper prefix of some stop string: text that
// might still turn into a stop string is held back from the stream.
size_t held_back(std::string_view text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& s : stops)
    for (size_t n = std::min(s.size() - 1, text.size()); n > hold; --n)
      if (text.substr(text.size() - n) == std::string_view(s).substr(0, n)) {
        hold = n;
        break;
      }
  return hold;
}

// Before the forward: a bad candidate must not cost a prefill.
void check_candidates(const LlamaModel& model, std::span<const int64_t> candidates) {
  if (candidates.empty()) throw InputError("first_token_probs: no candidate tokens");
  for (int64_t id : candidates)
    if (id < 0 || id >= model.config.vocab_size)
      throw InputError(fmt::format("candidate token id {} is outside the vocabulary", id));
}

}  // namespace

Prefilled prefill(const LlamaModel& model, KvCache& cache, std::span<const Segment> prompt, const GenerateOptions& options) {
  for (const auto& s : options.stop)
    if (s.empty()) throw InputError("a stop string must not be empty");
  Prefilled p;
  for (const auto& seg : prompt) p.context.insert(p.context.end(), seg.ids.begin(), seg.ids.end());
  const auto t0 = std::chrono::steady_clock::now();
  const auto x = embed_segments(model, prompt);
  p.prompt_tokens = x.size(0);
  p.logits = forward(model, cache, x, Logits::Last);
  p.seconds = seconds_since(t0);
  if (!options.first_token_bias.empty()) {
    p.logits = p.logits.reshape({-1}).clone();
    for (const auto& [id, bias] : options.first_token_bias) {
      if (id < 0 || id >= p.logits.size(0))
        throw InputError(fmt::format("first_token_bias: token id {} is outside the vocabulary ({})", id, p.logits.size(0)));
      p.logits[id] += bias;
    }
  }
  return p;
}

Sequence::Sequence(const LlamaModel& model, const Tokenizer& tokenizer, KvCache& cache, GenerateOptions options,
                   Prefilled prefilled)
    : tokenizer_(tokenizer),
      cache_(cache),
      options_(std::move(options)),
      eos_(model.config.eos_token_ids),
      sampler_(options_.sampling),
      decoder_(tokenizer),
      context_(std::move(prefilled.context)),
      first_logits_(std::move(prefilled.logits)),
      start_(std::chrono::steady_clock::now()) {
  out_.prompt_tokens = prefilled.prompt_tokens;
  out_.prefill_seconds = prefilled.seconds;
  out_.stop_reason = "length";
}

bool Sequence::done() {
  finished_ = true;
  return false;
}

bool Sequence::step(const torch::Tensor& logits) {
  if (finished_ || steps_ >= options_.max_tokens) return done();
  const int64_t id = sampler_.sample(logits, context_);
  ++steps_;
  out_.tokens.push_back(id);
  context_.push_back(id);
  if (options_.stop_at_eos && (std::find(eos_.begin(), eos_.end(), id) != eos_.end() || id == tokenizer_.eos_id())) {
    out_.stop_reason = "eos";
    return done();
  }
  decoder_.push(id);
  const std::string& text = decoder_.text();
  size_t cut = std::string::npos;
  for (const auto& s : options_.stop)
    if (auto at = text.find(s); at != std::string::npos) cut = std::min(cut, at);
  const size_t final_end = cut != std::string::npos ? cut : text.size() - held_back(text, options_.stop);
  if (options_.on_text && final_end > emitted_) {
    if (!options_.on_text(std::string_view(text).substr(emitted_, final_end - emitted_))) out_.stop_reason = "callback";
    emitted_ = final_end;
  }
  if (cut != std::string::npos) {
    out_.stop_reason = "stop";
    return done();
  }
  if (out_.stop_reason == "callback") return done();
  if (steps_ == options_.max_tokens) return done();  // no forward for a token nobody will read
  if (cache_.pos >= cache_.capacity()) {
    out_.stop_reason = "context";
    return done();
  }
  next_ = id;
  return true;
}

Generation Sequence::finish() {
  // Text the stream held back (a partial stop string or UTF-8 sequence) is final now.
  decoder_.flush();
  std::string text = decoder_.text();
  if (out_.stop_reason == "stop") {
    size_t cut = std::string::npos;
    for (const auto& s : options_.stop) cut = std::min(cut, text.find(s));
    text.resize(cut);
  }
  if (options_.on_text && text.size() > emitted_) options_.on_text(std::string_view(text).substr(emitted_));
  out_.text = std::move(text);
  out_.decode_seconds = seconds_since(start_);
  return std::move(out_);
}

Generation generate(const LlamaModel& model, const Tokenizer& tokenizer, KvCache& cache,
                    std::span<const Segment> prompt, const GenerateOptions& options) {
  Sequence seq(model, tokenizer, cache, options, prefill(model, cache, prompt, options));
  for (bool more = seq.step(seq.first_logits()); more;) {
    const int64_t one[] = {seq.next_token()};
    more = seq.step(forward_tokens(model, cache, one, Logits::Last));
  }
  return seq.finish();
}

CandidateProbs first_token_probs(const LlamaModel& model, KvCache& cache, std::span<const Segment> prompt,
                                 std::span<const int64_t> candidates) {
  check_candidates(model, candidates);
  return candidate_probs(forward(model, cache, embed_segments(model, prompt), Logits::Last), candidates);
}

CandidateProbs candidate_probs(const torch::Tensor& last_logits, std::span<const int64_t> candidates) {
  if (candidates.empty()) throw InputError("candidate_probs: no candidate tokens");
  // The decision leaves the model here: the last row's logits in host memory.
  auto logits = last_logits.reshape({-1}).cpu();
  for (int64_t id : candidates)
    if (id < 0 || id >= logits.size(0)) throw InputError(fmt::format("candidate token id {} is outside the vocabulary", id));
  auto index = torch::tensor(std::vector<int64_t>(candidates.begin(), candidates.end()), torch::kInt64);
  auto full = torch::softmax(logits.to(torch::kFloat64), 0).index_select(0, index);
  auto picked = logits.to(torch::kFloat64).index_select(0, index);
  auto restricted = torch::softmax(picked, 0);
  CandidateProbs out;
  for (int64_t i = 0; i < index.numel(); ++i) {
    out.probs.push_back(full[i].item<double>());
    out.restricted.push_back(restricted[i].item<double>());
    out.logits.push_back(picked[i].item<double>());
  }
  return out;
}

}  // namespace iadgpt::llm
