// Sampling, stop strings, streaming, the first-token probability helper and chat templates.
#include <gtest/gtest.h>

#include "io/error.h"
#include "llm/chat.h"
#include "llm/generate.h"
#include "llm_test_util.h"

namespace llm = iadgpt::llm;
namespace t = iadgpt::test;

namespace {
const llm::LlamaModel& stories() { return t::stories_model(); }
const llm::Tokenizer& stories_tok() {
  static const auto tok = llm::Tokenizer::from_path(t::fixture("stories260K"));
  return tok;
}
llm::Generation run(const llm::GenerateOptions& opt, std::vector<int64_t> prompt = {1}) {
  llm::KvCache cache(stories(), 512);
  std::vector<llm::Segment> segs{llm::Segment::tokens(std::move(prompt))};
  return llm::generate(stories(), stories_tok(), cache, segs, opt);
}
}  // namespace

TEST(Sampler, GreedyPicksArgmaxAndTopKOneIsGreedy) {
  auto logits = torch::tensor({0.1f, 2.0f, -1.0f, 1.9f});
  llm::Sampler greedy({});
  EXPECT_EQ(greedy.sample(logits), 1);
  llm::Sampler topk1({.temperature = 1.5, .top_k = 1, .seed = 3});
  for (int i = 0; i < 20; ++i) EXPECT_EQ(topk1.sample(logits), 1);
}

TEST(Sampler, TopPKeepsOnlyTheNucleus) {
  // p = softmax([5, 5, -5, -5]) ≈ [0.5, 0.5, 2e-5, 2e-5]: top-p 0.9 never draws ids 2 or 3.
  auto logits = torch::tensor({5.0f, 5.0f, -5.0f, -5.0f});
  llm::Sampler s({.temperature = 1.0, .top_p = 0.9, .seed = 7});
  std::set<int64_t> seen;
  for (int i = 0; i < 200; ++i) seen.insert(s.sample(logits));
  EXPECT_EQ(seen, (std::set<int64_t>{0, 1}));
}

TEST(Sampler, RepetitionPenaltyDemotesSeenTokens) {
  auto logits = torch::tensor({0.1f, 2.0f, -1.0f, 1.9f});
  llm::Sampler s({.repetition_penalty = 1.2});
  std::vector<int64_t> ctx{1};
  EXPECT_EQ(s.sample(logits, ctx), 3);  // 2.0 / 1.2 < 1.9
}

TEST(Sampler, InvalidParametersAreInputErrors) {
  EXPECT_THROW(llm::Sampler({.temperature = -1}), iadgpt::InputError);
  EXPECT_THROW(llm::Sampler({.top_p = 0}), iadgpt::InputError);
  EXPECT_THROW(llm::Sampler({.repetition_penalty = 0}), iadgpt::InputError);
}

TEST(Generate, SameSeedSameSampleDifferentSeedDiffers) {
  llm::GenerateOptions opt;
  opt.sampling = {.temperature = 1.0, .top_p = 0.95, .seed = 42};
  opt.max_tokens = 40;
  auto a = run(opt), b = run(opt);
  EXPECT_EQ(a.tokens, b.tokens);
  opt.sampling.seed = 43;
  EXPECT_NE(run(opt).tokens, a.tokens);
}

TEST(Generate, StopStringCutsTextAndStreamNeverShowsIt) {
  llm::GenerateOptions plain;
  plain.max_tokens = 60;
  const auto full = run(plain).text;
  const auto at = full.find("Lily");
  ASSERT_NE(at, std::string::npos) << full;
  std::string streamed;
  llm::GenerateOptions opt;
  opt.max_tokens = 60;
  opt.stop = {"Lily"};
  opt.on_text = [&](std::string_view s) {
    streamed += s;
    return true;
  };
  auto out = run(opt);
  EXPECT_EQ(out.stop_reason, "stop");
  EXPECT_EQ(out.text, full.substr(0, at));
  EXPECT_EQ(streamed, out.text);
  EXPECT_LT(out.tokens.size(), 60u);
}

TEST(Generate, MaxTokensAndCallbackStop) {
  llm::GenerateOptions five;
  five.max_tokens = 5;
  auto out = run(five);
  EXPECT_EQ(out.tokens.size(), 5u);
  EXPECT_EQ(out.stop_reason, "length");
  int calls = 0;
  llm::GenerateOptions opt;
  opt.max_tokens = 50;
  opt.on_text = [&](std::string_view) { return ++calls < 3; };
  auto stopped = run(opt);
  EXPECT_EQ(stopped.stop_reason, "callback");
  EXPECT_LT(stopped.tokens.size(), 50u);
}

TEST(Generate, FirstTokenProbsAgreeWithLogits) {
  std::vector<llm::Segment> segs{llm::Segment::tokens({1, 403, 407})};
  llm::KvCache cache(stories(), 512);
  std::vector<int64_t> cand{261, 378, 2};
  auto p = llm::first_token_probs(stories(), cache, segs, cand);
  llm::KvCache cache2(stories(), 512);
  auto logits = llm::forward_tokens(stories(), cache2, std::vector<int64_t>{1, 403, 407}, llm::Logits::Last)[0];
  auto full = torch::softmax(logits.to(torch::kFloat64), 0);
  double restricted_sum = 0;
  for (size_t i = 0; i < cand.size(); ++i) {
    EXPECT_NEAR(p.probs[i], full[cand[i]].item<double>(), 1e-9);
    restricted_sum += p.restricted[i];
  }
  EXPECT_NEAR(restricted_sum, 1.0, 1e-12);
  // Ratios are preserved by the restriction.
  EXPECT_NEAR(p.restricted[0] / p.restricted[1], p.probs[0] / p.probs[1], 1e-9);
}

TEST(ChatTemplate, VicunaV0IsPandaGptLayout) {
  std::vector<llm::Turn> history{{"Is there any anomaly?", "No, there is no anomaly in the image."}};
  EXPECT_EQ(llm::render_chat_text(llm::ChatTemplate::VicunaV0, "", {}, "Hi"), "<s>### Human: Hi\n### Assistant:");
  EXPECT_EQ(llm::render_chat_text(llm::ChatTemplate::VicunaV0, "", history, "Why?"),
            "<s>### Human: Is there any anomaly?\n### Assistant: No, there is no anomaly in the image.\n### Human: "
            "Why?\n### Assistant:");
  EXPECT_EQ(llm::stop_strings(llm::ChatTemplate::VicunaV0), std::vector<std::string>{"###"});
}

TEST(ChatTemplate, VicunaV11AndLlama2Layouts) {
  std::vector<llm::Turn> history{{"Hi", "Hello!"}};
  EXPECT_EQ(llm::render_chat_text(llm::ChatTemplate::VicunaV11, "SYS", history, "How are you?"),
            "<s>SYS USER: Hi ASSISTANT: Hello!</s>USER: How are you? ASSISTANT:");
  EXPECT_EQ(llm::render_chat_text(llm::ChatTemplate::Llama2, "SYS", history, "How are you?"),
            "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] How are you? [/INST]");
  EXPECT_EQ(llm::render_chat_text(llm::ChatTemplate::Plain, "", history, "Go on"), "<s>Hi\nHello!\nGo on");
}

TEST(ChatTemplate, RenderedIdsPutSpecialTokensAsIds) {
  auto tok = llm::Tokenizer::from_path(t::data("tokenizers/llama2c/tokenizer.model"));
  std::vector<llm::Turn> history{{"Hi", "Hello!"}};
  auto ids = llm::render_chat(tok, llm::ChatTemplate::Llama2, "", history, "Go on");
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 2);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 1);
  auto v0 = llm::render_chat(tok, llm::ChatTemplate::VicunaV0, "", {}, "Hi");
  EXPECT_EQ(v0, tok.encode("### Human: Hi\n### Assistant:", /*bos=*/true));
  EXPECT_THROW(llm::parse_chat_template("chatml"), iadgpt::InputError);
}

