#include "demo/demo.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>

#include "anomaly/detector.h"
#include "anomaly/position.h"
#include "data/dataset.h"
#include "data/procedural.h"
#include "demo/report.h"
#include "demo/tiny_models.h"
#include "eval/metrics.h"
#include "eval/model_protocol.h"
#include "eval/protocol.h"
#include "eval/postprocess.h"
#include "image/decode.h"
#include "image/overlay.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "model/bundle.h"
#include "model/pipeline.h"
#include "train/config.h"
#include "train/trainer.h"

namespace iadgpt::demo {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Normal training parts per class the trainer keeps out of training for its own held-out pairs.
constexpr int kHoldout = 2;

// A part read back from an MVTec AD tree the demo wrote.
struct Part {
  cv::Mat image;        // RGB8
  torch::Tensor mask;   // [H, W] uint8 0/1 (zeros for a normal part)
  bool anomalous = false;
  std::string defect;   // "good" or the defect type
  std::string name;     // file stem
};

std::vector<Part> test_parts(const fs::path& root, const std::string& cls) {
  std::vector<Part> out;
  for (const auto& s : data::mvtec_ad(root, cls)) {
    if (s.split != data::Split::Test) continue;
    Part p{.image = image::decode_file(s.image), .anomalous = s.label == 1, .defect = s.defect,
           .name = s.image.stem().string()};
    p.mask = data::sample_mask(s, p.image.rows, p.image.cols).contiguous();
    out.push_back(std::move(p));
  }
  return out;
}

// F1-adaptive threshold on the validation split (anomalib), moved half-way down to the highest
// normal score below it: with a handful of validation parts the F1 optimum sits exactly on the
// weakest defect, and the margin keeps slightly weaker unseen defects on the right side.
double fit_threshold(const std::vector<float>& scores, const std::vector<uint8_t>& labels) {
  const float t = eval::f1_adaptive_threshold(scores, labels);
  float below = -1;
  for (size_t i = 0; i < scores.size(); ++i)
    if (!labels[i] && scores[i] < t) below = std::max(below, scores[i]);
  return below < 0 ? t : 0.5 * (t + below);
}

// The whole-model training run (`iadgpt train --config`'s schema, src/train/README.md), paths
// relative to the file. Few-shot throughout: the MMF always sees the references' map, which on a
// random tower is what separates the parts (the demo inspects with references too).
nlohmann::ordered_json train_config(const std::vector<std::string>& classes, const DemoOptions& o) {
  const int64_t s1 = std::max<int64_t>(1, o.llm_steps / 10), s2 = std::max<int64_t>(1, o.llm_steps * 4 / 10),
                s3 = std::max<int64_t>(1, o.llm_steps - s1 - s2);
  return {{"out", "bundle"},
          {"vision", "clip/model.safetensors"},  // the file + its config: some size checks expect a file
          {"vision_config", "clip/config.json"},
          {"vocab", "clip/bpe_demo_vocab.txt"},
          {"taps", {0, 1, 2, 3}},
          {"image_size", o.size},
          {"llm", "llm"},
          {"llm_tuning", "full"},  // a 0.2 M-parameter LLM from scratch: every weight trains
          {"llm_lr", 5e-3},
          {"datasets", {{{"kind", "mvtec"}, {"root", "../data"}, {"categories", classes}}}},
          // Real-looking defects the trainer never trains on: its evaluation reports them beside
          // the synthetic pairs, so a run shows what the held-out parts will show.
          {"validation", {{"kind", "mvtec"}, {"root", "../validation"}, {"categories", classes}}},
          {"synthesis", o.synthesis},
          {"per_image", o.per_image},
          {"holdout", kHoldout},
          {"eval_per_image", 2},
          {"references", o.shots},
          {"few_shot_probability", 1.0},
          // The MMF reads M_fs alone, the map that ranks real-looking defects (held-out image AUROC
          // 0.992 against 0.828 for the blend with the decoder's, which learns CutPaste's seams).
          {"map", "few-shot"},
          {"decision_weight", 1.0},
          {"map_warmup", {{"steps", o.steps}, {"per_image", 20}}},
          // METHOD's adapter lr (1e-3) and batch 16 with a scale-keeping MMF (mmf_init kaiming, the
          // trainer's default): the LLM learns to read the expert tokens in stage 2 (issue 13: at
          // batch 8 it did so in 1 of 14 runs, by luck; src/train/README.md, "Learning" 4).
          {"stages", {{{"stage", 1}, {"steps", s1}, {"lr", 1e-3}}, {{"stage", 2}, {"steps", s2}, {"lr", 1e-3}},
                      {{"stage", 3}, {"steps", s3}, {"lr", 1e-3}}}},
          {"batch_size", 16},
          {"seed", o.seed},
          {"checkpoint_every", 0},
          {"resume", false}};
}

// Per class, on the validation parts: the drawn mask's threshold and the decision's bias.
struct Calibration {
  std::map<std::string, double> mask_threshold, decision_bias;  // per class (Bundle::decision_bias)
  int parts = 0, right_before = 0, right_after = 0;
};

Calibration calibrate(model::IadGpt& iadgpt, const std::vector<std::string>& classes, const fs::path& validation,
                      const std::map<std::string, std::vector<cv::Mat>>& references) {
  Calibration c;
  for (const auto& cls : classes) {
    iadgpt.set_class(cls);
    iadgpt.set_references(references.at(cls));
    std::vector<float> scores;
    std::vector<double> p_yes;
    std::vector<uint8_t> labels;
    for (const auto& part : test_parts(validation, cls)) {
      const auto r = iadgpt.inspect(part.image, {.generate = false});  // one prefill: p_yes and the map
      scores.push_back(r.score);
      p_yes.push_back(r.p_yes);
      labels.push_back(part.anomalous);
    }
    c.mask_threshold[cls] = fit_threshold(scores, labels);
    const double bias = model::fit_decision_bias(p_yes, labels);
    c.decision_bias[cls] = bias;
    for (size_t i = 0; i < p_yes.size(); ++i) {
      const double p = std::clamp(p_yes[i], 1e-30, 1 - 1e-16);
      c.right_before += (p > 0.5) == (labels[i] == 1);
      c.right_after += (std::log(p) - std::log1p(-p) + bias > 0) == (labels[i] == 1);
      ++c.parts;
    }
  }
  return c;
}

struct ClassRun {
  ClassResult result;
  std::vector<ReportItem> items;
  int positions = 0, answer_position_right = 0, map_position_right = 0;
};

// The held-out parts of one class through the calibrated bundle, by the model protocol of
// `iadgpt eval --model` (eval/model_protocol.h): the LLM's answers and the metrics, and here the
// report's pictures and position checks.
ClassRun inspect_class(model::IadGpt& iadgpt, const std::string& cls, const fs::path& data_dir, double threshold,
                       const fs::path& report_dir) {
  ClassRun run;
  std::vector<data::Sample> test;
  for (const auto& s : data::mvtec_ad(data_dir, cls))
    if (s.split == data::Split::Test) test.push_back(s);
  eval::ModelProtocol protocol;
  protocol.max_tokens = 48;
  auto on_image = [&](const data::Sample& s, const cv::Mat& img, const model::Inspection& r, const eval::ModelAnswer& a) {
    const auto map = r.map.to(torch::kFloat32).contiguous();
    const auto mask = data::sample_mask(s, img.rows, img.cols).contiguous();
    ReportItem item{.class_name = cls, .defect = s.defect, .score = r.score, .threshold = threshold,
                    .answer = r.answer, .map_position = r.position, .p_yes = r.p_yes,
                    .anomalous = s.label == 1, .said_yes = a.said_yes};
    if (a.position_right >= 0) {  // where the defect is: the answer's words and the map's, against the mask
      item.truth_position = a.truth_cells;
      item.answer_position_right = a.position_right == 1;
      item.map_position_right = eval::names_a_cell_of(r.position, anomaly::cells_of_mask(mask));
      ++run.positions;
      run.answer_position_right += item.answer_position_right;
      run.map_position_right += item.map_position_right;
    }
    item.picture = fmt::format("img/{}_{}_{}.png", cls, s.defect, s.image.stem().string());
    image::write_png(report_dir / item.picture,
                     image::result_grid(img, map, (map >= threshold).to(torch::kUInt8),
                                        s.label == 1 ? std::optional<torch::Tensor>(mask) : std::nullopt, 160));
    run.items.push_back(std::move(item));
  };
  const auto answers = eval::inspect_samples(iadgpt, test, protocol, 0, on_image);
  int correct = 0;
  for (const auto& a : answers.answers) correct += a.said_yes == (a.label == 1);
  run.result = ClassResult{.class_name = cls, .correct = correct, .total = static_cast<int>(answers.answers.size()),
                           .threshold = threshold};
  run.result.metrics = eval::model_metrics(answers, protocol.pro_fpr);
  return run;
}

// Three turns about one held-out defective part (the report's conversation).
std::vector<std::pair<std::string, std::string>> converse(model::IadGpt& iadgpt, const Part& part) {
  std::vector<std::pair<std::string, std::string>> turns;
  const std::string first = "Is there any anomaly in the image?";
  turns.emplace_back(first, iadgpt.inspect(part.image, {.question = first, .max_tokens = 48}).answer);
  for (const std::string q : {"Where is the anomaly?", "Is the part good enough to ship?"})
    turns.emplace_back(q, iadgpt.ask(q, {.max_tokens = 48}));
  return turns;
}

}  // namespace

DemoResult run_demo(const DemoOptions& o) {
  auto log = [&](const std::string& s) {
    if (o.log) o.log(s);
  };
  if (o.train < 1 || o.test_good < 1 || o.test_defect < 1 || o.val_good < 1 || o.val_defect < 1)
    throw InputError("demo: every split needs at least one image per class (and defect type)");
  if (o.train < kHoldout + 2) throw InputError(fmt::format("demo: --train must be at least {}", kHoldout + 2));
  if (o.shots < 1 || o.shots > o.train - kHoldout - 1)
    throw InputError(fmt::format("demo: --shots must be in [1, {}] (the trainer keeps {} parts for its own check)",
                                 o.train - kHoldout - 1, kHoldout));
  if (o.steps < 1 || o.llm_steps < 3) throw InputError("demo: --steps must be ≥ 1 and --llm-steps ≥ 3");
  if (o.synthesis != "cutpaste" && o.synthesis != "nsa")
    throw InputError(fmt::format("demo: --synthesis must be cutpaste or nsa, found '{}'", o.synthesis));
  const auto classes = o.classes.empty() ? data::procedural_classes() : o.classes;
  DemoResult result;
  const auto start = Clock::now();
  fs::create_directories(o.out);

  // 1. Data: MVTec AD trees, read back through the loader `iadgpt eval` uses: training normals and
  // the held-out test split (data/), and a validation split of other seeds (validation/).
  auto t = Clock::now();
  const fs::path data_dir = o.out / "data", validation_dir = o.out / "validation";
  fs::remove_all(data_dir);
  fs::remove_all(validation_dir);
  int written = data::write_procedural_dataset(
      data_dir, {.classes = classes, .train = o.train, .test_good = o.test_good, .test_defect = o.test_defect,
                 .size = o.size, .seed = o.seed});
  written += data::write_procedural_dataset(
      validation_dir, {.classes = classes, .train = 0, .test_good = o.val_good, .test_defect = o.val_defect,
                       .size = o.size, .seed = o.seed, .test_seeds = "val"});
  result.timings["data"] = since(t);
  log(fmt::format("[1/4] data: {} procedural parts ({} classes) in {} and {} ({:.1f} s)", written, classes.size(),
                  data_dir.string(), validation_dir.string(), since(t)));

  // 2. Tiny models from scratch.
  t = Clock::now();
  const fs::path clip_dir = o.out / "models/clip", llm_dir = o.out / "models/llm";
  const auto vocab = write_tiny_clip(clip_dir, clip_corpus(classes), {.image_size = o.size, .seed = o.seed});
  const int64_t llm_vocab = train_llm_tokenizer(llm_dir, answer_corpus(classes, data::procedural_defects()), o.llm_vocab);
  const auto llm_config = write_tiny_llama(llm_dir, {.vocab_size = llm_vocab, .seed = o.seed});
  result.timings["models"] = since(t);
  log(fmt::format("[2/4] models: random tiny CLIP (ViT {}x{}, text {}), SentencePiece tokenizer ({} pieces), "
                  "random tiny LLaMA ({:.2f} M parameters) in {} ({:.1f} s)",
                  4, 96, 64, llm_vocab, llm_config.parameter_count() / 1e6, (o.out / "models").string(), since(t)));

  // 3. Training: the whole IAD-GPT through the trainer of `iadgpt train` (train/trainer.h): the
  // decoder's map warm-up, then stages 1-3 with the tiny LLaMA fully trained on the answers.
  t = Clock::now();
  const fs::path config_path = o.out / "models/train.json";
  io::write_file_atomic(config_path, train_config(classes, o).dump(1) + "\n");
  const auto config = train::read_train_config(config_path);
  train::Distributed single;
  train::TrainHooks hooks;
  hooks.on_message = [&](const std::string& m) { log("      " + m); };
  const int64_t every = std::max<int64_t>(1, o.llm_steps / 10);
  hooks.on_step = [&](const train::StepLog& s) {
    if (s.step % every == 0 || s.step == s.total_steps)
      log(fmt::format("      step {:4d}/{}  stage {}  ce {:.4f}  focal {:.4f}  dice {:.4f}", s.step, s.total_steps,
                      s.stage, s.ce, s.focal, s.dice));
  };
  hooks.on_eval = [&](const train::EvalResult& e) {
    log(fmt::format("      held-out synthetic pairs: Yes/No accuracy {:.3f}; validation parts (real-looking defects, "
                    "{} parts): Yes/No accuracy {:.3f} (both with references)",
                    e.yes_no_accuracy_few_shot, e.validation_parts, e.validation_accuracy_few_shot));
  };
  const auto trained = train::train(config, single, hooks);
  result.trainer_pairs_accuracy = trained.final_eval.yes_no_accuracy_few_shot;
  result.trainer_validation_accuracy = trained.final_eval.validation_accuracy_few_shot;
  result.timings["train"] = since(t);
  log(fmt::format("[3/4] train: map warm-up ({} steps) + LLM stages 1-3 ({} steps) on {} classes × {} normals × (1 + {} "
                  "{}) ({:.1f} s)",
                  o.steps, trained.steps_done, classes.size(), o.train - kHoldout, o.per_image, o.synthesis, since(t)));

  // 4. Calibrate on the validation split (the mask's threshold per class, the decision's bias),
  // then inspect the held-out parts with the calibrated bundle: the LLM answers.
  t = Clock::now();
  const fs::path bundle_dir = o.out / "models/bundle";
  auto bundle = model::read_bundle(bundle_dir);
  std::map<std::string, std::vector<cv::Mat>> references;  // the first training parts, as the trainer's
  for (const auto& cls : classes)
    for (const auto& s : data::mvtec_ad(data_dir, cls))
      if (s.split == data::Split::Train && static_cast<int>(references[cls].size()) < o.shots)
        references[cls].push_back(image::decode_file(s.image));
  model::IadGpt iadgpt(bundle);
  const auto cal = calibrate(iadgpt, classes, validation_dir, references);
  bundle.decision_bias = cal.decision_bias;
  model::write_bundle(bundle, bundle_dir);  // `iadgpt chat --model` answers with the same calibration
  std::vector<std::string> biases;
  for (const auto& [cls, bias] : cal.decision_bias) {
    iadgpt.set_decision_bias(cls, bias);
    biases.push_back(fmt::format("{} {:+.2f}", cls, bias));
  }
  result.validation_accuracy = static_cast<double>(cal.right_after) / cal.parts;
  log(fmt::format("      calibration on {} validation parts: Yes/No accuracy {:.3f} → {:.3f} with decision biases "
                  "(log-odds) {}",
                  cal.parts, static_cast<double>(cal.right_before) / cal.parts, result.validation_accuracy,
                  fmt::join(biases, ", ")));
  const fs::path report_dir = o.out / "report";
  fs::remove_all(report_dir);
  fs::create_directories(report_dir / "img");
  std::vector<ReportItem> items;
  for (const auto& cls : classes) {
    iadgpt.set_class(cls);
    iadgpt.set_references(references[cls]);
    auto run = inspect_class(iadgpt, cls, data_dir, cal.mask_threshold.at(cls), report_dir);
    result.correct += run.result.correct, result.total += run.result.total;
    result.positions += run.positions;
    result.answer_position_right += run.answer_position_right;
    result.map_position_right += run.map_position_right;
    log(fmt::format("      {:7s} image AUROC {:.3f} (map) {:.3f} (P(Yes))  pixel AUROC {:.3f}  Yes/No {}/{}", cls,
                    run.result.metrics.value("image_auroc_map", 0.0), run.result.metrics.value("image_auroc", 0.0),
                    run.result.metrics.value("pixel_auroc", 0.0),
                    run.result.correct, run.result.total));
    items.insert(items.end(), run.items.begin(), run.items.end());
    result.classes.push_back(std::move(run.result));
  }
  std::vector<nlohmann::ordered_json> per_class;
  for (const auto& c : result.classes) per_class.push_back(c.metrics);
  result.mean_metrics = eval::mean_of(per_class);
  result.accuracy = static_cast<double>(result.correct) / result.total;
  // The conversation: the first class's first held-out defect.
  std::vector<std::pair<std::string, std::string>> conversation;
  for (const auto& part : test_parts(data_dir, classes.front()))
    if (part.anomalous) {
      iadgpt.set_class(classes.front());
      iadgpt.set_references(references[classes.front()]);
      conversation = converse(iadgpt, part);
      conversation.insert(conversation.begin(), {classes.front() + " / " + part.defect + " / " + part.name, ""});
      break;
    }
  result.timings["inspect"] = since(t);
  result.timings["total"] = since(start);
  log(fmt::format("[4/4] inspect: {} held-out parts ({:.1f} s)", result.total, since(t)));

  ReportInput report{.items = items, .classes = result.classes, .mean_metrics = result.mean_metrics,
                     .accuracy = result.accuracy, .correct = result.correct, .total = result.total,
                     .timings = result.timings, .shots = o.shots, .steps = o.steps, .llm_steps = o.llm_steps,
                     .seed = o.seed, .decision_bias = cal.decision_bias,
                     .validation_before = static_cast<double>(cal.right_before) / cal.parts,
                     .validation_after = result.validation_accuracy,
                     .trainer_pairs = result.trainer_pairs_accuracy,
                     .trainer_validation = result.trainer_validation_accuracy, .positions = result.positions,
                     .answer_position_right = result.answer_position_right,
                     .map_position_right = result.map_position_right, .conversation = conversation};
  result.report = report_dir / "index.html";
  write_report(result.report, report);
  write_summary(report_dir / "summary.json", result, items);
  return result;
}

}  // namespace iadgpt::demo
