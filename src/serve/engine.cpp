#include "serve/engine.h"

namespace iadgpt::serve {

std::vector<DetectResult> Engine::detect_batch(std::span<const DetectInput* const> inputs) {
  std::vector<DetectResult> results(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    try {
      results[i].output = detect(*inputs[i]);
    } catch (...) {
      results[i].error = std::current_exception();
    }
  }
  return results;
}

Completion Engine::complete(const CompletionInput& in, const TextSink& sink) {
  Completion c;
  DetectInput first = in.detect;
  first.max_tokens = in.params.max_tokens;
  c.detect = detect(first);
  c.reply.text = c.detect.answer;
  for (const auto& question : in.follow_ups) c.reply.text = ask(question, in.params.max_tokens);
  if (sink && !c.reply.text.empty() && !sink(c.reply.text)) c.reply.finish_reason = "cancelled";
  return c;
}

Reply Engine::reply(std::string_view message, const GenerationParams& params, const TextSink& sink) {
  Reply r;
  r.text = ask(message, params.max_tokens);
  if (sink && !r.text.empty() && !sink(r.text)) r.finish_reason = "cancelled";
  return r;
}

}  // namespace iadgpt::serve
