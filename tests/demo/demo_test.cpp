#include <fmt/format.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <nlohmann/json.hpp>

#include "anomaly/detector.h"
#include "model/bundle.h"
#include "common/run.h"
#include "common/shared.h"
#include "data/procedural.h"
#include "demo/report.h"
#include "demo/tiny_models.h"
#include "io/checkpoint.h"
#include "llm/model.h"
#include "llm/tokenizer.h"
#include "text/clip_tokenizer.h"
#include "vision/loader.h"

using namespace iadgpt;
namespace fs = std::filesystem;

TEST(TinyModels, BpeMergesAreLearnedFromTheCorpusFirstThenPaddedToTheTokenizersFloor) {
  const auto corpus = demo::clip_corpus({"washer", "screw"});
  const auto merges = demo::learn_bpe_merges(corpus);
  EXPECT_EQ(merges.size(), 1000u);
  // Learned merges come first: the prompts' commonest words are single symbols after them ...
  const auto learned_end = std::find(merges.begin(), merges.end(), "a a");  // the first padding merge
  ASSERT_NE(learned_end, merges.end());
  EXPECT_GT(learned_end - merges.begin(), 20);
  for (const auto* word : {"photo</w>", "washer</w>", "damaged</w>"}) {
    bool made = false;
    for (auto it = merges.begin(); it != learned_end; ++it) {
      std::string joined = *it;
      joined.erase(joined.find(' '), 1);
      made |= joined == word;
    }
    EXPECT_TRUE(made) << word;
  }
  EXPECT_EQ(demo::learn_bpe_merges(corpus), merges);  // deterministic
}

TEST(TinyModels, TinyClipLoadsThroughTheUpstreamLoadersAndEncodesPrompts) {
  const auto dir = test::scratch("tiny_clip");
  fs::remove_all(dir);
  const auto vocab = demo::write_tiny_clip(dir, demo::clip_corpus({"washer"}), {.image_size = 112});
  const auto ckpt = io::load_checkpoint(dir);
  const auto vision = vision::load_vision(ckpt);
  EXPECT_EQ(vision.config.family, vision::Family::HfClip);
  EXPECT_EQ(vision.config.width, 96);
  EXPECT_EQ(vision.config.layers, 4);
  EXPECT_EQ(vision.config.embed_dim, 64);
  const auto tok = text::ClipTokenizer::load(vocab);
  const auto words = tok.encode("a photo of a damaged washer.");
  EXPECT_LT(words.size(), 12u);  // learned merges make whole words, not letters
  anomaly::Detector det({.vision = dir, .vocab = vocab, .mode = anomaly::MapMode::ZeroShot});
  det.set_class("washer");
  EXPECT_EQ(det.text_features().f_text.sizes(), (std::vector<int64_t>{2, 64}));
  const auto d = det.detect({data::make_part("washer", 1, 112).image});
  EXPECT_EQ(d[0].map.size(0), 112);
}

TEST(TinyModels, TokenizerIsTrainedOnTheAnswerCorpusWithLlamaIdsAndIsDeterministic) {
  const auto a = test::scratch("tok_a"), b = test::scratch("tok_b");
  const auto corpus = demo::answer_corpus({"washer", "pcb"}, data::procedural_defects());
  const int64_t n = demo::train_llm_tokenizer(a, corpus, 400);
  demo::train_llm_tokenizer(b, corpus, 400);
  EXPECT_GT(n, 259);  // 3 specials + 256 byte pieces, then learned merges
  EXPECT_LE(n, 400);
  const auto tok = llm::Tokenizer::from_path(a), again = llm::Tokenizer::from_path(b);
  // Same pieces in the same order (the files differ only in the input paths they record).
  ASSERT_EQ(tok.vocab_size(), again.vocab_size());
  int differing = 0;
  for (int64_t id = 0; id < tok.vocab_size(); ++id) differing += tok.piece(id) != again.piece(id);
  EXPECT_EQ(differing, 0);
  EXPECT_EQ(tok.unk_id(), 0);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  const std::string answer = "Yes, there is an anomaly in the image, at the top left of the image.";
  const auto ids = tok.encode(answer);
  EXPECT_LT(ids.size(), 20u);  // the answer's words are pieces of their own
  EXPECT_EQ(tok.decode(ids), answer);
  // The fast decision reads the first answer token: "Yes" and "No" must be single pieces.
  EXPECT_EQ(tok.encode("Yes").size(), 1u);
  EXPECT_EQ(tok.encode("No").size(), 1u);
}

TEST(TinyModels, TinyLlamaLoadsAsAnHfDirectoryAndGivesLogitsOverTheTokenizer) {
  const auto dir = test::scratch("tiny_llama");
  const int64_t n = demo::train_llm_tokenizer(dir, demo::answer_corpus({"screw"}, data::procedural_defects()), 400);
  const auto cfg = demo::write_tiny_llama(dir, {.vocab_size = n});
  auto model = llm::load_model(dir);
  EXPECT_EQ(model.config.vocab_size, n);
  EXPECT_EQ(model.config.hidden_size, cfg.hidden_size);
  const auto ids = llm::Tokenizer::from_path(dir).encode("Is there any anomaly in the image?", true);
  const auto r = test::run_iadgpt({"llm-logits", "--model", dir.string(), "--tokens",
                                   std::to_string(ids[0]) + "," + std::to_string(ids[1]), "--out",
                                   (dir / "logits.safetensors").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(io::load_safetensors(dir / "logits.safetensors").at("logits").sizes(), (std::vector<int64_t>{2, n}));
}

TEST(Report, EscapesTextIntoHtml) {
  EXPECT_EQ(demo::html_escape("<a href=\"x\">&'</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
}

// The whole `make demo` pipeline, scaled down (2 classes, a few parts, 30 + 6 steps, 112 px) so it
// runs in seconds; the full-size run and its ≥ 90 % accuracy are measured by `make demo` (README)
// and by the trainer's acceptance test (tests/train).
TEST(DemoPipeline, ScaledDownRunWritesTheReportAndPrintsTheAccuracy) {
  const auto out = test::scratch("demo_small");
  fs::remove_all(out);
  // One thread: OpenMP workers spin when the test machine is oversubscribed.
  const auto r = test::run_iadgpt({"--threads", "1", "demo", "--out", out.string(), "--classes", "washer", "pcb", "--train", "4",
                                   "--val-good", "2", "--val-defect", "1", "--test-good", "2", "--test-defect", "1",
                                   "--size", "112", "--steps", "30", "--llm-steps", "6", "--per-image", "1", "--shots", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const auto html = test::slurp(out / "report/index.html");
  // The accuracy, recounted from the per-part results the report shows: each card's truth from its
  // defect name (the folder the part came from: "good" is normal) and the first Yes/No word of its
  // answer. An answer with neither word is judged by the card's own ok/bad mark (the demo then
  // falls back to the fast decision, which the report does not show).
  const std::regex card_re(R"re(<div class="card">.*?<b>([^<]*)</b> · truth: (\w+) · .*?<span class="(ok|bad)">\w+</span><br>answer: “(.*?)”<br>map: .*?</div></div>)re");
  const std::regex word_re(R"([A-Za-z]+)");
  int cards = 0, correct = 0;
  std::map<std::string, std::pair<int, int>> per_class;  // class -> (correct, total), from the picture names
  for (auto it = std::sregex_iterator(html.begin(), html.end(), card_re); it != std::sregex_iterator(); ++it) {
    const auto& m = *it;
    const std::string defect = m[1], truth = m[2], mark = m[3], answer = m[4];
    const bool anomalous = defect != "good";
    EXPECT_EQ(truth, anomalous ? "anomalous" : "normal") << defect;
    std::optional<bool> says_yes;
    for (auto w = std::sregex_iterator(answer.begin(), answer.end(), word_re); w != std::sregex_iterator() && !says_yes; ++w) {
      std::string word = w->str();
      for (auto& c : word) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (word == "yes") says_yes = true;
      if (word == "no") says_yes = false;
    }
    const bool right = says_yes ? *says_yes == anomalous : mark == "ok";
    if (says_yes) {
      EXPECT_EQ(mark, right ? "ok" : "bad") << answer;
    }
    const auto cls = m.str(0).substr(m.str(0).find("alt=\"") + 5);
    auto& pc = per_class[cls.substr(0, cls.find(' '))];
    pc.first += right, pc.second += 1;
    correct += right, ++cards;
  }
  EXPECT_EQ(cards, 14);  // 2 classes × (2 good + 5 defects)
  std::smatch printed;
  ASSERT_TRUE(std::regex_search(r.out, printed, std::regex(R"re(Yes/No accuracy on held-out parts: ([0-9.]+) % \((\d+)/(\d+)\))re")))
      << r.out;
  EXPECT_EQ(std::stoi(printed[2]), correct) << r.out;
  EXPECT_EQ(std::stoi(printed[3]), cards);
  // Printed with one decimal: within 0.05 percentage points of the recount.
  EXPECT_NEAR(std::stod(printed[1]), 100.0 * correct / cards, 0.05);
  const auto summary = nlohmann::json::parse(test::slurp(out / "report/summary.json"));
  EXPECT_EQ(summary.at("correct").get<int>(), correct);
  EXPECT_EQ(summary.at("total").get<int>(), cards);
  EXPECT_DOUBLE_EQ(summary.at("yes_no_accuracy").get<double>(), static_cast<double>(correct) / cards);
  ASSERT_EQ(per_class.size(), 2u);
  for (const auto& [cls, pc] : per_class)
    EXPECT_DOUBLE_EQ(summary.at("classes").at(cls).at("yes_no_accuracy").get<double>(),
                     static_cast<double>(pc.first) / pc.second)
        << cls;
  EXPECT_NE(html.find("This is a demo model."), std::string::npos);
  EXPECT_NE(html.find("Real weights"), std::string::npos);
  // Every held-out part has a picture: 2 classes × (2 good + 5 defects).
  int pictures = 0;
  for (const auto& e : fs::directory_iterator(out / "report/img")) pictures += e.path().extension() == ".png";
  EXPECT_EQ(pictures, 14);
  EXPECT_TRUE(fs::is_regular_file(out / "report/summary.json"));
  EXPECT_TRUE(fs::is_regular_file(out / "models/llm/tokenizer.model"));
  // The trainer's bundle answered: it loads, few-shot, and its log has every step.
  const auto bundle = model::read_bundle(out / "models/bundle");
  EXPECT_EQ(bundle.mode, "few-shot");
  EXPECT_NE(r.out.find("[3/4] train: map warm-up (30 steps) + LLM stages 1-3 (6 steps)"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::is_directory(out / "data/washer/ground_truth/crack"));
  // The training config (`iadgpt train --config` reruns it) names the demo's own models and parts.
  const auto cfg = nlohmann::json::parse(test::slurp(out / "models/train.json"));
  EXPECT_EQ(cfg.at("llm"), "llm");
  EXPECT_EQ(cfg.at("datasets").at(0).at("categories"), (std::vector<std::string>{"washer", "pcb"}));
  EXPECT_TRUE(fs::is_regular_file(out / "models" / cfg.at("vocab").get<std::string>()));
}

// Issue 13: a demo that misses --min-accuracy is a failed check (exit 3, one line naming the
// accuracy and the bar), not an internal error. A bar of 1.01 is above any accuracy: always a miss.
TEST(DemoPipeline, MissingMinAccuracyIsACheckFailureWithExitCode3) {
  const auto out = test::scratch("demo_bar");
  fs::remove_all(out);
  const auto r = test::run_iadgpt({"--threads", "1", "demo", "--out", out.string(), "--classes", "washer", "--train", "4",
                                   "--val-good", "1", "--val-defect", "1", "--test-good", "1", "--test-defect", "1",
                                   "--size", "112", "--steps", "10", "--llm-steps", "3", "--per-image", "1", "--shots", "1",
                                   "--min-accuracy", "1.01"});
  EXPECT_EQ(r.exit_code, 3) << r.out << r.err;
  EXPECT_NE(r.err.find("iadgpt: check failed: the held-out Yes/No accuracy"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--min-accuracy 1.010"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("internal error"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::is_regular_file(out / "report/index.html"));  // the report is written before the check
}

TEST(DemoPipeline, BadSplitIsBadInput) {
  const auto r = test::run_iadgpt({"demo", "--out", test::scratch("demo_bad").string(), "--shots", "99"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--shots"), std::string::npos) << r.err;
}

// Issue 6 acceptance: the full three stages of `iadgpt train` with llama_tiny (full fine-tune,
// stories260K tokenizer) learn to answer Yes/No from the image. Frozen demo tiny CLIP (random
// weights), our procedural parts (5 classes × 10 normals, 2 per class held out), CutPaste: map
// warm-up 1000 steps, stages 20/100/80 (adapters at 1e-3), batch 16, decision_weight 1, MMF initialised
// scale-keeping (mmf_init kaiming), few-shot throughout with 6
// references (on a random tower it is the references' map that separates; the decoder map alone
// does not, src/train/README.md; 4 references gave 0.94 at step 150 but 0.86 at 200). Held-out:
// 2 normal parts per class never trained on, 4 CutPaste anomalies each (another seed) = 40 pairs.
TEST(TrainLearning, ThreeStagesWithLlamaTinyAnswerHeldOutPairsAtLeastNinetyPercentRight) {
  const auto dir = test::scratch("train-learning");
  fs::remove_all(dir);
  data::write_procedural_dataset(dir / "parts", {.train = 10, .test_good = 1, .test_defect = 1});
  const auto vocab = demo::write_tiny_clip(dir / "clip", demo::clip_corpus(data::procedural_classes()), {});
  nlohmann::json cfg{{"out", (dir / "out").string()},
           {"vision", (dir / "clip" / "model.safetensors").string()},
           {"vision_config", (dir / "clip" / "config.json").string()},
           {"vocab", vocab.string()},
           {"taps", {0, 1, 2, 3}},
           {"llm", test::fixture("llama_tiny").string()},
           {"tokenizer", test::fixture("stories260K/tokenizer.model").string()},
           {"resume", false}};
  cfg["datasets"] = {{{"kind", "mvtec"}, {"root", (dir / "parts").string()},
                      {"categories", {"washer", "screw", "pcb", "fabric", "wood"}}}};
  cfg["llm_tuning"] = "full";
  cfg["llm_lr"] = 5e-3;
  cfg["synthesis"] = "cutpaste";
  cfg["per_image"] = 2;
  cfg["holdout"] = 2;
  cfg["eval_per_image"] = 4;
  cfg["references"] = 6;
  cfg["few_shot_probability"] = 1.0;
  cfg["decision_weight"] = 1.0;
  cfg["map_warmup"] = {{"steps", 1000}, {"per_image", 20}};
  cfg["stages"] = {{{"stage", 1}, {"steps", 20}}, {{"stage", 2}, {"steps", 100}}, {{"stage", 3}, {"steps", 80}}};
  // Batch 16 (issue 13): at batch 8 the LLM's first reading of the expert tokens came late and by
  // luck (0.8875 on one machine, 0.900 with ATEN_CPU_CAPABILITY=avx512, 0.925 on another); at 16
  // it starts reading them by step 60-80 (src/train/README.md, "Learning").
  cfg["batch_size"] = 16;
  cfg["checkpoint_every"] = 0;
  cfg["eval_every"] = 50;
  const auto t0 = std::chrono::steady_clock::now();
  const auto file = dir / "train.json";
  std::ofstream(file) << cfg.dump(1);
  // Two threads (the CI machine's cores); scripts/numerics-matrix.sh sets IADGPT_TEST_THREADS to
  // see how the split of reductions between threads moves the result.
  const char* threads = std::getenv("IADGPT_TEST_THREADS");
  auto r = test::run_iadgpt({"--threads", threads ? threads : "2", "train", "--quiet", "--config", file.string()});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto eval = nlohmann::json::parse(r.out).at("eval");
  fmt::print("held-out pairs {}: Yes/No accuracy {:.3f} with references, {:.3f} without; pixel AUROC {:.3f}, "
             "image AUROC of max M_text {:.3f}; answer CE {:.4f}; {:.0f} s\n",
             eval.at("pairs").get<int64_t>(), eval.at("yes_no_accuracy_few_shot").get<double>(),
             eval.at("yes_no_accuracy").get<double>(), eval.at("pixel_auroc").get<double>(),
             eval.at("image_auroc").get<double>(), eval.at("ce").get<double>(), seconds);
  EXPECT_EQ(eval.at("pairs").get<int64_t>(), 40);
  EXPECT_GE(eval.at("yes_no_accuracy_few_shot").get<double>(), 0.90);
  // The bundle it wrote is few-shot (it never saw an MMF input without references).
  EXPECT_EQ(model::read_bundle(dir / "out").mode, "few-shot");
}
