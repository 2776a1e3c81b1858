// Issue 14: weight-only quantization keeps the trained IAD-GPT's Yes/No decision and its maps. A
// small bundle is trained once per run (`iadgpt train`: frozen imagebind_tiny, llama_tiny with a
// LoRA, procedural parts, few-shot), then the same bundle inspects held-out procedural parts in
// bf16 and quantized at load: its LLM to q8 and q4 (LoRA merged first, model::load_bundle_llm), or
// its vision tower to q8 (vision/vit.h quantize_weights); the results are compared part by part.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "common/run.h"
#include "common/shared.h"
#include "common/tiny_training.h"
#include "data/procedural.h"
#include "eval/metrics.h"
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
  std::vector<torch::Tensor> maps;  // [H, W] fp32 per part
};

// `quant`: the LLM's format; `vision_quant`: the vision tower's.
Decisions decide(model::Bundle bundle, const std::string& quant, const fs::path& root, const std::vector<Part>& parts,
                 int shots, const std::string& vision_quant = "none") {
  bundle.dtype = "bf16";
  bundle.quant = quant;
  bundle.vision_quant = vision_quant;
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
    out.maps.push_back(r.map.to(torch::kFloat32).contiguous());
  }
  return out;
}

// The bundle of the tests: trained on `classes` of the procedural tree under dir/parts.
model::Bundle train_bundle(const fs::path& dir, const std::vector<std::string>& classes, int shots) {
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
      {"stages", {{{"stage", 1}, {"steps", 10}}, {{"stage", 2}, {"steps", 30}}, {{"stage", 3}, {"steps", 45}}}},
      {"batch_size", 8},
      {"checkpoint_every", 0},
      {"resume", false}});
  std::ofstream(dir / "train.json") << cfg.dump(1);
  const auto r = test::run_iadgpt({"--threads", "2", "train", "--quiet", "--config", (dir / "train.json").string()});
  if (r.exit_code != 0) throw std::runtime_error("iadgpt train failed: " + r.err);
  return model::read_bundle(dir / "out");
}

// The defect mask of a held-out part (0/1, the part's size): <class>/ground_truth/<defect>/NNN_mask.png,
// all zeros for a good part.
torch::Tensor part_mask(const Part& p, int64_t h, int64_t w) {
  const auto defect = p.file.parent_path().filename().string();
  if (defect == "good") return torch::zeros({h, w}, torch::kUInt8);
  const auto file = p.file.parent_path().parent_path().parent_path() / "ground_truth" / defect /
                    (p.file.stem().string() + "_mask.png");
  const auto mask = image::decode_file(file);  // 8-bit, 0/255, the channels alike
  const auto t = torch::from_blob(mask.data, {mask.rows, mask.cols, mask.channels()}, torch::kUInt8).select(2, 0);
  if (t.size(0) != h || t.size(1) != w) throw std::runtime_error("mask and map sizes differ: " + file.string());
  return t.gt(127).to(torch::kUInt8).contiguous();
}

// Pixel AUROC of the maps against the parts' masks, all pixels pooled (eval::binary_metrics).
double pixel_auroc(const std::vector<torch::Tensor>& maps, const std::vector<Part>& parts) {
  std::vector<float> scores;
  std::vector<uint8_t> labels;
  for (size_t i = 0; i < parts.size(); ++i) {
    const auto& m = maps[i];
    const auto mask = part_mask(parts[i], m.size(0), m.size(1));
    scores.insert(scores.end(), m.data_ptr<float>(), m.data_ptr<float>() + m.numel());
    labels.insert(labels.end(), mask.data_ptr<uint8_t>(), mask.data_ptr<uint8_t>() + mask.numel());
  }
  return eval::binary_metrics(scores, labels, "pixel").auroc;
}

struct Trained {
  fs::path dir;
  std::vector<std::string> classes = {"washer", "screw", "pcb", "fabric", "wood"};
  int shots = 4;
  model::Bundle bundle;
  std::vector<Part> parts;
  Decisions bf16;  // the reference: LLM and vision tower unquantized
};

// Trained once per test binary run; every test compares against its bf16 results.
const Trained& trained() {
  static const Trained t = [] {
    Trained t;
    t.dir = test::scratch("quant-decision");
    fs::remove_all(t.dir);
    data::write_procedural_dataset(t.dir / "parts", {.classes = t.classes, .train = 6, .test_good = 10, .test_defect = 2});
    t.bundle = train_bundle(t.dir, t.classes, t.shots);
    t.parts = test_parts(t.dir / "parts", t.classes);
    t.bf16 = decide(t.bundle, "none", t.dir / "parts", t.parts, t.shots);
    return t;
  }();
  return t;
}

}  // namespace

TEST(QuantDecision, TrainedBundleDecidesYesNoAsBf16OnAtLeast98PercentOfParts) {
  const auto& t = trained();
  const auto& [dir, classes, shots, bundle, parts, ref] = t;
  ASSERT_TRUE(bundle.lora.has_value());  // the quantized runs merge it first
  ASSERT_EQ(parts.size(), 5u * (10 + 5 * 2));
  int yes = 0;
  for (bool a : ref.anomalous) yes += a;
  // Bounds, measured here (70 training steps) and on the demo's trained bundle (`iadgpt demo`,
  // 320 held-out and validation parts, src/llm/README.md): q8 moves the decision's log-odds by at
  // most 0.03–0.06 and agreed on 100/100 parts here; q4 by at most 0.44–0.47, and agreed on 97/100
  // here: its 3 flips were parts whose bf16 log-odds lay within that shift of 0 (a barely
  // trained model leaves parts there). On the Zen 4 VM the 70-step bundle left 23 parts within
  // |log-odds| < 1 and q8 flipped two at 0.031 and 0.062 (one or two bf16 steps of the logits):
  // 98/100, on the bound. Stage 3 now takes 45 steps instead of 30 (85 in all, +13 s): 97 parts
  // at |log-odds| ≥ 1, q8 and q4 100/100, shifts 0.094 and 0.375 (2026-12-06, Zen 4); with
  // ATEN_CPU_CAPABILITY=avx512 (another trained bundle) 96 at ≥ 1, q8 and q4 99/100 (one part at
  // 0.031 flipped), shifts 0.062 and 0.375.
  // So: q8 agrees on ≥ 98 % (the bound); q4 agrees on
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

TEST(QuantDecision, Int8VisionTowerKeepsTheMapsAndTheDecision) {
  const auto& t = trained();
  const auto& ref = t.bf16;
  const auto got = decide(t.bundle, "none", t.dir / "parts", t.parts, t.shots, "q8");
  int agree = 0;
  double max_shift = 0, max_map = 0;
  for (size_t i = 0; i < t.parts.size(); ++i) {
    agree += got.anomalous[i] == ref.anomalous[i];
    max_shift = std::max(max_shift, std::abs(got.log_odds[i] - ref.log_odds[i]));
    max_map = std::max(max_map, (got.maps[i] - ref.maps[i]).abs().max().item<double>());
  }
  const double auroc_bf16 = pixel_auroc(ref.maps, t.parts), auroc_q8 = pixel_auroc(got.maps, t.parts);
  fmt::print("[ measured ] vision q8: decision agrees with bf16 on {}/{} parts; max |Δ log-odds| {:.3f}; max |Δ map| {:.4f}; "
             "pixel AUROC bf16 {:.4f}, q8 {:.4f}\n",
             agree, t.parts.size(), max_shift, max_map, auroc_bf16, auroc_q8);
  // Bounds, measured here (2026-12-05): 100/100 parts agree, log-odds move by ≤ 0.062, map values
  // (0..1) by ≤ 0.0038, pixel AUROC 0.8813 → 0.8809; with the 85-step bundle (2026-12-06, Zen 4)
  // 100/100, ≤ 0.094, ≤ 0.0038, 0.8813 → 0.8810 (avx512 dispatch: 99/100, 0.156). (A 100-step
  // bundle moved by 0.25, on the bound: its larger logits have larger bf16 steps.) The decision:
  // ≥ 98 % agreement, as the issue asks of quantization, and a shift under 0.25 (4× measured; the
  // LLM's q8 bound above).
  // The maps: ≤ 0.02 (5× measured), and the pixel AUROC within 0.01 of bf16's. With the
  // quantized layers' bias left out (a structural bug), 95/100 agreed, the shift was 0.44 and
  // the map moved by 0.033: three of the four checks fail.
  EXPECT_GE(static_cast<double>(agree), 0.98 * static_cast<double>(t.parts.size()));
  EXPECT_LE(max_shift, 0.25);
  EXPECT_LE(max_map, 0.02);
  EXPECT_LE(std::abs(auroc_q8 - auroc_bf16), 0.01);
  EXPECT_GT(max_map, 0.0) << "vision_quant q8 changed nothing: the field did not reach the tower";
}
