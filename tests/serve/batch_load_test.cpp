// The parts/minute measurement of detect batching (a load tool, not a test: it asserts nothing
// about speed, and is DISABLED_ so that ctest does not run it). Run it by hand:
//
//   IADGPT_SHARED=<shared dir> IADGPT_BIN=$PWD/iadgpt ./test_serve --gtest_also_run_disabled_tests
//       --gtest_filter='BatchLoad.*'
//
// `iadgpt serve --workers 1` with batching off (--batch 1) and on (--batch 16, --batch-wait 0 and 20),
// 1, 4 and 16 concurrent clients each sending multipart detects of 256 px parts; parts/minute
// and p50 latency per run, printed and written to <build>/serve_batch_load.json.
// Environment: IADGPT_LOAD_BUNDLE=DIR serves that bundle instead of the tiny fixture one;
// IADGPT_LOAD_BF16=1 makes the fixture bundle bf16 (the bf16 decode kernels, as a real bundle);
// IADGPT_LOAD_REQUESTS=N requests per run (default 32); IADGPT_LOAD_ARGS="--answer-tokens 32 ..."
// more server flags for every configuration; IADGPT_LOAD_CONFIGS=off,on those configurations only.
// A failed request is counted by its status and body (or httplib's error) in `failures`.
#include <fmt/format.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>

#include "model/tiny_bundle.h"
#include "serve_process.h"
#include "serve_test_util.h"

using namespace iadgpt;
using namespace iadgpt::test;
using nlohmann::json;

namespace {

std::vector<std::string> parts_256() {
  std::vector<std::string> images;
  for (const char* name : {"test/colour/00.jpg", "test/good/04.jpg", "test/colour/03.jpg"}) {
    cv::Mat img = cv::imread(data("hazelnut_toy/hazelnut/" + std::string(name)).string(), cv::IMREAD_COLOR);
    if (img.empty()) throw std::runtime_error(std::string("missing ") + name);
    cv::resize(img, img, cv::Size(256, 256), 0, 0, cv::INTER_AREA);
    std::vector<uint8_t> jpg;
    cv::imencode(".jpg", img, jpg);
    images.emplace_back(jpg.begin(), jpg.end());
  }
  return images;
}

// `requests` detects from `clients` threads; parts/minute of the 200s, p50 latency, other statuses.
json measure(int port, int clients, int requests, const std::vector<std::string>& images) {
  std::atomic<int> next{0};
  std::mutex mutex;
  std::vector<double> latencies;
  int failed = 0;
  std::map<std::string, int> failures;  // status (or httplib's error) → count, with the first body
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int k = 0; k < clients; ++k) {
    threads.emplace_back([&] {
      httplib::Client c("127.0.0.1", port);
      c.set_read_timeout(600, 0);
      c.set_keep_alive(true);
      for (int i = next++; i < requests; i = next++) {
        const auto start = std::chrono::steady_clock::now();
        auto r = c.Post("/v1/detect", detect_form(images[i % images.size()]));
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
        std::lock_guard lock(mutex);
        if (r && r->status == 200) {
          latencies.push_back(ms);
          continue;
        }
        ++failed;
        const auto what = r ? fmt::format("{}: {}", r->status, r->body.substr(0, 200)) : httplib::to_string(r.error());
        ++failures[what];
      }
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::sort(latencies.begin(), latencies.end());
  const double p50 = latencies.empty() ? 0 : latencies[latencies.size() / 2];
  return {{"clients", clients}, {"ok", latencies.size()}, {"failed", failed}, {"seconds", seconds},
          {"parts_per_minute", 60.0 * static_cast<double>(latencies.size()) / seconds}, {"p50_ms", p50},
          {"failures", failures}};
}

}  // namespace

TEST(BatchLoad, DISABLED_PartsPerMinuteWithBatchingOffAndOn) {
  std::filesystem::path bundle_dir;
  if (const char* b = std::getenv("IADGPT_LOAD_BUNDLE"); b && *b) {
    bundle_dir = b;
  } else {
    auto fields = tiny_bundle_fields("batch-load");
    if (const char* bf = std::getenv("IADGPT_LOAD_BF16"); bf && std::string(bf) == "1") fields.dtype = "bf16";
    model::init_random_adapters(fields, 1);
    model::write_bundle(fields, fields.dir);
    bundle_dir = fields.dir;
  }
  const char* n = std::getenv("IADGPT_LOAD_REQUESTS");
  const int requests = n && *n ? std::atoi(n) : 32;
  const auto images = parts_256();
  const std::vector<std::pair<std::string, std::vector<std::string>>> configs = {
      {"off", {"--workers", "1", "--queue", "64", "--batch", "1"}},
      {"on", {"--workers", "1", "--queue", "64", "--batch", "16", "--batch-wait", "0"}},
      {"on+wait", {"--workers", "1", "--queue", "64", "--batch", "16", "--batch-wait", "20"}}};
  std::vector<std::string> extra;
  if (const char* a = std::getenv("IADGPT_LOAD_ARGS")) {
    std::istringstream words(a);
    for (std::string w; words >> w;) extra.push_back(w);
  }
  json report = {{"bundle", bundle_dir.string()}, {"requests_per_run", requests}, {"runs", json::array()}};
  const char* only = std::getenv("IADGPT_LOAD_CONFIGS");  // e.g. "off,on": those configurations only
  for (auto [name, args] : configs) {
    if (only && *only && ("," + std::string(only) + ",").find("," + name + ",") == std::string::npos) continue;
    args.insert(args.end(), extra.begin(), extra.end());
    ServeProcess server(bundle_dir, args);
    httplib::Client warm("127.0.0.1", server.port());
    warm.set_read_timeout(600, 0);
    ASSERT_TRUE(warm.Post("/v1/detect", detect_form(images[0])));  // first-touch allocations, prompt features
    for (int clients : {1, 4, 16}) {
      auto run = measure(server.port(), clients, requests, images);
      run["batching"] = name;
      run["server"] = fmt::format("{}", fmt::join(args, " "));
      run["health"] = body_json(warm.Get("/v1/health"));
      std::cout << fmt::format("batching {:7} clients {:2}: {:7.1f} parts/min, p50 {:7.0f} ms ({} ok, {} failed{})\n", name,
                               clients, run["parts_per_minute"].get<double>(), run["p50_ms"].get<double>(),
                               run["ok"].get<int>(), run["failed"].get<int>(),
                               run["failures"].empty() ? "" : ": " + run["failures"].dump())
                << std::flush;
      report["runs"].push_back(run);
    }
  }
  std::ofstream(std::filesystem::path(IADGPT_BINARY_DIR) / "serve_batch_load.json") << report.dump(2) << "\n";
}
