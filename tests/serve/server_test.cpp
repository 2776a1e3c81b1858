// The HTTP API against a scripted engine: fields, sessions, limits and errors.
#include <opencv2/imgcodecs.hpp>

#include <future>

#include "serve/codec.h"
#include "serve/pool.h"
#include "serve_test_util.h"

using namespace iadgpt;
using namespace iadgpt::test;
using nlohmann::json;

namespace {

std::string data_uri(const std::string& bytes, const std::string& type = "image/jpeg") {
  return "data:" + type + ";base64," + serve::base64_encode(bytes);
}

json completion_request(const std::string& url, const std::string& text = "Is there any anomaly?") {
  return {{"model", "iadgpt"},
          {"messages", json::array({{{"role", "user"},
                                     {"content", json::array({{{"type", "text"}, {"text", text}},
                                                              {{"type", "image_url"}, {"image_url", {{"url", url}}}}})}}})}};
}

}  // namespace

TEST(Base64, RoundTripsEveryLengthModuloThree) {
  for (const std::string& s : std::vector<std::string>{"", "a", "ab", "abc", "abcd", std::string("\0\xff\x10", 3)}) {
    EXPECT_EQ(serve::base64_decode(serve::base64_encode(s), "t"), s);
  }
  EXPECT_EQ(serve::base64_encode("hello"), "aGVsbG8=");  // RFC 4648 alphabet and padding
  EXPECT_THROW(serve::base64_decode("a$b=", "t"), InputError);
}

TEST(DataUri, OnlyDataUrisAreAccepted) {
  EXPECT_EQ(serve::parse_data_uri("data:image/png;base64,aGk=", "u").bytes, "hi");
  EXPECT_EQ(serve::parse_data_uri("data:image/png;base64,aGk=", "u").media_type, "image/png");
  for (const char* bad : {"/etc/passwd", "file:///etc/passwd", "http://127.0.0.1/a.png", "../x.png"}) {
    try {
      serve::parse_data_uri(bad, "image_url");
      ADD_FAILURE() << bad << " was accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("only data: URIs"), std::string::npos) << e.what();
    }
  }
}

TEST(Loopback, RecognisesLocalAddressesOnly) {
  EXPECT_TRUE(serve::is_loopback("127.0.0.1"));
  EXPECT_TRUE(serve::is_loopback("127.1.2.3"));
  EXPECT_TRUE(serve::is_loopback("localhost"));
  EXPECT_TRUE(serve::is_loopback("::1"));
  EXPECT_FALSE(serve::is_loopback("0.0.0.0"));
  EXPECT_FALSE(serve::is_loopback("192.168.1.5"));
}

TEST(Server, HealthModelAndPageAnswer) {
  auto counters = std::make_shared<FakeCounters>();
  TestServer server(small_options(), fake_factory(counters));
  auto c = server.client();
  auto health = c.Get("/v1/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(body_json(health)["status"], "ok");
  EXPECT_EQ(body_json(health)["workers"], 1);
  auto model = c.Get("/v1/model");
  ASSERT_TRUE(model);
  EXPECT_EQ(body_json(model)["name"], "fake");
  EXPECT_EQ(body_json(model)["server"]["queue"], 4);
  auto page = c.Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->get_header_value("Content-Type").find("text/html"), std::string::npos);
  EXPECT_NE(page->body.find("<script src=\"/app.js\">"), std::string::npos);
  auto js = c.Get("/app.js");
  ASSERT_TRUE(js);
  EXPECT_NE(js->body.find("/v1/detect"), std::string::npos);
  auto missing = c.Get("/etc/passwd");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(body_json(missing)["error"]["code"], 404);
}

TEST(Server, DetectReturnsScoreAnswerOverlayAndSession) {
  auto counters = std::make_shared<FakeCounters>();
  TestServer server(small_options(), fake_factory(counters));
  auto c = server.client();
  const auto image = hazelnut("test/colour/00.jpg");
  auto r = c.Post("/v1/detect", detect_form(image));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const auto j = body_json(r);
  for (const char* key : {"pred_score", "pred_label", "p_yes", "answer", "position", "defect_type", "overlay_png",
                          "session_id", "regions", "timings"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["class"], "hazelnut");
  EXPECT_EQ(j["answer"], "image 512x512");
  EXPECT_EQ(j["session_id"].get<std::string>().size(), 32u);
  // The overlay is a PNG of the uploaded image's size.
  const auto png = serve::base64_decode(j["overlay_png"].get<std::string>(), "overlay");
  const auto overlay = cv::imdecode(std::vector<uint8_t>(png.begin(), png.end()), cv::IMREAD_COLOR);
  EXPECT_EQ(overlay.cols, 512);
  EXPECT_EQ(overlay.rows, 512);

  // The same request as JSON with data URIs (image + a reference).
  json body = {{"image", data_uri(image)}, {"class", "hazelnut"}, {"references", {data_uri(hazelnut("train/good/00.jpg"))}}};
  auto rj = c.Post("/v1/detect", body.dump(), "application/json");
  ASSERT_TRUE(rj);
  ASSERT_EQ(rj->status, 200) << rj->body;
  EXPECT_EQ(body_json(rj)["references"], 1);
}

TEST(Server, ChatContinuesTheSessionAndRebuildsItAfterOtherWork) {
  auto counters = std::make_shared<FakeCounters>();
  TestServer server(small_options(), fake_factory(counters));  // one worker: sessions share it
  auto c = server.client();
  const auto a = body_json(c.Post("/v1/detect", detect_form(hazelnut("test/colour/00.jpg"))));
  auto chat = [&](const std::string& id, const std::string& message) {
    return c.Post("/v1/chat", json{{"session_id", id}, {"message", message}}.dump(), "application/json");
  };
  auto t1 = chat(a["session_id"], "where?");
  ASSERT_TRUE(t1);
  ASSERT_EQ(t1->status, 200) << t1->body;
  EXPECT_EQ(body_json(t1)["answer"], "image 512x512 turn 1: where?");
  EXPECT_EQ(counters->detects, 1);

  // Another image takes the worker; the next turn of the first session is rebuilt by replaying
  // its detect and its first turn, so it is still turn 2 about the 512x512 image.
  cv::Mat small(64, 48, CV_8UC3, cv::Scalar(10, 10, 10));
  std::vector<uint8_t> png;
  cv::imencode(".png", small, png);
  const auto b = body_json(c.Post("/v1/detect", detect_form(std::string(png.begin(), png.end()))));
  EXPECT_EQ(b["answer"], "image 48x64");
  auto t2 = chat(a["session_id"], "why?");
  ASSERT_TRUE(t2);
  EXPECT_EQ(body_json(t2)["answer"], "image 512x512 turn 2: why?");
  EXPECT_EQ(body_json(t2)["turn"], 2);
  EXPECT_EQ(counters->detects, 3);  // a, b, replay of a

  auto unknown = chat("0123456789abcdef0123456789abcdef", "hello");
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
  EXPECT_NE(body_json(unknown)["error"]["message"].get<std::string>().find("unknown or expired session"), std::string::npos);
  auto empty = chat(a["session_id"], "");
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->status, 400);
}

TEST(Server, SessionsExpireAfterTheirTtl) {
  auto counters = std::make_shared<FakeCounters>();
  auto options = small_options();
  options.session_ttl_s = 1;
  TestServer server(options, fake_factory(counters));
  auto c = server.client();
  const auto a = body_json(c.Post("/v1/detect", detect_form(hazelnut("test/colour/00.jpg"))));
  std::this_thread::sleep_for(std::chrono::milliseconds(1600));  // > ttl; whole seconds in the store
  auto r = c.Post("/v1/chat", json{{"session_id", a["session_id"]}, {"message", "where?"}}.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
}

TEST(Server, ChatCompletionsTakesDataUrisAndRefusesPathsAndUrls) {
  auto counters = std::make_shared<FakeCounters>();
  TestServer server(small_options(), fake_factory(counters));
  auto c = server.client();
  auto ok = c.Post("/v1/chat/completions", completion_request(data_uri(hazelnut("test/colour/01.jpg"))).dump(),
                   "application/json");
  ASSERT_TRUE(ok);
  ASSERT_EQ(ok->status, 200) << ok->body;
  const auto j = body_json(ok);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "image 512x512");
  EXPECT_TRUE(j["iadgpt"].contains("pred_score"));

  // A follow-up user message after the image is answered as a second turn.
  auto follow = completion_request(data_uri(hazelnut("test/colour/01.jpg")));
  follow["messages"].push_back({{"role", "assistant"}, {"content", "..."}});
  follow["messages"].push_back({{"role", "user"}, {"content", "where exactly?"}});
  auto f = c.Post("/v1/chat/completions", follow.dump(), "application/json");
  ASSERT_TRUE(f);
  EXPECT_EQ(body_json(f)["choices"][0]["message"]["content"], "image 512x512 turn 1: where exactly?");

  const int before = counters->detects;
  for (const char* url : {"/etc/passwd", "file:///etc/passwd", "http://127.0.0.1:1/x.png", "../../secret.png"}) {
    auto r = c.Post("/v1/chat/completions", completion_request(url).dump(), "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << url;
    EXPECT_NE(body_json(r)["error"]["message"].get<std::string>().find("only data: URIs"), std::string::npos) << r->body;
  }
  // The JSON detect endpoint refuses them too.
  auto p = c.Post("/v1/detect", json{{"image", "file:///etc/passwd"}}.dump(), "application/json");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->status, 400);
  EXPECT_EQ(counters->detects, before);  // nothing reached the engine

  auto no_image = c.Post("/v1/chat/completions",
                         json{{"messages", {{{"role", "user"}, {"content", "hello"}}}}}.dump(), "application/json");
  ASSERT_TRUE(no_image);
  EXPECT_EQ(no_image->status, 400);
  auto wrong_type = completion_request(data_uri(hazelnut("test/colour/01.jpg")));
  wrong_type["stream"] = "yes";
  wrong_type["messages"][0]["content"][0]["type"] = 7;
  auto w = c.Post("/v1/chat/completions", wrong_type.dump(), "application/json");
  ASSERT_TRUE(w);
  EXPECT_EQ(w->status, 400) << w->body;
}

TEST(Server, BadInputsGetJsonErrorsNamingTheProblem) {
  auto counters = std::make_shared<FakeCounters>();
  TestServer server(small_options(), fake_factory(counters));
  auto c = server.client();
  struct Case {
    std::string what;
    httplib::Result result;
    std::string expect;
  };
  std::vector<Case> cases;
  cases.push_back({"not an image", c.Post("/v1/detect", detect_form("this is text, not pixels")), "image"});
  cases.push_back({"no image field",
                   c.Post("/v1/detect", httplib::MultipartFormDataItems{{"class", "bottle", "", ""}}), "'image'"});
  cases.push_back({"bad class", c.Post("/v1/detect", detect_form(hazelnut("test/colour/00.jpg"), "../../etc")), "class"});
  cases.push_back({"invalid json", c.Post("/v1/chat", "{not json", "application/json"), "not valid JSON"});
  cases.push_back({"wrong type", c.Post("/v1/detect", "abc", "text/plain"), "multipart"});
  cases.push_back({"json array", c.Post("/v1/chat", "[1,2]", "application/json"), "JSON object"});
  for (auto& k : cases) {
    ASSERT_TRUE(k.result) << k.what;
    EXPECT_EQ(k.result->status, 400) << k.what << ": " << k.result->body;
    const auto j = body_json(k.result);
    ASSERT_TRUE(j.contains("error")) << k.what;
    EXPECT_NE(j["error"]["message"].get<std::string>().find(k.expect), std::string::npos) << j.dump();
  }
  EXPECT_EQ(counters->detects, 0);
}

TEST(Server, BodyAboveTheLimitIs413) {
  auto counters = std::make_shared<FakeCounters>();
  auto options = small_options();
  options.max_body_mb = 1;
  TestServer server(options, fake_factory(counters));
  auto c = server.client();
  auto r = c.Post("/v1/detect", detect_form(std::string(2 << 20, 'x')));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(body_json(r)["error"]["code"], 413);
  auto h = c.Get("/v1/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
}

TEST(Server, FullQueueAnswers429AndAcceptedRequestsFinish) {
  auto counters = std::make_shared<FakeCounters>();
  counters->gate_open = false;  // the worker blocks inside detect until opened
  auto options = small_options();
  options.queue = 1;
  TestServer server(options, fake_factory(counters));
  const auto image = hazelnut("test/colour/00.jpg");
  auto post = [&] { return server.client().Post("/v1/detect", detect_form(image))->status; };
  auto running = std::async(std::launch::async, post);
  // Wait until the first request holds the worker, then queue a second one.
  auto wait_for = [&](const char* key, int value) {
    for (int i = 0; i < 200; ++i) {
      if (body_json(server.client().Get("/v1/health"))[key] == value) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  };
  ASSERT_TRUE(wait_for("busy", 1));
  auto queued = std::async(std::launch::async, post);
  ASSERT_TRUE(wait_for("queued", 1));
  auto rejected = server.client().Post("/v1/detect", detect_form(image));
  ASSERT_TRUE(rejected);
  EXPECT_EQ(rejected->status, 429);
  EXPECT_EQ(rejected->get_header_value("Retry-After"), "1");
  EXPECT_EQ(body_json(rejected)["error"]["type"], "rate_limit_error");
  // Health is answered while the queue is full.
  EXPECT_EQ(body_json(server.client().Get("/v1/health"))["rejected"], 1);
  counters->open();
  EXPECT_EQ(running.get(), 200);
  EXPECT_EQ(queued.get(), 200);
}

TEST(WorkerPool, PinnedJobsRunOnTheirWorkerAndErrorsReachTheCaller) {
  auto counters = std::make_shared<FakeCounters>();
  serve::WorkerPool pool(3, 8, fake_factory(counters));
  std::vector<std::future<void>> done;
  std::vector<int> ran(6, -1);
  for (int i = 0; i < 6; ++i) done.push_back(pool.submit([&ran, i](serve::Worker& w) { ran[i] = w.index; }, i % 3));
  for (auto& d : done) d.get();
  for (int i = 0; i < 6; ++i) EXPECT_EQ(ran[i], i % 3);
  auto failing = pool.submit([](serve::Worker&) { throw InputError("bad"); });
  EXPECT_THROW(failing.get(), InputError);
  EXPECT_THROW(serve::WorkerPool(0, 1, fake_factory(counters)), InputError);
}
