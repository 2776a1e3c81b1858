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

}  // namespace

Generation generate(const LlamaModel& model, const Tokenizer& tokenizer, KvCache& cache,
                    std::span<const Segment> prompt, const GenerateOptions& options) {
  for (const auto& s : options.stop)
    if (s.empty()) throw InputError("a stop string must not be empty");
  Generation out;
  Sampler sampler(options.sampling);
  std::vector<int64_t> context;  // ids the repetition penalty sees
  for (const auto& seg : prompt) context.insert(context.end(), seg.ids.begin(), seg.ids.end());

  auto t0 = std::chrono::steady_clock::now();
  const auto x = embed_segments(model, prompt);
  out.prompt_tokens = x.size(0);
  auto logits = forward(model, cache, x, Logits::Last);
  out.prefill_seconds = seconds_since(t0);
  if (!options.first_token_bias.empty()) {
    logits = logits.reshape({-1}).clone();
    for (const auto& [id, bias] : options.first_token_bias) {
      if (id < 0 || id >= logits.size(0))
        throw InputError(fmt::format("first_token_bias: token id {} is outside the vocabulary ({})", id, logits.size(0)));
      logits[id] += bias;
    }
  }

  t0 = std::chrono::steady_clock::now();
  StreamDecoder decoder(tokenizer);
  size_t emitted = 0;
  const auto& eos = model.config.eos_token_ids;
  out.stop_reason = "length";
  for (int64_t step = 0; step < options.max_tokens; ++step) {
    const int64_t id = sampler.sample(logits, context);
    out.tokens.push_back(id);
    context.push_back(id);
    if (options.stop_at_eos && (std::find(eos.begin(), eos.end(), id) != eos.end() || id == tokenizer.eos_id())) {
      out.stop_reason = "eos";
      break;
    }
    decoder.push(id);
    const std::string& text = decoder.text();
    size_t cut = std::string::npos;
    for (const auto& s : options.stop)
      if (auto at = text.find(s); at != std::string::npos) cut = std::min(cut, at);
    const size_t final_end = cut != std::string::npos ? cut : text.size() - held_back(text, options.stop);
    if (options.on_text && final_end > emitted) {
      if (!options.on_text(std::string_view(text).substr(emitted, final_end - emitted))) out.stop_reason = "callback";
      emitted = final_end;
    }
    if (cut != std::string::npos) {
      out.stop_reason = "stop";
      break;
    }
    if (out.stop_reason == "callback") break;
    if (step + 1 == options.max_tokens) break;  // no forward for a token nobody will read
    if (cache.pos >= cache.capacity()) {
      out.stop_reason = "context";
      break;
    }
    const int64_t one[] = {id};
    logits = forward_tokens(model, cache, one, Logits::Last);
  }
  // Text the stream held back (a partial stop string or UTF-8 sequence) is final now.
  decoder.flush();
  std::string text = decoder.text();
  if (out.stop_reason == "stop") {
    size_t cut = std::string::npos;
    for (const auto& s : options.stop) cut = std::min(cut, text.find(s));
    text.resize(cut);
  }
  if (options.on_text && text.size() > emitted) options.on_text(std::string_view(text).substr(emitted));
  out.text = std::move(text);
  out.decode_seconds = seconds_since(t0);
  return out;
}

CandidateProbs first_token_probs(const LlamaModel& model, KvCache& cache, std::span<const Segment> prompt,
                                 std::span<const int64_t> candidates) {
  if (candidates.empty()) throw InputError("first_token_probs: no candidate tokens");
  for (int64_t id : candidates)
    if (id < 0 || id >= model.config.vocab_size)
      throw InputError(fmt::format("candidate token id {} is outside the vocabulary", id));
  // The decision leaves the model here: the last row's logits in host memory.
  auto logits = forward(model, cache, embed_segments(model, prompt), Logits::Last).reshape({-1}).cpu();
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
