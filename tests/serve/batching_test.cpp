// Detect batching (serve --batch N --batch-wait T, pool.h BatchPolicy): the pool gathers queued
// inspections into one Engine::detect_batch; the real engines run the vision tower once for the
// batch and give what they give one image at a time; `iadgpt serve --batch 4` answers as
// `--batch 1` does. And the many-concurrent-stream case of the memory budgets: streams beyond the
// queue get 429 while the server stays healthy, then a real inspection succeeds.
#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <future>
#include <iostream>

#include "io/error.h"
#include "model/tiny_bundle.h"
#include "serve/codec.h"
#include "serve/iadgpt_engine.h"
#include "serve/pool.h"
#include "serve_process.h"
#include "serve_test_util.h"

using namespace iadgpt;
using namespace iadgpt::test;
using nlohmann::json;

namespace {

// Answers with the request's class; logs the size of every detect_batch call. detect() refuses
// the class "bad"; detect_batch throws as a whole when a class is "boom" (detect() takes it).
struct BatchLog {
  std::mutex mutex;
  std::vector<size_t> batches;
  int detects = 0;
};

class BatchFake : public serve::Engine {
 public:
  explicit BatchFake(std::shared_ptr<BatchLog> log) : log_(std::move(log)) {}
  serve::DetectOutput detect(const serve::DetectInput& in) override {
    if (in.class_name == "bad") throw InputError("class 'bad' refused");
    std::lock_guard lock(log_->mutex);
    ++log_->detects;
    return answer(in);
  }
  std::vector<serve::DetectResult> detect_batch(std::span<const serve::DetectInput* const> inputs) override {
    {
      std::lock_guard lock(log_->mutex);
      log_->batches.push_back(inputs.size());
    }
    std::vector<serve::DetectResult> results(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (inputs[i]->class_name == "boom") throw std::runtime_error("the batch failed as a whole");
      if (inputs[i]->class_name == "bad") results[i].error = std::make_exception_ptr(InputError("class 'bad' refused"));
      else results[i].output = answer(*inputs[i]);
    }
    return results;
  }
  std::string ask(std::string_view, int64_t) override { return ""; }
  nlohmann::json describe() const override { return {{"engine", "batch-fake"}}; }

 private:
  static serve::DetectOutput answer(const serve::DetectInput& in) {
    serve::DetectOutput out;
    out.answer = "class " + in.class_name;
    return out;
  }
  std::shared_ptr<BatchLog> log_;
};

// Holds the pool's single worker until release(): jobs submitted meanwhile are surely queued.
class Hold {
 public:
  explicit Hold(serve::WorkerPool& pool) {
    held_ = pool.submit([this](serve::Worker&) {
      started_.set_value();
      release_.get_future().wait();
    });
    started_.get_future().wait();
  }
  void release() {
    release_.set_value();
    held_.get();
  }

 private:
  std::promise<void> started_, release_;
  std::future<void> held_;
};

struct Submitted {
  serve::DetectInput input;
  serve::DetectOutput output;
  std::future<void> done;
};

// Queues one inspection per class; each `then` appends its class to `order` and names the worker's
// session after it (as the server names it after the request's session).
std::vector<std::unique_ptr<Submitted>> submit_all(serve::WorkerPool& pool, const std::vector<std::string>& classes,
                                                   std::vector<std::string>& order) {
  std::vector<std::unique_ptr<Submitted>> all;
  for (const auto& c : classes) {
    auto s = std::make_unique<Submitted>();
    s->input.class_name = c;
    s->input.image = cv::Mat(8, 8, CV_8UC3, cv::Scalar(1, 2, 3));
    s->done = pool.submit_detect(s->input, s->output, [&order, c](serve::Worker& w) {
      order.push_back(c);
      w.session = c;
    });
    all.push_back(std::move(s));
  }
  return all;
}

std::string session_of_worker(serve::WorkerPool& pool) {
  std::string session;
  pool.submit([&](serve::Worker& w) { session = w.session; }, 0).get();
  return session;
}

serve::EngineFactory batch_factory(std::shared_ptr<BatchLog> log) {
  return [log](int) { return std::make_unique<BatchFake>(log); };
}

}  // namespace

TEST(Batching, QueuedInspectionsRunAsOneEngineCallEachWithItsOwnResult) {
  auto log = std::make_shared<BatchLog>();
  serve::WorkerPool pool(1, 16, batch_factory(log), 0, {.max = 3});
  Hold hold(pool);
  std::vector<std::string> order;
  auto all = submit_all(pool, {"a", "b", "c", "d"}, order);
  hold.release();
  for (auto& s : all) s->done.get();
  // Four queued, at most three a call: the first three together, then the fourth.
  EXPECT_EQ(log->batches, (std::vector<size_t>{3}));
  EXPECT_EQ(log->detects, 1);
  for (auto& s : all) EXPECT_EQ(s->output.answer, "class " + s->input.class_name);
  EXPECT_EQ(order, (std::vector<std::string>{"a", "b", "c", "d"}));
  const auto stats = pool.stats();
  EXPECT_EQ(stats.batches, 1u);
  EXPECT_EQ(stats.batched, 3u);
  EXPECT_EQ(stats.completed, 5u);  // the holding job + four inspections
  EXPECT_EQ(stats.queued, 0u);
}

TEST(Batching, AfterABatchTheWorkerHoldsOnlyTheLastConversation) {
  auto log = std::make_shared<BatchLog>();
  serve::WorkerPool pool(1, 16, batch_factory(log), 0, {.max = 4});
  {
    Hold hold(pool);
    std::vector<std::string> order;
    auto all = submit_all(pool, {"a", "b", "c"}, order);
    hold.release();
    for (auto& s : all) s->done.get();
  }
  // The engine's conversation is the last inspection's: "a" and "b" must be replayed, not assumed.
  EXPECT_EQ(session_of_worker(pool), "c");
  {
    Hold hold(pool);
    std::vector<std::string> order;
    auto all = submit_all(pool, {"d", "bad"}, order);
    hold.release();
    all[0]->done.get();
    EXPECT_THROW(all[1]->done.get(), InputError);
  }
  // The last one failed: the engine holds no conversation anyone may continue.
  EXPECT_EQ(session_of_worker(pool), "");
  EXPECT_EQ(log->batches, (std::vector<size_t>{3, 2}));
}

TEST(Batching, AnInputsErrorStaysWithItsRequestAndABatchFailureFallsBackToEachAlone) {
  auto log = std::make_shared<BatchLog>();
  serve::WorkerPool pool(1, 16, batch_factory(log), 0, {.max = 8});
  Hold hold(pool);
  std::vector<std::string> order;
  auto all = submit_all(pool, {"a", "bad", "c"}, order);
  hold.release();
  all[0]->done.get();
  EXPECT_THROW(all[1]->done.get(), InputError);
  all[2]->done.get();
  EXPECT_EQ(all[2]->output.answer, "class c");
  EXPECT_EQ(order, (std::vector<std::string>{"a", "c"}));

  Hold again(pool);
  std::vector<std::string> order2;
  auto boom = submit_all(pool, {"x", "boom", "y"}, order2);
  again.release();
  for (auto& s : boom) s->done.get();  // each alone: detect() takes every one of them
  EXPECT_EQ(boom[1]->output.answer, "class boom");
  EXPECT_EQ(log->detects, 3);
  EXPECT_EQ(order2, (std::vector<std::string>{"x", "boom", "y"}));
}

TEST(Batching, BatchOfOneNeverCallsDetectBatch) {
  auto log = std::make_shared<BatchLog>();
  serve::WorkerPool pool(1, 16, batch_factory(log), 0, {.max = 1, .wait = std::chrono::milliseconds(60'000)});
  Hold hold(pool);
  std::vector<std::string> order;
  auto all = submit_all(pool, {"a", "b", "c"}, order);
  hold.release();
  for (auto& s : all) s->done.get();
  EXPECT_TRUE(log->batches.empty());
  EXPECT_EQ(log->detects, 3);
  EXPECT_EQ(pool.stats().batches, 0u);
}

TEST(Batching, AWorkerWaitsUpToBatchWaitForMoreInspections) {
  auto log = std::make_shared<BatchLog>();
  // A long wait bound: the batch is full (2) as soon as the second arrives, so this test takes
  // ~0.2 s on any machine; the wait only has to outlast the pause below.
  serve::WorkerPool pool(1, 16, batch_factory(log), 0, {.max = 2, .wait = std::chrono::milliseconds(60'000)});
  std::vector<std::string> order;
  auto first = submit_all(pool, {"a"}, order);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the worker has taken "a" and waits
  auto second = submit_all(pool, {"b"}, order);
  first[0]->done.get();
  second[0]->done.get();
  EXPECT_EQ(log->batches, (std::vector<size_t>{2}));
  EXPECT_EQ(log->detects, 0);
}

TEST(Batching, PoolRefusesBadPolicies) {
  auto log = std::make_shared<BatchLog>();
  EXPECT_THROW(serve::WorkerPool(1, 4, batch_factory(log), 0, {.max = 0}), InputError);
  EXPECT_THROW(serve::WorkerPool(1, 4, batch_factory(log), 0, {.max = 2, .wait = std::chrono::milliseconds(-1)}),
               InputError);
  serve::ServerOptions o;
  o.batch = 65;
  EXPECT_THROW(serve::validate(o), InputError);
  o.batch = 4;
  o.batch_wait_ms = -5;
  EXPECT_THROW(serve::validate(o), InputError);
}

// ---- the real engines --------------------------------------------------------------------------

namespace {

cv::Mat part(const std::string& rel, int side = 0) {
  cv::Mat bgr = cv::imread(data("hazelnut_toy/hazelnut/" + rel).string(), cv::IMREAD_COLOR);
  if (bgr.empty()) throw std::runtime_error("missing " + rel);
  if (side > 0) cv::resize(bgr, bgr, cv::Size(side, side * 3 / 4), 0, 0, cv::INTER_AREA);  // not square
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return rgb;
}

serve::DetectInput input(cv::Mat image, std::string cls, std::vector<cv::Mat> refs = {}, std::string question = {}) {
  serve::DetectInput in;
  in.image = std::move(image);
  in.class_name = std::move(cls);
  in.references = std::move(refs);
  in.question = std::move(question);
  in.max_tokens = 12;
  return in;
}

// Four requests that differ in image (one not square: its e comes from the encoder view),
// class, references and question, so a batch that mixed them up would show.
std::vector<serve::DetectInput> mixed_inputs() {
  return {input(part("test/colour/00.jpg"), "hazelnut"),
          input(part("test/good/04.jpg"), "screw", {part("train/good/00.jpg")}),
          input(part("test/colour/03.jpg", 200), "bottle", {}, "Where is the defect?"),
          input(part("test/good/04.jpg", 160), "")};
}

// Batched and unbatched runs differ only in the GEMM's row count (summation order of fp32 sums
// over at most 256 terms, ~1e-6 relative); the tiny towers' outputs are O(1), so 1e-4 is loose
// for rounding and far below what a mixed-up image, class or reference set changes (> 1e-2).
constexpr double kTol = 1e-4;

void expect_same(const serve::DetectOutput& got, const serve::DetectOutput& want, size_t i) {
  EXPECT_NEAR(got.pred_score, want.pred_score, kTol) << "input " << i;
  EXPECT_NEAR(got.p_yes, want.p_yes, kTol) << "input " << i;
  EXPECT_EQ(got.answer, want.answer) << "input " << i;  // greedy: the same tokens
  EXPECT_EQ(got.position, want.position) << "input " << i;
  ASSERT_EQ(got.map.sizes(), want.map.sizes()) << "input " << i;
  EXPECT_LT((got.map - want.map).abs().max().item<float>(), kTol) << "input " << i;
}

template <class Engine>
void expect_batch_equals_alone(Engine& batched, Engine& alone) {
  const auto inputs = mixed_inputs();
  std::vector<const serve::DetectInput*> pointers;
  for (const auto& in : inputs) pointers.push_back(&in);
  const auto results = batched.detect_batch(pointers);
  ASSERT_EQ(results.size(), inputs.size());
  std::vector<serve::DetectOutput> want;
  for (const auto& in : inputs) want.push_back(alone.detect(in));
  for (size_t i = 0; i < inputs.size(); ++i) {
    ASSERT_FALSE(results[i].error) << "input " << i;
    expect_same(results[i].output, want[i], i);
  }
  // The inputs give different results, so equality is not every input seeing one image or class.
  EXPECT_GT((want[0].map - want[1].map).abs().max().item<float>(), 0.01);
  EXPECT_NE(want[0].p_yes, want[2].p_yes);
}

}  // namespace

TEST(Batching, IadGptEngineBatchEqualsEachInspectionAlone) {
  const auto bundle = tiny_bundle("batching-engine");
  auto factory = serve::shared_weights_factory(bundle, false);
  auto batched = factory(0), alone = factory(1);
  expect_batch_equals_alone(*batched, *alone);
  // The conversation left is the last input's: a follow-up answers as after detecting it alone.
  const auto last = mixed_inputs().back();
  const std::string question = "What does the part look like?";
  const auto got = batched->ask(question, 12);
  alone->detect(last);
  EXPECT_EQ(got, alone->ask(question, 12));
}

TEST(Batching, IadGptEngineWithADecodeLoopRunsTheBatchAtOnceWithTheSameResults) {
  // The server starts the loop for bf16 LLMs only; started here on the fp32 fixture, it runs the
  // same code path (the inspections on shares, their answers through the loop).
  const auto bundle = tiny_bundle("batching-loop");
  auto factory = serve::shared_weights_factory(bundle, false);
  auto first = factory(0), alone = factory(1);
  auto& batched = dynamic_cast<serve::IadGptEngine&>(*first);
  batched.start_decode_loop(4, 0);
  expect_batch_equals_alone<serve::Engine>(batched, *alone);
  EXPECT_EQ(batched.shared_stats()["decode_sequences"], 4);  // every answer went through the loop
  const auto last = mixed_inputs().back();
  const std::string question = "What does the part look like?";
  const auto got = batched.ask(question, 12);
  alone->detect(last);
  EXPECT_EQ(got, alone->ask(question, 12));
}

// A bf16 bundle as the server runs it with --batch 4: the loop started by the factory, the
// four prefills as one forward (batched prefill changes the GEMMs' row count: bf16 outputs may
// round differently, so scores and maps keep kTol, p_yes 2e-2 — the bf16 logits' ~0.1 tolerance
// of tests/llm/prefill_batch_test.cpp through a sigmoid's slope ≤ 1/4 — and greedy answers must
// be the same). A fifth input whose question overflows the context fails before its prefill:
// its error is its own and the others' batch still runs.
TEST(Batching, Bf16EngineRunsTheBatchsPrefillsAsOneForward) {
  const auto bundle = tiny_bundle("batching-prefill", [](model::Bundle& b) { b.dtype = "bf16"; });
  auto factory = serve::shared_weights_factory(bundle, false, 4, 0);
  auto first = factory(0), alone_engine = factory(1);
  auto& batched = dynamic_cast<serve::IadGptEngine&>(*first);
  ASSERT_TRUE(batched.decode_loop());
  // The lone reference decodes without the loop (as --batch 1 does).
  auto& alone = dynamic_cast<serve::IadGptEngine&>(*alone_engine);
  alone.set_decode_loop(nullptr);
  auto inputs = mixed_inputs();
  inputs.insert(inputs.begin() + 2, input(part("test/good/04.jpg"), "hazelnut", {}, std::string(4000, 'x') + "?"));
  std::vector<const serve::DetectInput*> pointers;
  for (const auto& in : inputs) pointers.push_back(&in);
  const auto results = batched.detect_batch(pointers);
  ASSERT_EQ(results.size(), inputs.size());
  ASSERT_TRUE(results[2].error) << "the overlong question was answered";
  try {
    std::rethrow_exception(results[2].error);
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("first question"), std::string::npos) << e.what();
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (i == 2) continue;
    ASSERT_FALSE(results[i].error) << "input " << i;
    const auto want = alone.detect(inputs[i]);
    const auto& got = results[i].output;
    EXPECT_NEAR(got.pred_score, want.pred_score, kTol) << "input " << i;
    EXPECT_NEAR(got.p_yes, want.p_yes, 2e-2) << "input " << i;
    EXPECT_EQ(got.answer, want.answer) << "input " << i;
    EXPECT_LT((got.map - want.map).abs().max().item<float>(), kTol) << "input " << i;
    EXPECT_FALSE(got.answer.empty()) << "input " << i;
  }
  const auto stats = batched.shared_stats();
  EXPECT_EQ(stats["prefill_batches"], 1) << stats.dump();
  EXPECT_EQ(stats["prefill_batched"], 4) << stats.dump();  // the four that reached their prefill
  EXPECT_EQ(stats["decode_sequences"], 4) << stats.dump();
}

// A q8 bundle (dtype f32: the towers fp32, the LLM's matrices bf16/q8 whatever the dtype) gets the
// decode loop too, and its batched answers (q8 multi-row kernels) are those decoded alone.
TEST(Batching, AQuantizedBundleDecodesThroughTheLoop) {
  const auto bundle = tiny_bundle("batching-q8", [](model::Bundle& b) { b.quant = "q8"; });
  ASSERT_EQ(bundle.dtype, "f32");
  auto factory = serve::shared_weights_factory(bundle, false, 4, 0);
  auto first = factory(0), alone_engine = factory(1);
  auto& batched = dynamic_cast<serve::IadGptEngine&>(*first);
  ASSERT_TRUE(batched.decode_loop()) << "no decode loop for a quantized bundle";
  auto& alone = dynamic_cast<serve::IadGptEngine&>(*alone_engine);
  alone.set_decode_loop(nullptr);
  const auto inputs = mixed_inputs();
  std::vector<const serve::DetectInput*> pointers;
  for (const auto& in : inputs) pointers.push_back(&in);
  const auto results = batched.detect_batch(pointers);
  for (size_t i = 0; i < inputs.size(); ++i) {
    ASSERT_FALSE(results[i].error) << "input " << i;
    EXPECT_EQ(results[i].output.answer, alone.detect(inputs[i]).answer) << "input " << i;
  }
  EXPECT_EQ(batched.shared_stats()["decode_sequences"], 4);
}

TEST(Batching, MapEngineBatchEqualsEachInspectionAlone) {
  const auto bundle = tiny_bundle("batching-maps");
  auto factory = serve::shared_weights_factory(bundle, true);
  auto batched = factory(0), alone = factory(1);
  expect_batch_equals_alone(*batched, *alone);
}

TEST(Batching, ServeWithBatchFourAnswersAsBatchOne) {
  const auto bundle = tiny_bundle("batching-serve");
  std::vector<std::string> images;
  for (const char* name : {"test/colour/00.jpg", "test/good/04.jpg", "test/colour/03.jpg", "test/good/04.jpg"})
    images.push_back(hazelnut(name));
  const std::vector<std::string> classes = {"hazelnut", "screw", "bottle", "hazelnut"};
  const std::string question = "Where?";
  // Four clients at once; the answers, then a chat turn on the first session (not the batch's
  // last: its conversation is replayed on the worker).
  auto run = [&](const std::vector<std::string>& extra, json& health) {
    ServeProcess server(bundle.dir, extra);
    std::vector<std::future<json>> replies;
    for (size_t i = 0; i < images.size(); ++i) {
      replies.push_back(std::async(std::launch::async, [&, i] {
        httplib::Client c("127.0.0.1", server.port());
        c.set_read_timeout(120, 0);
        auto form = detect_form(images[i], classes[i]);
        form.push_back({"max_tokens", "8", "", ""});  // room for a follow-up in the tiny LLM's 256 positions
        auto r = c.Post("/v1/detect", form);
        EXPECT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
        return body_json(r);
      }));
    }
    std::vector<json> out;
    for (auto& f : replies) out.push_back(f.get());
    httplib::Client c("127.0.0.1", server.port());
    c.set_read_timeout(120, 0);
    auto chat = c.Post("/v1/chat", json{{"session_id", out[0]["session_id"]}, {"message", question}, {"max_tokens", 8}}.dump(),
                       "application/json");
    EXPECT_TRUE(chat && chat->status == 200) << (chat ? chat->body : "no response");
    out.push_back(body_json(chat));
    health = body_json(c.Get("/v1/health"));
    return out;
  };
  json health_one, health_four;
  const auto one = run({"--workers", "1", "--batch", "1"}, health_one);
  // --batch-wait far above the time four local requests take to arrive: the worker waits for all four.
  const auto four = run({"--workers", "1", "--batch", "4", "--batch-wait", "10000"}, health_four);
  EXPECT_EQ(health_one["batches"], 0);
  EXPECT_GE(health_four["batches"].get<int>(), 1) << health_four.dump();
  std::cout << "batch 4: " << health_four["batches"] << " batches, " << health_four["batched"] << " inspections\n";
  for (size_t i = 0; i < images.size(); ++i) {
    EXPECT_EQ(four[i]["answer"], one[i]["answer"]) << i;
    EXPECT_NEAR(four[i]["pred_score"].get<double>(), one[i]["pred_score"].get<double>(), kTol) << i;
    EXPECT_NEAR(four[i]["p_yes"].get<double>(), one[i]["p_yes"].get<double>(), kTol) << i;
  }
  EXPECT_EQ(four.back()["answer"], one.back()["answer"]);
  EXPECT_FALSE(one.back()["answer"].get<std::string>().empty());
}

// ---- many concurrent streams against the budgets ----------------------------------------------

namespace {

// The real engine behind a gate in complete(): a stream holds the worker until the test opens it.
class GatedEngine : public serve::Engine {
 public:
  GatedEngine(std::unique_ptr<serve::Engine> inner, std::shared_ptr<FakeCounters> gate)
      : inner_(std::move(inner)), gate_(std::move(gate)) {}
  serve::DetectOutput detect(const serve::DetectInput& in) override { return inner_->detect(in); }
  std::string ask(std::string_view m, int64_t n) override { return inner_->ask(m, n); }
  serve::Completion complete(const serve::CompletionInput& in, const serve::TextSink& sink) override {
    {
      std::unique_lock lock(gate_->mutex);
      gate_->cv.wait(lock, [&] { return gate_->gate_open; });
    }
    return inner_->complete(in, sink);
  }
  serve::Reply reply(std::string_view m, const serve::GenerationParams& p, const serve::TextSink& s) override {
    return inner_->reply(m, p, s);
  }
  nlohmann::json describe() const override { return inner_->describe(); }

 private:
  std::unique_ptr<serve::Engine> inner_;
  std::shared_ptr<FakeCounters> gate_;
};

json stream_request(const std::string& jpeg) {
  json image = {{"type", "image_url"}, {"image_url", {{"url", "data:image/jpeg;base64," + serve::base64_encode(jpeg)}}}};
  json text = {{"type", "text"}, {"text", "Is there any anomaly?"}};
  return {{"model", "iadgpt"}, {"class", "hazelnut"}, {"stream", true}, {"max_tokens", 8}, {"temperature", 0},
          {"messages", json::array({{{"role", "user"}, {"content", json::array({text, image})}}})}};
}

}  // namespace

TEST(StreamBudget, ConcurrentStreamsBeyondTheQueueGet429AndTheServerStaysHealthy) {
  const auto bundle = tiny_bundle("batching-streams");
  auto gate = std::make_shared<FakeCounters>();
  gate->gate_open = false;
  auto engines = serve::shared_weights_factory(bundle, false);
  serve::ServerOptions o;
  o.workers = 1;
  o.queue = 2;
  o.batch = 4;
  TestServer server(o, [engines, gate](int w) { return std::make_unique<GatedEngine>(engines(w), gate); });
  // A generous connection timeout: on a loaded machine a connection may still wait for the
  // server's accept thread (the backlog itself is wide: see Server::bind).
  auto client = [&] {
    auto c = server.client(120);
    c.set_connection_timeout(60, 0);
    return c;
  };
  auto c = server.client(120);
  const auto body = stream_request(hazelnut("test/colour/00.jpg")).dump();
  auto wait_for = [&](const char* key, int value) {
    for (int i = 0; i < 1000 && body_json(c.Get("/v1/health"))[key] != value; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_EQ(body_json(c.Get("/v1/health"))[key], value) << key;
  };
  auto post = [&] {
    auto r = client().Post("/v1/chat/completions", body, "application/json");
    return r ? std::make_pair(r->status, r->body) : std::make_pair(0, std::string());
  };
  std::vector<std::future<std::pair<int, std::string>>> accepted;
  std::vector<std::future<httplib::Result>> extra;
  // However the test ends (a failed ASSERT returns early), the gate opens and every request has
  // finished before what the requests use goes away: a held worker would keep the server from
  // stopping, and a future's destructor waits for its request.
  struct FinishAtEnd {
    FakeCounters& gate;
    std::vector<std::future<std::pair<int, std::string>>>& accepted;
    std::vector<std::future<httplib::Result>>& extra;
    ~FinishAtEnd() {
      gate.open();
      for (auto& f : accepted) if (f.valid()) f.wait();
      for (auto& f : extra) if (f.valid()) f.wait();
    }
  } finish_at_end{*gate, accepted, extra};
  // One stream on the worker (held at the gate), two in the queue: the capacity is reached.
  accepted.push_back(std::async(std::launch::async, post));
  wait_for("busy", 1);
  accepted.push_back(std::async(std::launch::async, post));
  accepted.push_back(std::async(std::launch::async, post));
  wait_for("queued", 2);
  // Sixteen more at once: none may be queued (nor hold memory), each gets a clear 429.
  constexpr int kExtra = 16;
  for (int i = 0; i < kExtra; ++i) {
    extra.push_back(std::async(std::launch::async, [&] {
      return client().Post("/v1/chat/completions", body, "application/json");
    }));
  }
  for (auto& f : extra) {
    auto r = f.get();
    ASSERT_TRUE(r) << httplib::to_string(r.error());
    EXPECT_EQ(r->status, 429) << r->body;
    EXPECT_EQ(r->get_header_value("Retry-After"), "1");
    EXPECT_EQ(body_json(r)["error"]["type"], "rate_limit_error") << r->body;
  }
  auto health = c.Get("/v1/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  const auto h = body_json(health);
  EXPECT_EQ(h["status"], "ok");
  EXPECT_EQ(h["queued"], 2);  // bounded by --queue: the refused streams hold nothing
  EXPECT_EQ(h["busy"], 1);
  EXPECT_GE(h["rejected"].get<int>(), kExtra);
  EXPECT_EQ(h["session_bytes"], 0);
  // The accepted streams finish once the worker is free, each with its events and [DONE].
  gate->open();
  for (auto& f : accepted) {
    const auto [status, text] = f.get();
    EXPECT_EQ(status, 200);
    EXPECT_NE(text.find("data: [DONE]"), std::string::npos) << text;
    EXPECT_EQ(text.find("\"error\""), std::string::npos) << text;
  }
  // A real inspection afterwards.
  auto r = c.Post("/v1/detect", detect_form(hazelnut("test/colour/00.jpg")));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_TRUE(body_json(r).contains("pred_score"));
}
