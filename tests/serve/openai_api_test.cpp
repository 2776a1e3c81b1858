// POST /v1/chat/completions as OpenAI clients use it, and streaming (server-sent events) on it
// and on /v1/chat: the request mapping (history, sampling fields, refused and ignored fields),
// errors in OpenAI's shape, the chunk sequence, a client leaving mid-stream; then the real
// pipeline on the tiny bundle: max_tokens → "length", stop strings, seeds, usage counted
// independently, the history reaching the prompt, and a stream equal to the plain answer.
#include <fmt/format.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <future>
#include <set>

#include "llm/generate.h"
#include "model/pipeline.h"
#include "model/prompt.h"
#include "serve/codec.h"
#include "serve/iadgpt_engine.h"
#include "serve/openai.h"
#include "serve_test_util.h"
#include "model/tiny_bundle.h"

using namespace iadgpt;
using namespace iadgpt::test;
using nlohmann::json;

namespace {

std::string data_uri(const std::string& bytes) { return "data:image/jpeg;base64," + serve::base64_encode(bytes); }

json image_part(const std::string& url) { return {{"type", "image_url"}, {"image_url", {{"url", url}}}}; }

json user_with_image(const std::string& url, const std::string& text) {
  return {{"role", "user"}, {"content", json::array({{{"type", "text"}, {"text", text}}, image_part(url)})}};
}

json request_with(const std::string& url, const std::string& text = "Is there any anomaly?") {
  return {{"model", "iadgpt"}, {"messages", json::array({user_with_image(url, text)})}};
}

// The events of a text/event-stream body: JSON payloads in order; `done` when the last is [DONE].
struct Events {
  std::vector<json> data;
  bool done = false;
  std::string content() const {  // the concatenated content deltas of chat.completion.chunk events
    std::string s;
    for (const auto& e : data) {
      if (e.contains("choices") && !e["choices"].empty() && e["choices"][0]["delta"].contains("content")) {
        s += e["choices"][0]["delta"]["content"].get<std::string>();
      }
    }
    return s;
  }
};

Events parse_events(const std::string& body) {
  Events out;
  size_t at = 0;
  while (at < body.size()) {
    auto end = body.find("\n\n", at);
    if (end == std::string::npos) throw std::runtime_error("event not ended by a blank line: " + body.substr(at, 80));
    const auto event = body.substr(at, end - at);
    at = end + 2;
    if (event.rfind(":", 0) == 0) continue;  // a comment (": waiting")
    if (event.rfind("data: ", 0) != 0) throw std::runtime_error("not a data line: " + event);
    if (out.done) throw std::runtime_error("an event after [DONE]");
    const auto payload = event.substr(6);
    if (payload == "[DONE]") {
      out.done = true;
    } else {
      out.data.push_back(json::parse(payload));
    }
  }
  return out;
}

// A decoder for parse_chat_request that records what it was given (no image codec involved).
struct RecordingDecoder {
  std::vector<std::string> seen;
  serve::ImageDecoder fn() {
    return [this](const std::string& uri, const std::string&) {
      seen.push_back(uri);
      return cv::Mat(2, 2, CV_8UC3, cv::Scalar(static_cast<double>(seen.size()), 0, 0));
    };
  }
};

json text_msg(const char* role, const std::string& text) { return {{"role", role}, {"content", text}}; }

// A scripted engine whose answers stream piece by piece (5 ms apart), for the event sequence and
// for a client that leaves mid-answer.
struct StreamCounters {
  std::atomic<int> pieces{0};
  std::atomic<bool> cancelled{false};
  int total = 12;
};

class StreamingEngine : public FakeEngine {
 public:
  StreamingEngine(std::shared_ptr<FakeCounters> c, std::shared_ptr<StreamCounters> s) : FakeEngine(std::move(c)), s_(std::move(s)) {}
  serve::Completion complete(const serve::CompletionInput& in, const serve::TextSink& sink) override {
    serve::Completion c;
    c.detect = detect(in.detect);
    c.reply = stream_words(sink);
    return c;
  }
  serve::Reply reply(std::string_view, const serve::GenerationParams&, const serve::TextSink& sink) override {
    return stream_words(sink);
  }

 private:
  serve::Reply stream_words(const serve::TextSink& sink) {
    serve::Reply r;
    for (int i = 0; i < s_->total; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      const auto piece = fmt::format("w{} ", i);
      if (sink && !sink(piece)) {
        s_->cancelled = true;
        r.finish_reason = "cancelled";
        return r;
      }
      ++s_->pieces;
      r.text += piece;
    }
    r.finish_reason = "length";
    r.prompt_tokens = 7;
    r.completion_tokens = s_->total;
    return r;
  }
  std::shared_ptr<StreamCounters> s_;
};

serve::EngineFactory streaming_factory(std::shared_ptr<FakeCounters> c, std::shared_ptr<StreamCounters> s) {
  return [c, s](int) { return std::make_unique<StreamingEngine>(c, s); };
}

}  // namespace

TEST(OpenAiRequest, HistoryMapsOntoTheFirstQuestionTheClientsAnswersAndTheFollowUps) {
  RecordingDecoder dec;
  json messages = json::array({text_msg("system", "You inspect parts."), user_with_image("data:A", "Is it broken?"),
                               text_msg("assistant", "Yes."), text_msg("developer", "Be brief."),
                               text_msg("user", "Where?"), text_msg("user", "And how big?"),
                               text_msg("assistant", "Top left."),
                               {{"role", "user"}, {"content", json::array({{{"type", "text"}, {"text", "Compare."}}, image_part("data:B")})}}});
  auto r = serve::parse_chat_request({{"messages", messages}, {"class", "bottle"}}, {}, dec.fn());
  // System and developer texts open the first question (the §1.9 prompt has no system slot).
  EXPECT_EQ(r.input.detect.question, "You inspect parts.\nBe brief.\nIs it broken?");
  EXPECT_EQ(r.input.answers, (std::vector<std::string>{"Yes.", "Top left."}));
  // Consecutive user messages are one turn; the last user turn is the one answered.
  EXPECT_EQ(r.input.follow_ups, (std::vector<std::string>{"Where?\nAnd how big?", "Compare."}));
  EXPECT_EQ(r.input.detect.class_name, "bottle");
  ASSERT_EQ(dec.seen, (std::vector<std::string>{"data:A", "data:B"}));
  EXPECT_EQ(r.input.detect.image.at<cv::Vec3b>(0, 0)[0], 1);  // the first image is inspected
  ASSERT_EQ(r.input.detect.references.size(), 1u);             // later ones are good references
  EXPECT_EQ(r.input.detect.references[0].at<cv::Vec3b>(0, 0)[0], 2);

  // An image part marked as a reference is one even when it comes first.
  RecordingDecoder dec2;
  json marked = image_part("data:R");
  marked["reference"] = true;
  json first = {{"role", "user"}, {"content", json::array({marked, image_part("data:I"), {{"type", "text"}, {"text", "q"}}})}};
  auto r2 = serve::parse_chat_request({{"messages", json::array({first})}}, {}, dec2.fn());
  EXPECT_EQ(r2.input.detect.image.at<cv::Vec3b>(0, 0)[0], 2);
  ASSERT_EQ(r2.input.detect.references.size(), 1u);
  EXPECT_EQ(r2.input.detect.question, "q");
  EXPECT_TRUE(r2.input.follow_ups.empty());

  auto param_of = [&](const json& body) {
    try {
      RecordingDecoder d;
      serve::parse_chat_request(body, {}, d.fn());
    } catch (const serve::ParamError& e) {
      return e.param();
    }
    return std::string("(accepted)");
  };
  const auto img = user_with_image("data:A", "q");
  EXPECT_EQ(param_of({{"messages", {text_msg("user", "q"), img}}}), "messages[1].content[1]");  // image not in the first turn
  EXPECT_EQ(param_of({{"messages", {img, text_msg("assistant", "a")}}}), "messages");            // nothing to answer
  EXPECT_EQ(param_of({{"messages", {text_msg("assistant", "a"), img}}}), "messages[0]");
  EXPECT_EQ(param_of({{"messages", {img, text_msg("tool", "x")}}}), "messages[1].role");
  EXPECT_EQ(param_of({{"messages", {text_msg("user", "no image")}}}), "messages");
  EXPECT_EQ(param_of({{"messages", json::array()}}), "messages");
}

TEST(OpenAiRequest, SamplingFieldsTheirLimitsAndTheFieldsRefusedOrIgnored) {
  const json base = {{"messages", {user_with_image("data:A", "q")}}};
  serve::ChatLimits limits;
  limits.max_tokens = 100;
  limits.answer_tokens = 20;
  auto parse = [&](json extra) {
    json body = base;
    body.update(extra);
    RecordingDecoder d;
    return serve::parse_chat_request(body, limits, d.fn());
  };
  auto param_of = [&](json extra) {
    try {
      parse(std::move(extra));
    } catch (const serve::ParamError& e) {
      return e.param();
    }
    return std::string("(accepted)");
  };
  auto r = parse({{"temperature", 0.7}, {"top_p", 0.9}, {"max_tokens", 33}, {"stop", "###x"}, {"seed", 42}});
  EXPECT_EQ(r.input.params.temperature, 0.7);
  EXPECT_EQ(r.input.params.top_p, 0.9);
  EXPECT_EQ(r.input.params.max_tokens, 33);
  EXPECT_EQ(r.input.params.stop, std::vector<std::string>{"###x"});
  EXPECT_EQ(r.input.params.seed, 42u);
  EXPECT_TRUE(r.seeded);
  EXPECT_EQ(parse(json::object()).input.params.max_tokens, 20);  // --answer-tokens
  EXPECT_EQ(parse({{"max_completion_tokens", 7}}).input.params.max_tokens, 7);
  EXPECT_EQ(parse({{"stop", {"a", "bc"}}}).input.params.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_EQ(parse({{"top_p", 0}, {"temperature", 1}}).input.params.temperature, 0);  // nucleus of mass 0: greedy
  EXPECT_FALSE(parse(json::object()).seeded);
  const auto s = parse({{"stream", true}, {"stream_options", {{"include_usage", true}}}});
  EXPECT_TRUE(s.stream && s.include_usage);

  EXPECT_EQ(param_of({{"temperature", 2.5}}), "temperature");
  EXPECT_EQ(param_of({{"temperature", "hot"}}), "temperature");
  EXPECT_EQ(param_of({{"top_p", 1.5}}), "top_p");
  EXPECT_EQ(param_of({{"max_tokens", 0}}), "max_tokens");
  EXPECT_EQ(param_of({{"max_tokens", 101}}), "max_tokens");
  EXPECT_EQ(param_of({{"max_completion_tokens", 101}}), "max_completion_tokens");
  EXPECT_EQ(param_of({{"max_tokens", 5}, {"max_completion_tokens", 6}}), "max_tokens");
  EXPECT_EQ(param_of({{"stop", {"a", "b", "c", "d", "e"}}}), "stop");
  EXPECT_EQ(param_of({{"stop", ""}}), "stop");
  EXPECT_EQ(param_of({{"stop", 3}}), "stop");
  EXPECT_EQ(param_of({{"seed", 1.5}}), "seed");
  EXPECT_EQ(param_of({{"stream", "yes"}}), "stream");
  EXPECT_EQ(param_of({{"stream_options", {{"include_usage", true}}}}), "stream_options");  // without stream
  // Refused: fields that would change what the client gets back.
  EXPECT_EQ(param_of({{"n", 2}}), "n");
  EXPECT_EQ(param_of({{"logprobs", true}}), "logprobs");
  EXPECT_EQ(param_of({{"tools", {{{"type", "function"}}}}}), "tools");
  EXPECT_EQ(param_of({{"response_format", {{"type", "json_object"}}}}), "response_format");
  EXPECT_EQ(param_of({{"presence_penalty", 0.5}}), "presence_penalty");
  EXPECT_EQ(param_of({{"logit_bias", {{"50256", -100}}}}), "logit_bias");
  // Accepted: their defaults, and fields that change nothing here.
  EXPECT_EQ(param_of({{"n", 1}, {"logprobs", false}, {"presence_penalty", 0}, {"response_format", {{"type", "text"}}},
                      {"user", "station-4"}, {"metadata", {{"line", "2"}}}, {"store", false}, {"tools", json::array()}}),
            "(accepted)");
}

TEST(OpenAiHttp, ErrorsHaveOpenAisShapeAndStatus) {
  auto counters = std::make_shared<FakeCounters>();
  auto options = small_options();
  options.max_body_mb = 1;
  options.queue = 1;
  TestServer server(options, fake_factory(counters));
  auto c = server.client();
  const auto url = data_uri(hazelnut("test/colour/01.jpg"));
  auto expect_error = [&](const httplib::Result& r, int status, const char* type, const json& param, const json& code) {
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, status) << r->body;
    const auto j = body_json(r);
    ASSERT_TRUE(j.contains("error")) << r->body;
    EXPECT_EQ(j["error"]["type"], type) << r->body;
    EXPECT_EQ(j["error"]["param"], param) << r->body;
    EXPECT_EQ(j["error"]["code"], code) << r->body;
    EXPECT_TRUE(j["error"]["message"].is_string() && !j["error"]["message"].get<std::string>().empty());
  };
  auto hot = request_with(url);
  hot["temperature"] = 3;
  expect_error(c.Post("/v1/chat/completions", hot.dump(), "application/json"), 400, "invalid_request_error", "temperature", 400);
  auto unknown = request_with(url);
  unknown["model"] = "gpt-4o";
  expect_error(c.Post("/v1/chat/completions", unknown.dump(), "application/json"), 404, "invalid_request_error", nullptr,
               "model_not_found");
  expect_error(c.Post("/v1/chat/completions", "{not json", "application/json"), 400, "invalid_request_error", nullptr, 400);
  expect_error(c.Post("/v1/chat/completions", std::string(2 * 1024 * 1024, ' '), "application/json"), 413,
               "request_too_large", nullptr, 413);
  EXPECT_EQ(counters->detects, 0);  // none of these reached the engine
  // The bundle's own name works as well as "iadgpt".
  auto named = request_with(url);
  named["model"] = "fake";
  auto ok = c.Post("/v1/chat/completions", named.dump(), "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;

  // A stream takes a worker or a queue place like any request: with the worker held and the queue
  // full, 429 (as JSON, before any event).
  counters->gate_open = false;
  auto post = [&] { return server.client().Post("/v1/chat/completions", request_with(url).dump(), "application/json")->status; };
  auto wait_for = [&](const char* key) {
    for (int i = 0; i < 200 && body_json(c.Get("/v1/health"))[key] != 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  };
  auto held = std::async(std::launch::async, post);
  wait_for("busy");
  auto queued = std::async(std::launch::async, post);
  wait_for("queued");
  auto streamed = request_with(url);
  streamed["stream"] = true;
  auto full = c.Post("/v1/chat/completions", streamed.dump(), "application/json");
  expect_error(full, 429, "rate_limit_error", nullptr, 429);
  EXPECT_EQ(full->get_header_value("Retry-After"), "1");
  counters->open();
  EXPECT_EQ(held.get(), 200);
  EXPECT_EQ(queued.get(), 200);
}

TEST(OpenAiHttp, StreamSendsTheRoleDeltasTheFinishReasonUsageAndDone) {
  auto counters = std::make_shared<FakeCounters>();
  auto streams = std::make_shared<StreamCounters>();
  TestServer server(small_options(), streaming_factory(counters, streams));
  auto c = server.client();
  const auto url = data_uri(hazelnut("test/colour/01.jpg"));
  auto plain = c.Post("/v1/chat/completions", request_with(url).dump(), "application/json");
  ASSERT_TRUE(plain);
  ASSERT_EQ(plain->status, 200) << plain->body;
  const auto pj = body_json(plain);
  EXPECT_EQ(pj["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(pj["usage"], json({{"prompt_tokens", 7}, {"completion_tokens", 12}, {"total_tokens", 19}}));

  auto body = request_with(url);
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  auto r = c.Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  const auto ev = parse_events(r->body);
  ASSERT_TRUE(ev.done) << r->body;
  ASSERT_EQ(ev.data.size(), 1u + 12 + 1 + 1) << r->body;  // role, 12 pieces, finish, usage
  const auto id = ev.data[0]["id"];
  for (const auto& e : ev.data) {
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    EXPECT_EQ(e["id"], id);  // one id for the whole stream
  }
  EXPECT_EQ(ev.data[0]["choices"][0]["delta"]["role"], "assistant");
  for (size_t i = 0; i + 2 < ev.data.size(); ++i) {
    EXPECT_TRUE(ev.data[i]["choices"][0]["finish_reason"].is_null()) << i;
    EXPECT_TRUE(ev.data[i]["usage"].is_null()) << i;
  }
  const auto& last = ev.data[ev.data.size() - 2];
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_TRUE(last["iadgpt"].contains("pred_score"));
  EXPECT_TRUE(ev.data.back()["choices"].empty());
  EXPECT_EQ(ev.data.back()["usage"], pj["usage"]);
  EXPECT_EQ(ev.content(), pj["choices"][0]["message"]["content"]);

  // /v1/chat streams the same way: {"delta"} events, then the turn, then [DONE].
  const auto detect = body_json(c.Post("/v1/detect", detect_form(hazelnut("test/colour/01.jpg"))));
  auto chat = c.Post("/v1/chat", json{{"session_id", detect["session_id"]}, {"message", "where?"}, {"stream", true}}.dump(),
                     "application/json");
  ASSERT_TRUE(chat);
  ASSERT_EQ(chat->status, 200) << chat->body;
  const auto cev = parse_events(chat->body);
  ASSERT_TRUE(cev.done);
  ASSERT_EQ(cev.data.size(), 13u) << chat->body;
  std::string joined;
  for (size_t i = 0; i + 1 < cev.data.size(); ++i) joined += cev.data[i]["delta"].get<std::string>();
  EXPECT_EQ(cev.data.back()["answer"], joined);
  EXPECT_EQ(cev.data.back()["turn"], 1);
  EXPECT_EQ(cev.data.back()["finish_reason"], "length");
  EXPECT_EQ(cev.data.back()["session_id"], detect["session_id"]);
}

TEST(OpenAiHttp, ClientLeavingMidStreamStopsTheGenerationAndFreesTheWorker) {
  auto counters = std::make_shared<FakeCounters>();
  auto streams = std::make_shared<StreamCounters>();
  streams->total = 2000;  // 10 s of answer unless it is stopped
  TestServer server(small_options(), streaming_factory(counters, streams));
  auto body = request_with(data_uri(hazelnut("test/colour/01.jpg")));
  body["stream"] = true;
  const auto payload = body.dump();
  {
    RawSocket s(server.port());
    ASSERT_TRUE(s.send_all(fmt::format("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                       "Content-Length: {}\r\n\r\n{}",
                                       payload.size(), payload)));
    // Read until a few content deltas have arrived, then leave.
    std::string got;
    char buf[4096];
    while (got.find("w3 ") == std::string::npos) {
      const auto n = ::recv(s.fd(), buf, sizeof(buf), 0);
      ASSERT_GT(n, 0) << got;
      got.append(buf, static_cast<size_t>(n));
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  while (!streams->cancelled && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(streams->cancelled) << "the generation went on after the client left";
  EXPECT_LT(streams->pieces, 1000);
  // The one worker is free: health shows it idle, and the next request is answered.
  json health;
  for (int i = 0; i < 100; ++i) {
    health = body_json(server.client().Get("/v1/health"));
    if (health["busy"] == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(health["busy"], 0);
  streams->total = 3;
  auto next = server.client().Post("/v1/chat/completions", request_with(data_uri(hazelnut("test/colour/01.jpg"))).dump(),
                                   "application/json");
  ASSERT_TRUE(next);
  EXPECT_EQ(next->status, 200) << next->body;
  // The stream no longer counts as in flight (graceful shutdown would not wait for it).
  EXPECT_EQ(server.server().shutdown(std::chrono::milliseconds(0)), 0);
}

// The whole pipeline on the tiny bundle (imagebind_tiny + llama_tiny + random adapters), in
// process. llama_tiny's random weights never end an answer by themselves, so answers run to
// max_tokens unless a stop string cuts them.
class OpenAiTiny : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    bundle_ = new model::Bundle(tiny_bundle("serve-openai-tiny"));
    serve::ServerOptions o;
    o.workers = 1;
    o.queue = 4;
    o.answer_tokens = 16;
    server_ = new TestServer(o, [](int) { return std::make_unique<serve::IadGptEngine>(*bundle_); });
    auto jpg = hazelnut("test/colour/01.jpg");
    cv::Mat img = cv::imdecode(cv::Mat(1, static_cast<int>(jpg.size()), CV_8U, jpg.data()), cv::IMREAD_COLOR);
    cv::resize(img, img, cv::Size(128, 128), 0, 0, cv::INTER_AREA);
    std::vector<uint8_t> png;
    cv::imencode(".png", img, png);
    image_png_ = new std::string(png.begin(), png.end());
  }
  static void TearDownTestSuite() {
    delete server_;
    delete bundle_;
    delete image_png_;
  }
  static json request(const std::string& question = "Is there any anomaly?") {
    json r = request_with("data:image/png;base64," + serve::base64_encode(*image_png_), question);
    r["class"] = "hazelnut";
    return r;
  }
  static json post(const json& body) {
    auto r = server_->client(120).Post("/v1/chat/completions", body.dump(), "application/json");
    if (!r) throw std::runtime_error("no response");
    if (r->status != 200) throw std::runtime_error(fmt::format("status {}: {}", r->status, r->body));
    return json::parse(r->body);
  }
  static Events post_stream(json body) {
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    auto r = server_->client(120).Post("/v1/chat/completions", body.dump(), "application/json");
    if (!r || r->status != 200) throw std::runtime_error("stream refused: " + (r ? r->body : std::string("no response")));
    return parse_events(r->body);
  }
  static std::string content(const json& j) { return j["choices"][0]["message"]["content"].get<std::string>(); }
  static cv::Mat image_rgb() {
    cv::Mat bgr = cv::imdecode(cv::Mat(1, static_cast<int>(image_png_->size()), CV_8U, image_png_->data()), cv::IMREAD_COLOR);
    cv::Mat rgb;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    return rgb;
  }

  static model::Bundle* bundle_;
  static TestServer* server_;
  static std::string* image_png_;
};
model::Bundle* OpenAiTiny::bundle_ = nullptr;
TestServer* OpenAiTiny::server_ = nullptr;
std::string* OpenAiTiny::image_png_ = nullptr;

TEST_F(OpenAiTiny, MaxTokensEndsTheAnswerWithLengthAndCountsThem) {
  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    auto body = request();
    body[key] = 5;
    const auto j = post(body);
    EXPECT_EQ(j["choices"][0]["finish_reason"], "length") << key;
    EXPECT_EQ(j["usage"]["completion_tokens"], 5) << key;
    EXPECT_EQ(j["usage"]["total_tokens"], j["usage"]["prompt_tokens"].get<int64_t>() + 5) << key;
    EXPECT_FALSE(content(j).empty()) << key;
  }
}

// The history reaches the prompt: the server's answer to a follow-up, after the client's own
// record of the first answer and a system message, equals a greedy generation from a fresh cache
// over the METHOD §1.9 prompt built here from the same turns, and usage counts its positions.
TEST_F(OpenAiTiny, HistoryReachesThePromptAndUsageCountsIt) {
  auto body = request("Is there any anomaly?");
  body["messages"].insert(body["messages"].begin(), text_msg("system", "Be brief."));
  body["messages"].push_back(text_msg("assistant", "Yes, a red mark."));
  body["messages"].push_back(text_msg("user", "Where is it?"));
  body["max_tokens"] = 8;
  const auto j = post(body);

  model::IadGpt m(*bundle_);
  m.set_class("hazelnut");
  model::InspectOptions fast;
  fast.generate = false;
  m.inspect(image_rgb(), fast);
  const auto& tokens = m.image_tokens();
  const std::vector<llm::Turn> turns{{m.question("Be brief.\nIs there any anomaly?"), "Yes, a red mark."}};
  const auto segments = model::anomalygpt_prompt(m.tokenizer(), tokens.image_token, tokens.expert_tokens[0], turns, "Where is it?");
  int64_t positions = 0;
  for (const auto& s : segments) positions += s.length();
  EXPECT_EQ(j["usage"]["prompt_tokens"], positions);
  llm::KvCache cache(m.llm(), std::min<int64_t>(m.llm().max_positions(), 2048));
  llm::GenerateOptions g;
  g.max_tokens = 8;
  g.stop = {"###"};
  const auto out = llm::generate(m.llm(), m.tokenizer(), cache, segments, g);
  EXPECT_EQ(content(j), llm::clean_answer(out.text));
  EXPECT_EQ(j["usage"]["completion_tokens"], static_cast<int64_t>(out.tokens.size()));
  EXPECT_EQ(j["choices"][0]["finish_reason"], out.stop_reason == "length" ? "length" : "stop");

  // Another record of the first answer is another prompt (the client's text is used, not the model's).
  body["messages"][2]["content"] = "No.";
  const auto other = post(body);
  const std::vector<llm::Turn> turns2{{turns[0].user, "No."}};
  int64_t positions2 = 0;
  for (const auto& s : model::anomalygpt_prompt(m.tokenizer(), tokens.image_token, tokens.expert_tokens[0], turns2, "Where is it?"))
    positions2 += s.length();
  EXPECT_NE(positions2, positions);
  EXPECT_EQ(other["usage"]["prompt_tokens"], positions2);
}

TEST_F(OpenAiTiny, StopStringsCutTheAnswerBeforeTheirFirstMatch) {
  auto body = request();
  body["max_tokens"] = 24;
  const auto full = content(post(body));
  ASSERT_GE(full.size(), 10u) << full;
  // A piece of the greedy answer from its middle: three ASCII characters, no whitespace (the tiny
  // model also writes multi-byte characters, which a byte slice could cut).
  auto plain_ascii = [&](size_t i) {
    for (size_t k = i; k < i + 3; ++k) {
      const auto c = static_cast<unsigned char>(full[k]);
      if (c >= 0x80 || std::isspace(c)) return false;
    }
    return true;
  };
  size_t at = 4;
  while (at + 3 < full.size() && !plain_ascii(at)) ++at;
  ASSERT_LT(at + 3, full.size()) << full;
  const auto stop = full.substr(at, 3);
  body["stop"] = json::array({"@@never@@", stop});
  const auto j = post(body);
  auto expected = full.substr(0, full.find(stop));
  expected = expected.substr(0, expected.find_last_not_of(" \t\r\n") + 1);
  EXPECT_EQ(content(j), expected) << "stop '" << stop << "' in '" << full << "'";
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_LT(j["usage"]["completion_tokens"].get<int64_t>(), 24);
}

TEST_F(OpenAiTiny, ASeedReproducesASample) {
  auto sample = [&](int seed) {
    auto body = request();
    body["temperature"] = 1.0;
    body["top_p"] = 0.95;
    body["seed"] = seed;
    return content(post(body));
  };
  const auto a = sample(11);
  EXPECT_EQ(sample(11), a);
  // Random weights spread the next-token distribution: other seeds give other samples.
  std::set<std::string> others{a, sample(12), sample(13), sample(14)};
  EXPECT_GE(others.size(), 2u);
}

TEST_F(OpenAiTiny, AStreamConcatenatesToThePlainAnswerWithTheSameSeed) {
  for (bool follow_up : {false, true}) {
    auto body = request();
    body["temperature"] = 0.8;
    body["seed"] = 5;
    if (follow_up) {
      body["messages"].push_back(text_msg("assistant", "Yes."));
      body["messages"].push_back(text_msg("user", "Where?"));
    }
    const auto plain = post(body);
    const auto ev = post_stream(body);
    ASSERT_TRUE(ev.done);
    ASSERT_GE(ev.data.size(), 4u);  // role, ≥ 1 delta, finish, usage
    EXPECT_EQ(ev.content(), content(plain)) << follow_up;
    EXPECT_EQ(ev.data[ev.data.size() - 2]["choices"][0]["finish_reason"], plain["choices"][0]["finish_reason"]);
    EXPECT_EQ(ev.data.back()["usage"], plain["usage"]) << follow_up;
  }
}
