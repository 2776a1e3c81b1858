// `serve --workers N` holds one copy of the model: serve::shared_weights_factory gives worker 0
// the loaded bundle and every later worker a share() of it (issue 17, item 1).
#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <fstream>
#include <iostream>
#include <thread>

#include "common/shared.h"
#include "demo/tiny_models.h"
#include "model/tiny_bundle.h"
#include "serve_process.h"
#include "serve/iadgpt_engine.h"

using namespace iadgpt;
using namespace iadgpt::test;

namespace {

cv::Mat part(const std::string& name) {
  cv::Mat bgr = cv::imread(data("hazelnut_toy/hazelnut/" + name).string(), cv::IMREAD_COLOR);
  if (bgr.empty()) throw std::runtime_error("missing data image " + name);
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  cv::resize(rgb, rgb, cv::Size(224, 224), 0, 0, cv::INTER_AREA);
  return rgb;
}

serve::DetectInput input(const cv::Mat& image, const std::string& class_name) {
  serve::DetectInput in;
  in.image = image;
  in.class_name = class_name;
  in.max_tokens = 12;
  return in;
}

}  // namespace

TEST(SharedWeights, FourWorkersHoldOneCopyOfTheLlmPlusTheirKvCaches) {
  // An LLM large enough that a copy of it stands far above the measurement's noise: 8 layers of
  // width 512, 25.7 M parameters, held in bf16 (51 MB, converted at load, so every copy is the
  // process's own memory rather than shared pages of the file); its bf16 KV cache is
  // 2 × 8 layers × 256 positions × 512 × 2 B = 4.2 MB per worker.
  auto bundle = tiny_bundle_fields("shared-weights");
  bundle.llm = scratch("shared-weights") / "llm";
  bundle.dtype = "bf16";
  demo::TinyLlamaOptions llm_options;
  llm_options.hidden = 512, llm_options.intermediate = 1408, llm_options.layers = 8, llm_options.heads = 8;
  llm_options.max_positions = 256;
  const auto config = demo::write_tiny_llama(bundle.llm, llm_options);
  model::init_random_adapters(bundle, 3);
  model::write_bundle(bundle, bundle.dir);
  const int64_t params = config.num_layers * (4 * config.hidden_size * config.hidden_size +
                                              3 * config.hidden_size * config.intermediate_size);
  const int64_t copy_bytes = 2 * params;

  // The real program: its resident set once it listens (every worker built), 1 worker against 4.
  auto rss_with = [&](int workers) {
    ServeProcess server(bundle.dir, {"--workers", std::to_string(workers)});
    std::ifstream in("/proc/" + std::to_string(server.pid()) + "/status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
    }
    throw std::runtime_error("no VmRSS for the server");
  };
  const int64_t one = rss_with(1), four = rss_with(4);
  std::cout << "serve RSS: 1 worker " << one / 1e6 << " MB, 4 workers " << four / 1e6 << " MB; one bf16 copy of the LLM "
            << copy_bytes / 1e6 << " MB\n";
  // The one-worker server holds at least the LLM's bf16 weights, so the measurement sees a copy...
  EXPECT_GT(one, copy_bytes) << "1 worker: " << one / 1e6 << " MB";
  // ...and three more workers add their KV caches (12.6 MB) and scratch, far below one more copy
  // (own copies would add 3 × 51 MB). The bound, half a copy, leaves room for allocator slack.
  EXPECT_LT(four - one, copy_bytes / 2) << "1 worker: " << one / 1e6 << " MB, 4 workers: " << four / 1e6 << " MB";
}

TEST(SharedWeights, SharedEnginesOnTwoThreadsAnswerAsAnEngineOfTheirOwn) {
  const auto bundle = tiny_bundle("shared-weights-threads");
  const cv::Mat defect = part("test/colour/00.jpg"), good = part("test/good/04.jpg");
  // The reference: an engine that loaded the bundle itself, one image after the other.
  serve::IadGptEngine alone(bundle);
  const auto want_defect = alone.detect(input(defect, "hazelnut"));
  const auto want_good = alone.detect(input(good, "screw"));

  auto factory = serve::shared_weights_factory(bundle, false);
  auto first = factory(0), second = factory(1);
  serve::DetectOutput got_defect, got_good;
  // Eight rounds each, at once, on different images and classes: a race on shared state (text
  // features, memory bank, KV cache) would mix one thread's image or class into the other's answer.
  std::thread a([&] { for (int i = 0; i < 8; ++i) got_defect = first->detect(input(defect, "hazelnut")); });
  std::thread b([&] { for (int i = 0; i < 8; ++i) got_good = second->detect(input(good, "screw")); });
  a.join();
  b.join();
  // Same kernels on the same inputs; only intra-op thread splits may reorder fp32 sums (~1e-6).
  constexpr double kTol = 1e-4;
  EXPECT_NEAR(got_defect.p_yes, want_defect.p_yes, kTol);
  EXPECT_NEAR(got_good.p_yes, want_good.p_yes, kTol);
  EXPECT_NEAR(got_defect.pred_score, want_defect.pred_score, kTol);
  EXPECT_NEAR(got_good.pred_score, want_good.pred_score, kTol);
  EXPECT_EQ(got_defect.answer, want_defect.answer);
  EXPECT_EQ(got_good.answer, want_good.answer);
  EXPECT_LT((got_defect.map - want_defect.map).abs().max().item<float>(), kTol);
  // Images, classes and answers differ, so equal results are not a matter of both threads
  // seeing one image or one class.
  EXPECT_GT((want_defect.map - want_good.map).abs().max().item<float>(), 0.01);
  EXPECT_NE(want_defect.answer, want_good.answer);
  std::cout << "answers: \"" << want_defect.answer << "\" / \"" << want_good.answer << "\"\n";
}

TEST(SharedWeights, SharedEnginesKeepTheirOwnConversation) {
  const auto bundle = tiny_bundle("shared-weights-turns");
  const cv::Mat defect = part("test/colour/00.jpg"), good = part("test/good/04.jpg");
  const std::string question = "Where is the defect, and what does it look like?";
  serve::IadGptEngine alone(bundle);
  alone.detect(input(defect, "hazelnut"));
  const auto want = alone.ask(question, 16);

  // Worker 1 inspects another part of another class between worker 0's inspection and its
  // follow-up: a KV cache, history or class shared between the two would change worker 0's answer.
  auto factory = serve::shared_weights_factory(bundle, false);
  auto first = factory(0), second = factory(1);
  first->detect(input(defect, "hazelnut"));
  second->detect(input(good, "screw"));
  EXPECT_EQ(first->ask(question, 16), want);
}
