// `iadgpt bench llm --model`: the decoder timed on a checkpoint loaded from files (a Hugging Face
// directory, or one stored quantized by `iadgpt quantize`), reporting that checkpoint's size and
// format; bad input → exit 2 with one line naming the problem.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli/expect_usage_error.h"
#include "common/run.h"
#include "common/shared.h"

using namespace iadgpt;
using test::expect_one_line_naming;
using test::run_iadgpt;

namespace {

// The JSON line `bench llm --json` prints last on stdout.
nlohmann::json bench_json(const test::RunResult& r) {
  std::string out = r.out;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return nlohmann::json::parse(out.substr(out.rfind('\n') + 1));
}

}  // namespace

TEST(BenchLlmCli, TimesACheckpointFromFilesWithItsOwnSizeAndFormat) {
  const auto tiny = test::fixture("llama_tiny").string();
  auto r = run_iadgpt({"--threads", "1", "bench", "llm", "--model", tiny, "--prefill", "4", "--decode", "3", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto bf16 = bench_json(r);
  // llama_tiny's config.json, counted by hand: vocab 512, hidden 64, intermediate 176, 2 layers,
  // 4 heads and 2 KV heads of 16 → q/o 64×64, k/v 32×64, three MLP matrices 176×64; untied head.
  const int64_t matrices = 2 * 512 * 64 + 2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 176 * 64);
  const int64_t norms = 2 * 2 * 64 + 64;
  EXPECT_EQ(bf16.at("parameters"), matrices + norms);
  EXPECT_EQ(bf16.at("weight_bytes"), 2 * matrices + 4 * norms);  // bf16 matrices, fp32 norms
  EXPECT_EQ(bf16.at("quant"), "none");
  EXPECT_EQ(bf16.at("model"), tiny);
  EXPECT_GT(bf16.at("decode_tok_s").get<double>(), 0.0);

  const auto q4 = test::scratch("cli-bench-llm") / "q4";
  ASSERT_EQ(run_iadgpt({"quantize", "--in", tiny, "--format", "q4", "--out", q4.string()}).exit_code, 0);
  r = run_iadgpt({"--threads", "1", "bench", "llm", "--model", q4.string(), "--prefill", "4", "--decode", "3", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto stored = bench_json(r);
  // The stored format is reported and timed, though --quant was left at none.
  EXPECT_EQ(stored.at("quant"), "q4");
  EXPECT_NE(stored.at("decode_kernels").get<std::string>().find("q4"), std::string::npos) << stored.dump();
  EXPECT_LT(stored.at("weight_bytes").get<int64_t>(), bf16.at("weight_bytes").get<int64_t>());
}

TEST(BenchLlmCli, BadModelFlagsExitTwoNamingTheProblem) {
  const auto tiny = test::fixture("llama_tiny").string();
  expect_one_line_naming(run_iadgpt({"bench", "llm", "--model", tiny, "--arch", "llama-7b"}), "--arch excludes --model");
  expect_one_line_naming(run_iadgpt({"bench", "llm", "--model", tiny, "--write-hf", "x"}), "--model excludes --write-hf");
  const auto missing = (test::scratch("cli-bench-llm-bad") / "nope").string();
  expect_one_line_naming(run_iadgpt({"bench", "llm", "--model", missing}), "no such model directory");
}
