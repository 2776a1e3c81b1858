// Issue 14: weight-only quantization keeps the trained IAD-GPT's Yes/No decision. A small bundle is
// trained here (`iadgpt train`: frozen imagebind_tiny, llama_tiny with a LoRA, procedural parts,
// few-shot), then the same bundle inspects held-out procedural parts with its LLM in bf16 and
// quantized at load to q8 and q4 (LoRA merged first, model::load_bundle_llm), and the decisions
// are compared part by part.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "common/run.h"
#include "common/shared.h"
#include "common/tiny_training.h"
#include "data/procedural.h"
#include "image/decode.h"
#include "model/bundle.h"
#include "model/pipeline.h"

using namespace iadgpt;
namespace fs = std::filesystem;

namespace {

struct Part {
  std::string class_name;
  fs::path file;
};

std::vector<fs::path> pngs(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".png") out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

// Every held-out part of the procedural tree (good and defective), class by class.
std::vector<Part> test_parts(const fs::path& root, const std::vector<std::string>& classes) {
  std::vector<Part> out;
  for (const auto& c : classes)
    for (const auto& d : fs::directory_iterator(root / c / "test"))
      for (const auto& f : pngs(d.path())) out.push_back({c, f});
  return out;
}

struct Decisions {
  std::vector<bool> anomalous;
  std::vector<double> log_odds;
};

Decisions decide(model::Bundle bundle, const std::string& quant, const fs::path& root, const std::vector<Part>& parts,
                 int shots) {
  bundle.dtype = "bf16";
  bundle.quant = quant;
  model::IadGpt m(bundle);
  Decisions out;
  std::string current;
  for (const auto& p : parts) {
    if (p.class_name != current) {
      current = p.class_name;
      m.set_class(current);
      std::vector<cv::Mat> refs;
      const auto train = pngs(root / current / "train" / "good");
      for (int i = 0; i < shots; ++i) refs.push_back(image::decode_file(train.at(i)));
      m.set_references(refs);
    }
    model::InspectOptions opt;
    opt.generate = false;  // the decision is the first answer token (one prefill)
    const auto r = m.inspect(image::decode_file(p.file), opt);
    out.anomalous.push_back(r.anomalous);
    out.log_odds.push_back(r.log_odds);
  }
  return out;
}

}  // namespace

TEST(QuantDecision, TrainedBundleDecidesYesNoAsBf16OnAtLeast98PercentOfParts) {
  const auto dir = test::scratch("quant-decision");
  fs::remove_all(dir);
  const std::vector<std::string> classes = {"washer", "screw", "pcb", "fabric", "wood"};
  data::write_procedural_dataset(dir / "parts", {.classes = classes, .train = 6, .test_good = 10, .test_defect = 2});
  const int shots = 4;
  auto cfg = test::tiny_training_config(dir / "out");
  cfg.update(nlohmann::json{
      {"llm_tuning", "lora"},
      {"lora", {{"rank", 8}, {"alpha", 16}, {"dropout", 0.0}}},
      {"llm_lr", 5e-3},
      {"datasets", {{{"kind", "mvtec"}, {"root", (dir / "parts").string()}, {"categories", classes}}}},
      {"synthesis", "cutpaste"},
      {"per_image", 2},
      {"holdout", 1},
      {"references", shots},
      {"few_shot_probability", 1.0},
      {"map", "few-shot"},
      {"decision_weight", 1.0},
      {"map_warmup", {{"steps", 50}, {"per_image", 4}}},
      {"stages", {{{"stage", 1}, {"steps", 10}}, {{"stage", 2}, {"steps", 30}}, {{"stage", 3}, {"steps", 30}}}},
      {"batch_size", 8},
      {"checkpoint_every", 0},
      {"resume", false}});
  std::ofstream(dir / "train.json") << cfg.dump(1);
  const auto r = test::run_iadgpt({"--threads", "2", "train", "--quiet", "--config", (dir / "train.json").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto bundle = model::read_bundle(dir / "out");
  ASSERT_TRUE(bundle.lora.has_value());  // the quantized runs merge it first

  const auto parts = test_parts(dir / "parts", classes);
  ASSERT_EQ(parts.size(), 5u * (10 + 5 * 2));
  const auto ref = decide(bundle, "none", dir / "parts", parts, shots);
  int yes = 0;
  for (bool a : ref.anomalous) yes += a;
  // Bounds, measured here (70 training steps) and on the demo's trained bundle (`iadgpt demo`,
  // 320 held-out and validation parts, src/llm/README.md): q8 moves the decision's log-odds by at
  // most 0.03–0.06 and agreed on 100/100 parts here; q4 by at most 0.44–0.47, and agreed on 97/100
  // here: its 3 flips were parts whose bf16 log-odds lay within that shift of 0 (a barely
  // trained model leaves parts there). So: q8 agrees on ≥ 98 % (the bound); q4 agrees on
  // ≥ 98 % of the parts whose bf16 margin |log-odds| is ≥ 1 (twice its largest shift) and on
  // ≥ 95 % overall (what a model with a few parts at the boundary keeps); the shifts themselves
  // stay under 0.25 (q8) and 1.0 (q4), about 4× and 2× what was measured: a structural error
  // (wrong block, scale or nibble) moves them by several units.
  struct Bound {
    std::string quant;
    double overall, max_shift;
  };
  for (const auto& [q, overall, bound] : {Bound{"q8", 0.98, 0.25}, Bound{"q4", 0.95, 1.0}}) {
    const auto got = decide(bundle, q, dir / "parts", parts, shots);
    int agree = 0, confident = 0, confident_agree = 0;
    double max_shift = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      const bool same = got.anomalous[i] == ref.anomalous[i];
      agree += same;
      if (std::abs(ref.log_odds[i]) >= 1.0) ++confident, confident_agree += same;
      if (!same)
        fmt::print("[ measured ] {}: {} flips (bf16 log-odds {:.3f}, {} {:.3f})\n", q, parts[i].file.string(),
                   ref.log_odds[i], q, got.log_odds[i]);
      max_shift = std::max(max_shift, std::abs(got.log_odds[i] - ref.log_odds[i]));
    }
    const double rate = static_cast<double>(agree) / static_cast<double>(parts.size());
    fmt::print("[ measured ] {}: decision agrees with bf16 on {}/{} parts ({:.3f}), on {}/{} with |log-odds| >= 1; "
               "bf16 says Yes on {}; max |Δ log-odds| {:.3f}\n",
               q, agree, parts.size(), rate, confident_agree, confident, yes, max_shift);
    EXPECT_GE(rate, overall) << q;
    EXPECT_GE(static_cast<double>(confident_agree), 0.98 * confident) << q;
    EXPECT_LE(max_shift, bound) << q;
  }
  // The test means something only if the model decides both ways on these parts.
  EXPECT_GT(yes, 5);
  EXPECT_LT(yes, static_cast<int>(parts.size()) - 5);
}
