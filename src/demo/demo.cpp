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
#include "io/checkpoint.h"
#include "io/error.h"
#include "train/decoder_training.h"

namespace iadgpt::demo {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The decoder is trained once for every class against the prompts of the generic class "object"
// (METHOD §1.3's name for an unknown class): one self-supervised model for all parts. The random
// text tower carries no meaning per class name, so per-class prompts would only add noise.
constexpr const char* kPromptClass = "object";
// The two first blocks of the random tower: the most local features (later random blocks only mix
// in the global average), measured best on the procedural parts.
const std::vector<int64_t> kTaps{0, 1};

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

std::vector<float> scores_of(anomaly::Detector& detector, const std::vector<cv::Mat>& images) {
  std::vector<float> scores;
  for (size_t i = 0; i < images.size(); i += 8) {
    std::vector<cv::Mat> batch(images.begin() + static_cast<long>(i),
                               images.begin() + static_cast<long>(std::min(images.size(), i + 8)));
    for (const auto& d : detector.detect(batch)) scores.push_back(d.score);
  }
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

// Regions of the map above the threshold, the three largest (a short answer a person reads), in
// reading order; at least the peak when the image is called anomalous.
std::vector<anomaly::Region> answer_regions(const torch::Tensor& map, double threshold) {
  auto regions = anomaly::find_regions(map, threshold, /*min_area=*/8);
  if (regions.empty()) {
    const int64_t at = map.argmax().item<int64_t>(), w = map.size(1);
    const double x = static_cast<double>(at % w), y = static_cast<double>(at / w);
    regions.push_back({x, y, 1, anomaly::cell_name(x, y, w, map.size(0))});
  }
  std::stable_sort(regions.begin(), regions.end(), [](const auto& a, const auto& b) { return a.area > b.area; });
  if (regions.size() > 3) regions.resize(3);
  std::stable_sort(regions.begin(), regions.end(), [](const auto& a, const auto& b) {
    return std::pair(a.centroid_y, a.centroid_x) < std::pair(b.centroid_y, b.centroid_x);
  });
  return regions;
}


void write_train_config(const fs::path& file, const std::vector<std::string>& classes, const DemoOptions& o) {
  nlohmann::ordered_json j{
      {"out", "bundle"},
      {"vision", "clip/model.safetensors"},  // the file + its config: some size checks expect a file
      {"vision_config", "clip/config.json"},
      {"vocab", "clip/bpe_demo_vocab.txt"},
      {"taps", {0, 1, 2, 3}},
      {"image_size", o.size},
      {"llm", "llm"},
      {"llm_tuning", "full"},  // a 0.2 M-parameter LLM: every weight trains
      {"datasets", {{{"kind", "mvtec"}, {"root", "../data"}, {"categories", classes}}}},
      {"synthesis", "cutpaste"},
      {"per_image", 2},
      {"holdout", 2},
      {"references", 2},
      {"stages", {{{"stage", 1}, {"steps", 60}}, {{"stage", 2}, {"steps", 60}}, {{"stage", 3}, {"steps", 60}}}},
      {"batch_size", 8},
      {"seed", o.seed},
      {"checkpoint_every", 0},
      {"resume", false}};
  std::ofstream f(file);
  f << j.dump(1) << "\n";
  if (!f) throw std::runtime_error("cannot write " + file.string());
}

}  // namespace

DemoResult run_demo(const DemoOptions& o) {
  auto log = [&](const std::string& s) {
    if (o.log) o.log(s);
  };
  if (o.train < 1 || o.test_good < 1 || o.test_defect < 1 || o.val_good < 1 || o.val_defect < 1)
    throw InputError("demo: every split needs at least one image per class (and defect type)");
  if (o.shots < 0 || o.shots > o.train) throw InputError(fmt::format("demo: --shots must be in [0, {}]", o.train));
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

  // The three-stage LLM training config (`iadgpt train --config`, schema in src/train/README.md of
  // the training issue): written now so the same parts and tiny models train the whole IAD-GPT
  // once that trainer is in the build. Paths are relative to the file.
  write_train_config(o.out / "models/train.json", classes, o);

  // 3. Training: stage-2 decoder on normals + CutPaste, text side frozen.
  t = Clock::now();
  anomaly::DetectorOptions text_only{.vision = clip_dir, .vocab = vocab, .mode = anomaly::MapMode::ZeroShot};
  anomaly::Detector prompts(text_only);
  prompts.set_class(kPromptClass);
  const torch::Tensor f_text = prompts.text_features().f_text.clone();
  const auto encoder = train::load_encoder(clip_dir, std::nullopt, kTaps);
  std::vector<train::LabelledView> views;
  std::map<std::string, std::vector<cv::Mat>> normals;
  for (size_t c = 0; c < classes.size(); ++c) {
    for (const auto& s : data::mvtec_ad(data_dir, classes[c]))
      if (s.split == data::Split::Train) normals[classes[c]].push_back(image::decode_file(s.image));
    auto v = train::synthetic_views(normals[classes[c]], encoder.size(), o.per_image, o.seed * 131 + c, true,
                                    {.jitter = 0.5});
    views.insert(views.end(), std::make_move_iterator(v.begin()), std::make_move_iterator(v.end()));
  }
  const auto pool = train::encode_views(views, encoder);
  views.clear();
  log(fmt::format("      pool: {} views encoded ({:.1f} s)", pool.count(), since(t)));
  auto trained = train::train_decoder(
      pool, f_text, {.steps = o.steps, .batch_size = 8, .seed = o.seed, .log_every = std::max<int64_t>(1, o.steps / 5), .loss_size = 56},
      [&](const train::LogEntry& e) {
        log(fmt::format("      step {:4d}/{}  loss {:.4f} (focal {:.4f}, dice {:.4f})", e.step, o.steps, e.loss, e.focal,
                        e.dice));
      });
  const fs::path decoder_path = o.out / "models/decoder.safetensors";
  io::save_safetensors(decoder_path, anomaly::decoder_tensors(trained.decoder));
  result.timings["train"] = since(t);
  log(fmt::format("[3/4] train: decoder on {} views ({} classes × {} normals × (1 + {} CutPaste)), {} steps ({:.1f} s)",
                  pool.count(), classes.size(), o.train, o.per_image, o.steps, since(t)));

  // 4. Inspect the held-out parts.
  t = Clock::now();
  anomaly::DetectorOptions dopt{.vision = clip_dir, .vocab = vocab, .decoder = decoder_path, .taps = kTaps,
                                .mode = anomaly::parse_map_mode(o.map)};
  anomaly::Detector detector(dopt);
  detector.set_class(kPromptClass);
  const fs::path report_dir = o.out / "report";
  fs::remove_all(report_dir);
  fs::create_directories(report_dir / "img");
  std::vector<ReportItem> items;
  std::vector<double> accuracy_per_class;
  for (const auto& cls : classes) {
    std::vector<cv::Mat> refs(normals[cls].begin(), normals[cls].begin() + o.shots);
    detector.set_references(refs);
    // Threshold from the validation split (never from the test parts).
    const auto val = validation_split(cls, o);
    std::vector<cv::Mat> val_images;
    std::vector<uint8_t> val_labels;
    for (const auto& v : val) val_images.push_back(v.image), val_labels.push_back(v.defect != "good");
    const double threshold = fit_threshold(scores_of(detector, val_images), val_labels);

    std::vector<float> scores, maps;
    std::vector<uint8_t> labels, masks, said_yes;
    int correct = 0, n = 0;
    const auto samples = data::mvtec_ad(data_dir, cls);
    for (const auto& s : samples) {
      if (s.split != data::Split::Test) continue;
      const cv::Mat rgb = image::decode_file(s.image);
      const auto d = detector.detect({rgb}).front();
      const auto map = anomaly::resize_map(d.map, rgb.rows, rgb.cols).contiguous();
      const auto gt = data::sample_mask(s, rgb.rows, rgb.cols).contiguous();
      const bool yes = d.score >= threshold;
      const std::string answer = yes ? anomaly::describe(answer_regions(map, threshold)) : anomaly::describe({});
      const bool parsed = eval::parse_yes_no(answer).value_or(false);
      scores.push_back(d.score);
      labels.push_back(static_cast<uint8_t>(s.label));
      said_yes.push_back(parsed);
      maps.insert(maps.end(), map.data_ptr<float>(), map.data_ptr<float>() + map.numel());
      masks.insert(masks.end(), gt.data_ptr<uint8_t>(), gt.data_ptr<uint8_t>() + gt.numel());
      correct += parsed == (s.label == 1), ++n;

      const std::string picture = fmt::format("img/{}_{}_{}.png", cls, s.defect, s.image.stem().string());
      image::write_png(report_dir / picture,
                       image::result_grid(rgb, map, (map >= threshold).to(torch::kUInt8),
                                          s.label ? std::optional<torch::Tensor>(gt) : std::nullopt, 160));
      items.push_back({.class_name = cls, .defect = s.defect, .picture = picture, .score = d.score,
                       .threshold = threshold, .answer = answer, .anomalous = s.label == 1, .said_yes = parsed});
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
                     .timings = result.timings, .shots = o.shots, .steps = o.steps, .seed = o.seed};
  result.report = report_dir / "index.html";
  write_report(result.report, report);
  nlohmann::ordered_json summary{{"yes_no_accuracy", result.accuracy}, {"correct", result.correct},
                                 {"total", result.total}, {"mean", result.mean_metrics}, {"timings", result.timings}};
  for (const auto& c : result.classes) summary["classes"][c.class_name] = c.metrics;
  std::ofstream(report_dir / "summary.json") << summary.dump(1) << "\n";
  return result;
}

}  // namespace iadgpt::demo
