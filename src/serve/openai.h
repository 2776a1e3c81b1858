// POST /v1/chat/completions as OpenAI clients send it: the request parsed into a CompletionInput
// (messages with history, image parts, sampling fields; unsupported fields refused or ignored as
// the README lists), and the response shapes (chat.completion, chat.completion.chunk, usage).
//
//   auto req = serve::parse_chat_request(body, limits, decode_image);   // ParamError → 400
//   auto c = engine.complete(req.input, sink);
//   send(serve::completion_json(meta, c));
#pragma once
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include <functional>
#include <string>
#include <string_view>

#include "io/error.h"
#include "serve/engine.h"

namespace iadgpt::serve {

// A bad request field: HTTP 400 with the field in OpenAI's `param` ("messages[1].content", ...).
class ParamError : public InputError {
 public:
  ParamError(std::string param, const std::string& message) : InputError(message), param_(std::move(param)) {}
  const std::string& param() const { return param_; }

 private:
  std::string param_;
};

struct ChatLimits {
  int64_t max_tokens = 256;     // upper bound of max_tokens
  int64_t answer_tokens = 64;   // max_tokens when the request does not say
  int max_references = 16;
  size_t max_message_chars = 4000;
};

struct ChatRequest {
  CompletionInput input;
  std::string model;  // "" when the request names none
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool seeded = false;         // the request gave a seed (else input.params.seed is random)
};

// Decodes one data: URI image (size limits included); `what` names it in errors.
using ImageDecoder = std::function<cv::Mat(const std::string& data_uri, const std::string& what)>;

ChatRequest parse_chat_request(const nlohmann::json& body, const ChatLimits& limits, const ImageDecoder& decode);

struct CompletionMeta {
  std::string id;       // "chatcmpl-…", the same in every chunk of a stream
  int64_t created = 0;  // unix seconds
  std::string model;
};

nlohmann::json regions_json(const std::vector<anomaly::Region>& regions);
nlohmann::json usage_json(const Reply& reply);
// Our extension beside the answer: the inspection's score, decision, position and regions.
nlohmann::json iadgpt_json(const DetectOutput& out);
nlohmann::json completion_json(const CompletionMeta& meta, const Completion& c);
// One chat.completion.chunk with a single choice (finish_reason null while streaming).
nlohmann::json chunk_json(const CompletionMeta& meta, nlohmann::json delta, nlohmann::json finish_reason);
// A server-sent event: "data: <json>\n\n".
std::string sse(const nlohmann::json& j);

}  // namespace iadgpt::serve
