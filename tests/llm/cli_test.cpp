// End-to-end: `iadgpt llm-logits` and `iadgpt generate` per the CLI contract (ARCHITECTURE.md).
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "io/checkpoint.h"
#include "common/run.h"
#include "llm_test_util.h"

namespace t = iadgpt::test;

namespace {

struct Result {
  int code;
  std::string out;
};

// Exit code and stdout (stderr is captured separately and ignored here).
Result run(const std::string& args) {
  auto r = t::run_iadgpt(args);
  return {r.exit_code, r.out};
}

std::string ids_arg(const std::vector<int64_t>& ids) {
  return fmt::format("{}", fmt::join(ids, ","));
}

}  // namespace

TEST(Cli, LlmLogitsInTwoChunksWithLoraMatchesReference) {
  const auto& ref = t::llama_tiny_reference();
  const auto ids = t::to_ids(ref.at("seq1.input_ids"));
  const auto out = t::scratch("llm-cli") / "logits.safetensors";
  auto r = run(fmt::format("llm-logits --model {} --lora {} --tokens {} --chunk 20 --out {}", t::llama_tiny().string(),
                           t::llama_tiny("lora").string(), ids_arg(ids), out.string()));
  ASSERT_EQ(r.code, 0);
  auto logits = iadgpt::io::load_safetensors(out).at("logits");
  EXPECT_LE(t::max_abs_diff(logits, ref.at("seq1.logits_lora")), 1e-4);  // fp32 acceptance bound
}

TEST(Cli, GenerateJsonGreedyFromBosFollowsStories260K) {
  const auto expected = t::read_json(t::fixture("stories260K/expected.json"));
  auto want = expected["greedy_ids"].get<std::vector<int64_t>>();
  want.resize(30);
  auto r = run(fmt::format("generate --model {} --bos --max-tokens 30 --json", t::fixture("stories260K").string()));
  ASSERT_EQ(r.code, 0);
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["tokens"].get<std::vector<int64_t>>(), want);
  EXPECT_EQ(j["text"].get<std::string>(), expected["text_sentencepiece_decode"].get<std::string>().substr(0, j["text"].get<std::string>().size()));
}

TEST(Cli, BadInputExitsWithCode2) {
  const auto model = t::llama_tiny().string();
  EXPECT_EQ(run("llm-logits --model " + model + " --tokens 1,x --out /tmp/unused.safetensors").code, 2);
  EXPECT_EQ(run("llm-logits --model " + model + " --tokens 1,600 --out /tmp/unused.safetensors").code, 2);
  EXPECT_EQ(run("llm-logits --model /nonexistent --tokens 1 --out /tmp/unused.safetensors").code, 2);
  EXPECT_EQ(run("generate --model " + t::fixture("stories260K").string() + " --bos --top-p 0").code, 2);
}

TEST(Cli, ChatAnswersEveryTurnAndKeepsHistory) {
  // Greedy, two turns and a reset through stdin; each answer is one line on stdout.
  const auto model = t::fixture("stories260K").string();
  const auto input = t::scratch("llm-chat") / "input.txt";
  std::ofstream(input) << "Once upon a time\nThen\n/reset\nOnce upon a time\n";
  auto r = run("chat --model " + model + " --template plain --max-tokens 8 < " + input.string());
  ASSERT_EQ(r.code, 0);
  std::vector<std::string> lines;
  std::stringstream ss(r.out);
  for (std::string l; std::getline(ss, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 3u) << r.out;
  EXPECT_EQ(lines[0], lines[2]);  // after /reset the same question gets the same greedy answer
  EXPECT_FALSE(lines[0].empty());
}
