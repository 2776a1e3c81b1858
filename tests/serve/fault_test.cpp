// Faults a hostile or broken client can cause: malformed multipart, truncated images, huge
// headers, slow (slowloris-style) clients. After each, /v1/health answers and a normal request
// is inspected by the real map pipeline (ImageBind fixture tower), so no worker is stuck.
#include <opencv2/imgcodecs.hpp>

#include <future>

#include "serve_test_util.h"

using namespace iadgpt;
using namespace iadgpt::test;
using nlohmann::json;

namespace {

anomaly::DetectorOptions tiny_map_options() {
  anomaly::DetectorOptions o;
  o.vision = fixture("imagebind_tiny/imagebind_tiny.safetensors");
  o.config = json::parse(std::ifstream(fixture("imagebind_tiny/config.json")));
  o.vocab = data("tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz");
  o.taps = {1, 3};
  return o;
}

class FaultTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    serve::ServerOptions o;
    o.workers = 1;
    o.queue = 4;
    o.timeout_s = 1;      // slow clients are dropped after 1 s without progress
    o.max_body_mb = 4;
    server_ = new TestServer(o, [](int) { return std::make_unique<serve::MapEngine>(tiny_map_options()); });
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  // The server is healthy: health answers, and a real image is inspected.
  void expect_healthy() {
    auto c = server_->client();
    auto h = c.Get("/v1/health");
    ASSERT_TRUE(h) << "health did not answer";
    EXPECT_EQ(h->status, 200);
    auto r = c.Post("/v1/detect", detect_form(hazelnut("test/colour/02.jpg")));
    ASSERT_TRUE(r) << "a normal request got no answer";
    ASSERT_EQ(r->status, 200) << r->body;
    const auto j = body_json(r);
    EXPECT_GE(j["pred_score"].get<double>(), 0.0);
    EXPECT_LE(j["pred_score"].get<double>(), 1.0);
  }

  std::string post_raw(const std::string& request) {
    RawSocket s(server_->port());
    s.send_all(request);
    return s.read_all();
  }

  static TestServer* server_;
};
TestServer* FaultTest::server_ = nullptr;

std::string multipart_request(const std::string& boundary_header, const std::string& body) {
  return "POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: multipart/form-data; boundary=" +
         boundary_header + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

}  // namespace

TEST_F(FaultTest, MalformedMultipartIsRejected) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      // body boundary differs from the header's
      {"abc", "--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nPNG\r\n--xyz--\r\n"},
      // no closing boundary, cut inside the part headers
      {"abc", "--abc\r\nContent-Disposition: form-da"},
      // garbage
      {"abc", std::string(300, '\x01')},
      // part without Content-Disposition
      {"abc", "--abc\r\nX: y\r\n\r\nzzz\r\n--abc--\r\n"},
      // empty boundary
      {"", "----\r\n"},
  };
  for (const auto& [boundary, body] : cases) {
    const auto response = post_raw(multipart_request(boundary, body));
    const int status = raw_status(response);
    EXPECT_GE(status, 400) << response.substr(0, 200);
    EXPECT_LT(status, 500) << response.substr(0, 200);
  }
  expect_healthy();
}

TEST_F(FaultTest, TruncatedAndForgedImagesAreRejected) {
  const auto jpeg = hazelnut("test/colour/00.jpg");
  cv::Mat img(64, 64, CV_8UC3, cv::Scalar(30, 90, 200));
  std::vector<uint8_t> png_buf;
  cv::imencode(".png", img, png_buf);
  const std::string png(png_buf.begin(), png_buf.end());
  // A PNG header that claims 100000 x 100000 pixels (the decoder must not allocate 30 GB).
  std::string forged = png;
  for (int i = 0; i < 2; ++i) {
    const uint32_t side = 100000;
    for (int b = 0; b < 4; ++b) forged[16 + 4 * i + b] = static_cast<char>((side >> (24 - 8 * b)) & 0xFF);
  }
  auto c = server_->client();
  for (const auto& [what, bytes] : std::vector<std::pair<std::string, std::string>>{
           {"png cut to 40 bytes", png.substr(0, 40)},
           {"png without its end", png.substr(0, png.size() / 2)},
           {"jpeg header only", jpeg.substr(0, 600)},
           {"forged size", forged},
           {"empty", ""}}) {
    auto r = c.Post("/v1/detect", detect_form(bytes));
    ASSERT_TRUE(r) << what;
    // A JPEG cut short may still decode (libjpeg fills the rest grey): 200 is fine then.
    EXPECT_TRUE(r->status == 400 || (r->status == 200 && what.rfind("jpeg", 0) == 0)) << what << ": " << r->body;
    if (r->status == 400) {
      EXPECT_TRUE(body_json(r).contains("error")) << what;
    }
  }
  expect_healthy();
}

TEST_F(FaultTest, HugeHeadersAreRejected) {
  // One header line far above the 8 KiB line limit.
  auto r1 = post_raw("GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(64 * 1024, 'a') + "\r\n\r\n");
  EXPECT_NE(raw_status(r1), 200) << r1.substr(0, 200);
  // A very long URI.
  auto r2 = post_raw("GET /" + std::string(64 * 1024, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_NE(raw_status(r2), 200) << r2.substr(0, 200);
  // Many header lines (1 MB in total): answered or refused, never a crash.
  std::string many = "GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
  for (int i = 0; i < 10000; ++i) many += "X-H" + std::to_string(i) + ": " + std::string(90, 'b') + "\r\n";
  post_raw(many + "\r\n");
  expect_healthy();
}

TEST_F(FaultTest, SlowClientsAreDroppedAndOthersAreServedMeanwhile) {
  // Slowloris: connections that send part of a request and then stall.
  std::vector<std::unique_ptr<RawSocket>> slow;
  for (int i = 0; i < 4; ++i) {
    slow.push_back(std::make_unique<RawSocket>(server_->port()));
    slow.back()->send_all(i % 2 ? "POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n--abc"
                                : "GET /v1/hea");
  }
  // Served while the slow clients hold their connections.
  const auto t0 = std::chrono::steady_clock::now();
  expect_healthy();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  // The server closes each stalled connection after its 1 s read timeout (read_all returns
  // when the peer closes; the socket's own receive timeout is 10 s).
  for (auto& s : slow) {
    const auto t = std::chrono::steady_clock::now();
    const auto rest = s->read_all();
    // 1 s read timeout + 1 s keep-alive wait after the error response, with 1 s of slack.
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count(), 3.0);
    EXPECT_NE(raw_status(rest), 200);
  }
  expect_healthy();
}

TEST_F(FaultTest, ClientsThatDisconnectMidRequestLeaveNoStuckWorker) {
  const auto jpeg = hazelnut("test/colour/00.jpg");
  const std::string body = "--abc\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n" + jpeg +
                           "\r\n--abc--\r\n";
  for (int i = 0; i < 4; ++i) {
    RawSocket s(server_->port());
    // Whole request sent (it is inspected) or half of it; the client is gone before the answer.
    const auto request = multipart_request("abc", body);
    s.send_all(i % 2 ? request : request.substr(0, request.size() / 2));
  }
  expect_healthy();
}
