// Prefills of several sequences as one forward (forward_batch, PrefillBatch): each sequence's
// last logits and KV cache are what its own forward gives, within the tolerance below.
//
// Tolerance: packing changes only the GEMMs' row count (attention is each sequence's own), and a
// GEMM over more rows may block its summation differently. fp32: 1e-4 absolute on logits of
// magnitude ~10 and on the cache (a few ulps per layer over 5 layers). bf16: the projections'
// outputs are rounded to bf16, so a different fp32 sum can round one element one bf16 ulp
// (2^-8 relative) the other way, and that spreads; 0.1 absolute on the logits (measured below
// 0.05 on stories260K) and 1/32 relative on the cache. Greedy continuations must be identical.
#include <gtest/gtest.h>

#include <iostream>
#include <thread>

#include "io/error.h"
#include "llm/batch.h"
#include "llm/generate.h"
#include "llm_test_util.h"

namespace llm = iadgpt::llm;
namespace t = iadgpt::test;
using t::stories_bf16;

namespace {

struct Case {
  std::vector<int64_t> before;  // already in the cache (a conversation that continues), may be empty
  std::vector<int64_t> prompt;  // the prefill
};

// Different lengths (1 row included), one sequence continuing from position 5.
const std::vector<Case> kCases = {
    {{}, {1, 403, 407, 261, 300, 301, 302, 303, 304}},
    {{1, 32, 400, 268, 261}, {500, 341, 300}},
    {{}, {1}},
    {{}, {1, 32, 400, 268, 261, 500, 341, 403, 407, 261, 300, 301, 350, 351}},
};

std::vector<llm::KvCache> caches_for(const llm::LlamaModel& m) {
  std::vector<llm::KvCache> caches;
  for (const auto& c : kCases) {
    caches.emplace_back(m, 64);
    if (!c.before.empty()) llm::forward_tokens(m, caches.back(), c.before, llm::Logits::Last);
  }
  return caches;
}

// Keys and values of positions [0, pos) of every layer.
torch::Tensor filled(const torch::Tensor& kv, int64_t pos) { return kv.narrow(2, 0, pos).to(torch::kFloat32); }

std::vector<int64_t> greedy(const llm::LlamaModel& m, llm::KvCache& cache, torch::Tensor logits, int n) {
  std::vector<int64_t> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(logits.reshape({-1}).argmax().item<int64_t>());
    const int64_t one[] = {out.back()};
    logits = llm::forward_tokens(m, cache, one, llm::Logits::Last);
  }
  return out;
}

void expect_batch_equals_alone(const llm::LlamaModel& m, double logit_tol, double cache_tol) {
  auto batched = caches_for(m), alone = caches_for(m);
  std::vector<llm::KvCache*> pointers;
  std::vector<torch::Tensor> inputs;
  for (size_t i = 0; i < kCases.size(); ++i) {
    pointers.push_back(&batched[i]);
    inputs.push_back(m.embed(kCases[i].prompt));
  }
  const auto logits = llm::forward_batch(m, pointers, inputs);
  ASSERT_EQ(logits.size(0), static_cast<int64_t>(kCases.size()));
  std::vector<torch::Tensor> want;
  for (size_t i = 0; i < kCases.size(); ++i) {
    const auto row = logits.narrow(0, static_cast<int64_t>(i), 1);
    want.push_back(llm::forward(m, alone[i], inputs[i], llm::Logits::Last));
    const double diff = t::max_abs_diff(row, want.back());
    std::cout << "[ measured ] sequence " << i << ": max |Δlogit| " << diff << "\n";
    EXPECT_LE(diff, logit_tol) << "sequence " << i;
    ASSERT_EQ(batched[i].pos, alone[i].pos) << "sequence " << i;
    const auto k = filled(batched[i].k, batched[i].pos), k_want = filled(alone[i].k, alone[i].pos);
    const auto v = filled(batched[i].v, batched[i].pos), v_want = filled(alone[i].v, alone[i].pos);
    EXPECT_LE(t::max_abs_diff(k, k_want), cache_tol * std::max(1.0, k_want.abs().max().item<double>())) << "keys " << i;
    EXPECT_LE(t::max_abs_diff(v, v_want), cache_tol * std::max(1.0, v_want.abs().max().item<double>())) << "values " << i;
    EXPECT_EQ(greedy(m, batched[i], row, 8), greedy(m, alone[i], want.back(), 8)) << "sequence " << i;
  }
  // Different prompts, different logits: no sequence got another's row.
  EXPECT_GT(t::max_abs_diff(want[0], want[1]), 10 * logit_tol);
  EXPECT_GT(t::max_abs_diff(logits[0], logits[3]), 10 * logit_tol);
}

}  // namespace

TEST(ForwardBatch, EachSequenceGetsItsOwnLogitsAndCacheF32) { expect_batch_equals_alone(t::stories_model(), 1e-4, 1e-4); }

TEST(ForwardBatch, EachSequenceGetsItsOwnLogitsAndCacheBf16) { expect_batch_equals_alone(stories_bf16(), 0.1, 1.0 / 32); }

TEST(ForwardBatch, BadInputsNameTheSequence) {
  const auto& m = t::stories_model();
  llm::KvCache a(m, 8), b(m, 4);
  std::vector<llm::KvCache*> caches = {&a, &b};
  std::vector<torch::Tensor> inputs = {m.embed(std::vector<int64_t>{1, 2}), m.embed(std::vector<int64_t>{1, 2, 3, 4, 5})};
  try {
    llm::forward_batch(m, caches, inputs);
    FAIL() << "a prompt longer than its cache was accepted";
  } catch (const iadgpt::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("sequence 1"), std::string::npos) << e.what();
  }
  EXPECT_EQ(a.pos, 0);  // nothing ran
  std::vector<llm::KvCache*> twice = {&a, &a};
  std::vector<torch::Tensor> two = {inputs[0], inputs[0]};
  EXPECT_THROW(llm::forward_batch(m, twice, two), iadgpt::InputError);
}

// Four seats on four threads: one prompt too long for its cache fails alone, one seat leaves
// (its request failed earlier), the other two run as one forward and get their own logits.
TEST(PrefillBatch, AFailingSeatDoesNotFailTheOthers) {
  const auto& m = t::stories_model();
  llm::PrefillBatch group(m, 4);
  std::vector<std::unique_ptr<llm::KvCache>> caches;
  for (int64_t cap : {64, 64, 3, 64}) caches.push_back(std::make_unique<llm::KvCache>(m, cap));
  std::vector<torch::Tensor> got(4);
  std::vector<std::string> errors(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      torch::NoGradGuard no_grad;
      if (i == 1) return group.leave(i);
      try {
        got[i] = group.forward(i, *caches[i], m.embed(kCases[i == 2 ? 3 : i].prompt));
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_NE(errors[2].find("context full"), std::string::npos) << errors[2];
  EXPECT_EQ(caches[2]->pos, 0);
  for (int i : {0, 3}) {
    ASSERT_TRUE(errors[i].empty()) << errors[i];
    llm::KvCache alone(m, 64);
    const auto want = llm::forward_tokens(m, alone, kCases[i].prompt, llm::Logits::Last);
    EXPECT_LE(t::max_abs_diff(got[i], want), 1e-4) << "seat " << i;
    EXPECT_EQ(caches[i]->pos, static_cast<int64_t>(kCases[i].prompt.size()));
  }
  EXPECT_EQ(group.batched(), 2);
  EXPECT_THROW(group.forward(0, *caches[0], m.embed(kCases[0].prompt)), iadgpt::InputError);  // a seat is used once
  EXPECT_THROW(group.leave(7), iadgpt::InputError);
}

// A group where every other seat left: the one prompt runs alone, exactly the lone forward.
TEST(PrefillBatch, ALoneSeatRunsTheLoneForward) {
  const auto& m = stories_bf16();
  llm::PrefillBatch group(m, 3);
  group.leave(0);
  group.leave(2);
  group.leave(2);  // twice: a no-op
  llm::KvCache cache(m, 64), alone(m, 64);
  const auto got = group.forward(1, cache, m.embed(kCases[0].prompt));
  EXPECT_TRUE(torch::equal(got, llm::forward_tokens(m, alone, kCases[0].prompt, llm::Logits::Last)));
  EXPECT_EQ(group.batched(), 0);
}
