// `iadgpt eval`: the benchmark protocol of METHOD §4 on a dataset folder — maps for every test
// image of every category, the field's metrics at 224 and at full resolution, per category and
// as the mean, in JSON and Markdown.
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <numeric>
#include <random>

#include "anomaly/detector.h"
#include "cli/commands.h"
#include "cli/detector_flags.h"
#include "cli/progress.h"
#include "data/dataset.h"
#include "data/synth.h"
#include "eval/postprocess.h"
#include "eval/metrics.h"
#include "image/decode.h"
#include "image/overlay.h"
#include "io/checkpoint.h"
#include "io/error.h"

namespace iadgpt::cli {
namespace {
namespace F = torch::nn::functional;

struct EvalFlags {
  DetectorFlags detector;
  std::string dataset, out, save_maps, grids, resolution = "both";
  std::vector<std::string> categories;
  int64_t shots = 0, rounds = 5, batch = 4;
  uint64_t seed = 0;
  double pro_fpr = 0.3;
  int64_t calibrate = 4;
};

// Maps, masks and labels of one category and round, kept at both resolutions.
struct Collected {
  std::vector<float> scores;
  std::vector<uint8_t> labels;
  std::vector<torch::Tensor> maps_s, masks_s;        // [S, S]
  std::vector<torch::Tensor> maps_full, masks_full;  // the ground truth's own size
};

torch::Tensor resize_mask_nearest(const torch::Tensor& mask, int64_t size) {
  auto grid = mask.to(torch::kFloat32).unsqueeze(0).unsqueeze(0);
  auto resized = F::interpolate(grid, F::InterpolateFuncOptions()
                                          .size(std::vector<int64_t>{size, size})
                                          .mode(torch::kNearest));
  return (resized[0][0] > 0.5).to(torch::kUInt8);
}

io::TensorMap as_tensors(const Collected& c, bool full) {
  const auto& maps = full ? c.maps_full : c.maps_s;
  const auto& masks = full ? c.masks_full : c.masks_s;
  return {{"image_scores", torch::tensor(c.scores)},
          {"image_labels", torch::from_blob(const_cast<uint8_t*>(c.labels.data()),
                                            {static_cast<int64_t>(c.labels.size())}, torch::kUInt8).clone()},
          {"anomaly_maps", torch::stack(maps).contiguous()},
          {"masks", torch::stack(masks).contiguous()}};
}

bool same_sizes(const std::vector<torch::Tensor>& maps) {
  return std::all_of(maps.begin(), maps.end(), [&](const torch::Tensor& m) { return m.sizes() == maps[0].sizes(); });
}

// k normal references drawn from train/good with a per-round seed (METHOD §4.1).
std::vector<data::Sample> draw_references(const std::vector<data::Sample>& train_good, int64_t shots, uint64_t seed) {
  if (static_cast<int64_t>(train_good.size()) < shots) {
    throw InputError(fmt::format("--shots {} but the category has only {} normal training images", shots, train_good.size()));
  }
  std::vector<size_t> order(train_good.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<data::Sample> refs;
  for (int64_t i = 0; i < shots; ++i) refs.push_back(train_good[order[i]]);
  return refs;
}

// Where anomalib-style grids go (empty: none), and the raw map threshold of their predicted mask.
struct GridOutput {
  std::filesystem::path dir;
  float pixel_threshold = 0.5f;
};

Collected run_category(anomaly::Detector& detector, const std::vector<data::Sample>& test, int64_t batch_size,
                       Progress& progress, int64_t& done, const GridOutput& grids = {}) {
  Collected c;
  const int64_t size = detector.size();
  for (size_t start = 0; start < test.size(); start += batch_size) {
    const size_t end = std::min(test.size(), start + static_cast<size_t>(batch_size));
    std::vector<cv::Mat> images;
    for (size_t i = start; i < end; ++i) images.push_back(image::decode_file(test[i].image));
    auto detections = detector.detect(images);
    for (size_t i = start; i < end; ++i) {
      const auto& d = detections[i - start];
      const auto& img = images[i - start];
      auto mask = data::sample_mask(test[i], img.rows, img.cols);
      c.scores.push_back(d.score);
      c.labels.push_back(static_cast<uint8_t>(test[i].label));
      c.maps_s.push_back(d.map);
      c.masks_s.push_back(resize_mask_nearest(mask, size));
      c.maps_full.push_back(anomaly::resize_map(d.map, mask.size(0), mask.size(1)));
      c.masks_full.push_back(mask.to(torch::kUInt8));
      if (!grids.dir.empty()) {
        const auto& full_map = c.maps_full.back();
        auto predicted = (full_map >= grids.pixel_threshold).to(torch::kUInt8);
        std::optional<torch::Tensor> truth;
        if (test[i].label == 1) truth = c.masks_full.back();
        image::write_png(grids.dir / fmt::format("{}_{}.png", test[i].defect, test[i].image.stem().string()),
                         image::result_grid(img, full_map, predicted, truth));
      }
      progress.step(++done);
    }
  }
  return c;
}

nlohmann::ordered_json metrics_json(const Collected& c, bool full, double pro_fpr, const std::string& source) {
  if (full && !same_sizes(c.masks_full)) {
    return {{"error", "test images differ in size; full-resolution metrics need one size per category"}};
  }
  try {
    return eval::to_json(eval::compute_metrics(as_tensors(c, full), pro_fpr, source));
  } catch (const InputError& e) {
    return {{"error", e.what()}};  // e.g. a category without anomalies: reported, not fatal
  }
}

// Mean over rounds (or categories) of every numeric key present in all entries.
nlohmann::ordered_json mean_of(const std::vector<nlohmann::ordered_json>& entries) {
  nlohmann::ordered_json mean;
  if (entries.empty()) return mean;
  for (const auto& [key, value] : entries[0].items()) {
    if (!value.is_number()) continue;
    double sum = 0;
    bool everywhere = true;
    for (const auto& e : entries) {
      if (!e.contains(key) || !e[key].is_number()) { everywhere = false; break; }
      sum += e[key].get<double>();
    }
    if (everywhere) mean[key] = sum / entries.size();
  }
  return mean;
}

std::string markdown(const nlohmann::ordered_json& results, const std::vector<std::string>& resolutions) {
  std::string md;
  for (const auto& res : resolutions) {
    md += fmt::format("\n### {} — resolution {}\n\n", results["dataset"].get<std::string>(),
                      res == "224" ? fmt::format("{} (map and mask at S×S)", results["size"].get<int64_t>())
                                   : std::string("full (map resized to the ground truth)"));
    std::vector<std::string> keys;
    for (const auto& [k, v] : results["mean"][res].items()) keys.push_back(k);
    if (keys.empty()) keys = {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max"};
    md += "| category |";
    for (const auto& k : keys) md += " " + k + " |";
    md += "\n|---|";
    for (size_t i = 0; i < keys.size(); ++i) md += "---:|";
    md += "\n";
    auto row = [&](const std::string& name, const nlohmann::ordered_json& m) {
      md += "| " + name + " |";
      for (const auto& k : keys) md += m.contains(k) && m[k].is_number() ? fmt::format(" {:.4f} |", m[k].get<double>()) : " – |";
      md += "\n";
    };
    for (const auto& [cat, entry] : results["categories"].items()) row(cat, entry["metrics"][res]);
    row("**mean**", results["mean"][res]);
  }
  return md;
}

// F1-adaptive thresholds and min-max statistics (METHOD §4.3) fitted on a validation set: the
// dataset's own normal validation images when it has them, else normal training images that are
// not references; each also yields a CutPaste anomaly, since no real anomalies may be used.
struct Calibration {
  eval::PostProcessor post;
  int64_t normals = 0;
};

Calibration calibrate(anomaly::Detector& detector, const std::vector<data::Sample>& candidates, int64_t count,
                      uint64_t seed) {
  std::vector<cv::Mat> normals;
  for (const auto& s : candidates) {
    if (static_cast<int64_t>(normals.size()) >= count) break;
    normals.push_back(image::decode_file(s.image));
  }
  if (normals.empty()) throw InputError("no normal images left for threshold calibration (use --calibrate 0)");
  std::mt19937_64 rng(seed);
  std::vector<cv::Mat> images;
  std::vector<uint8_t> labels;
  std::vector<torch::Tensor> masks;
  for (size_t i = 0; i < normals.size(); ++i) {
    images.push_back(normals[i]);
    labels.push_back(0);
    masks.push_back(torch::zeros({normals[i].rows, normals[i].cols}, torch::kUInt8));
    auto synthetic = data::cutpaste(normals[i], normals[(i + 1) % normals.size()], rng);
    images.push_back(synthetic.image);
    labels.push_back(1);
    masks.push_back(synthetic.mask);
  }
  std::vector<float> scores;
  std::vector<torch::Tensor> maps_s, masks_s;
  for (size_t i = 0; i < images.size(); ++i) {
    auto d = detector.detect({images[i]});
    scores.push_back(d[0].score);
    maps_s.push_back(d[0].map);
    masks_s.push_back(resize_mask_nearest(masks[i], detector.size()));
  }
  auto maps = torch::stack(maps_s).contiguous();
  auto mask_stack = torch::stack(masks_s).contiguous();
  eval::PixelInput pixels{std::span<const float>(maps.data_ptr<float>(), maps.numel()),
                          std::span<const uint8_t>(mask_stack.data_ptr<uint8_t>(), mask_stack.numel()),
                          maps.size(0), maps.size(1), maps.size(2)};
  Calibration c;
  c.post = eval::fit_post_processor(scores, labels, pixels);
  c.normals = static_cast<int64_t>(normals.size());
  return c;
}

// How the calibrated thresholds do on the test split: image accuracy and pixel F1 at the threshold.
nlohmann::ordered_json calibrated_json(const Calibration& c, const Collected& test) {
  int64_t correct = 0;
  for (size_t i = 0; i < test.scores.size(); ++i) {
    correct += (test.scores[i] >= c.post.image_threshold) == (test.labels[i] == 1);
  }
  int64_t tp = 0, fp = 0, fn = 0;
  for (size_t i = 0; i < test.maps_s.size(); ++i) {
    auto predicted = test.maps_s[i] >= c.post.pixel_threshold;
    auto truth = test.masks_s[i].to(torch::kBool);
    tp += (predicted & truth).sum().item<int64_t>();
    fp += (predicted & ~truth).sum().item<int64_t>();
    fn += (~predicted & truth).sum().item<int64_t>();
  }
  nlohmann::json post = c.post;
  return {{"validation_normals", c.normals},
          {"post_processing", post},
          {"test_image_accuracy", static_cast<double>(correct) / std::max<size_t>(1, test.scores.size())},
          {"test_pixel_f1", tp == 0 ? 0.0 : 2.0 * tp / (2.0 * tp + fp + fn)}};
}

void run_eval(const EvalFlags& f) {
  const auto colon = f.dataset.find(':');
  if (colon == std::string::npos) throw InputError("--dataset must be KIND:DIR (mvtec, visa, mvtec3d, folder)");
  const auto kind = data::parse_kind(f.dataset.substr(0, colon));
  const std::filesystem::path root = f.dataset.substr(colon + 1);
  if (!std::filesystem::is_directory(root)) throw InputError(fmt::format("dataset folder not found: {}", root.string()));
  if (f.shots < 0 || f.rounds < 1 || f.batch < 1) throw InputError("--shots >= 0, --rounds >= 1 and --batch >= 1 are required");
  std::vector<std::string> resolutions;
  if (f.resolution == "224" || f.resolution == "both") resolutions.push_back("224");
  if (f.resolution == "full" || f.resolution == "both") resolutions.push_back("full");
  if (resolutions.empty()) throw InputError("--resolution must be 224, full or both");

  auto categories = f.categories.empty() ? data::categories(kind, root) : f.categories;
  // List everything first: a malformed layout fails before any encoding starts.
  std::map<std::string, std::vector<data::Sample>> samples;
  int64_t total = 0;
  const int64_t rounds = f.shots > 0 ? f.rounds : 1;
  for (const auto& cat : categories) {
    samples[cat] = data::list_samples(kind, root, cat);
    total += rounds * std::count_if(samples[cat].begin(), samples[cat].end(),
                                    [](const data::Sample& s) { return s.split == data::Split::Test; });
  }
  auto options = f.detector.options();
  anomaly::Detector detector(options);
  if (!f.save_maps.empty()) std::filesystem::create_directories(f.save_maps);

  nlohmann::ordered_json results;
  results["dataset"] = std::string(data::kind_name(kind)) + ":" + root.string();
  results["size"] = detector.size();
  results["shots"] = f.shots;
  results["rounds"] = rounds;
  results["seed"] = f.seed;
  results["pro_fpr"] = f.pro_fpr;
  results["categories"] = nlohmann::ordered_json::object();
  nlohmann::ordered_json thresholds = nlohmann::ordered_json::object();
  Progress progress("eval", total);
  int64_t done = 0;
  for (const auto& cat : categories) {
    std::vector<data::Sample> test, train_good;
    for (const auto& s : samples[cat]) {
      if (s.split == data::Split::Test) test.push_back(s);
      if (s.split == data::Split::Train && s.label == 0) train_good.push_back(s);
    }
    const bool uses_text = f.shots == 0 || options.decoder || options.mode == anomaly::MapMode::ZeroShot;
    if (uses_text) detector.set_class(cat);
    const auto start = progress.seconds();
    std::map<std::string, std::vector<nlohmann::ordered_json>> per_round;
    nlohmann::ordered_json calibrated;
    for (int64_t r = 0; r < rounds; ++r) {
      std::vector<data::Sample> refs;
      if (f.shots > 0) {
        refs = draw_references(train_good, f.shots, f.seed + r);
        std::vector<cv::Mat> ref_images;
        for (const auto& s : refs) ref_images.push_back(image::decode_file(s.image));
        detector.set_references(ref_images);
      }
      std::optional<Calibration> calibration;
      if (f.calibrate > 0 && r == 0) {
        std::vector<data::Sample> candidates;
        for (const auto& s : samples[cat]) {
          if (s.split == data::Split::Val && s.label == 0) candidates.push_back(s);
        }
        if (candidates.empty()) {
          for (const auto& s : train_good) {
            const bool is_reference = std::any_of(refs.begin(), refs.end(), [&](const data::Sample& ref) { return ref.image == s.image; });
            if (!is_reference) candidates.push_back(s);
          }
        }
        calibration = calibrate(detector, candidates, f.calibrate, f.seed);
      }
      GridOutput grids;
      if (!f.grids.empty() && r == 0) {
        grids.dir = std::filesystem::path(f.grids) / cat;
        std::filesystem::create_directories(grids.dir);
        if (calibration) grids.pixel_threshold = calibration->post.pixel_threshold;
      }
      auto collected = run_category(detector, test, f.batch, progress, done, grids);
      if (calibration) {
        calibrated = calibrated_json(*calibration, collected);
        thresholds[cat] = calibrated["post_processing"];
      }
      for (const auto& res : resolutions) {
        const bool full = res == "full";
        if (!f.save_maps.empty() && (!full || same_sizes(collected.masks_full))) {
          io::save_safetensors(std::filesystem::path(f.save_maps) / fmt::format("{}_r{}_{}.safetensors", cat, r, res),
                               as_tensors(collected, full));
        }
        per_round[res].push_back(metrics_json(collected, full, f.pro_fpr, cat));
      }
    }
    nlohmann::ordered_json entry;
    entry["test_images"] = test.size();
    entry["anomalous"] = std::count_if(test.begin(), test.end(), [](const data::Sample& s) { return s.label == 1; });
    entry["mode"] = anomaly::map_mode_name(detector.effective_mode());
    for (const auto& res : resolutions) {
      const auto& rounds_json = per_round[res];
      entry["metrics"][res] = rounds_json[0].contains("error") ? rounds_json[0] : mean_of(rounds_json);
    }
    if (!calibrated.is_null()) entry["calibration"] = calibrated;
    entry["seconds"] = progress.seconds() - start;
    results["categories"][cat] = entry;
  }
  progress.finish();
  for (const auto& res : resolutions) {
    std::vector<nlohmann::ordered_json> per_category;
    for (const auto& [cat, entry] : results["categories"].items()) {
      if (!entry["metrics"][res].contains("error")) per_category.push_back(entry["metrics"][res]);
    }
    results["mean"][res] = mean_of(per_category);
  }
  const double seconds = progress.seconds();
  results["timing"] = {{"seconds", seconds}, {"images", done}, {"images_per_second", done / std::max(seconds, 1e-9)}};
  const std::filesystem::path out(f.out);
  if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
  std::ofstream(out) << results.dump(2) << "\n";
  if (!thresholds.empty()) {
    auto thresholds_path = out;
    thresholds_path.replace_extension(".thresholds.json");
    std::ofstream(thresholds_path) << thresholds.dump(2) << "\n";
    results["thresholds_file"] = thresholds_path.string();
    std::ofstream(out) << results.dump(2) << "\n";
  }
  const auto md = markdown(results, resolutions);
  auto md_path = out;
  std::ofstream(md_path.replace_extension(".md")) << md;
  std::cout << md << fmt::format("\n{} images in {:.1f} s ({:.2f} images/s); results in {}\n", done, seconds,
                                 done / std::max(seconds, 1e-9), out.string());
}

}  // namespace

void add_eval(CLI::App& app) {
  auto flags = std::make_shared<EvalFlags>();
  auto* cmd = app.add_subcommand("eval", "Benchmark protocol on MVTec AD / VisA / MVTec 3D-AD / Folder layouts");
  flags->detector.add_to(*cmd);
  cmd->add_option("--dataset", flags->dataset, "KIND:DIR with KIND mvtec, visa, mvtec3d or folder")->required();
  cmd->add_option("--category", flags->categories, "Categories to evaluate (default: all found)");
  cmd->add_option("--shots", flags->shots, "Normal references per category (0 = no few-shot)")->capture_default_str();
  cmd->add_option("--rounds", flags->rounds, "Few-shot rounds with different references")->capture_default_str();
  cmd->add_option("--seed", flags->seed, "Seed of the reference draw (round r uses seed + r)")->capture_default_str();
  cmd->add_option("--resolution", flags->resolution, "224, full or both")->capture_default_str();
  cmd->add_option("--pro-fpr", flags->pro_fpr, "AUPRO integration limit")->capture_default_str();
  cmd->add_option("--batch", flags->batch, "Images encoded together")->capture_default_str();
  cmd->add_option("--calibrate", flags->calibrate,
                  "Normal validation images (+ one CutPaste anomaly each) for F1-adaptive thresholds; 0 = off; "
                  "writes <out>.thresholds.json for `detect --post`")->capture_default_str();
  cmd->add_option("--grids", flags->grids,
                  "Folder for anomalib-style grids (input | overlay | predicted mask | ground truth), first round; "
                  "the mask uses the calibrated pixel threshold (else 0.5)");
  cmd->add_option("--save-maps", flags->save_maps, "Folder for per-category maps (the `iadgpt metrics` input format)");
  cmd->add_option("--out", flags->out, "results.json (a .md table is written beside it)")->required();
  cmd->callback([flags] { run_eval(*flags); });
}

}  // namespace iadgpt::cli
