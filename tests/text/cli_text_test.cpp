// End-to-end tests of `iadgpt tokenize` and `iadgpt encode-text` (the built program): exit codes
// 0 / 2 and outputs compared with the upstream fixtures.
#include <gtest/gtest.h>

#include "common/run.h"
#include <sys/wait.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/shared.h"
#include "io/checkpoint.h"

namespace {

namespace fs = std::filesystem;
using iadgpt::test::data;
using iadgpt::test::fixture;

const fs::path kVocab = data("tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz");

struct Result {
  int code;
  std::string out, err;
};

Result run(const std::vector<std::string>& args) {
  std::vector<std::string> all = {"--threads", "1"};  // tiny models: threads only add contention
  all.insert(all.end(), args.begin(), args.end());
  auto r = iadgpt::test::run_iadgpt(all);
  return {r.exit_code, r.out, r.err};
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  if (!in) throw std::runtime_error("missing fixture " + p.string());
  return nlohmann::json::parse(in);
}

double max_abs(const torch::Tensor& a, const torch::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

TEST(CliTokenize, PrintsUpstreamIdsOneJsonLinePerText) {
  const auto ref = read_json(data("tokenizers/openai_clip/clip_tokenizer_reference.json"));
  std::vector<std::string> args = {"tokenize", "--vocab", kVocab.string()};
  std::vector<nlohmann::json> cases;
  for (const auto& c : ref["cases"]) {
    const auto text = c["text"].get<std::string>();
    if (text.empty() || text.find('\r') != std::string::npos) continue;  // shell-unfriendly
    args.push_back("--text");
    args.push_back(text);
    cases.push_back(c);
    if (cases.size() == 20) break;
  }
  const auto r = run(args);
  ASSERT_EQ(r.code, 0) << r.err;
  std::istringstream lines(r.out);
  std::size_t n = 0;
  for (std::string line; std::getline(lines, line); ++n) {
    ASSERT_LT(n, cases.size());
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["text"], cases[n]["text"]);
    EXPECT_EQ(j["ids"], cases[n]["ids"]) << line;
  }
  EXPECT_EQ(n, cases.size());
}

TEST(CliTokenize, BadInputExitsWithCode2) {
  auto r = run({"tokenize", "--vocab", "/nonexistent/bpe.txt.gz", "--text", "x"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("iadgpt: error:"), std::string::npos) << r.err;
  r = run({"tokenize", "--model", "/nonexistent/tokenizer.model", "--text", "x"});  // SentencePiece path
  EXPECT_EQ(r.code, 2);
  r = run({"tokenize", "--text", "x"});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(run({"tokenize", "--help"}).code, 0);
}

TEST(CliEncodeText, ImageBindTextsMatchUpstream) {
  const auto ref_json = read_json(fixture("imagebind_tiny/reference.json"));
  const auto prompts = ref_json["prompts"].get<std::vector<std::string>>();
  const auto out = iadgpt::test::scratch("text-cli") / "imagebind_text.safetensors";
  std::vector<std::string> args = {"encode-text", "--model",
                                    fixture("imagebind_tiny/imagebind_tiny.safetensors").string(),
                                    "--config", fixture("imagebind_tiny/config.json").string(),
                                    "--vocab", kVocab.string(), "--out", out.string()};
  for (const auto& p : prompts) {
    args.push_back("--text");
    args.push_back(p);
  }
  const auto r = run(args);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto got = iadgpt::io::load_safetensors(out);
  const auto ref = iadgpt::io::load_safetensors(fixture("imagebind_tiny/reference.safetensors"));
  ASSERT_EQ(got.at("token_ids").scalar_type(), torch::kInt64);
  EXPECT_TRUE(torch::equal(got.at("token_ids"), ref.at("text_input_ids")));
  // Tolerances as in text_tower_test.cpp (fixture README: float64 forward agrees to 1e-7..2e-6).
  EXPECT_LE(max_abs(got.at("embedding"), ref.at("text_embeds_normalized")), 2e-6);
  EXPECT_LE(max_abs(got.at("embedding_raw"), ref.at("text_embeds_upstream")), 1e-5);
}

TEST(CliEncodeText, FileInputAndAnomalyGptTruncation) {
  // --file: one text per line; --truncate anomalygpt drops the EOT of the 95-token prompt 7.
  const auto dir = iadgpt::test::scratch("text-cli");
  const auto prompts = read_json(fixture("imagebind_tiny/reference.json"))["prompts"]
                           .get<std::vector<std::string>>();
  {
    std::ofstream f(dir / "prompts.txt");
    for (const auto& p : prompts) f << p << "\r\n\n";  // CRLF and blank lines are tolerated
  }
  const auto out = dir / "file_text.safetensors";
  const auto r = run({"encode-text", "--model", fixture("imagebind_tiny/imagebind_tiny.pth").string(),
                      "--config", fixture("imagebind_tiny/config.json").string(), "--vocab",
                      kVocab.string(), "--file", (dir / "prompts.txt").string(), "--truncate",
                      "anomalygpt", "--dtype", "bf16", "--out", out.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto got = iadgpt::io::load_safetensors(out);
  const auto ref = iadgpt::io::load_safetensors(fixture("imagebind_tiny/reference.safetensors"));
  const auto ids = got.at("token_ids");
  ASSERT_EQ(ids.sizes(), (std::vector<int64_t>{8, 77}));
  EXPECT_TRUE(torch::equal(ids.slice(0, 0, 7), ref.at("text_input_ids").slice(0, 0, 7)));
  EXPECT_EQ((ids[7] == 49407).sum().item<int64_t>(), 0);
  // bf16 path on the 7 rows with identical ids; bound as in text_tower_test.cpp.
  EXPECT_LE(max_abs(got.at("embedding").slice(0, 0, 7), ref.at("text_embeds_normalized").slice(0, 0, 7)), 1.5e-2);
}

TEST(CliEncodeText, TokenIdsFileFeedsTheTowerDirectly) {
  // openai_clip_tiny's 2048-id vocabulary cannot take real tokenizer ids: feed the mapped ids.
  const auto out = iadgpt::test::scratch("text-cli") / "hf_text.safetensors";
  const auto r = run({"encode-text", "--model", fixture("openai_clip_tiny/hf").string(), "--token-ids",
                      fixture("openai_clip_tiny/reference.safetensors").string(), "--key",
                      "input_ids", "--out", out.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto got = iadgpt::io::load_safetensors(out);
  const auto ref = iadgpt::io::load_safetensors(fixture("openai_clip_tiny/reference.safetensors"));
  EXPECT_TRUE(torch::equal(got.at("token_ids"), ref.at("input_ids")));
  EXPECT_LE(max_abs(got.at("embedding"), ref.at("text_embeds_normalized")), 2e-6);
  EXPECT_LE(max_abs(got.at("embedding_raw"), ref.at("text_embeds")), 1e-5);
}

TEST(CliEncodeText, BadInputExitsWithCode2) {
  const auto out = (iadgpt::test::scratch("text-cli") / "x.safetensors").string();
  const auto ib = fixture("imagebind_tiny/imagebind_tiny.safetensors").string();
  const auto cfg = fixture("imagebind_tiny/config.json").string();
  // No vocabulary beside the checkpoint and none given: the message asks for --vocab.
  auto r = run({"encode-text", "--model", ib, "--config", cfg, "--text", "x", "--out", out});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--vocab"), std::string::npos) << r.err;
  // A 49408-id tokenizer cannot drive a 2048-id tower: the message points at --token-ids.
  r = run({"encode-text", "--model", fixture("openai_clip_tiny/hf").string(), "--vocab",
           kVocab.string(), "--text", "x", "--out", out});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--token-ids"), std::string::npos) << r.err;
  r = run({"encode-text", "--model", "/nonexistent.pth", "--vocab", kVocab.string(), "--text", "x",
           "--out", out});
  EXPECT_EQ(r.code, 2);
  r = run({"encode-text", "--model", fixture("openai_clip_tiny/hf").string(), "--token-ids",
           fixture("openai_clip_tiny/reference.safetensors").string(), "--key", "nope", "--out", out});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("nope"), std::string::npos) << r.err;
  EXPECT_EQ(run({"encode-text", "--help"}).code, 0);
}

}  // namespace
