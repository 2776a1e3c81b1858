#include "serve/openai.h"

#include <fmt/format.h>

#include <random>

namespace iadgpt::serve {

using nlohmann::json;

namespace {

constexpr const char* kDefaultQuestion = "Is there any anomaly in the image?";
constexpr size_t kMaxStops = 4;         // OpenAI's limit
constexpr size_t kMaxStopChars = 64;

bool present(const json& j, const char* key) { return j.contains(key) && !j[key].is_null(); }

double number_field(const json& j, const char* key, double fallback, double lo, double hi) {
  if (!present(j, key)) return fallback;
  if (!j[key].is_number()) throw ParamError(key, fmt::format("'{}' must be a number", key));
  const double v = j[key].get<double>();
  if (!(v >= lo && v <= hi)) throw ParamError(key, fmt::format("'{}' must be in [{}, {}], got {}", key, lo, hi, v));
  return v;
}

int64_t tokens_field(const json& j, const char* key, int64_t fallback, int64_t hi) {
  if (!present(j, key)) return fallback;
  if (!j[key].is_number_integer()) throw ParamError(key, fmt::format("'{}' must be an integer", key));
  const auto v = j[key].get<int64_t>();
  if (v < 1 || v > hi) {
    throw ParamError(key, fmt::format("'{}' must be in [1, {}] (the server's --max-tokens), got {}", key, hi, v));
  }
  return v;
}

std::vector<std::string> stop_field(const json& j) {
  if (!present(j, "stop")) return {};
  const auto& s = j["stop"];
  std::vector<std::string> out;
  if (s.is_string()) {
    out.push_back(s.get<std::string>());
  } else if (s.is_array()) {
    if (s.size() > kMaxStops) throw ParamError("stop", fmt::format("'stop' holds at most {} strings", kMaxStops));
    for (const auto& e : s) {
      if (!e.is_string()) throw ParamError("stop", "'stop' must be a string or an array of strings");
      out.push_back(e.get<std::string>());
    }
  } else {
    throw ParamError("stop", "'stop' must be a string or an array of strings");
  }
  for (const auto& e : out) {
    if (e.empty() || e.size() > kMaxStopChars) {
      throw ParamError("stop", fmt::format("stop strings must have 1 to {} characters", kMaxStopChars));
    }
  }
  return out;
}

// Fields that would change what the client gets back, which this server cannot honour: refused
// (400) unless they ask for the default. Everything else unknown is ignored.
void refuse_unsupported(const json& j) {
  auto refuse = [](const char* key, const std::string& why) { throw ParamError(key, fmt::format("'{}' {}", key, why)); };
  if (present(j, "n") && j["n"] != 1) refuse("n", "must be 1: one answer per request");
  if (present(j, "logprobs") && j["logprobs"] != false) refuse("logprobs", "is not supported");
  if (present(j, "top_logprobs")) refuse("top_logprobs", "is not supported");
  for (const char* key : {"tools", "functions"}) {
    if (present(j, key) && !j[key].empty()) refuse(key, "is not supported: the model calls no tools");
  }
  for (const char* key : {"tool_choice", "function_call"}) {
    if (present(j, key) && j[key] != "none") refuse(key, "is not supported: the model calls no tools");
  }
  if (present(j, "response_format") && !(j["response_format"].is_object() && j["response_format"].value("type", "") == "text")) {
    refuse("response_format", "must be {\"type\": \"text\"}: the answer is plain text");
  }
  for (const char* key : {"presence_penalty", "frequency_penalty"}) {
    if (present(j, key) && !(j[key].is_number() && j[key].get<double>() == 0)) refuse(key, "is not supported (only 0)");
  }
  if (present(j, "logit_bias") && !j["logit_bias"].empty()) refuse("logit_bias", "is not supported");
  if (present(j, "audio")) refuse("audio", "is not supported: the answer is text");
}

GenerationParams generation_params(const json& j, const ChatLimits& limits, bool& seeded) {
  GenerationParams p;
  if (present(j, "max_tokens") && present(j, "max_completion_tokens") && j["max_tokens"] != j["max_completion_tokens"]) {
    throw ParamError("max_tokens", "'max_tokens' and 'max_completion_tokens' differ; give one of them");
  }
  p.max_tokens = tokens_field(j, "max_completion_tokens", tokens_field(j, "max_tokens", limits.answer_tokens, limits.max_tokens),
                              limits.max_tokens);
  p.temperature = number_field(j, "temperature", 0.0, 0.0, 2.0);
  p.top_p = number_field(j, "top_p", 1.0, 0.0, 1.0);
  if (p.top_p == 0) p.temperature = 0;  // a nucleus of mass 0 is the most likely token alone
  p.stop = stop_field(j);
  seeded = present(j, "seed");
  if (seeded) {
    if (!j["seed"].is_number_integer()) throw ParamError("seed", "'seed' must be an integer");
    p.seed = j["seed"].is_number_unsigned() ? j["seed"].get<uint64_t>() : static_cast<uint64_t>(j["seed"].get<int64_t>());
  } else {
    p.seed = std::random_device{}();  // OpenAI without a seed: a different sample each time
  }
  return p;
}

// One message's text (string content, or its text parts joined by a space); image parts go to
// `on_image` (user messages only).
std::string message_text(const json& msg, const std::string& where,
                         const std::function<void(const json& part, const std::string& where)>& on_image) {
  const auto content = msg.contains("content") ? msg["content"] : json();
  if (content.is_string()) return content.get<std::string>();
  if (content.is_null()) return "";
  if (!content.is_array()) throw ParamError(where + ".content", where + ".content must be a string or an array of parts");
  std::string text;
  for (size_t p = 0; p < content.size(); ++p) {
    const auto& part = content[p];
    const auto at = fmt::format("{}.content[{}]", where, p);
    const std::string type = part.is_object() && part.contains("type") && part["type"].is_string() ? part["type"].get<std::string>() : "";
    if (type == "text") {
      if (!part.contains("text") || !part["text"].is_string()) throw ParamError(at + ".text", at + ": a text part needs a string 'text'");
      text += (text.empty() ? "" : " ") + part["text"].get<std::string>();
    } else if (type == "image_url" && on_image) {
      on_image(part, at);
    } else {
      throw ParamError(at, fmt::format("{}: content parts must be of type 'text'{}", at, on_image ? " or 'image_url'" : ""));
    }
  }
  return text;
}

std::string image_url_of(const json& part, const std::string& at) {
  const auto& iu = part.contains("image_url") ? part["image_url"] : json();
  if (iu.is_string()) return iu.get<std::string>();
  if (iu.is_object() && iu.contains("url") && iu["url"].is_string()) return iu["url"].get<std::string>();
  throw ParamError(at + ".image_url", at + ": image_url needs a 'url' (a data: URI)");
}

// The messages as alternating user/assistant texts (consecutive messages of one role joined by a
// newline), system/developer texts apart, images decoded into `in`.
struct Dialogue {
  std::string system;
  std::vector<std::pair<std::string, std::string>> turns;  // (role, text)
};

Dialogue read_messages(const json& messages, const ChatLimits& limits, const ImageDecoder& decode, DetectInput& in) {
  Dialogue d;
  bool have_image = false;
  for (size_t m = 0; m < messages.size(); ++m) {
    const auto& msg = messages[m];
    const auto where = fmt::format("messages[{}]", m);
    if (!msg.is_object() || !msg.contains("role") || !msg["role"].is_string()) {
      throw ParamError(where, where + " must be an object with a string 'role'");
    }
    const auto role = msg["role"].get<std::string>();
    std::function<void(const json&, const std::string&)> on_image;
    if (role == "user") {
      on_image = [&](const json& part, const std::string& at) {
        const bool reference = part.value("reference", false) || (part.contains("image_url") && part["image_url"].is_object() &&
                                                                  part["image_url"].value("reference", false));
        if (!have_image && !reference) {
          if (!d.turns.empty()) {
            throw ParamError(at, at + ": the image to inspect must be in the first user message");
          }
          in.image = decode(image_url_of(part, at), at);
          have_image = true;
          return;
        }
        if (static_cast<int>(in.references.size()) >= limits.max_references) {
          throw ParamError(at, fmt::format("at most {} reference images per request", limits.max_references));
        }
        in.references.push_back(decode(image_url_of(part, at), at));
      };
    } else if (role != "system" && role != "developer" && role != "assistant") {
      throw ParamError(where + ".role", fmt::format("{}: role '{}' is not supported (system, developer, user, assistant)", where, role.substr(0, 32)));
    }
    if (role == "assistant" && present(msg, "tool_calls")) throw ParamError(where + ".tool_calls", "tool calls are not supported");
    auto text = message_text(msg, where, on_image);
    if (text.size() > limits.max_message_chars) {
      throw ParamError(where + ".content", fmt::format("{}: text longer than {} characters", where, limits.max_message_chars));
    }
    if (role == "system" || role == "developer") {
      d.system += (d.system.empty() || text.empty() ? "" : "\n") + text;
    } else if (!d.turns.empty() && d.turns.back().first == role) {
      d.turns.back().second += (text.empty() ? "" : "\n") + text;
    } else {
      if (d.turns.empty() && role != "user") throw ParamError(where, where + ": the conversation must start with a user message");
      d.turns.emplace_back(role, text);
    }
  }
  if (!have_image) {
    throw ParamError("messages", "no image in the conversation: add to the first user message a content part {\"type\": "
                                 "\"image_url\", \"image_url\": {\"url\": \"data:image/png;base64,...\"}}");
  }
  if (d.turns.back().first != "user") throw ParamError("messages", "the last message must be the user's (the one to answer)");
  return d;
}

}  // namespace

ChatRequest parse_chat_request(const json& j, const ChatLimits& limits, const ImageDecoder& decode) {
  if (!j.is_object()) throw InputError("request body must be a JSON object");
  ChatRequest r;
  if (present(j, "model")) {
    if (!j["model"].is_string()) throw ParamError("model", "'model' must be a string");
    r.model = j["model"].get<std::string>();
  }
  if (present(j, "stream")) {
    if (!j["stream"].is_boolean()) throw ParamError("stream", "'stream' must be true or false");
    r.stream = j["stream"].get<bool>();
  }
  if (present(j, "stream_options")) {
    if (!r.stream) throw ParamError("stream_options", "'stream_options' is only allowed with \"stream\": true");
    const auto& so = j["stream_options"];
    if (!so.is_object()) throw ParamError("stream_options", "'stream_options' must be an object");
    if (present(so, "include_usage")) {
      if (!so["include_usage"].is_boolean()) throw ParamError("stream_options", "'include_usage' must be true or false");
      r.include_usage = so["include_usage"].get<bool>();
    }
  }
  refuse_unsupported(j);
  r.input.params = generation_params(j, limits, r.seeded);
  if (!j.contains("messages") || !j["messages"].is_array() || j["messages"].empty()) {
    throw ParamError("messages", "'messages' must be a non-empty array");
  }
  auto& in = r.input;
  if (present(j, "class")) {
    if (!j["class"].is_string()) throw ParamError("class", "'class' must be a string");
    in.detect.class_name = j["class"].get<std::string>();
  }
  const auto d = read_messages(j["messages"], limits, decode, in.detect);
  // The IAD-GPT prompt (METHOD §1.9) has no system slot: system text opens the first question.
  const auto& first = d.turns.front().second;
  in.detect.question = d.system.empty() ? first : d.system + "\n" + (first.empty() ? kDefaultQuestion : first);
  in.detect.max_tokens = in.params.max_tokens;
  for (size_t t = 1; t < d.turns.size(); ++t) {
    (d.turns[t].first == "assistant" ? in.answers : in.follow_ups).push_back(d.turns[t].second);
  }
  for (size_t i = 0; i < in.follow_ups.size(); ++i) {
    if (in.follow_ups[i].empty()) throw ParamError("messages", "a follow-up user message has no text");
  }
  return r;
}

json regions_json(const std::vector<anomaly::Region>& regions) {
  json out = json::array();
  for (const auto& r : regions) {
    out.push_back({{"position", r.position}, {"area", r.area}, {"centroid", {r.centroid_x, r.centroid_y}}});
  }
  return out;
}

json usage_json(const Reply& reply) {
  return {{"prompt_tokens", reply.prompt_tokens},
          {"completion_tokens", reply.completion_tokens},
          {"total_tokens", reply.prompt_tokens + reply.completion_tokens}};
}

json iadgpt_json(const DetectOutput& out) {
  return {{"pred_score", out.pred_score}, {"pred_label", out.pred_label ? 1 : 0}, {"p_yes", out.p_yes},
          {"position", out.position},     {"defect_type", out.defect_type},       {"regions", regions_json(out.regions)}};
}

json completion_json(const CompletionMeta& meta, const Completion& c) {
  return {{"id", meta.id},
          {"object", "chat.completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", json::array({{{"index", 0},
                                    {"message", {{"role", "assistant"}, {"content", c.reply.text}, {"refusal", nullptr}}},
                                    {"logprobs", nullptr},
                                    {"finish_reason", c.reply.finish_reason}}})},
          {"usage", usage_json(c.reply)},
          {"iadgpt", iadgpt_json(c.detect)}};
}

json chunk_json(const CompletionMeta& meta, json delta, json finish_reason) {
  return {{"id", meta.id},
          {"object", "chat.completion.chunk"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", json::array({{{"index", 0}, {"delta", std::move(delta)}, {"logprobs", nullptr},
                                    {"finish_reason", std::move(finish_reason)}}})}};
}

// Invalid UTF-8 in generated text (see send_json) becomes U+FFFD instead of an exception.
std::string sse(const json& j) { return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n"; }

}  // namespace iadgpt::serve
