// The real program under load: `iadgpt serve` with a bundle from the tiny fixtures (ImageBind
// tiny + llama_tiny + random adapters, the whole IAD-GPT pipeline), 300 multipart detect
// requests from 16 concurrent loopback clients. No request may fail other than with an
// intended 429; p50/p95 latency are printed and written to <build>/serve_load.json.
#include <fmt/format.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <atomic>
#include <mutex>

#include "common/run.h"
#include "serve_process.h"
#include "serve_test_util.h"

using namespace iadgpt;
using namespace iadgpt::test;
using nlohmann::json;

namespace {

constexpr int kRequests = 300;
constexpr int kConcurrency = 16;

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  if (v.empty()) return 0;
  const auto i = static_cast<size_t>(std::clamp(p * (v.size() - 1) + 0.5, 0.0, double(v.size() - 1)));
  return v[i];
}

}  // namespace

TEST(LoadTest, ThreeHundredRequestsFromSixteenClientsFailOnlyWithIntended429) {
  const auto bundle = tiny_bundle("serve-load");
  ServeProcess server(bundle.dir, {"--workers", "2", "--queue", "16", "--timeout", "30"});
  // Real parts at 256 px (a camera crop's size), so the run stays near a minute on 2 cores.
  std::vector<std::string> images;
  for (const char* name : {"test/colour/00.jpg", "test/good/04.jpg", "test/colour/03.jpg"}) {
    cv::Mat img = cv::imread(data("hazelnut_toy/hazelnut/" + std::string(name)).string(), cv::IMREAD_COLOR);
    ASSERT_FALSE(img.empty()) << name;
    cv::resize(img, img, cv::Size(256, 256), 0, 0, cv::INTER_AREA);
    std::vector<uint8_t> jpg;
    cv::imencode(".jpg", img, jpg);
    images.emplace_back(jpg.begin(), jpg.end());
  }
  {
    // One warm-up request (first-touch allocations, prompt features) outside the measurement.
    httplib::Client c("127.0.0.1", server.port());
    c.set_read_timeout(60, 0);
    auto r = c.Post("/v1/detect", detect_form(images[0]));
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
  }
  std::atomic<int> next{0};
  std::mutex mutex;
  std::vector<double> latencies;
  std::map<int, int> statuses;  // HTTP status → count; 0 = transport error
  std::vector<std::string> failures;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> clients;
  for (int k = 0; k < kConcurrency; ++k) {
    clients.emplace_back([&] {
      httplib::Client c("127.0.0.1", server.port());
      c.set_read_timeout(60, 0);
      c.set_keep_alive(true);
      for (int i = next++; i < kRequests; i = next++) {
        const auto start = std::chrono::steady_clock::now();
        auto r = c.Post("/v1/detect", detect_form(images[i % images.size()]));
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
        std::lock_guard lock(mutex);
        const int status = r ? r->status : 0;
        ++statuses[status];
        if (status == 200) {
          latencies.push_back(ms);
          const auto j = body_json(r);
          if (!j.contains("pred_score") || j["overlay_png"].get<std::string>().empty()) {
            failures.push_back(fmt::format("request {}: incomplete body", i));
          }
        } else if (status != 429) {
          failures.push_back(fmt::format("request {}: status {} ({})", i, status,
                                         r ? r->body.substr(0, 200) : httplib::to_string(r.error())));
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const double p50 = percentile(latencies, 0.50), p95 = percentile(latencies, 0.95);
  const double max = latencies.empty() ? 0 : *std::max_element(latencies.begin(), latencies.end());
  const json report = {{"requests", kRequests},   {"concurrency", kConcurrency}, {"workers", 2},
                       {"ok", statuses[200]},     {"rejected_429", statuses[429]}, {"failed", failures.size()},
                       {"p50_ms", p50},           {"p95_ms", p95},             {"max_ms", max},
                       {"seconds", seconds},      {"requests_per_s", kRequests / seconds}};
  std::cout << "serve load: " << report.dump() << std::endl;
  std::ofstream(std::filesystem::path(IADGPT_BINARY_DIR) / "serve_load.json") << report.dump(2) << "\n";
  RecordProperty("p50_ms", fmt::format("{:.1f}", p50));
  RecordProperty("p95_ms", fmt::format("{:.1f}", p95));

  for (const auto& f : failures) ADD_FAILURE() << f;
  EXPECT_EQ(statuses[200] + statuses[429], kRequests);
  EXPECT_GT(statuses[200], 0);
  // Health still answers and the server is alive after the run.
  httplib::Client c("127.0.0.1", server.port());
  auto h = c.Get("/v1/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(body_json(h)["status"], "ok");
  EXPECT_EQ(body_json(h)["busy"], 0);
  EXPECT_TRUE(server.alive());
  EXPECT_EQ(server.stop(), 0) << server.slurp_log();  // SIGTERM: clean shutdown, exit 0
}

TEST(ServeCommand, BadBundleIsExitCode2AndHelpListsTheLimits) {
  auto help = run_iadgpt(std::vector<std::string>{"serve", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  for (const char* flag : {"--model", "--host", "--port", "--workers", "--queue", "--max-body", "--timeout", "--session-ttl",
                           "--session-memory"}) {
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
  }
  auto bad = run_iadgpt(std::vector<std::string>{"serve", "--model", (scratch("serve-bad") / "nothing").string()});
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
  EXPECT_NE(bad.err.find("iadgpt: error:"), std::string::npos) << bad.err;
}

TEST(ServeCommand, MapsOnlyServesTheBundlesMapPipelineWithoutTheLlm) {
  const auto bundle = tiny_bundle("serve-maps-only");
  ServeProcess server(bundle.dir, {"--maps-only"});
  httplib::Client c("127.0.0.1", server.port());
  c.set_read_timeout(60, 0);
  auto model = c.Get("/v1/model");
  ASSERT_TRUE(model);
  EXPECT_EQ(body_json(model)["engine"], "maps");
  auto r = c.Post("/v1/detect", detect_form(hazelnut("test/colour/00.jpg")));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const auto j = body_json(r);
  // Without an LLM the answer is the §1.10 phrasing of the map, and p_yes is the map score.
  EXPECT_EQ(j["p_yes"].get<double>(), j["pred_score"].get<double>());
  EXPECT_TRUE(j["answer"].get<std::string>().rfind("Yes", 0) == 0 || j["answer"].get<std::string>().rfind("No", 0) == 0)
      << j["answer"];
  EXPECT_EQ(server.stop(), 0);
}
