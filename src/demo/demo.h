// The first-contact demo (`make demo` → `iadgpt demo --out demo-out`): everything from nothing.
//
//   demo::DemoOptions o{.out = "demo-out"};
//   auto r = demo::run_demo(o);     // r.accuracy: Yes/No accuracy on the held-out parts
//
// 1. data    procedural parts (data/procedural.h) as MVTec AD trees: training normals and the
//            held-out test normals and defects with masks (<out>/data), a validation split of
//            other seeds (<out>/validation: the trainer's validation parts and the calibration).
// 2. models  a random tiny CLIP (HF dir + learned BPE vocabulary), a SentencePiece tokenizer trained
//            on the answer corpus and a random tiny LLaMA (<out>/models; demo/tiny_models.h).
// 3. train   the whole IAD-GPT through the trainer of `iadgpt train` (train/trainer.h; config in
//            <out>/models/train.json): the decoder's map warm-up on normals + CutPaste, then stages
//            1-3 with the tiny LLaMA fully trained on the answers, few-shot (the MMF reads the
//            references' map). The bundle is <out>/models/bundle.
// 4. inspect per class, on the validation split: the drawn mask's threshold and the Yes/No
//            decision's bias (written into the bundle); then the held-out parts with that bundle
//            (model::IadGpt, `shots` good references): the LLM answers (Yes/No and positions);
//            metrics per class, where the answer and the map place the defects, a three-turn
//            conversation, overlays and <out>/report/index.html, which says plainly that this is a
//            demo model.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace iadgpt::demo {

struct DemoOptions {
  std::filesystem::path out = "demo-out";
  std::vector<std::string> classes;  // empty: every procedural class
  // 20 normals (18 trained, 2 held out by the trainer), 10 of them the references, and a
  // validation split of 24 normals + 4 per defect type: with 10/6/12+2 the LLM read wood's grain
  // as defects and the calibration fitted noise (issue 13: 87-91/100; src/demo/README.md).
  int train = 20;                    // normal training images per class
  int val_good = 24, val_defect = 4;  // validation split per class (and per defect type)
  int test_good = 10, test_defect = 2;  // held-out split per class (and per defect type)
  int size = 224;                    // image side
  int64_t steps = 1000;              // map warm-up steps (the decoder alone, 56² loss maps)
  int64_t llm_steps = 450;           // LLM training steps (batch 16), stages 1/2/3 = 10/40/50 %
  int64_t per_image = 2;             // synthetic variants per training normal in the trainer's pool
  std::string synthesis = "cutpaste";  // the trainer's synthetic anomalies: cutpaste or nsa
  int shots = 10;                    // good reference parts per class for the few-shot map (≤ train − 3)
  int64_t llm_vocab = 512;           // SentencePiece vocabulary size asked for
  uint64_t seed = 0;
  std::function<void(std::string_view)> log;  // progress lines (none when empty)
};

struct ClassResult {
  std::string class_name;
  int correct = 0, total = 0;
  double threshold = 0;
  nlohmann::ordered_json metrics;  // eval::to_json + yes_no_accuracy
};

struct DemoResult {
  double accuracy = 0;  // Yes/No accuracy over every held-out part
  int correct = 0, total = 0;
  // Defective held-out parts answered "Yes", and how many of them the answer's / the map's
  // position words place in a cell that holds the defect.
  int positions = 0, answer_position_right = 0, map_position_right = 0;
  double trainer_pairs_accuracy = 0;       // the trainer's held-out synthetic pairs (with references)
  double trainer_validation_accuracy = 0;  // the trainer's validation parts, before calibration
  double validation_accuracy = 0;          // the validation parts after the decision's calibration
  std::vector<ClassResult> classes;
  nlohmann::ordered_json mean_metrics;
  std::filesystem::path report;  // <out>/report/index.html
  nlohmann::ordered_json timings;  // seconds per stage
};

DemoResult run_demo(const DemoOptions& options);

}  // namespace iadgpt::demo
