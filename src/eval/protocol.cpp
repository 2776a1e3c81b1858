#include "eval/protocol.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <numeric>
#include <optional>
#include <random>

#include "data/synth.h"
#include "eval/metrics.h"
#include "eval/postprocess.h"
#include "image/decode.h"
#include "image/overlay.h"
#include "io/checkpoint.h"
#include "io/error.h"

namespace iadgpt::eval {

namespace {
namespace F = torch::nn::functional;

// Maps, masks and labels of one category and round, kept at both resolutions.
struct Collected {
  std::vector<float> scores;
  std::vector<uint8_t> labels;
  std::vector<torch::Tensor> maps_s, masks_s;        // [S, S]
  std::vector<torch::Tensor> maps_full, masks_full;  // the ground truth's own size
};


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


// Where anomalib-style grids go (empty: none), and the raw map threshold of their predicted mask.
struct GridOutput {
  std::filesystem::path dir;
  float pixel_threshold = 0.5f;
};

// Counts images done and reports them.
struct Counter {
  const ProgressFn& report;
  int64_t total = 0, done = 0;
  void step() {
    ++done;
    if (report) report(done, total);
  }
};

Collected run_category(anomaly::Detector& detector, const std::vector<data::Sample>& test, int64_t batch_size,
                       Counter& counter, const GridOutput& grids = {}) {
  Collected c;
  const int64_t size = detector.size();
  for (size_t start = 0; start < test.size(); start += batch_size) {
    const size_t end = std::min(test.size(), start + static_cast<size_t>(batch_size));
    std::vector<cv::Mat> images;
    for (size_t i = start; i < end; ++i) images.push_back(image::decode_file(test[i].image));
    auto detections = detector.detect(images);
    for (auto& d : detections) anomaly::to_host(d);  // the metrics read host memory
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
      counter.step();
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
    anomaly::to_host(d[0]);
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

// One category: its rounds (references, calibration in round 0, grids), metrics per resolution.
nlohmann::ordered_json evaluate_category(anomaly::Detector& detector, const MapProtocol& p, const std::string& cat,
                                         const std::vector<data::Sample>& samples, Counter& counter,
                                         nlohmann::ordered_json& thresholds) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  std::vector<data::Sample> test, train_good;
  for (const auto& s : samples) {
    if (s.split == data::Split::Test) test.push_back(s);
    if (s.split == data::Split::Train && s.label == 0) train_good.push_back(s);
  }
  const int64_t rounds = p.shots > 0 ? p.rounds : 1;
  std::map<std::string, std::vector<nlohmann::ordered_json>> per_round;
  nlohmann::ordered_json calibrated;
  for (int64_t r = 0; r < rounds; ++r) {
    std::vector<data::Sample> refs;
    if (p.shots > 0) {
      refs = draw_references(train_good, p.shots, p.seed + r);
      std::vector<cv::Mat> ref_images;
      for (const auto& s : refs) ref_images.push_back(image::decode_file(s.image));
      detector.set_references(ref_images);
    }
    std::optional<Calibration> calibration;
    if (p.calibrate > 0 && r == 0) {
      std::vector<data::Sample> candidates;
      for (const auto& s : samples)
        if (s.split == data::Split::Val && s.label == 0) candidates.push_back(s);
      if (candidates.empty()) {
        for (const auto& s : train_good) {
          const bool is_reference = std::any_of(refs.begin(), refs.end(), [&](const data::Sample& ref) { return ref.image == s.image; });
          if (!is_reference) candidates.push_back(s);
        }
      }
      calibration = calibrate(detector, candidates, p.calibrate, p.seed);
    }
    GridOutput grids;
    if (!p.grids.empty() && r == 0) {
      grids.dir = p.grids / cat;
      std::filesystem::create_directories(grids.dir);
      if (calibration) grids.pixel_threshold = calibration->post.pixel_threshold;
    }
    auto collected = run_category(detector, test, p.batch, counter, grids);
    if (calibration) {
      calibrated = calibrated_json(*calibration, collected);
      thresholds[cat] = calibrated["post_processing"];
    }
    for (const auto& res : p.resolutions) {
      const bool full = res == "full";
      if (!p.save_maps.empty() && (!full || same_sizes(collected.masks_full)))
        io::save_safetensors(p.save_maps / fmt::format("{}_r{}_{}.safetensors", cat, r, res), as_tensors(collected, full));
      per_round[res].push_back(metrics_json(collected, full, p.pro_fpr, cat));
    }
  }
  nlohmann::ordered_json entry;
  entry["test_images"] = test.size();
  entry["anomalous"] = std::count_if(test.begin(), test.end(), [](const data::Sample& s) { return s.label == 1; });
  entry["mode"] = anomaly::map_mode_name(detector.effective_mode());
  for (const auto& res : p.resolutions) {
    const auto& rounds_json = per_round[res];
    entry["metrics"][res] = rounds_json[0].contains("error") ? rounds_json[0] : mean_of(rounds_json);
  }
  if (!calibrated.is_null()) entry["calibration"] = calibrated;
  entry["seconds"] = std::chrono::duration<double>(Clock::now() - start).count();
  return entry;
}

}  // namespace

torch::Tensor resize_mask_nearest(const torch::Tensor& mask, int64_t size) {
  auto grid = mask.to(torch::kFloat32).unsqueeze(0).unsqueeze(0);
  auto resized = F::interpolate(grid, F::InterpolateFuncOptions()
                                          .size(std::vector<int64_t>{size, size})
                                          .mode(torch::kNearest));
  return (resized[0][0] > 0.5).to(torch::kUInt8);
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

MapProtocolResult run_map_protocol(anomaly::Detector& detector, const MapProtocol& p, const ProgressFn& progress) {
  if (!std::filesystem::is_directory(p.root)) throw InputError(fmt::format("dataset folder not found: {}", p.root.string()));
  if (p.shots < 0 || p.rounds < 1 || p.batch < 1) throw InputError("--shots >= 0, --rounds >= 1 and --batch >= 1 are required");
  if (p.resolutions.empty()) throw InputError("--resolution must be 224, full or both");
  for (const auto& r : p.resolutions)
    if (r != "224" && r != "full") throw InputError(fmt::format("unknown resolution '{}' (224 or full)", r));
  const auto categories = p.categories.empty() ? data::categories(p.kind, p.root) : p.categories;
  // List everything first: a malformed layout fails before any encoding starts.
  std::map<std::string, std::vector<data::Sample>> samples;
  const int64_t rounds = p.shots > 0 ? p.rounds : 1;
  Counter counter{progress};
  for (const auto& cat : categories) {
    samples[cat] = data::list_samples(p.kind, p.root, cat);
    counter.total += rounds * std::count_if(samples[cat].begin(), samples[cat].end(),
                                            [](const data::Sample& s) { return s.split == data::Split::Test; });
  }
  if (!p.save_maps.empty()) std::filesystem::create_directories(p.save_maps);

  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  MapProtocolResult out;
  auto& results = out.results;
  results["dataset"] = std::string(data::kind_name(p.kind)) + ":" + p.root.string();
  results["size"] = detector.size();
  results["shots"] = p.shots;
  results["rounds"] = rounds;
  results["seed"] = p.seed;
  results["pro_fpr"] = p.pro_fpr;
  results["categories"] = nlohmann::ordered_json::object();
  out.thresholds = nlohmann::ordered_json::object();
  for (const auto& cat : categories) {
    // F_text only when a map reads it (a few-shot-only detector may have no text tower).
    const auto& o = detector.options();
    if (p.shots == 0 || o.decoder || o.mode == anomaly::MapMode::ZeroShot) detector.set_class(cat);
    results["categories"][cat] = evaluate_category(detector, p, cat, samples[cat], counter, out.thresholds);
  }
  for (const auto& res : p.resolutions) {
    std::vector<nlohmann::ordered_json> per_category;
    for (const auto& [cat, entry] : results["categories"].items())
      if (!entry["metrics"][res].contains("error")) per_category.push_back(entry["metrics"][res]);
    results["mean"][res] = mean_of(per_category);
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  out.images = counter.done;
  results["timing"] = {{"seconds", seconds}, {"images", counter.done},
                       {"images_per_second", counter.done / std::max(seconds, 1e-9)}};
  return out;
}

}  // namespace iadgpt::eval
