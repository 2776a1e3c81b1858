// SentencePiece tokenizer: llama.cpp's 46 LLaMA cases (ids from HF's Llama-2 tokenizer), the
// stories260K model's normalizer, decode with byte fallback and the streaming decoder.
#include <gtest/gtest.h>

#include "io/error.h"
#include "llm/tokenizer.h"
#include "llm_test_util.h"

#include <nlohmann/json.hpp>

namespace llm = iadgpt::llm;
namespace t = iadgpt::test;

namespace {
const llm::Tokenizer& llama_tok() {
  static const auto tok = llm::Tokenizer::from_path(t::data("tokenizers/llama2c/tokenizer.model"));
  return tok;
}
}  // namespace

TEST(Tokenizer, LlamaCppVocabCasesAllExact) {
  const auto cases = t::read_json(t::data("tokenizers/llama_cpp_vocab_tests/cases.json"));
  ASSERT_EQ(cases.size(), 46u);
  int failures = 0;
  for (const auto& c : cases) {
    const auto text = c["text"].get<std::string>();
    const auto want = c["ids"].get<std::vector<int64_t>>();
    const auto got = llama_tok().encode(text);
    if (got != want) ++failures;
    EXPECT_EQ(got, want) << "text: '" << text << "'";
  }
  EXPECT_EQ(failures, 0);
}

TEST(Tokenizer, SpecialIdsAndBosEos) {
  EXPECT_EQ(llama_tok().vocab_size(), 32000);
  EXPECT_EQ(llama_tok().bos_id(), 1);
  EXPECT_EQ(llama_tok().eos_id(), 2);
  EXPECT_EQ(llama_tok().encode("Hello world", true, true), (std::vector<int64_t>{1, 15043, 3186, 2}));
  EXPECT_EQ(llama_tok().piece(15043), "▁Hello");
}

TEST(Tokenizer, DecodeRoundTripsIncludingByteFallback) {
  for (std::string s : {"Hello world", " this is 🦙.cpp", "нещо на Български", "ied 4 ½ months"}) {
    auto ids = llama_tok().encode(s);
    EXPECT_EQ(llama_tok().decode(ids), s) << s;
  }
}

TEST(Tokenizer, StreamDecoderHoldsIncompleteUtf8) {
  // 🦙 is not in the vocabulary: it arrives as 4 byte tokens; nothing is emitted until the last one.
  const auto ids = llama_tok().encode(" this is 🦙.cpp");
  llm::StreamDecoder dec(llama_tok());
  std::string out;
  std::vector<std::string> parts;
  for (int64_t id : ids) {
    parts.push_back(dec.push(id));
    out += parts.back();
  }
  out += dec.flush();
  EXPECT_EQ(out, llama_tok().decode(ids));
  for (const auto& p : parts) EXPECT_EQ(p.find("\xEF\xBF\xBD"), std::string::npos) << "replacement char streamed";
}

TEST(Tokenizer, Stories260KModelRemovesExtraWhitespace) {
  // This model's normalizer has remove_extra_whitespaces true (fixture README).
  auto tok = llm::Tokenizer::from_path(t::fixture("stories260K/tokenizer.model"));
  EXPECT_EQ(tok.encode("  Hello  world "), (std::vector<int64_t>{346, 306, 414, 263, 304, 341}));
  EXPECT_EQ(tok.encode("Hello world"), tok.encode("  Hello  world "));
}

TEST(Tokenizer, MissingOrInvalidModelIsInputError) {
  EXPECT_THROW(llm::Tokenizer::from_path("/nonexistent/tokenizer.model"), iadgpt::InputError);
  EXPECT_THROW(llm::Tokenizer::from_path(t::llama_tiny("config.json")), iadgpt::InputError);
}

TEST(Tokenizer, YesAndNoAreSingleFirstAnswerTokens) {
  // The fast decision (METHOD §1.10) reads the probability of these two ids after one prefill.
  EXPECT_EQ(llama_tok().encode("Yes"), (std::vector<int64_t>{3869}));
  EXPECT_EQ(llama_tok().encode("No"), (std::vector<int64_t>{1939}));
  EXPECT_EQ(llama_tok().piece(3869), "▁Yes");
  EXPECT_EQ(llama_tok().piece(1939), "▁No");
}

#include "common/run.h"

// `iadgpt tokenize --model tokenizer.model` goes through the same SentencePiece tokenizer.
TEST(TokenizeCommand, SentencePieceIdsWithAndWithoutBos) {
  const auto model = iadgpt::test::data("tokenizers/llama2c/tokenizer.model");
  const auto tok = iadgpt::llm::Tokenizer::from_path(model);
  auto r = iadgpt::test::run_iadgpt("tokenize --model '" + model.string() + "' --text 'Hello world'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto line = nlohmann::json::parse(r.out);
  EXPECT_EQ(line["ids"].get<std::vector<int64_t>>(), tok.encode("Hello world", false));
  r = iadgpt::test::run_iadgpt("tokenize --bos --model '" + model.string() + "' --text 'Hello world'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["ids"][0].get<int64_t>(), tok.bos_id());
}
