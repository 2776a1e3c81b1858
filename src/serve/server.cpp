#include "serve/server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <iostream>
#include <mutex>

#include "image/decode.h"
#include "image/overlay.h"
#include "io/error.h"
#include "serve/auth.h"
#include "serve/codec.h"
#include "serve/events.h"
#include "serve/metrics.h"
#include "serve/openai.h"
#include "serve/pool.h"
#include "serve/sessions.h"
#include "serve/web.h"

namespace iadgpt::serve {

using nlohmann::json;

namespace {

// An error with its HTTP status (and OpenAI's `code` when more specific than the status), thrown
// by handlers and turned into the JSON error body.
struct HttpError : std::runtime_error {
  int status;
  json code;
  HttpError(int s, const std::string& message, json c = nullptr) : std::runtime_error(message), status(s), code(std::move(c)) {}
};

std::string_view error_type(int status, const json& code) {
  if (code == "model_not_found") return "invalid_request_error";  // as OpenAI answers an unknown model
  switch (status) {
    case 401: return "invalid_request_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  // Generated text may end inside a UTF-8 sequence (max_tokens cut it, or a small model wrote
  // stray bytes): such bytes are sent as U+FFFD rather than failing the whole answer.
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

// OpenAI's error shape; `code` is the HTTP status unless a more specific code is given, `param`
// the request field at fault (null when none is).
json error_json(int status, const std::string& message, const json& code = nullptr, const json& param = nullptr) {
  return {{"error", {{"message", message}, {"type", error_type(status, code)}, {"param", param},
                     {"code", code.is_null() ? json(status) : code}}}};
}

void send_error(httplib::Response& res, int status, const std::string& message, const json& code = nullptr,
                const json& param = nullptr) {
  send_json(res, status, error_json(status, message, code, param));
}

// The routes as /metrics labels them; anything else is "other" (the label set stays bounded).
std::string route_label(const std::string& path) {
  for (const char* route : {"/", "/v1/health", "/v1/model", "/v1/models", "/v1/detect", "/v1/chat",
                            "/v1/chat/completions", "/metrics"}) {
    if (path == route) return path;
  }
  for (const auto& asset : web_assets()) {
    if (path == asset.path) return "static";
  }
  return "other";
}

// A default message for statuses that httplib sets itself (no route, body too large, parse errors).
std::string default_message(int status) {
  switch (status) {
    case 400: return "malformed HTTP request";
    case 404: return "no such endpoint; see GET /v1/model and the README for the API";
    case 405: return "method not allowed";
    case 413: return "request body too large (see --max-body)";
    case 414: return "request URI too long";
    default: return fmt::format("HTTP error {}", status);
  }
}

json parse_json_body(const httplib::Request& req) {
  try {
    return json::parse(req.body);
  } catch (const json::exception& e) {
    throw InputError(fmt::format("request body is not valid JSON ({})", e.what()));
  }
}

std::string string_field(const json& j, const char* key, bool required) {
  if (!j.contains(key) || j[key].is_null()) {
    if (required) throw InputError(fmt::format("missing field '{}'", key));
    return {};
  }
  if (!j[key].is_string()) throw InputError(fmt::format("field '{}' must be a string", key));
  return j[key].get<std::string>();
}

int64_t int_field(const json& j, const char* key, int64_t fallback, int64_t lo, int64_t hi) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number_integer()) throw InputError(fmt::format("field '{}' must be an integer", key));
  const auto v = j[key].get<int64_t>();
  if (v < lo || v > hi) throw InputError(fmt::format("field '{}' must be in [{}, {}], got {}", key, lo, hi, v));
  return v;
}

// Class names reach prompts and cache keys: short, printable words only.
std::string check_class(std::string name) {
  if (name.size() > 64) throw InputError("field 'class' is longer than 64 characters");
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == ' ')) {
      throw InputError(fmt::format("field 'class' may hold letters, digits, '_', '-' and spaces only, got '{}'", name));
    }
  }
  return name;
}

// Decoded bytes of a detect request's images, added up from their headers before decoding, so a
// request above the session memory budget is refused (413) before it costs the decode.
struct ImageTally {
  const SessionStore& store;
  int64_t bytes = 0;
  void add(int64_t width, int64_t height) {
    bytes += width * height * 3;  // decoded RGB8
    store.check_fits(bytes);
  }
};

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// The batching counters of /metrics: the pool's detect batches and the engines' shared counters
// (IadGptEngine::shared_stats: batched prefills, the decode loop), the same numbers /v1/health shows.
void batch_gauges(const PoolStats& pool, const json& engine, ServerGauges& g) {
  g.detect_batches = pool.batches;
  g.detect_batched = pool.batched;
  const auto get = [&](const char* key) { return engine.is_object() ? engine.value(key, int64_t{0}) : int64_t{0}; };
  g.prefill_batches = static_cast<uint64_t>(get("prefill_batches"));
  g.prefill_batched = static_cast<uint64_t>(get("prefill_batched"));
  g.decode_steps = static_cast<uint64_t>(get("decode_steps"));
  g.decode_rows = static_cast<uint64_t>(get("decode_rows"));
  g.decode_sequences = static_cast<uint64_t>(get("decode_sequences"));
  g.decode_batch = get("decode_batch");
  g.decode_max_seen = get("decode_max_seen");
  g.decode_waiting = get("decode_waiting");
}

}  // namespace

bool is_loopback(const std::string& host) {
  if (host == "localhost" || host == "::1") return true;
  in_addr addr{};
  if (inet_pton(AF_INET, host.c_str(), &addr) == 1) return (ntohl(addr.s_addr) >> 24) == 127;
  return false;
}

struct Server::Impl {
  ServerOptions options;
  WorkerPool pool;
  SessionStore sessions;
  json model_info;
  httplib::Server http;
  int port = -1;
  int listen_socket = -1;  // seen when httplib creates it, to widen its accept backlog
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  ApiKeys keys;
  Metrics metrics;
  // Graceful shutdown: API requests enter and leave under drain_mutex, so once `draining` is set
  // no new one starts and shutdown() can wait for in_flight to reach 0.
  std::mutex drain_mutex;
  std::condition_variable drained;
  std::atomic<bool> draining{false};
  int64_t in_flight = 0;

  Impl(const ServerOptions& o, const EngineFactory& factory)
      : options(o),
        pool(o.workers, static_cast<size_t>(std::max(0, o.queue)), factory, o.threads_per_worker,
             BatchPolicy{o.batch, std::chrono::milliseconds(o.batch_wait_ms)}),
        sessions(std::chrono::seconds(o.session_ttl_s), o.max_sessions, o.session_memory_mb * 1024 * 1024),
        keys(o.api_keys) {
    model_info = json::object();
    // Every engine serves the same model; worker 0's description stands for all.
    auto info = pool.submit([&](Worker& w) { model_info = w.engine->describe(); }, 0);
    info.get();
    setup();
  }

  // ---- request parsing --------------------------------------------------------------------

  cv::Mat checked_image(std::string_view bytes, std::string_view what, ImageTally* tally = nullptr) const {
    const auto size = image::peek_size({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
    if (int64_t(size.width) * size.height > options.max_image_pixels) {
      throw InputError(fmt::format("{}: {}x{} pixels is above the limit of {} pixels", what, size.width,
                                   size.height, options.max_image_pixels));
    }
    if (tally) tally->add(size.width, size.height);
    auto img = decode_image_bytes(bytes, what);
    if (int64_t(img.cols) * img.rows > options.max_image_pixels) {
      throw InputError(fmt::format("{}: {}x{} pixels is above the limit of {} pixels", what, img.cols, img.rows,
                                   options.max_image_pixels));
    }
    return img;
  }

  DetectInput detect_input_multipart(const httplib::Request& req) const {
    ImageTally tally{sessions};
    DetectInput in;
    in.max_tokens = options.answer_tokens;
    if (!req.has_file("image")) throw InputError("multipart field 'image' (the picture to inspect) is missing");
    const auto image = req.get_file_value("image");
    in.image = checked_image(image.content, image.filename.empty() ? "image" : "image '" + image.filename + "'", &tally);
    if (req.has_file("class")) in.class_name = check_class(req.get_file_value("class").content);
    if (req.has_file("question")) in.question = req.get_file_value("question").content;
    if (req.has_file("max_tokens")) {
      try {
        in.max_tokens = std::stoll(req.get_file_value("max_tokens").content);
      } catch (const std::exception&) {
        throw InputError("field 'max_tokens' must be an integer");
      }
    }
    for (const char* key : {"reference", "references", "reference[]"}) {
      auto [first, last] = req.files.equal_range(key);
      for (auto it = first; it != last; ++it) {
        if (it->second.content.empty()) continue;  // an empty file input of a form
        if (static_cast<int>(in.references.size()) >= options.max_references) {
          throw InputError(fmt::format("at most {} reference images per request", options.max_references));
        }
        in.references.push_back(checked_image(
            it->second.content, fmt::format("reference '{}'", it->second.filename.empty() ? "?" : it->second.filename),
            &tally));
      }
    }
    return in;
  }

  DetectInput detect_input_json(const httplib::Request& req) const {
    const auto j = parse_json_body(req);
    if (!j.is_object()) throw InputError("request body must be a JSON object");
    ImageTally tally{sessions};
    DetectInput in;
    in.max_tokens = options.answer_tokens;
    in.image = decode_json_image(string_field(j, "image", true), "field 'image'", tally);
    in.class_name = check_class(string_field(j, "class", false));
    in.question = string_field(j, "question", false);
    in.max_tokens = int_field(j, "max_tokens", in.max_tokens, 1, options.max_tokens);
    if (j.contains("references")) {
      if (!j["references"].is_array()) throw InputError("field 'references' must be an array of data URIs");
      for (size_t i = 0; i < j["references"].size(); ++i) {
        if (static_cast<int>(in.references.size()) >= options.max_references) {
          throw InputError(fmt::format("at most {} reference images per request", options.max_references));
        }
        const auto& r = j["references"][i];
        if (!r.is_string()) throw InputError(fmt::format("references[{}] must be a string", i));
        in.references.push_back(decode_json_image(r.get<std::string>(), fmt::format("references[{}]", i), tally));
      }
    }
    return in;
  }

  cv::Mat decode_json_image(const std::string& value, const std::string& what, ImageTally& tally) const {
    // decode_image_field refuses paths and URLs by name; the size check follows the decode.
    auto bytes = value.rfind("data:", 0) == 0 ? parse_data_uri(value, what).bytes : std::string();
    if (!bytes.empty()) return checked_image(bytes, what, &tally);
    auto img = decode_image_field(value, what);
    if (int64_t(img.cols) * img.rows > options.max_image_pixels) {
      throw InputError(fmt::format("{}: image above the limit of {} pixels", what, options.max_image_pixels));
    }
    return img;
  }

  // ---- work on the pool -------------------------------------------------------------------

  template <class Job>
  void run_job(Job&& job, int worker = -1) {
    std::future<void> done;
    try {
      done = pool.submit(std::forward<Job>(job), worker);
    } catch (const QueueFull& e) {
      throw HttpError(429, e.what());
    }
    done.get();  // the job's own exception, if any, surfaces here
  }

  // The stage timings of one inspection into the histograms (engines report seconds per stage;
  // "generate" is the decode stage).
  void record(const DetectOutput& out) {
    if (!out.timings.is_object()) return;
    for (const auto& [stage, seconds] : out.timings.items()) {
      if (seconds.is_number()) metrics.observe(stage == "generate" ? "decode" : stage, seconds.get<double>());
    }
    metrics.add_generated(out.generated_tokens, out.timings.value("generate", 0.0));
  }

  // The worker holds `session`'s conversation afterwards (rebuilt by replay when it served
  // someone else in between; greedy decoding gives the same answers again).
  static void restore(Worker& w, Session& session) {
    if (w.session == session.id) return;
    w.session.clear();
    w.engine->detect(session.input);
    for (const auto& t : session.turns) w.engine->ask(t.message, t.max_tokens);
    w.session = session.id;
  }

  json detect_json(const DetectInput& in, const DetectOutput& out, const std::string& overlay_png,
                   const std::string& session_id, double seconds) const {
    json j;
    j["session_id"] = session_id;
    j["class"] = in.class_name.empty() ? "object" : in.class_name;
    j["pred_score"] = out.pred_score;
    j["pred_label"] = out.pred_label ? 1 : 0;
    j["p_yes"] = out.p_yes;
    j["answer"] = out.answer;
    j["position"] = out.position;
    j["defect_type"] = out.defect_type;
    j["regions"] = regions_json(out.regions);
    j["references"] = in.references.size();
    j["width"] = in.image.cols;
    j["height"] = in.image.rows;
    j["overlay_png"] = base64_encode(overlay_png);
    j["timings"] = out.timings;
    j["timings"]["total"] = seconds;
    return j;
  }

  // ---- handlers ---------------------------------------------------------------------------

  void detect(const httplib::Request& req, httplib::Response& res) {
    const auto t0 = std::chrono::steady_clock::now();
    DetectInput in;
    if (req.is_multipart_form_data()) {
      in = detect_input_multipart(req);
    } else if (req.get_header_value("Content-Type").find("json") != std::string::npos) {
      in = detect_input_json(req);
    } else {
      throw InputError("POST /v1/detect takes multipart/form-data (field 'image', optional 'class', "
                       "'reference'...) or application/json");
    }
    if (in.max_tokens < 1 || in.max_tokens > options.max_tokens) {
      throw InputError(fmt::format("max_tokens must be in [1, {}]", options.max_tokens));
    }
    // Room for the session before the work: evicts idle sessions, or 413/429 without inference.
    auto room = sessions.reserve(session_bytes(in), SessionStore::Purpose::new_session);
    DetectOutput out;
    std::string overlay, session_id;
    // The inspection itself may share a tower forward with other requests (--batch); the rest
    // runs on the worker that holds the conversation (or will replay it: pool.h).
    std::future<void> done;
    try {
      done = pool.submit_detect(in, out, [&](Worker& w) {
        record(out);
        overlay = encode_png(image::heatmap_overlay(in.image, out.map));
        auto session = sessions.create(std::move(room), w.index, in);
        w.session = session->id;
        session_id = session->id;
      });
    } catch (const QueueFull& e) {
      throw HttpError(429, e.what());
    }
    done.get();
    send_json(res, 200, detect_json(in, out, overlay, session_id, seconds_since(t0)));
  }

  std::string missing_session_message(const std::string& id, SessionStore::Miss miss) const {
    const auto shown = id.substr(0, 64);
    const char* again = "inspect the image again with POST /v1/detect";
    switch (miss) {
      case SessionStore::Miss::expired:
        return fmt::format("session '{}' expired ({} s after its last use); {}", shown, options.session_ttl_s, again);
      case SessionStore::Miss::evicted:
        return fmt::format("session '{}' was evicted to make room for newer sessions (the least recently used go "
                           "first when the {} MB session memory budget or the {}-session limit is reached); {}",
                           shown, options.session_memory_mb, options.max_sessions, again);
      default:
        return fmt::format("unknown or expired session '{}' (sessions expire {} s after their last use and are "
                           "evicted, least recently used first, beyond {} MB or {} sessions); {}",
                           shown, options.session_ttl_s, options.session_memory_mb, options.max_sessions, again);
    }
  }

  // ---- streaming --------------------------------------------------------------------------

  // Answers `res` with the server-sent events that `job` pushes to `events` from a worker. The job
  // is queued now, so a full queue is a 429 before any event; the stream counts as a request in
  // flight (graceful shutdown waits for it) until its last event is written or the client leaves,
  // which cancels `events` and so stops the generation at its next token.
  void stream(httplib::Response& res, const std::shared_ptr<EventStream>& events, WorkerPool::Job job, int worker = -1) {
    try {
      pool.submit(std::move(job), worker);
    } catch (const QueueFull& e) {
      throw HttpError(429, e.what());
    }
    {
      std::lock_guard lock(drain_mutex);
      ++in_flight;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");  // a proxy in front passes each event on at once
    res.set_chunked_content_provider(
        "text/event-stream",
        [events](size_t, httplib::DataSink& sink) {
          std::string event;
          for (;;) {
            const auto next = events->next(event, std::chrono::seconds(1));
            if (next == EventStream::Next::done) break;
            // A comment while the job waits in the queue: SSE clients skip it, and a client that
            // has gone away is noticed here (the write fails) before the job starts.
            if (next == EventStream::Next::timeout) event = ": waiting\n\n";
            if (!sink.write(event.data(), event.size())) {
              events->cancel();
              return false;
            }
          }
          sink.done();
          return true;
        },
        [this, events](bool success) {
          if (!success) events->cancel();
          leave();
        });
  }

  // Ends an event stream whatever happens in the job that feeds it.
  struct FinishEvents {
    EventStream& events;
    ~FinishEvents() { events.finish(); }
  };

  // An error after the stream has started: one event in OpenAI's error shape, then [DONE].
  static void push_error(EventStream& events, const std::exception& e, const char* route) {
    if (dynamic_cast<const InputError*>(&e)) {
      events.push(sse(error_json(400, e.what())));
    } else {
      std::cerr << fmt::format("serve: internal error on a stream of {}: {}\n", route, e.what());
      events.push(sse(error_json(500, fmt::format("internal error: {}", e.what()))));
    }
  }

  // ---- chat -------------------------------------------------------------------------------

  void chat(const httplib::Request& req, httplib::Response& res) {
    const auto j = parse_json_body(req);
    if (!j.is_object()) throw InputError("request body must be a JSON object");
    const auto id = string_field(j, "session_id", true);
    const auto message = string_field(j, "message", true);
    if (message.empty()) throw InputError("field 'message' is empty");
    if (message.size() > 4000) throw InputError("field 'message' is longer than 4000 characters");
    GenerationParams params;  // greedy: a session is rebuilt on another worker by replaying its turns
    params.max_tokens = int_field(j, "max_tokens", options.answer_tokens, 1, options.max_tokens);
    if (j.contains("stream") && !j["stream"].is_null() && !j["stream"].is_boolean()) {
      throw InputError("field 'stream' must be true or false");
    }
    const bool streaming = j.value("stream", false);
    SessionStore::Miss miss{};
    auto session = sessions.find(id, &miss);
    if (!session) throw HttpError(404, missing_session_message(id, miss));
    auto room = std::make_shared<SessionStore::Reservation>(sessions.reserve(turn_bytes(message), SessionStore::Purpose::turn));
    // One turn on the session's worker; false when the client left mid-answer (the turn is not
    // kept, and the worker's conversation is rebuilt on the session's next use).
    auto turn = [this, session, room, message, params](Worker& w, const TextSink& sink, Reply& r) {
      restore(w, *session);
      r = w.engine->reply(message, params, sink);
      if (r.finish_reason == "cancelled") {
        w.session.clear();
        return false;
      }
      sessions.add_turn(*session, std::move(*room), {message, params.max_tokens});
      return true;
    };
    if (!streaming) {
      Reply r;
      run_job([&](Worker& w) { turn(w, {}, r); }, session->worker);
      send_json(res, 200, {{"session_id", id}, {"answer", r.text}, {"turn", session->turns.size()},
                           {"finish_reason", r.finish_reason}});
      return;
    }
    auto events = std::make_shared<EventStream>();
    stream(res, events, [events, turn, session, id](Worker& w) {
      FinishEvents finish{*events};
      if (events->cancelled()) return;  // the client left while the job waited
      try {
        Reply r;
        const bool kept = turn(w, [&](std::string_view text) {
          if (events->cancelled()) return false;
          events->push(sse({{"delta", text}}));
          return true;
        }, r);
        if (!kept) return;
        events->push(sse({{"session_id", id}, {"answer", r.text}, {"turn", session->turns.size()},
                          {"finish_reason", r.finish_reason}}));
      } catch (const std::exception& e) {
        push_error(*events, e, "/v1/chat");
      }
      events->push("data: [DONE]\n\n");
    }, session->worker);
  }

  // ---- OpenAI chat completions --------------------------------------------------------------

  std::string model_name() const { return model_info.value("name", "iadgpt"); }

  // The one model served answers to its own name and to "iadgpt"; no model named is fine too.
  void check_model(const std::string& model) const {
    if (model.empty() || model == model_name() || model == "iadgpt") return;
    throw HttpError(404, fmt::format("the model '{}' does not exist; this server serves '{}' (GET /v1/models)",
                                     model.substr(0, 64), model_name()),
                    "model_not_found");
  }

  void chat_completions(const httplib::Request& req, httplib::Response& res) {
    const auto t0 = std::chrono::steady_clock::now();
    ChatLimits limits;
    limits.max_tokens = options.max_tokens;
    limits.answer_tokens = options.answer_tokens;
    limits.max_references = options.max_references;
    auto request = parse_chat_request(parse_json_body(req), limits, [this](const std::string& uri, const std::string& what) {
      return checked_image(parse_data_uri(uri, what + ".image_url").bytes, what);
    });
    check_model(request.model);
    request.input.detect.class_name = check_class(request.input.detect.class_name);
    const CompletionMeta meta{"chatcmpl-" + random_id(), static_cast<int64_t>(std::time(nullptr)), model_name()};
    if (!request.stream) {
      Completion c;
      run_job([&](Worker& w) {
        w.session.clear();
        c = w.engine->complete(request.input, {});
        record(c.detect);
      });
      auto j = completion_json(meta, c);
      j["iadgpt"]["seconds"] = seconds_since(t0);
      send_json(res, 200, j);
      return;
    }
    auto events = std::make_shared<EventStream>();
    stream(res, events, [this, events, meta, request](Worker& w) { completion_events(w, *events, meta, request); });
  }

  // The chunks of a streamed completion: the role, the content deltas, the finish reason (with
  // our `iadgpt` object), the usage when asked for, then [DONE].
  void completion_events(Worker& w, EventStream& events, const CompletionMeta& meta, const ChatRequest& request) {
    FinishEvents finish{events};
    if (events.cancelled()) return;  // the client left while the job waited
    auto chunk = [&](json delta, json finish_reason) {
      auto c = chunk_json(meta, std::move(delta), std::move(finish_reason));
      if (request.include_usage) c["usage"] = nullptr;  // as OpenAI: null on all but the last chunk
      return c;
    };
    try {
      w.session.clear();
      events.push(sse(chunk({{"role", "assistant"}, {"content", ""}}, nullptr)));
      const auto c = w.engine->complete(request.input, [&](std::string_view text) {
        if (events.cancelled()) return false;
        events.push(sse(chunk({{"content", text}}, nullptr)));
        return true;
      });
      if (c.reply.finish_reason == "cancelled") return;
      record(c.detect);
      auto last = chunk(json::object(), c.reply.finish_reason);
      last["iadgpt"] = iadgpt_json(c.detect);
      events.push(sse(last));
      if (request.include_usage) {
        auto usage = chunk(json::object(), nullptr);
        usage["choices"] = json::array();
        usage["usage"] = usage_json(c.reply);
        events.push(sse(usage));
      }
    } catch (const std::exception& e) {
      push_error(events, e, "/v1/chat/completions");
    }
    events.push("data: [DONE]\n\n");
  }

  json health() const {
    const auto s = pool.stats();
    return {{"status", draining ? "draining" : "ok"},
            {"workers", s.workers},
            {"busy", s.busy},
            {"queued", s.queued},
            {"queue_capacity", s.capacity},
            {"completed", s.completed},
            {"rejected", s.rejected},
            {"batch", options.batch},
            {"batch_wait_ms", options.batch_wait_ms},
            {"batches", s.batches},
            {"batched", s.batched},
            {"engine", pool.shared_stats()},
            {"sessions", sessions.size()},
            {"session_bytes", sessions.bytes()},
            {"session_budget_bytes", sessions.budget()},
            {"session_evictions", sessions.evictions()},
            {"uptime_s", seconds_since(started)}};
  }

  ServerGauges gauges() {
    const auto s = pool.stats();
    ServerGauges g;
    g.workers = s.workers;
    g.busy = s.busy;
    g.queued = s.queued;
    g.queue_capacity = s.capacity;
    g.sessions = sessions.size();
    g.session_bytes = sessions.bytes();
    g.session_budget_bytes = sessions.budget();
    g.draining = draining;
    batch_gauges(s, pool.shared_stats(), g);
    std::lock_guard lock(drain_mutex);
    g.in_flight = in_flight;
    return g;
  }

  // ---- graceful shutdown ------------------------------------------------------------------

  // An API request in flight, counted from its handler's start to its end. False when the server
  // is draining (the request gets 503 instead).
  bool enter() {
    std::lock_guard lock(drain_mutex);
    if (draining) return false;
    ++in_flight;
    return true;
  }
  void leave() {
    {
      std::lock_guard lock(drain_mutex);
      --in_flight;
    }
    drained.notify_all();
  }

  int64_t drain(std::chrono::milliseconds timeout) {
    std::unique_lock lock(drain_mutex);
    draining = true;
    drained.wait_for(lock, timeout, [&] { return in_flight == 0; });
    return in_flight;
  }

  static void send_draining(httplib::Response& res) {
    res.set_header("Retry-After", "5");
    res.set_header("Connection", "close");  // this server is going away
    send_error(res, 503, "the server is shutting down; retry on another instance or after it restarts");
  }

  // True when `res` now holds a refusal: 503 while draining, 401 when keys are required and the
  // request has no valid one. /v1/health and the page's compiled-in (public) files are open.
  bool refused(const httplib::Request& req, httplib::Response& res) {
    if (req.path == "/v1/health") return false;
    if (draining) {
      send_draining(res);
      return true;
    }
    const bool open = req.method == "GET" && (req.path == "/" || route_label(req.path) == "static");
    if (!keys.enabled() || open || keys.accepts(req.get_header_value("Authorization"))) return false;
    res.set_header("WWW-Authenticate", "Bearer");
    send_error(res, 401,
               req.has_header("Authorization")
                   ? "incorrect API key provided in the Authorization header"
                   : "this server needs an API key: send the header 'Authorization: Bearer <key>'",
               "invalid_api_key");
    return true;
  }

  // Every handler runs behind this: typed errors become JSON with their status.
  httplib::Server::Handler guarded(void (Impl::*handler)(const httplib::Request&, httplib::Response&)) {
    return [this, handler](const httplib::Request& req, httplib::Response& res) {
      if (refused(req, res)) return;
      if (!enter()) return send_draining(res);
      struct Leave {
        Impl* impl;
        ~Leave() { impl->leave(); }
      } leave_on_return{this};
      try {
        (this->*handler)(req, res);
      } catch (const HttpError& e) {
        if (e.status == 429) res.set_header("Retry-After", "1");
        send_error(res, e.status, e.what(), e.code);
      } catch (const ParamError& e) {
        send_error(res, 400, e.what(), nullptr, e.param());
      } catch (const SessionTooLarge& e) {
        send_error(res, 413, e.what());
      } catch (const SessionMemoryFull& e) {
        res.set_header("Retry-After", "1");
        send_error(res, 429, e.what());
      } catch (const InputError& e) {
        send_error(res, 400, e.what());
      } catch (const nlohmann::json::exception& e) {
        // A field of the wrong JSON type read with value()/get().
        send_error(res, 400, fmt::format("a request field has the wrong type ({})", e.what()));
      } catch (const std::exception& e) {
        std::cerr << fmt::format("serve: internal error on {} {}: {}\n", req.method, req.path, e.what());
        send_error(res, 500, fmt::format("internal error: {}", e.what()));
      }
    };
  }

  void setup() {
    http.set_socket_options([this](socket_t sock) {
      httplib::default_socket_options(sock);
      listen_socket = sock;
    });
    const auto limit = static_cast<size_t>(options.max_body_mb) * 1024 * 1024;
    http.set_payload_max_length(limit);
    http.set_read_timeout(options.timeout_s, 0);
    http.set_write_timeout(options.timeout_s, 0);
    // An idle keep-alive connection holds a connection thread: no longer than the read timeout.
    http.set_keep_alive_timeout(std::min(5, options.timeout_s));
    http.set_keep_alive_max_count(100);
    // Connection threads: every queued or running request holds one while it waits, and a few
    // more keep /v1/health and the page answering when the queue is full or a client is slow.
    const size_t threads = static_cast<size_t>(options.workers + std::max(0, options.queue) + 8);
    http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };

    http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      // An unknown route with a body: without a key it is a 401 too (the routes are not shown).
      if (res.status == 404 && refused(req, res)) return httplib::Server::HandlerResponse::Handled;
      send_error(res, res.status, default_message(res.status));
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
      send_error(res, 500, "internal error");
    });
    // Before routing (and before a body is read): 503 while draining, 401 without a valid key.
    // Requests without a body are refused (401/503) before routing. Those with one are refused by
    // their handler (guarded) or as a 404, after httplib has read the body (bounded by --max-body):
    // answering before it would leave the body on a kept-alive connection, read as the next
    // request, or make the close reset the connection before the client reads the answer.
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      const auto length = req.get_header_value("Content-Length");
      const bool has_body = (!length.empty() && length != "0") || req.has_header("Transfer-Encoding");
      if (has_body) return httplib::Server::HandlerResponse::Unhandled;
      return refused(req, res) ? httplib::Server::HandlerResponse::Handled : httplib::Server::HandlerResponse::Unhandled;
    });
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      metrics.count_request(route_label(req.path), res.status);
    });

    for (const auto& asset : web_assets()) {
      const std::string path = asset.path == "/index.html" ? "/" : std::string(asset.path);
      http.Get(path, [asset](const httplib::Request&, httplib::Response& res) {
        res.set_content(std::string(asset.body), std::string(asset.content_type).c_str());
        res.set_header("Cache-Control", "no-store");
        res.set_header("X-Content-Type-Options", "nosniff");
      });
    }
    http.Get("/v1/health", [this](const httplib::Request&, httplib::Response& res) {
      send_json(res, draining ? 503 : 200, health());
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics.render(gauges()), "text/plain; version=0.0.4; charset=utf-8");
    });
    http.Get("/v1/model", [this](const httplib::Request&, httplib::Response& res) {
      json j = model_info;
      j["server"] = {{"workers", options.workers}, {"queue", options.queue}, {"batch", options.batch},
                     {"batch_wait_ms", options.batch_wait_ms}, {"max_body_mb", options.max_body_mb},
                     {"timeout_s", options.timeout_s}, {"session_ttl_s", options.session_ttl_s},
                     {"session_memory_mb", options.session_memory_mb}, {"max_sessions", options.max_sessions},
                     {"max_references", options.max_references}, {"max_tokens", options.max_tokens},
                     {"answer_tokens", options.answer_tokens}};
      send_json(res, 200, j);
    });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200, {{"object", "list"},
                           {"data", json::array({{{"id", model_info.value("name", "iadgpt")},
                                                  {"object", "model"},
                                                  {"owned_by", "iadgpt"}}})}});
    });
    http.Post("/v1/detect", guarded(&Impl::detect));
    http.Post("/v1/chat", guarded(&Impl::chat));
    http.Post("/v1/chat/completions", guarded(&Impl::chat_completions));
  }
};

void validate(const ServerOptions& options) {
  if (options.queue < 0) throw InputError("--queue must be >= 0");
  if (options.batch < 1 || options.batch > 64) throw InputError(fmt::format("--batch must be in [1, 64], got {}", options.batch));
  if (options.batch_wait_ms < 0 || options.batch_wait_ms > 10'000)
    throw InputError(fmt::format("--batch-wait must be in [0, 10000] (ms), got {}", options.batch_wait_ms));
  if (options.max_body_mb < 1) throw InputError("--max-body must be >= 1 (MB)");
  if (options.timeout_s < 1) throw InputError("--timeout must be >= 1 (seconds)");
  if (options.session_ttl_s < 1) throw InputError("--session-ttl must be >= 1 (seconds)");
  if (options.session_memory_mb < 1 || options.session_memory_mb > (int64_t(1) << 30)) {
    throw InputError(fmt::format("--session-memory must be in [1, 2^30] (MB), got {}", options.session_memory_mb));
  }
  if (options.answer_tokens < 1 || options.answer_tokens > options.max_tokens) {
    throw InputError(fmt::format("--answer-tokens must be in [1, --max-tokens = {}]", options.max_tokens));
  }
  if (options.drain_timeout_s < 0) throw InputError("--drain-timeout must be >= 0 (seconds)");
  if (!is_loopback(options.host) && options.api_keys.empty() && !options.insecure) {
    throw InputError(fmt::format("--host {} is reachable from other machines: give --api-key-file FILE, or "
                                 "--insecure to serve it without authentication", options.host));
  }
  if (options.port < 0 || options.port > 65535) {
    throw InputError(fmt::format("--port must be in [0, 65535], got {}", options.port));
  }
}

Server::Server(const ServerOptions& options, const EngineFactory& factory) {
  validate(options);
  impl_ = std::make_unique<Impl>(options, factory);
}

Server::~Server() {
  if (impl_) impl_->http.stop();
}

int Server::bind() {
  auto& o = impl_->options;
  if (o.port == 0) {
    impl_->port = impl_->http.bind_to_any_port(o.host);
  } else {
    impl_->port = impl_->http.bind_to_port(o.host, o.port) ? o.port : -1;
  }
  if (impl_->port <= 0) throw InputError(fmt::format("cannot listen on {}:{} (address in use or not local?)", o.host, o.port));
  // Debian's httplib listens with a backlog of 5: a burst of clients (a line's cameras at once)
  // overflows it, and a dropped handshake costs a client seconds of retries or a read error.
  // Listening again on the bound socket widens the backlog (Linux caps it at net.core.somaxconn).
  if (impl_->listen_socket >= 0 && ::listen(impl_->listen_socket, SOMAXCONN) != 0) {
    std::cerr << "serve: could not widen the accept backlog; bursts of connections may be retried\n";
  }
  return impl_->port;
}

void Server::run() {
  if (impl_->port <= 0) bind();
  impl_->http.listen_after_bind();
}

void Server::stop() { impl_->http.stop(); }

int64_t Server::shutdown(std::chrono::milliseconds timeout) {
  const auto left = impl_->drain(timeout);
  if (left == 0) impl_->http.stop();
  return left;
}

int Server::port() const { return impl_->port; }

}  // namespace iadgpt::serve
