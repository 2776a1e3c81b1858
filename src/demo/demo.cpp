#include "demo/demo.h"

#include <fmt/format.h>

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>

#include "anomaly/detector.h"
#include "anomaly/position.h"
#include "data/dataset.h"
#include "data/procedural.h"
#include "demo/report.h"
#include "demo/tiny_models.h"
#include "eval/metrics.h"
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

struct Labelled {
  cv::Mat image;       // RGB8
  cv::Mat mask;        // 8U 0/255 (zeros for a normal part)
  std::string defect;  // "good" or the defect type
  std::string name;    // for the report's pictures
};

std::vector<Labelled> validation_split(const std::string& cls, const DemoOptions& o) {
  std::vector<Labelled> out;
  for (int i = 0; i < o.val_good; ++i) {
    auto p = data::make_part(cls, data::procedural_seed(o.seed, cls, "val", "good", i), o.size);
    out.push_back({p.image, p.mask, "good", ""});
  }
  for (const auto& defect : data::procedural_defects())
    for (int i = 0; i < o.val_defect; ++i) {
      const auto seed = data::procedural_seed(o.seed, cls, "val", defect, i);
      auto p = data::add_defect(data::make_part(cls, seed, o.size), defect, seed);
      out.push_back({p.image, p.mask, defect, ""});
    }
  return out;
}

// Image scores (max of the map) of the bundle's detector, without running the LLM.
std::vector<float> scores_of(model::IadGpt& model, const std::vector<cv::Mat>& images) {
  std::vector<float> scores;
  for (const auto& image : images) scores.push_back(model.inspect(image, {.generate = false}).score);
  return scores;
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
          {"synthesis", "cutpaste"},
          {"per_image", o.per_image},
          {"holdout", kHoldout},
          {"eval_per_image", 2},
          {"references", o.shots},
          {"few_shot_probability", 1.0},
          {"decision_weight", 1.0},
          {"map_warmup", {{"steps", o.steps}, {"per_image", 20}}},
          // Adapters at 3e-3 (METHOD's default 1e-3): the expert tokens must start to differ before
          // the LLM can learn to read them (at 1e-3: 80/100 on the held-out parts, at 3e-3: 90/100).
          {"stages", {{{"stage", 1}, {"steps", s1}, {"lr", 3e-3}}, {{"stage", 2}, {"steps", s2}, {"lr", 3e-3}},
                      {{"stage", 3}, {"steps", s3}, {"lr", 3e-3}}}},
          {"batch_size", 8},
          {"seed", o.seed},
          {"checkpoint_every", 0},
          {"resume", false}};
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
  const auto classes = o.classes.empty() ? data::procedural_classes() : o.classes;
  DemoResult result;
  const auto start = Clock::now();
  fs::create_directories(o.out);

  // 1. Data: the test split goes to disk in the MVTec layout and is read back through the same
  // loader `iadgpt eval` uses.
  auto t = Clock::now();
  const fs::path data_dir = o.out / "data";
  fs::remove_all(data_dir);
  const int written = data::write_procedural_dataset(
      data_dir, {.classes = classes, .train = o.train, .test_good = o.test_good, .test_defect = o.test_defect,
                 .size = o.size, .seed = o.seed});
  result.timings["data"] = since(t);
  log(fmt::format("[1/4] data: {} procedural parts ({} classes) in {} ({:.1f} s)", written, classes.size(),
                  data_dir.string(), since(t)));

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
    log(fmt::format("      held-out synthetic pairs: Yes/No accuracy {:.3f} (with references)", e.yes_no_accuracy_few_shot));
  };
  const auto trained = train::train(config, single, hooks);
  result.timings["train"] = since(t);
  log(fmt::format("[3/4] train: map warm-up ({} steps) + LLM stages 1-3 ({} steps) on {} classes × {} normals × (1 + {} "
                  "CutPaste) ({:.1f} s)",
                  o.steps, trained.steps_done, classes.size(), o.train - kHoldout, o.per_image, since(t)));

  // 4. Inspect the held-out parts with the trained bundle: the LLM answers.
  t = Clock::now();
  model::IadGpt iadgpt(model::read_bundle(o.out / "models/bundle"));
  std::map<std::string, std::vector<cv::Mat>> normals;
  for (const auto& cls : classes)
    for (const auto& s : data::mvtec_ad(data_dir, cls))
      if (s.split == data::Split::Train) normals[cls].push_back(image::decode_file(s.image));
  const fs::path report_dir = o.out / "report";
  fs::remove_all(report_dir);
  fs::create_directories(report_dir / "img");
  std::vector<ReportItem> items;
  for (const auto& cls : classes) {
    iadgpt.set_class(cls);
    // The references the trainer's few-shot maps used: the first training parts.
    iadgpt.set_references({normals[cls].begin(), normals[cls].begin() + o.shots});
    // Threshold of the drawn mask, from the validation split (never from the test parts).
    const auto val = validation_split(cls, o);
    std::vector<cv::Mat> val_images;
    std::vector<uint8_t> val_labels;
    for (const auto& v : val) val_images.push_back(v.image), val_labels.push_back(v.defect != "good");
    const double threshold = fit_threshold(scores_of(iadgpt, val_images), val_labels);

    std::vector<float> scores, maps;
    std::vector<uint8_t> labels, masks, said_yes;
    int correct = 0, n = 0;
    const auto samples = data::mvtec_ad(data_dir, cls);
    for (const auto& s : samples) {
      if (s.split != data::Split::Test) continue;
      const cv::Mat rgb = image::decode_file(s.image);
      const auto r = iadgpt.inspect(rgb, {.max_tokens = 48});
      const auto map = r.map.to(torch::kFloat32).contiguous();
      const auto gt = data::sample_mask(s, rgb.rows, rgb.cols).contiguous();
      const bool yes = eval::parse_yes_no(r.answer).value_or(r.anomalous);
      scores.push_back(r.score);
      labels.push_back(static_cast<uint8_t>(s.label));
      said_yes.push_back(yes);
      maps.insert(maps.end(), map.data_ptr<float>(), map.data_ptr<float>() + map.numel());
      masks.insert(masks.end(), gt.data_ptr<uint8_t>(), gt.data_ptr<uint8_t>() + gt.numel());
      correct += yes == (s.label == 1), ++n;

      const std::string picture = fmt::format("img/{}_{}_{}.png", cls, s.defect, s.image.stem().string());
      image::write_png(report_dir / picture,
                       image::result_grid(rgb, map, (map >= threshold).to(torch::kUInt8),
                                          s.label ? std::optional<torch::Tensor>(gt) : std::nullopt, 160));
      items.push_back({.class_name = cls, .defect = s.defect, .picture = picture, .score = r.score,
                       .threshold = threshold, .answer = r.answer, .anomalous = s.label == 1, .said_yes = yes});
    }
    eval::MetricsInput in{.image_scores = scores, .image_labels = labels,
                          .pixels = {.maps = maps, .masks = masks, .n = n, .h = o.size, .w = o.size}};
    ClassResult cr{.class_name = cls, .correct = correct, .total = n, .threshold = threshold};
    cr.metrics = eval::to_json(eval::compute_metrics(in));
    cr.metrics["yes_no_accuracy"] = eval::yes_no_accuracy(said_yes, labels);
    result.correct += correct, result.total += n;
    log(fmt::format("      {:7s} image AUROC {:.3f}  pixel AUROC {:.3f}  Yes/No {}/{}", cls,
                    cr.metrics["image_auroc"].get<double>(), cr.metrics["pixel_auroc"].get<double>(), correct, n));
    result.classes.push_back(std::move(cr));
  }
  for (const auto& [key, _] : result.classes.front().metrics.items()) {
    double sum = 0;
    for (const auto& c : result.classes) sum += c.metrics[key].get<double>();
    result.mean_metrics[key] = sum / static_cast<double>(result.classes.size());
  }
  result.accuracy = static_cast<double>(result.correct) / result.total;
  result.timings["inspect"] = since(t);
  result.timings["total"] = since(start);
  log(fmt::format("[4/4] inspect: {} held-out parts ({:.1f} s)", result.total, since(t)));

  ReportInput report{.items = items, .classes = result.classes, .mean_metrics = result.mean_metrics,
                     .accuracy = result.accuracy, .correct = result.correct, .total = result.total,
                     .timings = result.timings, .shots = o.shots, .steps = o.steps, .llm_steps = o.llm_steps,
                     .seed = o.seed};
  result.report = report_dir / "index.html";
  write_report(result.report, report);
  nlohmann::ordered_json summary{{"yes_no_accuracy", result.accuracy}, {"correct", result.correct},
                                 {"total", result.total}, {"mean", result.mean_metrics}, {"timings", result.timings}};
  for (const auto& c : result.classes) summary["classes"][c.class_name] = c.metrics;
  std::ofstream(report_dir / "summary.json") << summary.dump(1) << "\n";
  return result;
}

}  // namespace iadgpt::demo
