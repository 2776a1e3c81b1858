// The bundle file: round trip, and the specific errors of bad bundles.
#include <gtest/gtest.h>

#include <fstream>

#include "io/error.h"
#include "anomaly/maps.h"
#include "model/adapters.h"
#include "model/tiny_bundle.h"

using namespace iadgpt;
namespace fs = std::filesystem;

namespace {

nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(std::ifstream(p)); }
void write_json(const fs::path& p, const nlohmann::json& j) { std::ofstream(p) << j.dump(2); }

// The InputError message of read_bundle(dir), or "" when it loads.
std::string load_error(const fs::path& dir) {
  try {
    model::read_bundle(dir);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Bundle, RoundTripsAndWritesAdapterPathsRelative) {
  auto b = test::tiny_bundle("bundle-rt");
  EXPECT_EQ(b.expert, "mmf");
  EXPECT_EQ(b.mode, "self-supervised");
  ASSERT_TRUE(b.mmf && b.tge && b.decoder);
  const auto j = read_json(b.dir / "iadgpt.json");
  EXPECT_EQ(j.at("mmf"), "mmf.safetensors");  // inside the bundle: relative, so the folder can move
  EXPECT_EQ(j.at("format"), "iadgpt-bundle");
  EXPECT_TRUE(fs::path(j.at("llm").get<std::string>()).is_absolute());
  EXPECT_EQ(fs::weakly_canonical(*b.mmf), fs::weakly_canonical(b.dir / "mmf.safetensors"));
}

TEST(Bundle, MissingFileNamesTheField) {
  auto b = test::tiny_bundle("bundle-missing");
  fs::remove(b.dir / "tge.safetensors");
  const auto err = load_error(b.dir);
  EXPECT_NE(err.find("'tge'"), std::string::npos) << err;
  EXPECT_NE(err.find("does not exist"), std::string::npos) << err;
}

TEST(Bundle, MmfWidthDifferentFromLlmHiddenIsRejected) {
  auto b = test::tiny_bundle("bundle-width");
  torch::NoGradGuard no_grad;
  model::MultiMaskFusion narrow(32);  // llama_tiny is 64 wide
  io::save_safetensors(b.dir / "mmf.safetensors", model::parameter_tensors(*narrow));
  const auto err = load_error(b.dir);
  EXPECT_NE(err.find("'mmf'"), std::string::npos) << err;
  EXPECT_NE(err.find("LLM hidden size"), std::string::npos) << err;
  EXPECT_NE(err.find("64"), std::string::npos) << err;
}

TEST(Bundle, DecoderWidthDifferentFromVisionTowerIsRejected) {
  auto b = test::tiny_bundle("bundle-decoder");
  torch::NoGradGuard no_grad;
  anomaly::VisualDecoder wrong(48, 32, 4);  // imagebind_tiny's tower is 64 wide
  io::save_safetensors(b.dir / "decoder.safetensors", anomaly::decoder_tensors(wrong));
  const auto err = load_error(b.dir);
  EXPECT_NE(err.find("'decoder'"), std::string::npos) << err;
  EXPECT_NE(err.find("vision tower width"), std::string::npos) << err;
}

TEST(Bundle, UnknownModeExpertDtypeAndFieldAreNamed) {
  auto b = test::tiny_bundle("bundle-enums");
  const auto file = b.dir / "iadgpt.json";
  const auto good = read_json(file);
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"mode", "zero-shot-ish"}, {"map", "mean"}, {"expert", "mlp"}, {"dtype", "fp8"}, {"colour", "red"},
           {"vision_quant", "q4"}, {"vision_quant", "int8"}}) {
    auto j = good;
    j[key] = value;
    write_json(file, j);
    const auto err = load_error(b.dir);
    EXPECT_NE(err.find("'" + key + "'"), std::string::npos) << key << ": " << err;
  }
  write_json(file, good);
  EXPECT_EQ(load_error(b.dir), "");
  // A valid vision_quant is read and written back.
  auto j = good;
  j["vision_quant"] = "q8";
  write_json(file, j);
  EXPECT_EQ(model::read_bundle(b.dir).vision_quant, "q8");
  EXPECT_EQ(model::bundle_to_json(model::read_bundle(b.dir)).at("vision_quant"), "q8");
  write_json(file, good);
}

TEST(Bundle, MissingIadgptJsonAndMissingRequiredField) {
  EXPECT_NE(load_error(test::scratch("bundle-none")).find("iadgpt.json"), std::string::npos);
  auto b = test::tiny_bundle("bundle-required");
  auto j = read_json(b.dir / "iadgpt.json");
  j.erase("llm");
  write_json(b.dir / "iadgpt.json", j);
  EXPECT_NE(load_error(b.dir).find("missing field 'llm'"), std::string::npos);
}

TEST(Bundle, InitRandomAdaptersIsDeterministicPerSeed) {
  auto a = test::tiny_bundle("bundle-seed-a", 7);
  auto b = test::tiny_bundle("bundle-seed-b", 7);
  auto c = test::tiny_bundle("bundle-seed-c", 8);
  auto ta = io::load_safetensors(*a.tge), tb = io::load_safetensors(*b.tge), tc = io::load_safetensors(*c.tge);
  EXPECT_TRUE(torch::equal(ta.at("normal_path.weight"), tb.at("normal_path.weight")));
  EXPECT_FALSE(torch::equal(ta.at("normal_path.weight"), tc.at("normal_path.weight")));
  // Non-zero pathways: the TGE is not just llama_proj.
  EXPECT_GT(ta.at("abnormal_path.weight").abs().max().item<double>(), 0.0);
}
