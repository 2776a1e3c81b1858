// Production serving (issue 17): API keys, GET /metrics (checked with a strict parser of the
// Prometheus text format written here), graceful shutdown in process and as the real program
// under SIGTERM, and the flags that guard them.
#include <fmt/format.h>

#include <future>
#include <map>
#include <regex>

#include "common/run.h"
#include "serve/auth.h"
#include "model/tiny_bundle.h"
#include "serve/codec.h"
#include "serve/iadgpt_engine.h"
#include "serve_process.h"
#include "serve_test_util.h"

using namespace iadgpt;
using namespace iadgpt::test;
using nlohmann::json;

namespace {

// ---- a strict parser of the Prometheus text exposition format (0.0.4) -----------------------
// Every line is a "# HELP name text", a "# TYPE name type" or a sample "name{l="v",...} value";
// a sample's family needs its TYPE first; histogram samples are <family>_bucket (with `le`),
// _sum and _count; buckets are cumulative, end with le="+Inf", and +Inf equals _count; a series
// appears once. Any violation throws, naming the line.
struct Exposition {
  std::map<std::string, std::string> types;   // family → counter|gauge|histogram|...
  std::map<std::string, double> samples;      // "name{k=\"v\",...}" (labels as written) → value

  double at(const std::string& series) const {
    const auto it = samples.find(series);
    if (it == samples.end()) throw std::runtime_error("no series " + series);
    return it->second;
  }
  double value_or(const std::string& series, double fallback) const {
    const auto it = samples.find(series);
    return it == samples.end() ? fallback : it->second;
  }
};

double parse_value(const std::string& text, const std::string& line) {
  if (text == "+Inf") return INFINITY;
  if (text == "-Inf") return -INFINITY;
  if (text == "NaN") return NAN;
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    throw std::runtime_error("bad value in: " + line);
  }
  if (used != text.size()) throw std::runtime_error("bad value in: " + line);
  return v;
}

Exposition parse_exposition(const std::string& text) {
  if (text.empty() || text.back() != '\n') throw std::runtime_error("exposition must end with a newline");
  const std::regex name_re("[a-zA-Z_:][a-zA-Z0-9_:]*");
  const std::regex help_re("# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)");
  const std::regex type_re("# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)");
  const std::regex label_re("([a-zA-Z_][a-zA-Z0-9_]*)=\"((?:[^\"\\\\\\n]|\\\\[\\\\\"n])*)\"");
  Exposition e;
  std::map<std::string, std::vector<std::pair<double, double>>> buckets;  // "family{labels-but-le}" → (le, count)
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::smatch m;
    if (line.rfind("# ", 0) == 0) {
      if (std::regex_match(line, m, type_re)) {
        if (!e.types.emplace(m[1], m[2]).second) throw std::runtime_error("TYPE given twice: " + line);
      } else if (!std::regex_match(line, m, help_re)) {
        throw std::runtime_error("unknown comment line: " + line);
      }
      continue;
    }
    // name, optional {labels}, one space, value (no timestamps are written by this server).
    const auto brace = line.find('{');
    const auto space = line.rfind(' ');
    if (space == std::string::npos) throw std::runtime_error("sample without a value: " + line);
    const std::string name = line.substr(0, std::min(brace, space));
    if (!std::regex_match(name, name_re)) throw std::runtime_error("bad metric name: " + line);
    std::string labels, le;
    if (brace != std::string::npos && brace < space) {
      const auto close = line.rfind('}', space);
      if (close == std::string::npos || close + 1 != space) throw std::runtime_error("bad label set: " + line);
      labels = line.substr(brace + 1, close - brace - 1);
      // The labels must be exactly a comma-separated list of k="v".
      std::string rest = labels, without_le;
      while (!rest.empty()) {
        if (!std::regex_search(rest, m, label_re) || m.position(0) != 0) throw std::runtime_error("bad label: " + line);
        if (m[1] == "le") le = m[2];
        else without_le += (without_le.empty() ? "" : ",") + m[0].str();
        rest = rest.substr(static_cast<size_t>(m.length(0)));
        if (!rest.empty() && rest[0] != ',') throw std::runtime_error("labels not comma-separated: " + line);
        if (!rest.empty()) rest = rest.substr(1);
      }
      labels = without_le;
    }
    const double value = parse_value(line.substr(space + 1), line);
    // The family: the name itself, or for histogram parts the name less its suffix.
    std::string family = name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string s = suffix;
      if (!e.types.count(family) && name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0 &&
          e.types.count(name.substr(0, name.size() - s.size())) &&
          e.types.at(name.substr(0, name.size() - s.size())) == "histogram") {
        family = name.substr(0, name.size() - s.size());
      }
    }
    if (!e.types.count(family)) throw std::runtime_error("sample before its TYPE: " + line);
    if (e.types.at(family) == "histogram" && family == name) throw std::runtime_error("bare histogram sample: " + line);
    if (name == family + "_bucket") {
      if (le.empty()) throw std::runtime_error("bucket without le: " + line);
      buckets[family + "{" + labels + "}"].push_back({parse_value(le, line), value});
    } else if (!le.empty()) {
      throw std::runtime_error("le outside a bucket: " + line);
    }
    const std::string key = name + "{" + labels + (le.empty() ? "" : (labels.empty() ? "" : ",") + ("le=\"" + le + "\"")) + "}";
    if (!e.samples.emplace(key, value).second) throw std::runtime_error("series given twice: " + line);
    if (e.types.at(family) == "counter" && !(value >= 0)) throw std::runtime_error("negative counter: " + line);
  }
  for (const auto& [series, list] : buckets) {
    const auto family = series.substr(0, series.find('{'));
    const auto labels = series.substr(series.find('{'));
    for (size_t i = 1; i < list.size(); ++i) {
      if (!(list[i].first > list[i - 1].first)) throw std::runtime_error("buckets out of order: " + series);
      if (list[i].second < list[i - 1].second) throw std::runtime_error("buckets not cumulative: " + series);
    }
    if (list.empty() || !std::isinf(list.back().first)) throw std::runtime_error("no +Inf bucket: " + series);
    if (list.back().second != e.at(family + "_count" + labels)) throw std::runtime_error("+Inf != _count: " + series);
    e.at(family + "_sum" + labels);  // must exist
  }
  return e;
}

httplib::Headers bearer(const std::string& key) { return {{"Authorization", "Bearer " + key}}; }

Exposition scrape(httplib::Client& c, const httplib::Headers& headers = {}) {
  auto r = c.Get("/metrics", headers);
  if (!r || r->status != 200) throw std::runtime_error("GET /metrics failed");
  EXPECT_NE(r->get_header_value("Content-Type").find("text/plain; version=0.0.4"), std::string::npos);
  return parse_exposition(r->body);
}

// Holds the fake engine's requests at its gate until destroyed (declared after the server, so a
// failed assertion opens it before the server waits for its requests).
struct CloseGate {
  FakeCounters& counters;
  explicit CloseGate(FakeCounters& c) : counters(c) {
    std::lock_guard lock(c.mutex);
    c.gate_open = false;
  }
  ~CloseGate() { counters.open(); }
};

// Polls until `done` or `seconds` pass.
template <class F>
bool eventually(F done, double seconds = 10) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

std::filesystem::path write_file(const std::string& name, const std::string& text) {
  const auto path = scratch("serve-production") / name;
  std::ofstream(path) << text;
  return path;
}

}  // namespace

// ---- the parser itself must reject what the format forbids (else the metrics test proves little)

TEST(ExpositionParser, AcceptsTheFormatAndRejectsItsViolations) {
  const std::string good =
      "# HELP a_total A.\n# TYPE a_total counter\na_total{route=\"/x\",status=\"200\"} 3\n"
      "# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n";
  const auto e = parse_exposition(good);
  EXPECT_EQ(e.at("a_total{route=\"/x\",status=\"200\"}"), 3);
  EXPECT_EQ(e.at("h_bucket{le=\"+Inf\"}"), 2);
  for (const std::string& bad : {
           std::string("a_total 1\n"),                                           // no TYPE
           std::string("# TYPE a counter\na 1"),                                 // no final newline
           std::string("# TYPE a counter\na{x=1} 1\n"),                          // unquoted label
           std::string("# TYPE a counter\na 1\na 2\n"),                          // series twice
           std::string("# TYPE a counter\na one\n"),                             // bad value
           std::string("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"),
           std::string("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n"),  // no +Inf
           std::string("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n"),  // +Inf != count
           std::string("# TYPE a gauge\n# TYPE a gauge\na 1\n"),
           std::string("# TYPE a wrongtype\na 1\n")}) {
    EXPECT_THROW(parse_exposition(bad), std::runtime_error) << bad;
  }
}

// ---- API keys -----------------------------------------------------------------------------

TEST(ApiKeys, FileParsingAndConstantTimeComparison) {
  const auto keys = serve::read_api_keys(write_file("keys.txt", "# station keys\n\n  key-one  \nkey-two\r\n"));
  EXPECT_EQ(keys, (std::vector<std::string>{"key-one", "key-two"}));
  for (const auto& [name, text, expect] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"empty.txt", "", "no key in it"},
           {"comments.txt", "# only a comment\n\n", "no key in it"},
           {"spaced.txt", "a b\n", "line 1 holds whitespace"}}) {
    try {
      serve::read_api_keys(write_file(name, text));
      ADD_FAILURE() << name << " was accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(expect), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(serve::read_api_keys(scratch("serve-production") / "missing.txt"), InputError);

  EXPECT_TRUE(serve::constant_time_equal("secret", "secret"));
  EXPECT_FALSE(serve::constant_time_equal("secret", "secreT"));
  EXPECT_FALSE(serve::constant_time_equal("secret", "secret!"));   // a longer guess
  EXPECT_FALSE(serve::constant_time_equal("secret", "secretsecret"));  // wraps around: still a mismatch
  EXPECT_FALSE(serve::constant_time_equal("secret", ""));
  EXPECT_EQ(serve::bearer_token("Bearer abc"), "abc");
  EXPECT_EQ(serve::bearer_token("bearer  abc "), "abc");
  EXPECT_EQ(serve::bearer_token("Basic abc"), "");
  const serve::ApiKeys set({"k1", "k2"});
  EXPECT_TRUE(set.accepts("Bearer k2"));
  EXPECT_FALSE(set.accepts("Bearer k3"));
  EXPECT_FALSE(set.accepts("k1"));
}

TEST(ApiKeys, RequestsWithoutAValidKeyGet401InOpenAiShapeAndHealthStaysOpen) {
  auto counters = std::make_shared<FakeCounters>();
  auto options = small_options();
  options.api_keys = {"station-7-key", "other-key"};
  TestServer server(options, fake_factory(counters));
  auto c = server.client();
  const json completion = {
      {"model", "iadgpt"},
      {"messages", json::array({{{"role", "user"},
                                 {"content", json::array({{{"type", "text"}, {"text", "Any defect?"}},
                                                          {{"type", "image_url"},
                                                           {"image_url", {{"url", "data:image/jpeg;base64," +
                                                                                      serve::base64_encode(hazelnut("test/colour/00.jpg"))}}}}})}}})}};
  for (const auto& headers : std::vector<httplib::Headers>{{}, bearer("wrong-key"), bearer("station-7-ke"),
                                                           {{"Authorization", "station-7-key"}}}) {
    auto r = c.Post("/v1/chat/completions", headers, completion.dump(), "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 401) << r->body;
    const auto j = body_json(r);
    EXPECT_EQ(j["error"]["code"], "invalid_api_key") << r->body;
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    EXPECT_TRUE(j["error"].contains("param") && j["error"]["param"].is_null());
    EXPECT_FALSE(j["error"]["message"].get<std::string>().empty());
    EXPECT_EQ(r->get_header_value("WWW-Authenticate"), "Bearer");
    for (const char* path : {"/v1/models", "/v1/model", "/metrics", "/no/such/route"}) {
      auto g = c.Get(path, headers);
      ASSERT_TRUE(g);
      EXPECT_EQ(g->status, 401) << path;
    }
  }
  EXPECT_EQ(counters->detects, 0);  // nothing reached the engine
  // A request with a body is refused after the body is read: refused before, the unread body was
  // parsed as the next request on the kept-alive connection (a 414 came back for the GET below).
  {
    auto kept = server.client();
    kept.set_keep_alive(true);
    auto r = kept.Post("/v1/chat", std::string(100000, 'x'), "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 401);
    auto h = kept.Get("/v1/health");
    ASSERT_TRUE(h);
    EXPECT_EQ(h->status, 200) << h->body;
  }
  // Health and the page's files are open.
  for (const char* path : {"/v1/health", "/", "/app.js"}) {
    auto r = c.Get(path);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << path;
  }
  // Either key works.
  for (const char* key : {"station-7-key", "other-key"}) {
    auto r = c.Post("/v1/chat/completions", bearer(key), completion.dump(), "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;
  }
  EXPECT_EQ(counters->detects, 2);
}

TEST(ApiKeys, NonLoopbackHostNeedsKeysOrInsecure) {
  auto counters = std::make_shared<FakeCounters>();
  auto options = small_options();
  options.host = "0.0.0.0";
  try {
    serve::validate(options);
    ADD_FAILURE() << "0.0.0.0 without keys was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--api-key-file"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--insecure"), std::string::npos) << e.what();
  }
  EXPECT_THROW(serve::Server(options, fake_factory(counters)), InputError);
  EXPECT_EQ(counters->detects, 0);
  auto insecure = options;
  insecure.insecure = true;
  EXPECT_NO_THROW(serve::validate(insecure));
  auto keyed = options;
  keyed.api_keys = {"k"};
  EXPECT_NO_THROW(serve::validate(keyed));
  for (const char* host : {"127.0.0.1", "::1", "localhost"}) {
    auto local = options;
    local.host = host;
    EXPECT_NO_THROW(serve::validate(local)) << host;
  }
}

TEST(ServeCommand, KeyFileAndHostErrorsAreExitCode2BeforeLoadingTheModel) {
  // The bundle does not exist: each error below must come before the model is looked at.
  const auto nothing = (scratch("serve-production") / "no-bundle").string();
  const auto empty = write_file("empty-keys.txt", "# no keys yet\n");
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  for (const auto& c : std::vector<Case>{
           {{"serve", "--model", nothing, "--api-key-file", empty.string()}, "no key in it"},
           {{"serve", "--model", nothing, "--api-key-file", (scratch("serve-production") / "absent").string()},
            "cannot be read"},
           {{"serve", "--model", nothing, "--host", "0.0.0.0"}, "--api-key-file"},
           {{"serve", "--model", nothing, "--drain-timeout", "-1"}, "--drain-timeout"}}) {
    const auto r = run_iadgpt(c.args);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("iadgpt: error:"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << r.err;
  }
  const auto help = run_iadgpt(std::vector<std::string>{"serve", "--help"});
  for (const char* flag : {"--api-key-file", "--insecure", "--drain-timeout"}) {
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
  }
}

// ---- metrics ------------------------------------------------------------------------------

TEST(Metrics, PrometheusTextMovesWithRequests) {
  auto counters = std::make_shared<FakeCounters>();
  TestServer server(small_options(), fake_factory(counters));
  auto c = server.client();
  // One connection: the server counts a request after writing its response, and requests of one
  // keep-alive connection are handled in turn, so each scrape sees the requests before it.
  c.set_keep_alive(true);
  const auto before = scrape(c);
  EXPECT_EQ(before.types.at("iadgpt_http_requests_total"), "counter");
  EXPECT_EQ(before.types.at("iadgpt_stage_seconds"), "histogram");
  EXPECT_EQ(before.types.at("iadgpt_queue_depth"), "gauge");
  EXPECT_EQ(before.at("iadgpt_stage_seconds_count{stage=\"encode\"}"), 0);
  EXPECT_EQ(before.value_or("iadgpt_http_requests_total{route=\"/v1/detect\",status=\"200\"}", 0), 0);
  EXPECT_EQ(before.at("iadgpt_session_bytes{}"), 0);

  auto r = c.Post("/v1/detect", detect_form(hazelnut("test/colour/00.jpg")));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  auto bad = c.Post("/v1/detect", "{}", "application/json");
  ASSERT_TRUE(bad);
  ASSERT_EQ(bad->status, 400);
  const auto after = scrape(c);
  EXPECT_EQ(after.at("iadgpt_http_requests_total{route=\"/v1/detect\",status=\"200\"}"), 1);
  EXPECT_EQ(after.at("iadgpt_http_requests_total{route=\"/v1/detect\",status=\"400\"}"), 1);
  EXPECT_EQ(after.at("iadgpt_http_requests_total{route=\"/metrics\",status=\"200\"}"), 1);  // the first scrape
  // The fake engine reports encode 3 ms, prefill 20 ms, generate (decode) 200 ms and 10 tokens:
  // each lands in the first bucket whose bound is >= it.
  EXPECT_EQ(after.at("iadgpt_stage_seconds_count{stage=\"encode\"}"), 1);
  EXPECT_EQ(after.at("iadgpt_stage_seconds_bucket{stage=\"encode\",le=\"0.0025\"}"), 0);
  EXPECT_EQ(after.at("iadgpt_stage_seconds_bucket{stage=\"encode\",le=\"0.005\"}"), 1);
  EXPECT_EQ(after.at("iadgpt_stage_seconds_bucket{stage=\"prefill\",le=\"0.01\"}"), 0);
  EXPECT_EQ(after.at("iadgpt_stage_seconds_bucket{stage=\"prefill\",le=\"0.025\"}"), 1);
  EXPECT_EQ(after.at("iadgpt_stage_seconds_bucket{stage=\"decode\",le=\"0.1\"}"), 0);
  EXPECT_EQ(after.at("iadgpt_stage_seconds_bucket{stage=\"decode\",le=\"0.25\"}"), 1);
  // Sums are the reported floats added once; 1e-12 covers printing them in shortest form.
  EXPECT_NEAR(after.at("iadgpt_stage_seconds_sum{stage=\"decode\"}"), 0.2, 1e-12);
  EXPECT_EQ(after.at("iadgpt_stage_seconds_count{stage=\"maps\"}"), 0);  // the fake reports no maps stage
  EXPECT_EQ(after.at("iadgpt_generated_tokens_total{}"), 10);
  EXPECT_NEAR(after.at("iadgpt_decode_tokens_per_second{}"), 10 / 0.2, 1e-9);  // 10 tokens in 0.2 s
  // The session holds at least the 512x512 image decoded to RGB8.
  EXPECT_GE(after.at("iadgpt_session_bytes{}"), 512.0 * 512 * 3);
  EXPECT_EQ(after.at("iadgpt_sessions{}"), 1);
  EXPECT_EQ(after.at("iadgpt_queue_capacity{}"), 4);

  // Queue depth: one request held at the engine's gate, two waiting behind it.
  const CloseGate gate(*counters);
  std::vector<std::future<int>> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(std::async(std::launch::async, [&] {
      auto hc = server.client();
      auto hr = hc.Post("/v1/detect", detect_form(hazelnut("test/good/04.jpg")));
      return hr ? hr->status : 0;
    }));
  }
  EXPECT_TRUE(eventually([&] { return scrape(c).at("iadgpt_queue_depth{}") == 2; })) << "queue depth never reached 2";
  const auto loaded = scrape(c);
  EXPECT_EQ(loaded.at("iadgpt_workers_busy{}"), 1);
  EXPECT_EQ(loaded.at("iadgpt_requests_in_flight{}"), 3);
  counters->open();
  for (auto& f : held) EXPECT_EQ(f.get(), 200);
  // Those three came on other connections: counted right after their responses were written.
  EXPECT_TRUE(eventually([&] {
    return scrape(c).at("iadgpt_http_requests_total{route=\"/v1/detect\",status=\"200\"}") == 4;
  }));
  const auto done = scrape(c);
  EXPECT_EQ(done.at("iadgpt_queue_depth{}"), 0);
  EXPECT_EQ(done.at("iadgpt_stage_seconds_count{stage=\"encode\"}"), 4);
}

// The batching counters: three detects at once on a bf16 bundle with --batch 3 (and a long
// --batch-wait, so the worker surely gathers all three) run one detect batch, one batched
// prefill of three prompts and their answers through the decode loop; /metrics shows what
// /v1/health shows.
TEST(Metrics, BatchingCountersMatchHealth) {
  const auto bundle = tiny_bundle("metrics-batching", [](model::Bundle& b) { b.dtype = "bf16"; });
  auto o = small_options();
  o.batch = 3;
  o.batch_wait_ms = 10'000;  // the most --batch-wait allows
  TestServer server(o, serve::shared_weights_factory(bundle, false, o.batch, 0));
  auto c = server.client(120);
  const auto before = scrape(c);
  EXPECT_EQ(before.types.at("iadgpt_decode_steps_total"), "counter");
  EXPECT_EQ(before.types.at("iadgpt_decode_batch"), "gauge");
  EXPECT_EQ(before.at("iadgpt_decode_batch{}"), 3);
  EXPECT_EQ(before.at("iadgpt_decode_steps_total{}"), 0);
  EXPECT_EQ(before.at("iadgpt_detect_batches_total{}"), 0);
  std::vector<std::future<int>> detects;
  for (const char* name : {"test/colour/00.jpg", "test/good/04.jpg", "test/colour/03.jpg"})
    detects.push_back(std::async(std::launch::async, [&, name] {
      auto r = server.client(120).Post("/v1/detect", detect_form(hazelnut(name)));
      return r ? r->status : 0;
    }));
  for (auto& f : detects) EXPECT_EQ(f.get(), 200);
  const auto after = scrape(c);
  const auto health = body_json(c.Get("/v1/health"));
  const auto& engine = health["engine"];
  EXPECT_EQ(after.at("iadgpt_detect_batches_total{}"), 1) << health.dump();
  EXPECT_EQ(after.at("iadgpt_detect_batched_total{}"), 3);
  EXPECT_EQ(after.at("iadgpt_prefill_batches_total{}"), 1);
  EXPECT_EQ(after.at("iadgpt_prefill_batched_total{}"), 3);
  EXPECT_EQ(after.at("iadgpt_detect_batches_total{}"), health["batches"].get<double>());
  for (const auto& [metric, key] : std::vector<std::pair<std::string, std::string>>{
           {"iadgpt_prefill_batched_total", "prefill_batched"}, {"iadgpt_decode_steps_total", "decode_steps"},
           {"iadgpt_decode_rows_total", "decode_rows"}, {"iadgpt_decode_sequences_total", "decode_sequences"},
           {"iadgpt_decode_batch_max_seen", "decode_max_seen"}, {"iadgpt_decode_waiting", "decode_waiting"}})
    EXPECT_EQ(after.at(metric + "{}"), engine.at(key).get<double>()) << metric;
  EXPECT_GT(after.at("iadgpt_decode_steps_total{}"), 0);
  EXPECT_GE(after.at("iadgpt_decode_rows_total{}"), after.at("iadgpt_decode_steps_total{}"));
  EXPECT_LE(after.at("iadgpt_decode_batch_max_seen{}"), 3);
  EXPECT_EQ(after.at("iadgpt_decode_waiting{}"), 0);
}

// ---- graceful shutdown --------------------------------------------------------------------

TEST(GracefulShutdown, DrainingAnswers503AndFinishesWhatIsInFlight) {
  auto counters = std::make_shared<FakeCounters>();
  TestServer server(small_options(), fake_factory(counters));
  auto c = server.client();
  const CloseGate gate(*counters);
  auto in_flight = std::async(std::launch::async, [&] {
    auto hc = server.client();
    auto r = hc.Post("/v1/detect", detect_form(hazelnut("test/colour/00.jpg")));
    return r ? r->status : 0;
  });
  ASSERT_TRUE(eventually([&] { return body_json(c.Get("/v1/health"))["busy"] == 1; }));
  auto drained = std::async(std::launch::async, [&] { return server.server().shutdown(std::chrono::seconds(20)); });
  // Health says so (503, "draining"), new work gets 503 in OpenAI's error shape.
  ASSERT_TRUE(eventually([&] {
    auto h = c.Get("/v1/health");
    return h && h->status == 503;
  }));
  EXPECT_EQ(body_json(c.Get("/v1/health"))["status"], "draining");
  auto refused = server.client().Post("/v1/detect", detect_form(hazelnut("test/good/04.jpg")));
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 503);
  EXPECT_EQ(body_json(refused)["error"]["code"], 503);
  EXPECT_NE(body_json(refused)["error"]["message"].get<std::string>().find("shutting down"), std::string::npos);
  EXPECT_EQ(drained.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout)
      << "shutdown returned while a request was still in flight";
  counters->open();
  EXPECT_EQ(in_flight.get(), 200);
  ASSERT_EQ(drained.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(drained.get(), 0);
  EXPECT_EQ(counters->detects, 1);  // the refused request never reached the engine
}

TEST(GracefulShutdown, DrainTimeoutReportsWhatIsStillRunning) {
  auto counters = std::make_shared<FakeCounters>();
  TestServer server(small_options(), fake_factory(counters));
  auto c = server.client();
  const CloseGate gate(*counters);
  auto in_flight = std::async(std::launch::async, [&] {
    auto hc = server.client();
    auto r = hc.Post("/v1/detect", detect_form(hazelnut("test/colour/00.jpg")));
    return r ? r->status : 0;
  });
  ASSERT_TRUE(eventually([&] { return body_json(c.Get("/v1/health"))["busy"] == 1; }));
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(server.server().shutdown(std::chrono::milliseconds(300)), 1);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(300));
  counters->open();  // the listener is still up: the request gets its answer
  EXPECT_EQ(in_flight.get(), 200);
}

// The real program: SIGTERM while requests run and wait, then a new request, then exit 0.
TEST(GracefulShutdown, SigtermFinishesAcceptedRequestsThenExitsZero) {
  const auto bundle = tiny_bundle("serve-sigterm");
  // Long answers (llama_tiny never stops early) so that the drain lasts long enough to probe it.
  ServeProcess server(bundle.dir, {"--workers", "1", "--queue", "16", "--max-tokens", "256"});
  const json request = {{"image", "data:image/jpeg;base64," + serve::base64_encode(hazelnut("test/colour/00.jpg"))},
                        {"class", "hazelnut"},
                        {"max_tokens", 200}};
  constexpr int kClients = 12;  // the queue (16) holds them all; many waiting = a wide window to signal in
  httplib::Client c("127.0.0.1", server.port());
  c.set_read_timeout(10, 0);
  // The pool's completed count starts at the start-up job that asked the engine to describe itself.
  const int completed_before = body_json(c.Get("/v1/health")).value("completed", -1);
  ASSERT_GE(completed_before, 0);
  std::vector<std::future<int>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::async(std::launch::async, [&] {
      httplib::Client hc("127.0.0.1", server.port());
      hc.set_read_timeout(120, 0);
      auto r = hc.Post("/v1/detect", request.dump(), "application/json");
      return r ? r->status : 0;
    }));
  }
  // SIGTERM while at least two requests wait or run (so there is a drain to probe). Clients still
  // on their way then rightly get 503, but every request the server had accepted by the signal
  // (answered, running or queued in the snapshot) must be answered. Waiting for all twelve to be
  // accepted first raced on a fast machine: the early ones could finish before the last arrived.
  int accepted_at_signal = 0;
  ASSERT_TRUE(eventually([&] {
    const auto h = body_json(c.Get("/v1/health"));
    if (!h.contains("busy")) return false;
    const int waiting = h["busy"].get<int>() + h["queued"].get<int>();
    accepted_at_signal = waiting + h["completed"].get<int>() - completed_before;
    return waiting >= 2;
  }, 60)) << "the requests never queued; health: " << c.Get("/v1/health")->body << " log: " << server.slurp_log();
  server.signal(SIGTERM);
  ASSERT_TRUE(eventually([&] {
    auto h = c.Get("/v1/health");
    return h && h->status == 503;
  }, 10)) << "health never said draining; log: " << server.slurp_log();
  auto refused = c.Post("/v1/detect", request.dump(), "application/json");
  ASSERT_TRUE(refused) << "the listener closed before the accepted requests finished";
  EXPECT_EQ(refused->status, 503) << refused->body;
  const auto code = server.wait_exit(120);
  ASSERT_TRUE(code.has_value()) << "did not exit after draining; log: " << server.slurp_log();
  EXPECT_EQ(*code, 0) << server.slurp_log();
  int answered = 0;
  for (auto& f : clients) {
    const int status = f.get();
    answered += status == 200;
    // 503: arrived while draining; 0: never connected before the listener closed.
    EXPECT_TRUE(status == 200 || status == 503 || status == 0) << status;
  }
  EXPECT_GE(answered, accepted_at_signal) << "an accepted request lost its answer; log: " << server.slurp_log();
  EXPECT_NE(server.slurp_log().find("every request answered"), std::string::npos) << server.slurp_log();
}

TEST(GracefulShutdown, SigtermWithDrainTimeoutZeroExitsAtOnce) {
  const auto bundle = tiny_bundle("serve-sigterm-timeout");
  ServeProcess server(bundle.dir, {"--workers", "1", "--max-tokens", "256", "--drain-timeout", "0"});
  const json request = {{"image", "data:image/jpeg;base64," + serve::base64_encode(hazelnut("test/colour/00.jpg"))},
                        {"max_tokens", 200}};
  std::vector<std::future<int>> clients;
  for (int i = 0; i < 4; ++i) {
    clients.push_back(std::async(std::launch::async, [&] {
      httplib::Client hc("127.0.0.1", server.port());
      hc.set_read_timeout(120, 0);
      auto r = hc.Post("/v1/detect", request.dump(), "application/json");
      return r ? r->status : 0;
    }));
  }
  httplib::Client c("127.0.0.1", server.port());
  ASSERT_TRUE(eventually([&] { return body_json(c.Get("/v1/health")).value("queued", 0) >= 1; }, 60));
  server.signal(SIGTERM);
  const auto code = server.wait_exit(10);
  ASSERT_TRUE(code.has_value()) << "still running 10 s after SIGTERM with --drain-timeout 0";
  EXPECT_EQ(*code, 0);
  EXPECT_NE(server.slurp_log().find("still running after --drain-timeout 0 s"), std::string::npos) << server.slurp_log();
  int unanswered = 0;
  for (auto& f : clients) unanswered += f.get() == 0;
  EXPECT_GE(unanswered, 1);  // at least the queued one lost its answer
}
