// What `GET /metrics` shows, in the Prometheus text exposition format (version 0.0.4): requests
// by route and status, latency histograms of the pipeline's stages, generated tokens and the
// server's gauges (queue, workers, sessions) and batching counters. Thread-safe.
//
//   serve::Metrics metrics;
//   metrics.count_request("/v1/detect", 200);
//   metrics.observe("encode", 0.012);                         // seconds
//   std::string text = metrics.render(gauges);                // the body of GET /metrics
//
// Routes are the server's own route names ("other" for anything else), so a client probing
// random paths cannot grow the label set without bound.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace iadgpt::serve {

struct ServerGauges {
  int workers = 0, busy = 0;
  size_t queued = 0, queue_capacity = 0;
  size_t sessions = 0;
  int64_t session_bytes = 0, session_budget_bytes = 0;
  int64_t in_flight = 0;
  bool draining = false;
  // Batching (serve --batch): detect batches of the pool, batched prefills of the engines and the
  // decode loop's counters (Engine::shared_stats); all 0 without batching.
  uint64_t detect_batches = 0, detect_batched = 0, prefill_batches = 0, prefill_batched = 0;
  uint64_t decode_steps = 0, decode_rows = 0, decode_sequences = 0;
  int64_t decode_batch = 0, decode_max_seen = 0, decode_waiting = 0;
};

class Metrics {
 public:
  // Upper bounds (seconds) of the latency buckets: 1 ms (a tiny model's decode) to 60 s (a 7B
  // model's long answer on CPU); +Inf is implied.
  static constexpr std::array<double, 14> kBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                      0.25,  0.5,    1,     2.5,  5,     10,   60};
  // The stages that have histograms, in the order they are shown.
  static constexpr std::array<std::string_view, 4> kStages = {"encode", "maps", "prefill", "decode"};

  void count_request(std::string_view route, int status);
  // stage: one of kStages (others are ignored: engines may report more than these).
  void observe(std::string_view stage, double seconds);
  // Tokens generated in `seconds` of decoding (one answer).
  void add_generated(int64_t tokens, double seconds);
  std::string render(const ServerGauges& gauges) const;

 private:
  struct Histogram {
    std::array<uint64_t, kBuckets.size()> counts{};  // per bucket, not cumulative
    uint64_t count = 0;
    double sum = 0;
  };
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::array<Histogram, kStages.size()> stages_{};
  uint64_t generated_tokens_ = 0;
  double decode_seconds_ = 0;
  double last_tokens_per_second_ = 0;
};

}  // namespace iadgpt::serve
