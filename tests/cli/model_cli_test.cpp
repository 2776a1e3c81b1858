// `iadgpt bundle create|check`, `detect --model`, `chat --model --image`, `bench model --model`
// end to end with the tiny fixtures, exit codes included.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "common/run.h"
#include "common/shared.h"

using namespace iadgpt;
using test::run_iadgpt;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> create_args(const fs::path& out) {
  return {"bundle", "create",
          "--vision", test::fixture("imagebind_tiny/imagebind_tiny.safetensors").string(),
          "--vision-config", test::fixture("imagebind_tiny/config.json").string(),
          "--vocab", test::data("tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz").string(),
          "--llm", test::fixture("llama_tiny").string(),
          "--tokenizer", test::fixture("stories260K/tokenizer.model").string(),
          "--init-random", "3",
          "--out", out.string()};
}

// One bundle for the whole binary (created through the CLI itself).
const fs::path& cli_bundle() {
  static const fs::path dir = [] {
    auto d = test::scratch("cli-model") / "bundle";
    auto r = run_iadgpt(create_args(d));
    if (r.exit_code != 0) throw std::runtime_error("bundle create failed: " + r.err);
    return d;
  }();
  return dir;
}

std::string grid_png(const std::string& name) { return test::data("mvtec_ad/grid/train/good/" + name).string(); }

}  // namespace

TEST(BundleCli, CreateWritesAdaptersAndCheckPrintsWidths) {
  const auto& dir = cli_bundle();
  EXPECT_TRUE(fs::exists(dir / "iadgpt.json"));
  EXPECT_TRUE(fs::exists(dir / "mmf.safetensors"));
  EXPECT_TRUE(fs::exists(dir / "tge.safetensors"));
  EXPECT_TRUE(fs::exists(dir / "decoder.safetensors"));
  auto r = run_iadgpt({"bundle", "check", dir.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["widths"]["llm_hidden"], 64);
  EXPECT_EQ(j["widths"]["vision_width"], 64);
  EXPECT_EQ(j["widths"]["embed_dim"], 32);
}

TEST(BundleCli, BadValuesAndBadBundlesExitTwo) {
  auto args = create_args(test::scratch("cli-model-bad") / "b1");
  args.push_back("--mode");
  args.push_back("sometimes");
  auto r = run_iadgpt(args);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("'mode'"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(test::scratch("cli-model-bad") / "b1" / "iadgpt.json"));

  r = run_iadgpt({"bundle", "check", test::scratch("cli-model-bad").string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("iadgpt: error:"), std::string::npos);
}

TEST(DetectCli, ModelBundleAddsAnswerPYesAndPosition) {
  const auto out = test::scratch("cli-model-detect") / "out";
  auto r = run_iadgpt({"detect", "--model", cli_bundle().string(), "--class", "grid", "--max-tokens", "6", "--out",
                       out.string(), grid_png("000.png"), grid_png("001.png")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(std::ifstream(out / "000.json"));
  EXPECT_TRUE(j.contains("answer"));
  ASSERT_TRUE(j.contains("p_yes"));
  EXPECT_GE(j["p_yes"].get<double>(), 0.0);
  EXPECT_LE(j["p_yes"].get<double>(), 1.0);
  EXPECT_TRUE(j.contains("position"));
  EXPECT_TRUE(j.contains("defect_type"));
  EXPECT_TRUE(j["timings_ms"].contains("prefill"));
  EXPECT_TRUE(fs::exists(out / "001.safetensors"));
  EXPECT_NE(r.out.find("p_yes="), std::string::npos);

  // --no-generate: the answer comes from the map phrasing of METHOD §1.10.
  r = run_iadgpt({"detect", "--model", cli_bundle().string(), "--no-generate", "--out", out.string(), grid_png("000.png")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  j = nlohmann::json::parse(std::ifstream(out / "000.json"));
  const auto answer = j["answer"].get<std::string>();
  EXPECT_TRUE(answer.rfind("Yes, ", 0) == 0 || answer == "No, there is no anomaly in the image.") << answer;
}

TEST(DetectCli, ModelAndVisionTogetherOrNeitherIsABadInput) {
  const auto out = test::scratch("cli-model-detect2") / "out";
  auto r = run_iadgpt({"detect", "--out", out.string(), grid_png("000.png")});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  r = run_iadgpt({"detect", "--model", (test::scratch("cli-model-detect2") / "nothing").string(), "--out", out.string(),
                  grid_png("000.png")});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("iadgpt.json"), std::string::npos) << r.err;
}

TEST(ChatCli, MultiTurnAboutOneImageWithMessages) {
  auto r = run_iadgpt({"chat", "--model", cli_bundle().string(), "--image", grid_png("000.png"), "--class", "grid",
                       "--max-tokens", "5", "--message", "Is there any anomaly in the image?", "--message",
                       "Where is it?", "--message", "/reset", "--message", "Is there any anomaly in the image?"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("p_yes"), std::string::npos) << r.err;
  // Three answers, one line each; the first and the one after /reset are the same (deterministic).
  std::vector<std::string> lines;
  std::stringstream ss(r.out);
  for (std::string l; std::getline(ss, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 3u) << r.out;
  EXPECT_EQ(lines[0], lines[2]);
}

TEST(ChatCli, ImageWithoutBundleAndBundleWithoutImageExitTwo) {
  auto r = run_iadgpt({"chat", "--model", test::fixture("stories260K").string(), "--image", grid_png("000.png"),
                       "--message", "hi"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  r = run_iadgpt({"chat", "--model", cli_bundle().string(), "--message", "hi"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--image"), std::string::npos) << r.err;
}

TEST(BenchCli, ModelBundleReportsTheFourStages) {
  auto r = run_iadgpt({"bench", "model", "--model", cli_bundle().string(), "--iters", "2", "--tokens", "3", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  for (const char* k : {"encode_ms", "maps_ms", "prefill_ms", "generate_ms", "peak_rss_bytes", "load_ms",
                        "first_answer_ms", "rss_after_load_bytes"}) {
    ASSERT_TRUE(j.contains(k)) << k;
    EXPECT_GT(j[k].get<double>(), 0.0) << k;
  }
  // The resident set after loading cannot exceed the run's high-water mark.
  EXPECT_LE(j["rss_after_load_bytes"].get<int64_t>(), j["peak_rss_bytes"].get<int64_t>());
}

TEST(BenchCli, ModelBundleBuildsTheFewShotMemoryBankFromReferences) {
  // A few-shot bundle (the CLI bundle with "mode": "few-shot") cannot inspect without references.
  const auto dir = test::scratch("cli-model") / "few-shot-bundle";
  fs::remove_all(dir);
  fs::copy(cli_bundle(), dir, fs::copy_options::recursive);
  auto bundle = nlohmann::json::parse(std::ifstream(dir / "iadgpt.json"));
  bundle["mode"] = "few-shot";
  std::ofstream(dir / "iadgpt.json") << bundle.dump(2);
  auto r = run_iadgpt({"bench", "model", "--model", dir.string(), "--iters", "1", "--tokens", "1", "--json"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("give reference images"), std::string::npos) << r.err;

  // With two reference files: the bank is built once, timed apart from the load, then each image.
  r = run_iadgpt({"bench", "model", "--model", dir.string(), "--class", "grid", "--reference", grid_png("000.png"),
                  "--reference", grid_png("001.png"), "--image", grid_png("002.png"), "--iters", "1", "--tokens", "2",
                  "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["references"].get<int64_t>(), 2);
  EXPECT_GT(j["references_ms"].get<double>(), 0.0);
  EXPECT_NE(r.err.find("few-shot: 2 reference image(s)"), std::string::npos) << r.err;

  // References without a bundle, or a missing file: one clear error, exit 2.
  r = run_iadgpt({"bench", "model", "--arch", "imagebind-huge+llama-7b", "--reference", grid_png("000.png")});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--reference needs --model"), std::string::npos) << r.err;
  r = run_iadgpt({"bench", "model", "--model", cli_bundle().string(), "--reference", "no-such-reference.png"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("no-such-reference.png"), std::string::npos) << r.err;
}

// --device (issue 16) -------------------------------------------------------------------------

namespace {

// A copy of the CLI bundle whose iadgpt.json says `"device": device`.
fs::path bundle_on(const std::string& device) {
  const auto dir = test::scratch("cli-device-bundle-" + device) / "bundle";
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(cli_bundle()))
    fs::copy(e.path(), dir / e.path().filename(), fs::copy_options::overwrite_existing | fs::copy_options::recursive);
  // Every file is copied, so the manifest's relative paths still resolve.
  auto j = nlohmann::json::parse(std::ifstream(cli_bundle() / "iadgpt.json"));
  j["device"] = device;
  std::ofstream(dir / "iadgpt.json") << j.dump(1);
  return dir;
}

}  // namespace

TEST(DeviceCli, EveryModelCommandRefusesCudaOnThisBuildWithOneLine) {
#ifdef IADGPT_WITH_CUDA
  GTEST_SKIP() << "a CUDA build: scripts/gpu-check.sh runs --device cuda there";
#endif
  const auto out = test::scratch("cli-device-refused");
  const std::string vision = test::fixture("imagebind_tiny/imagebind_tiny.safetensors").string();
  const std::string config = test::fixture("imagebind_tiny/config.json").string();
  const std::string vocab = test::data("tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz").string();
  const std::string toy = "mvtec:" + test::data("hazelnut_toy").string();
  const std::string bundle = cli_bundle().string();
  const std::vector<std::vector<std::string>> commands = {
      {"detect", "--vision", vision, "--config", config, "--vocab", vocab, "--out", (out / "d").string(), grid_png("000.png")},
      {"detect", "--model", bundle, "--out", (out / "m").string(), grid_png("000.png")},
      {"eval", "--model", bundle, "--dataset", toy, "--out", (out / "e").string()},
      {"chat", "--model", bundle, "--image", grid_png("000.png"), "--message", "hi"},
      {"chat", "--model", test::fixture("llama_tiny").string(), "--tokenizer",
       test::fixture("stories260K/tokenizer.model").string(), "--message", "hi"},
      {"serve", "--model", bundle, "--port", "0"},
      {"train-decoder", "--vision", vision, "--config", config, "--dataset", toy, "--category", "hazelnut", "--out",
       (out / "dec.safetensors").string()},
      {"apg", "--llm", test::fixture("llama_tiny").string(), "--class", "hazelnut", "--out", (out / "p.json").string()},
      {"bench", "encode", "--arch", "clip-vit-l-14-336", "--iters", "1"},
      {"bench", "llm", "--decode", "1", "--prefill", "1"},
      {"bench", "maps", "--iters", "1"},
      {"bench", "model", "--model", bundle, "--iters", "1", "--tokens", "1"},
  };
  for (auto args : commands) {
    args.insert(args.end(), {"--device", "cuda"});
    const auto r = run_iadgpt(args);
    const std::string what = args[0] + " " + args[1];
    EXPECT_EQ(r.exit_code, 2) << what << ": " << r.err;
    EXPECT_NE(r.err.find("CUDA is not available in this build"), std::string::npos) << what << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << what << ": " << r.err;
  }
  const auto r = run_iadgpt({"detect", "--model", bundle, "--out", (out / "g").string(), "--device", "gpu", grid_png("000.png")});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--device gpu: unknown device"), std::string::npos) << r.err;
}

TEST(DeviceCli, ExplicitCpuOverridesABundleWrittenForCuda) {
#ifdef IADGPT_WITH_CUDA
  GTEST_SKIP() << "a CUDA build: the bundle's cuda would run there";
#endif
  const auto cuda_bundle = bundle_on("cuda").string();
  const auto out = test::scratch("cli-device-cpu");
  // Without the flag the bundle's device is used, and refused here, naming where it came from.
  auto r = run_iadgpt({"detect", "--model", cuda_bundle, "--out", (out / "refused").string(), grid_png("000.png")});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("bundle device cuda: CUDA is not available in this build"), std::string::npos) << r.err;

  // detect and chat with --device cpu given explicitly: they run, and answer as the plain bundle does.
  r = run_iadgpt({"detect", "--model", cuda_bundle, "--device", "cpu", "--class", "grid", "--max-tokens", "4", "--out",
                  (out / "cpu").string(), grid_png("000.png")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto plain = run_iadgpt({"detect", "--model", cli_bundle().string(), "--class", "grid", "--max-tokens", "4", "--out",
                           (out / "plain").string(), grid_png("000.png")});
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  const auto a = nlohmann::json::parse(std::ifstream(out / "cpu" / "000.json"));
  const auto b = nlohmann::json::parse(std::ifstream(out / "plain" / "000.json"));
  EXPECT_EQ(a["p_yes"], b["p_yes"]);
  EXPECT_EQ(a["answer"], b["answer"]);

  r = run_iadgpt({"chat", "--model", cuda_bundle, "--device", "cpu", "--image", grid_png("000.png"), "--class", "grid",
                  "--max-tokens", "4", "--message", "Is there any anomaly in the image?"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("p_yes"), std::string::npos) << r.err;
}

TEST(DeviceCli, MisspelledBundleDeviceIsABadBundle) {
  const auto dir = bundle_on("tpu");
  auto r = run_iadgpt({"bundle", "check", dir.string()});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("field 'device': unknown device 'tpu'"), std::string::npos) << r.err;
}
