// The bundle's `quant` field and `model::quantize_bundle` (issue 14): a bundle quantized to disk
// (its delta's LoRA and its own LoRA merged first) inspects exactly as the same bundle quantized
// at load; the field is validated against the stored LLM.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "image/decode.h"
#include "io/error.h"
#include "llm/model.h"
#include "model/bundle.h"
#include "model/pipeline.h"
#include "model/tiny_bundle.h"

using namespace iadgpt;
namespace fs = std::filesystem;

namespace {

// tiny bundle + PandaGPT-style delta (llama_proj, LoRA r 8 on q/k/v/o) + a PEFT LoRA on top.
model::Bundle bundle_with_loras(const std::string& name) {
  auto b = test::tiny_bundle_fields(name);
  b.delta = test::fixture("llama_tiny/pandagpt_delta/pytorch_model.pt");
  b.lora_alpha = 16;  // the fixture's (delta_info.json)
  b.lora = test::fixture("llama_tiny/lora");
  model::init_random_adapters(b, 5);
  model::write_bundle(b, b.dir);
  return model::read_bundle(b.dir);
}

// The decision's log-odds and the prompt's logits of one inspected part (one prefill).
std::pair<double, torch::Tensor> decision(const model::Bundle& b) {
  model::IadGpt m(b);
  m.set_class("grid");
  model::InspectOptions opt;
  opt.generate = false;
  const auto r = m.inspect(image::decode_file(test::data("mvtec_ad/grid/train/good/000.png")), opt);
  return {r.log_odds, m.prompt_logits("")};
}

std::string bundle_error(const fs::path& dir) {
  try {
    model::read_bundle(dir);
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(QuantBundle, QuantizedBundleInspectsExactlyAsQuantizingAtLoad) {
  const auto b = bundle_with_loras("quant-bundle");
  for (auto f : {nn::QuantFormat::Q8, nn::QuantFormat::Q4}) {
    const auto out = test::scratch("quant-bundle") / fmt::format("out-{}", nn::quant_format_name(f));
    const auto q = model::quantize_bundle(b, f, out);
    EXPECT_EQ(q.quant, nn::quant_format_name(f));
    EXPECT_FALSE(q.lora.has_value());  // merged into the stored weights
    EXPECT_EQ(llm::stored_quant_format(q.llm / "config.json"), f);
    auto at_load = b;
    at_load.quant = nn::quant_format_name(f);
    const auto [odds_file, logits_file] = decision(q);
    const auto [odds_load, logits_load] = decision(at_load);
    EXPECT_EQ(odds_file, odds_load) << nn::quant_format_name(f);
    EXPECT_TRUE(torch::equal(logits_file, logits_load)) << nn::quant_format_name(f);
    // The LoRAs are really in the stored weights: without them the same quantization differs.
    auto no_lora = at_load;
    no_lora.lora.reset();
    EXPECT_FALSE(torch::equal(decision(no_lora).second, logits_file)) << nn::quant_format_name(f);
  }
}

TEST(QuantBundle, QuantFieldIsValidatedAgainstTheStoredLlm) {
  const auto b = bundle_with_loras("quant-bundle-fields");
  const auto q8 = model::quantize_bundle(b, nn::QuantFormat::Q8, test::scratch("quant-bundle-fields") / "q8");
  auto edit = [&](const std::string& name, const std::function<void(nlohmann::json&)>& change) {
    const auto dir = test::scratch("quant-bundle-fields") / name;
    fs::create_directories(dir);
    auto moved = q8;
    moved.dir = dir;  // paths outside the new directory are written absolute
    auto j = model::bundle_to_json(moved);
    change(j);
    std::ofstream(dir / "iadgpt.json") << j.dump();
    return bundle_error(dir);
  };
  auto e = edit("unknown", [](nlohmann::json& j) { j["quant"] = "q5"; });
  EXPECT_NE(e.find("field 'quant'"), std::string::npos) << e;
  EXPECT_NE(e.find("'q5'"), std::string::npos) << e;
  e = edit("mismatch", [](nlohmann::json& j) { j["quant"] = "q4"; });
  EXPECT_NE(e.find("stored quantized as q8"), std::string::npos) << e;
  e = edit("missing", [](nlohmann::json& j) { j.erase("quant"); });
  EXPECT_NE(e.find("field 'quant' is 'none'"), std::string::npos) << e;
  e = edit("lora", [&](nlohmann::json& j) { j["lora"] = test::fixture("llama_tiny/lora").string(); });
  EXPECT_NE(e.find("field 'lora'"), std::string::npos) << e;
  EXPECT_THROW(model::quantize_bundle(q8, nn::QuantFormat::Q4, test::scratch("quant-bundle-fields") / "again"), InputError);
  // The field round-trips through the JSON and is left out when none.
  EXPECT_EQ(model::bundle_to_json(q8).at("quant"), "q8");
  EXPECT_FALSE(model::bundle_to_json(b).contains("quant"));
}
