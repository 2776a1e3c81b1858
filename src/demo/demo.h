// The first-contact demo (`make demo` → `iadgpt demo --out demo-out`): everything from nothing.
//
//   demo::DemoOptions o{.out = "demo-out"};
//   auto r = demo::run_demo(o);     // r.accuracy: Yes/No accuracy on the held-out parts
//
// 1. data    procedural parts (data/procedural.h): training normals, a validation split (normals +
//            defects, for the decision threshold only), held-out test normals and defects with
//            masks, the test split written as an MVTec AD tree (<out>/data).
// 2. models  a random tiny CLIP (HF dir + learned BPE vocabulary), a SentencePiece tokenizer trained
//            on the answer corpus and a random tiny LLaMA (<out>/models; demo/tiny_models.h).
// 3. train   the visual-guided decoder through the stage-2 training code (train/decoder_training.h)
//            on the training normals + CutPaste anomalies, text side frozen ("object" prompts).
// 4. inspect the held-out parts: map = the few-shot map of `shots` good parts (default; `blend`
//            averages it with the trained decoder's map, `decoder` uses that alone), score = max map, decision threshold fitted per class on the validation split (F1),
//            answer and position words from the map (METHOD §1.10), metrics per class, overlays and
//            <out>/report/index.html, which says plainly that this is a demo model.
// The LLM is created but does not yet answer here: its stage-1/3 training (`iadgpt train`) and the
// bundle pipeline come from the model/training issues; until they are merged the answer is composed
// from the map exactly as the LLM is trained to say it (see README.md of this module).
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
  int train = 10;                    // normal training images per class
  int val_good = 12, val_defect = 2;  // validation split per class (and per defect type)
  int test_good = 10, test_defect = 2;  // held-out split per class (and per defect type)
  int size = 224;                    // image side
  int64_t steps = 200;               // decoder training steps
  int64_t per_image = 4;             // CutPaste variants per training normal in the pool
  int shots = 8;                     // good reference parts per class for the few-shot map
  std::string map = "few-shot";      // few-shot, blend (+ decoder) or decoder (anomaly::MapMode names)
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
  std::vector<ClassResult> classes;
  nlohmann::ordered_json mean_metrics;
  std::filesystem::path report;  // <out>/report/index.html
  nlohmann::ordered_json timings;  // seconds per stage
};

DemoResult run_demo(const DemoOptions& options);

}  // namespace iadgpt::demo
