// `iadgpt quantize` end to end: an HF LLaMA dir and a bundle in, a stored quantized LLM / bundle
// out that the other commands load; bad input → exit 2 with one line naming the problem.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <fstream>

#include "cli/expect_usage_error.h"
#include "common/run.h"
#include "common/shared.h"

using namespace iadgpt;
using test::expect_one_line_naming;
using test::run_iadgpt;
namespace fs = std::filesystem;

namespace {

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

}  // namespace

TEST(QuantizeCli, HfDirectoryIsWrittenQuantizedAndLoadsInOtherCommands) {
  const auto out = test::scratch("cli-quantize") / "q4";
  auto r = run_iadgpt({"quantize", "--in", test::fixture("llama_tiny").string(), "--format", "q4", "--out", out.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("wrote LLM"), std::string::npos) << r.out;
  EXPECT_EQ(read_json(out / "config.json").at("iadgpt_quant"), "q4");
  const auto logits = test::scratch("cli-quantize") / "logits.safetensors";
  r = run_iadgpt({"llm-logits", "--model", out.string(), "--dtype", "auto", "--tokens", "1,15,230", "--out", logits.string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // Asking for f32 from a stored quantized LLM is bad input, said in one line.
  r = run_iadgpt({"llm-logits", "--model", out.string(), "--dtype", "f32", "--tokens", "1", "--out", logits.string()});
  expect_one_line_naming(r, "stored quantized (q4)");
}

TEST(QuantizeCli, BundleCreateOnAQuantizedLlmTakesItsStoredFormat) {
  const auto dir = test::scratch("cli-quantize-create");
  ASSERT_EQ(run_iadgpt({"quantize", "--in", test::fixture("llama_tiny").string(), "--format", "q4", "--out",
                        (dir / "q4").string()}).exit_code, 0);
  const std::vector<std::string> create = {
      "bundle", "create", "--vision", test::fixture("imagebind_tiny/imagebind_tiny.safetensors").string(),
      "--vision-config", test::fixture("imagebind_tiny/config.json").string(), "--vocab",
      test::data("tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz").string(), "--llm", (dir / "q4").string(),
      "--tokenizer", test::fixture("stories260K/tokenizer.model").string(), "--init-random", "3"};
  auto with = [&](std::vector<std::string> extra) {
    auto args = create;
    args.insert(args.end(), extra.begin(), extra.end());
    return run_iadgpt(args);
  };
  // Default (--quant auto): the bundle runs the LLM in the format it is stored in.
  auto r = with({"--out", (dir / "auto").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_json(dir / "auto" / "iadgpt.json").at("quant"), "q4");
  EXPECT_EQ(run_iadgpt({"bundle", "check", (dir / "auto").string()}).exit_code, 0);
  // Another format than the stored one: one line naming both, and nothing written (no adapters either).
  r = with({"--quant", "q8", "--out", (dir / "other").string()});
  expect_one_line_naming(r, "stored quantized as q4");
  EXPECT_FALSE(fs::exists(dir / "other")) << "nothing may be written for a refused bundle";
  r = with({"--quant", "q5", "--out", (dir / "typo").string()});
  expect_one_line_naming(r, "q5");
  EXPECT_FALSE(fs::exists(dir / "typo"));
}

TEST(QuantizeCli, BundleIsWrittenWithItsLlmQuantizedAndTheQuantField) {
  const auto dir = test::scratch("cli-quantize-bundle");
  auto r = run_iadgpt({"bundle", "create", "--vision", test::fixture("imagebind_tiny/imagebind_tiny.safetensors").string(),
                       "--vision-config", test::fixture("imagebind_tiny/config.json").string(), "--vocab",
                       test::data("tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz").string(), "--llm",
                       test::fixture("llama_tiny").string(), "--tokenizer", test::fixture("stories260K/tokenizer.model").string(),
                       "--init-random", "3", "--out", (dir / "bundle").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_iadgpt({"quantize", "--in", (dir / "bundle").string(), "--format", "q8", "--out", (dir / "q8").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("wrote bundle"), std::string::npos) << r.out;
  EXPECT_EQ(read_json(dir / "q8" / "iadgpt.json").at("quant"), "q8");
  r = run_iadgpt({"bundle", "check", (dir / "q8").string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = run_iadgpt({"detect", "--model", (dir / "q8").string(), "--class", "grid", "--no-generate", "--out",
                  (dir / "detect").string(), test::data("mvtec_ad/grid/train/good/000.png").string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // bench model --quant on a stored q8 bundle: another format is refused, naming both.
  r = run_iadgpt({"bench", "model", "--model", (dir / "q8").string(), "--quant", "q4", "--iters", "1", "--tokens", "1"});
  expect_one_line_naming(r, "stored quantized as q8");
  r = run_iadgpt({"bench", "model", "--model", (dir / "bundle").string(), "--quant", "q4", "--iters", "1", "--tokens", "1"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // Quantizing a quantized bundle again is refused.
  r = run_iadgpt({"quantize", "--in", (dir / "q8").string(), "--format", "q4", "--out", (dir / "again").string()});
  expect_one_line_naming(r, "already quantized (q8)");
}

TEST(QuantizeCli, BadInputExitsTwoNamingTheProblem) {
  const auto dir = test::scratch("cli-quantize-bad");
  const auto tiny = test::fixture("llama_tiny").string();
  expect_one_line_naming(run_iadgpt({"quantize", "--in", (dir / "nope").string(), "--format", "q8", "--out", (dir / "o").string()}),
                         "nope: no such directory");
  expect_one_line_naming(run_iadgpt({"quantize", "--in", tiny, "--format", "q5", "--out", (dir / "o").string()}),
                         "--format: unknown quantization format 'q5'");
  expect_one_line_naming(run_iadgpt({"quantize", "--in", tiny, "--format", "none", "--out", (dir / "o").string()}),
                         "--format: expected q8 or q4");
  expect_one_line_naming(run_iadgpt({"quantize", "--in", dir.string(), "--format", "q8", "--out", (dir / "o").string()}),
                         "config.json not found");
  // A corrupt weights file: the loader names it.
  const auto corrupt = dir / "corrupt";
  fs::create_directories(corrupt);
  fs::copy_file(test::fixture("llama_tiny/config.json"), corrupt / "config.json", fs::copy_options::overwrite_existing);
  std::ofstream(corrupt / "model.safetensors") << "not a safetensors file at all";
  expect_one_line_naming(run_iadgpt({"quantize", "--in", corrupt.string(), "--format", "q8", "--out", (dir / "o").string()}),
                         "model.safetensors");
  // A stored quantized file with one tensor damaged: loading it names the key.
  const auto q8 = dir / "q8";
  ASSERT_EQ(run_iadgpt({"quantize", "--in", tiny, "--format", "q8", "--out", q8.string()}).exit_code, 0);
  auto cfg = read_json(q8 / "config.json");
  cfg["iadgpt_quant"] = "q4";  // the q8 quants read as q4: the metadata disagrees
  std::ofstream(q8 / "config.json") << cfg.dump();
  expect_one_line_naming(run_iadgpt({"llm-logits", "--model", q8.string(), "--dtype", "auto", "--tokens", "1", "--out",
                                     (dir / "l.safetensors").string()}),
                         "the weights' metadata says q8");
  expect_one_line_naming(run_iadgpt({"quantize", "--in", tiny, "--format", "q8", "--out", tiny}), "must differ from --in");
}

namespace {

// `bundle create` of imagebind_tiny (text tower from the fixture) and llama_tiny with random
// adapters, the vision tower from `vision`, plus `extra`.
test::RunResult create_tiny_bundle(const std::string& vision, const std::vector<std::string>& extra) {
  std::vector<std::string> args = {
      "bundle", "create", "--vision", vision, "--vision-config", test::fixture("imagebind_tiny/config.json").string(),
      "--text", test::fixture("imagebind_tiny/imagebind_tiny.safetensors").string(), "--vocab",
      test::data("tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz").string(), "--llm",
      test::fixture("llama_tiny").string(), "--tokenizer", test::fixture("stories260K/tokenizer.model").string(),
      "--init-random", "3", "--dtype", "bf16"};
  args.insert(args.end(), extra.begin(), extra.end());
  return run_iadgpt(args);
}

}  // namespace

TEST(QuantizeCli, BundleCreateWritesTheVisionTowersFormatAndDetectRunsIt) {
  const auto dir = test::scratch("cli-vision-quant");
  auto with = [&](const std::vector<std::string>& extra) {
    return create_tiny_bundle(test::fixture("imagebind_tiny/imagebind_tiny.safetensors").string(), extra);
  };
  auto r = with({"--vision-quant", "q8", "--out", (dir / "q8").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_json(dir / "q8" / "iadgpt.json").at("vision_quant"), "q8");
  // The bundle runs with its tower in int8 (model::IadGpt through the detector's options).
  const auto image = test::data("mvtec_ad/grid/test/good/000.png").string();
  r = run_iadgpt({"detect", "--model", (dir / "q8").string(), "--no-generate", "--out", (dir / "out").string(), image});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // q4 is refused before anything is written, naming the field.
  r = with({"--vision-quant", "q4", "--out", (dir / "q4").string()});
  expect_one_line_naming(r, "vision_quant");
  EXPECT_FALSE(fs::exists(dir / "q4")) << "nothing may be written for a refused bundle";
}

// A tower stored quantized (`convert --quant q8`): `bundle create` takes its format by default
// (auto), refuses a bundle field that says otherwise, and the bundle's detect runs.
TEST(QuantizeCli, BundleOfAStoredInt8TowerTakesItsFormat) {
  const auto dir = test::scratch("cli-vision-stored");
  const auto tower = (dir / "tower_q8.safetensors").string();
  auto r = run_iadgpt({"convert", "--in", test::fixture("imagebind_tiny/imagebind_tiny.safetensors").string(), "--config",
                       test::fixture("imagebind_tiny/config.json").string(), "--out", tower, "--quant", "q8"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto with = [&](const std::vector<std::string>& extra) { return create_tiny_bundle(tower, extra); };
  r = with({"--out", (dir / "auto").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_json(dir / "auto" / "iadgpt.json").at("vision_quant"), "q8");
  const auto image = test::data("mvtec_ad/grid/test/good/000.png").string();
  r = run_iadgpt({"detect", "--model", (dir / "auto").string(), "--no-generate", "--out", (dir / "out").string(), image});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = with({"--vision-quant", "none", "--out", (dir / "none").string()});
  expect_one_line_naming(r, "field 'vision_quant' is 'none', but the vision tower");
  EXPECT_FALSE(fs::exists(dir / "none")) << "nothing may be written for a refused bundle";
}
