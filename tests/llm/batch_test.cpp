// Continuous batching (batch.h, decode_step_bf16_batch, matvec_bf16_multi): several sequences
// stepped together give each exactly what it gets alone.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

#include "io/error.h"
#include "llm/batch.h"
#include "llm/decode.h"
#include "llm/generate.h"
#include "nn/matvec.h"
#include "nn/quant.h"
#include "llm_test_util.h"

namespace llm = iadgpt::llm;
namespace nn = iadgpt::nn;
namespace t = iadgpt::test;
using t::stories_bf16;

namespace {

const llm::LlamaModel& stories_quant(nn::QuantFormat format) {
  static const auto q8 = llm::load_model(t::fixture("stories260K"), {.dtype = torch::kBFloat16, .quant = nn::QuantFormat::Q8});
  static const auto q4 = llm::load_model(t::fixture("stories260K"), {.dtype = torch::kBFloat16, .quant = nn::QuantFormat::Q4});
  return format == nn::QuantFormat::Q8 ? q8 : q4;
}
const llm::Tokenizer& tok() {
  static const auto tk = llm::Tokenizer::from_path(t::fixture("stories260K"));
  return tk;
}

// Three prompts of different lengths: the sequences sit at different positions in their caches.
const std::vector<std::vector<int64_t>> kPrompts = {{1}, {1, 403, 407, 261}, {1, 32, 400, 268, 261, 500, 341}};

}  // namespace

TEST(MatvecMulti, EachVectorIsBitForBitItsOwnMatvec) {
  torch::manual_seed(3);
  // 300 rows of 1000 columns: several 64 KiB row blocks, a tail block, and columns off every vector width.
  const int64_t rows = 300, cols = 1000;
  auto w = torch::randn({rows, cols}).to(torch::kBFloat16);
  std::vector<torch::Tensor> xs, ys;
  for (int i = 0; i < 3; ++i) {
    xs.push_back(torch::randn({cols}).to(torch::kBFloat16));
    ys.push_back(torch::empty({rows}, torch::kFloat32));
  }
  for (auto isa : {nn::MatvecIsa::Scalar, nn::MatvecIsa::Avx2, nn::MatvecIsa::Avx512Bf16}) {
    if (!nn::matvec_isa_supported(isa)) continue;
    std::vector<const at::BFloat16*> in;
    std::vector<float*> out;
    for (int i = 0; i < 3; ++i) in.push_back(xs[i].data_ptr<at::BFloat16>()), out.push_back(ys[i].data_ptr<float>());
    nn::matvec_bf16_multi(w.data_ptr<at::BFloat16>(), in, out, rows, cols, isa);
    for (int i = 0; i < 3; ++i) {
      auto want = torch::empty({rows}, torch::kFloat32);
      nn::matvec_bf16(w, xs[i], want, isa);
      EXPECT_TRUE(torch::equal(ys[i], want)) << nn::matvec_isa_name(isa) << " vector " << i;
    }
    // Different inputs, different outputs: not every vector answered with the first one's result.
    EXPECT_FALSE(torch::equal(ys[0], ys[1]));
  }
}

TEST(MatvecQuantMulti, EachVectorIsBitForBitItsOwnMatvec) {
  torch::manual_seed(4);
  // 300 rows of 1024 columns (32 blocks: the AVX-512 path's full groups of 16 and, at 1056, a tail).
  for (const int64_t cols : {1024, 1056}) {
    const int64_t rows = 300, nb = cols / nn::kQuantBlock;
    for (auto format : {nn::QuantFormat::Q8, nn::QuantFormat::Q4}) {
      const auto w = nn::quantize(torch::randn({rows, cols}), format);
      std::vector<torch::Tensor> q, scale, offset, ys;
      std::vector<nn::QuantizedInput> xs;
      for (int i = 0; i < 3; ++i) {
        q.push_back(torch::empty({cols}, torch::kInt8));
        scale.push_back(torch::empty({nb}, torch::kFloat32));
        offset.push_back(torch::empty({nb}, torch::kFloat32));
        ys.push_back(torch::empty({rows}, torch::kFloat32));
        xs.push_back({q[i].data_ptr<int8_t>(), scale[i].data_ptr<float>(), offset[i].data_ptr<float>(), cols});
        const auto x = torch::randn({cols});
        nn::quantize_input(x.data_ptr<float>(), xs[i]);
      }
      for (auto isa : {nn::MatvecIsa::Scalar, nn::MatvecIsa::Avx2, nn::MatvecIsa::Avx512Bf16}) {
        if (!nn::matvec_isa_supported(isa)) continue;
        std::vector<float*> out;
        for (auto& y : ys) out.push_back(y.data_ptr<float>());
        nn::matvec_quant_multi(w, xs, out, isa);
        for (int i = 0; i < 3; ++i) {
          auto want = torch::empty({rows}, torch::kFloat32);
          nn::matvec_quant(w, xs[i], want.data_ptr<float>(), isa);
          EXPECT_TRUE(torch::equal(ys[i], want)) << nn::quant_format_name(format) << " " << nn::matvec_isa_name(isa)
                                                 << " cols " << cols << " vector " << i;
        }
        EXPECT_FALSE(torch::equal(ys[0], ys[1]));
      }
    }
  }
}

namespace {

void expect_batch_rows_equal_own_steps(const llm::LlamaModel& m) {
  auto prefilled = [&] {
    std::vector<llm::KvCache> caches;
    for (const auto& p : kPrompts) {
      caches.emplace_back(m, 64);
      llm::forward_tokens(m, caches.back(), p, llm::Logits::Last);
    }
    return caches;
  };
  auto batched = prefilled(), alone = prefilled();
  const std::vector<int64_t> next = {300, 301, 302};
  std::vector<llm::KvCache*> pointers;
  for (auto& c : batched) pointers.push_back(&c);
  // Two steps: the second runs on what the first appended to each cache.
  for (int step = 0; step < 2; ++step) {
    const auto logits = llm::decode_batch(m, pointers, m.embed(next));
    for (size_t i = 0; i < next.size(); ++i) {
      const auto want = llm::decode_step_bf16(m, alone[i], m.embed(std::vector<int64_t>{next[i]}));
      EXPECT_TRUE(torch::equal(logits[static_cast<int64_t>(i)], want[0])) << "step " << step << " row " << i;
      EXPECT_EQ(batched[i].pos, alone[i].pos);
    }
    EXPECT_FALSE(torch::equal(logits[0], logits[1]));
  }
  // One cache twice in a step would append two tokens at one position.
  std::vector<llm::KvCache*> twice = {&batched[0], &batched[0]};
  EXPECT_THROW(llm::decode_batch(m, twice, m.embed(std::vector<int64_t>{1, 2})), iadgpt::InputError);
}

}  // namespace

TEST(DecodeBatch, EachRowIsBitForBitItsSequencesOwnStep) { expect_batch_rows_equal_own_steps(stories_bf16()); }

// stories260K quantized: the 64-wide projections take the q8/q4 multi-row kernel, the 172-wide
// down projections and the tied head stay bf16 (matvec_bf16_multi).
TEST(DecodeBatch, EachRowIsBitForBitItsSequencesOwnStepQ8) {
  const auto& m = stories_quant(nn::QuantFormat::Q8);
  ASSERT_TRUE(m.weights.layers[0].q_wq.defined());
  expect_batch_rows_equal_own_steps(m);
}

TEST(DecodeBatch, EachRowIsBitForBitItsSequencesOwnStepQ4) {
  const auto& m = stories_quant(nn::QuantFormat::Q4);
  ASSERT_TRUE(m.weights.layers[0].q_wq.defined());
  expect_batch_rows_equal_own_steps(m);
}

namespace {

struct Request {
  std::vector<int64_t> prompt;
  llm::GenerateOptions options;
};

std::vector<Request> requests() {
  std::vector<Request> r(3);
  for (size_t i = 0; i < r.size(); ++i) r[i].prompt = kPrompts[i];
  r[0].options.max_tokens = 48;
  r[0].options.stop_at_eos = false;
  r[1].options.max_tokens = 20;
  r[1].options.stop = {"."};                        // stops early, mid-batch
  r[2].options.max_tokens = 30;
  r[2].options.sampling = {.temperature = 0.9, .top_p = 0.9, .seed = 11};  // its own sampler
  return r;
}

llm::Generation alone(const llm::LlamaModel& m, const Request& r) {
  llm::KvCache cache(m, 128);
  std::vector<llm::Segment> segs{llm::Segment::tokens(r.prompt)};
  return llm::generate(m, tok(), cache, segs, r.options);
}

// Request 0 starts first. Its stream's second piece is written on the loop's thread (the first
// on the caller's, generate() samples the first token there); the test holds it there until the
// other two are waiting to join, so all three surely share steps whatever the machine's speed.
void expect_loop_equals_alone(const llm::LlamaModel& m) {
  llm::DecodeLoop loop(m, 4);
  auto reqs = requests();
  std::atomic<int> pieces{0};
  reqs[0].options.on_text = [&](std::string_view) {
    if (++pieces != 2) return true;
    for (int i = 0; i < 60'000 && loop.stats().waiting < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return true;
  };
  std::vector<std::future<llm::Generation>> got;
  std::vector<std::unique_ptr<llm::KvCache>> caches;
  for (size_t i = 0; i < reqs.size(); ++i) caches.push_back(std::make_unique<llm::KvCache>(m, 128));
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (i == 1) {  // the others join once request 0 is in the loop
      for (int k = 0; k < 60'000 && pieces == 0; ++k) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    got.push_back(std::async(std::launch::async, [&, i] {
      torch::NoGradGuard no_grad;
      std::vector<llm::Segment> segs{llm::Segment::tokens(reqs[i].prompt)};
      return loop.generate(tok(), *caches[i], segs, reqs[i].options);
    }));
  }
  auto plain = requests();
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto g = got[i].get();
    const auto want = alone(m, plain[i]);
    EXPECT_EQ(g.tokens, want.tokens) << "request " << i;
    EXPECT_EQ(g.text, want.text) << "request " << i;
    EXPECT_EQ(g.stop_reason, want.stop_reason) << "request " << i;
    EXPECT_EQ(g.prompt_tokens, want.prompt_tokens) << "request " << i;
  }
  const auto stats = loop.stats();
  EXPECT_EQ(stats.max_seen, 3) << "the three sequences never stepped together";
  EXPECT_EQ(stats.sequences, 3u);
  EXPECT_LT(stats.steps, stats.rows);  // shared steps
  // The requests end differently, so equal results are not all of them being one sequence.
  EXPECT_NE(alone(m, plain[0]).text, alone(m, plain[1]).text);
}

}  // namespace

TEST(DecodeLoop, SequencesThatShareStepsGenerateWhatTheyGenerateAloneBf16) { expect_loop_equals_alone(stories_bf16()); }

TEST(DecodeLoop, SequencesThatShareStepsGenerateWhatTheyGenerateAloneQ8) {
  expect_loop_equals_alone(stories_quant(nn::QuantFormat::Q8));
}

TEST(DecodeLoop, SequencesThatShareStepsGenerateWhatTheyGenerateAloneF32) { expect_loop_equals_alone(t::stories_model()); }

TEST(DecodeLoop, AStreamThatSaysStopLeavesTheBatch) {
  const auto& m = stories_bf16();
  llm::DecodeLoop loop(m, 4);
  llm::KvCache cache(m, 128);
  llm::GenerateOptions o;
  o.max_tokens = 40;
  o.stop_at_eos = false;
  int pieces = 0;
  o.on_text = [&](std::string_view) { return ++pieces < 3; };
  std::vector<llm::Segment> segs{llm::Segment::tokens({1})};
  const auto g = loop.generate(tok(), cache, segs, o);
  EXPECT_EQ(g.stop_reason, "callback");
  EXPECT_LT(g.tokens.size(), 40u);
  EXPECT_THROW(llm::DecodeLoop(m, 0), iadgpt::InputError);
}
