// The session memory budget (--session-memory): many large sessions stay under it, the least
// recently used idle session is evicted first, a request whose images alone exceed it gets 413
// before any inference, and sessions in use by a request are never evicted (429 instead).
// Images are synthetic solid colours: a few hundred bytes of PNG that decode to megabytes.
#include <opencv2/imgcodecs.hpp>

#include "serve/codec.h"
#include "serve/sessions.h"
#include "serve_test_util.h"

using namespace iadgpt;
using namespace iadgpt::test;
using nlohmann::json;

namespace {

constexpr int64_t kMiB = 1024 * 1024;

std::string solid_png(int width, int height, int value) {
  cv::Mat m(height, width, CV_8UC3, cv::Scalar(value, value, value));
  std::vector<uint8_t> png;
  cv::imencode(".png", m, png);
  return {png.begin(), png.end()};
}

// A detect form with `references` good parts of the same size as the image.
httplib::MultipartFormDataItems form_with_references(const std::string& image, int references) {
  httplib::MultipartFormDataItems form{{"image", image, "part.png", "image/png"}, {"class", "screw", "", ""}};
  for (int i = 0; i < references; ++i) form.push_back({"reference", image, "good.png", "image/png"});
  return form;
}

serve::ServerOptions budget_options(int64_t session_memory_mb) {
  serve::ServerOptions o;
  o.workers = 1;
  o.queue = 4;
  o.session_memory_mb = session_memory_mb;
  return o;
}

httplib::Result chat(const TestServer& server, const std::string& id, const std::string& message = "where?") {
  return server.client().Post("/v1/chat", json{{"session_id", id}, {"message", message}}.dump(), "application/json");
}

std::string error_message(const httplib::Result& r) { return body_json(r)["error"]["message"].get<std::string>(); }

serve::DetectInput input_of(int side) {
  serve::DetectInput in;
  in.image = cv::Mat(side, side, CV_8UC3, cv::Scalar(1, 2, 3));
  return in;
}

}  // namespace

// 30 sessions of 5 images of 1024x1024 (15 MiB decoded each) through a 64 MiB budget: after every
// request the store holds at most the budget, 4 sessions remain (4 x 15 = 60 <= 64 < 75), the 4
// newest; older ones answer 404 "evicted".
TEST(SessionBudget, ManyLargeSessionsStayUnderTheBudget) {
  auto counters = std::make_shared<FakeCounters>();
  TestServer server(budget_options(64), fake_factory(counters));
  auto c = server.client();
  std::vector<std::string> ids;
  for (int i = 0; i < 30; ++i) {
    auto r = c.Post("/v1/detect", form_with_references(solid_png(1024, 1024, 8 * i), 4));
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    ids.push_back(body_json(r)["session_id"]);
    const auto h = body_json(c.Get("/v1/health"));
    EXPECT_LE(h["session_bytes"].get<int64_t>(), 64 * kMiB) << "after request " << i;
    EXPECT_EQ(h["session_budget_bytes"], 64 * kMiB);
    // Each session holds 15 MiB of pixels (plus a few hundred bytes of bookkeeping).
    EXPECT_GE(h["session_bytes"].get<int64_t>(), std::min(i + 1, 4) * 15 * kMiB) << "after request " << i;
  }
  const auto h = body_json(c.Get("/v1/health"));
  EXPECT_EQ(h["sessions"], 4);
  EXPECT_EQ(h["session_evictions"], 26);
  for (int i = 0; i < 30; ++i) {
    auto r = chat(server, ids[i]);
    ASSERT_TRUE(r);
    if (i >= 26) {
      EXPECT_EQ(r->status, 200) << "session " << i << ": " << r->body;
    } else {
      EXPECT_EQ(r->status, 404) << "session " << i;
      EXPECT_NE(error_message(r).find("was evicted"), std::string::npos) << r->body;
      EXPECT_NE(error_message(r).find("64 MB"), std::string::npos) << r->body;
    }
  }
}

// Room for 3 sessions of 3 MiB in 10 MiB. Touching A (a chat turn) makes B the least recently
// used, so D evicts B and E evicts C; A survives both.
TEST(SessionBudget, LeastRecentlyUsedGoesFirstAndAChatTurnKeepsASession) {
  auto counters = std::make_shared<FakeCounters>();
  TestServer server(budget_options(10), fake_factory(counters));
  auto c = server.client();
  auto create = [&](int value) {
    auto r = c.Post("/v1/detect", form_with_references(solid_png(1024, 1024, value), 0));
    EXPECT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
    return body_json(r)["session_id"].get<std::string>();
  };
  const auto a = create(10), b = create(20), cc = create(30);
  EXPECT_EQ(body_json(c.Get("/v1/health"))["sessions"], 3);
  ASSERT_EQ(chat(server, a)->status, 200);  // A is now the most recently used
  const auto d = create(40);
  EXPECT_EQ(chat(server, b)->status, 404);
  EXPECT_NE(error_message(chat(server, b)).find("evicted"), std::string::npos);
  const auto e = create(50);
  EXPECT_EQ(chat(server, cc)->status, 404);
  for (const auto& [name, id] : std::vector<std::pair<std::string, std::string>>{{"A", a}, {"D", d}, {"E", e}}) {
    auto r = chat(server, id);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << name << ": " << r->body;
  }
  // A kept its whole conversation: this is its third turn.
  EXPECT_EQ(body_json(chat(server, a, "and now?"))["turn"], 3);
}

// A request whose images alone need more than the whole budget: 413 naming both sizes, refused
// from the image headers before decoding or inference, and nothing is evicted for it.
TEST(SessionBudget, RequestAboveTheWholeBudgetIs413NamingTheSizes) {
  auto counters = std::make_shared<FakeCounters>();
  TestServer server(budget_options(8), fake_factory(counters));
  auto c = server.client();
  auto small = c.Post("/v1/detect", form_with_references(solid_png(256, 256, 10), 0));
  ASSERT_TRUE(small);
  ASSERT_EQ(small->status, 200) << small->body;
  const auto kept = body_json(small)["session_id"].get<std::string>();
  const int detects = counters->detects;

  // One image of 2048x2048 = 12 MiB > 8 MiB.
  auto big = c.Post("/v1/detect", form_with_references(solid_png(2048, 2048, 10), 0));
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413) << big->body;
  EXPECT_EQ(body_json(big)["error"]["type"], "request_too_large");
  const auto message = error_message(big);
  EXPECT_NE(message.find("12.0 MB"), std::string::npos) << message;
  EXPECT_NE(message.find("8.0 MB"), std::string::npos) << message;
  EXPECT_NE(message.find("--session-memory"), std::string::npos) << message;

  // Each image fits, together they do not: 1 + 2 references of 1024x1024 = 9 MiB > 8 MiB.
  auto many = c.Post("/v1/detect", form_with_references(solid_png(1024, 1024, 10), 2));
  ASSERT_TRUE(many);
  EXPECT_EQ(many->status, 413) << many->body;
  EXPECT_NE(error_message(many).find("9.0 MB"), std::string::npos) << many->body;

  // The JSON form with data URIs is held to the same budget.
  const auto uri = "data:image/png;base64," + serve::base64_encode(solid_png(2048, 2048, 10));
  auto j = c.Post("/v1/detect", json{{"image", uri}, {"class", "screw"}}.dump(), "application/json");
  ASSERT_TRUE(j);
  EXPECT_EQ(j->status, 413) << j->body;

  EXPECT_EQ(counters->detects, detects);        // no inference was spent on them
  EXPECT_EQ(chat(server, kept)->status, 200);   // and nothing was evicted for them
  EXPECT_EQ(body_json(c.Get("/v1/health"))["session_evictions"], 0);
}

// The store on its own: a session in use by a request is never evicted (its memory could not be
// freed anyway), so when nothing else can go the reservation is refused (the server's 429);
// an unused reservation gives its bytes back; an evicted session's images are released.
TEST(SessionStore, SessionsInUseAreNotEvictedAndReservationsGiveBytesBack) {
  const int64_t one = serve::session_bytes(input_of(512));  // 768 KiB + bookkeeping
  serve::SessionStore store(std::chrono::seconds(600), 256, 2 * one + one / 2);
  auto a = store.create(store.reserve(one, serve::SessionStore::Purpose::new_session), 0, input_of(512));
  auto b = store.create(store.reserve(one, serve::SessionStore::Purpose::new_session), 0, input_of(512));
  EXPECT_EQ(store.bytes(), 2 * one);
  {
    auto pending = store.reserve(one / 4, serve::SessionStore::Purpose::turn);
    EXPECT_EQ(store.bytes(), 2 * one + one / 4);
  }
  EXPECT_EQ(store.bytes(), 2 * one);  // dropped unused: given back

  // a and b are held here, as a running request holds its session: neither can be evicted.
  try {
    store.reserve(one, serve::SessionStore::Purpose::new_session);
    ADD_FAILURE() << "a reservation evicted a session in use";
  } catch (const serve::SessionMemoryFull& e) {
    EXPECT_NE(std::string(e.what()).find("in use"), std::string::npos) << e.what();
  }
  EXPECT_EQ(store.size(), 2u);

  // Once a's request is done, a (the least recently used) goes and its images with it.
  std::weak_ptr<serve::Session> a_weak = a;
  const auto a_id = a->id;
  a.reset();
  auto room = store.reserve(one, serve::SessionStore::Purpose::new_session);
  EXPECT_TRUE(a_weak.expired());
  serve::SessionStore::Miss why{};
  EXPECT_EQ(store.find(a_id, &why), nullptr);
  EXPECT_EQ(why, serve::SessionStore::Miss::evicted);
  EXPECT_NE(store.find(b->id, &why), nullptr);
  EXPECT_EQ(store.find("0123", &why), nullptr);
  EXPECT_EQ(why, serve::SessionStore::Miss::unknown);
  EXPECT_LE(store.bytes(), store.budget());

  EXPECT_THROW(store.reserve(store.budget() + 1, serve::SessionStore::Purpose::new_session), serve::SessionTooLarge);
}
