// `iadgpt detect`: anomaly maps, scores, masks and positions for images and folders.
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <set>

#include "anomaly/detector.h"
#include "anomaly/position.h"
#include "cli/commands.h"
#include "cli/detector_flags.h"
#include "cli/progress.h"
#include "eval/postprocess.h"
#include "image/decode.h"
#include "image/overlay.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "model/pipeline.h"

namespace iadgpt::cli {
namespace {

struct DetectFlags {
  DetectorFlags detector;
  std::string class_name, out, post;
  std::vector<std::string> references, inputs;
  double threshold = 0.5;
  int64_t min_area = 16, batch = 4;
  bool grid = false, fail_on_anomaly = false;
  // IAD-GPT (--model BUNDLE): the LLM's answer next to the map.
  std::string model, question;
  int64_t max_tokens = 64;
  uint64_t seed = 0;
  bool no_generate = false, threshold_set = false;
};

// Output names: the file stem, made unique when two inputs share it.
std::string unique_stem(const std::filesystem::path& path, std::set<std::string>& used) {
  std::string stem = path.stem().string();
  for (int i = 2; used.count(stem); ++i) stem = fmt::format("{}_{}", path.stem().string(), i);
  used.insert(stem);
  return stem;
}

std::string csv_field(const std::string& s) {
  std::string out = "\"";
  for (char c : s) out += (c == '"') ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

// Thresholds fitted by `iadgpt eval --calibrate`: a file {class: post-processing} (or one
// post-processing object); the entry of --class is used.
std::optional<eval::PostProcessor> load_post(const std::string& path, const std::string& class_name) {
  if (path.empty()) return std::nullopt;
  std::ifstream in(path);
  if (!in) throw InputError(fmt::format("thresholds file not found: {}", path));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("{}: not valid JSON ({})", path, e.what()));
  }
  if (j.contains("image_threshold")) return j.get<eval::PostProcessor>();
  if (!class_name.empty() && j.contains(class_name)) return j[class_name].get<eval::PostProcessor>();
  if (j.is_object() && j.size() == 1 && class_name.empty()) return j.begin()->get<eval::PostProcessor>();
  throw InputError(fmt::format("{}: no thresholds for class '{}'", path, class_name.empty() ? "object" : class_name));
}

// With --model: one image at a time through model::IadGpt (maps, E_img/E_expert, the LLM's fast
// decision and answer); the label is the LLM's decision, the mask the bundle's map threshold.
void run_detect_model(const DetectFlags& f) {
  if (!f.post.empty()) throw InputError("--post applies to the map pipeline; with --model the LLM decides the label");
  auto bundle = model::read_bundle(f.model);
  f.detector.apply_to(bundle);
  if (f.threshold_set) bundle.threshold = f.threshold;
  const auto images = collect_images(f.inputs);
  const std::filesystem::path out_dir(f.out);
  std::filesystem::create_directories(out_dir);
  model::IadGpt m(bundle);
  m.set_class(f.class_name);
  if (!f.references.empty()) {
    std::vector<cv::Mat> refs;
    for (const auto& r : collect_images(f.references)) refs.push_back(image::decode_file(r));
    m.set_references(refs);
  }
  std::cerr << fmt::format("detect: {} image(s) with the IAD-GPT model {} ({}, expert {})\n", images.size(), f.model,
                           bundle.mode, bundle.expert);
  std::ofstream summary(out_dir / "summary.csv");
  summary << "image,score,label,regions,answer,error,p_yes,position,defect_type\n";
  std::set<std::string> used;
  int64_t anomalous = 0, failed = 0;
  model::Timings total;
  Progress progress("detect", static_cast<int64_t>(images.size()));
  for (size_t i = 0; i < images.size(); ++i) {
    cv::Mat img;
    try {
      img = image::decode_file(images[i]);
    } catch (const InputError& e) {
      ++failed;
      summary << csv_field(images[i].string()) << ",,,,," << csv_field(e.what()) << ",,,\n";
      std::cerr << "iadgpt: error: " << e.what() << "\n";
      continue;
    }
    model::InspectOptions opt;
    opt.question = f.question;
    opt.generate = !f.no_generate;
    opt.max_tokens = f.max_tokens;
    opt.seed = f.seed;
    const auto r = m.inspect(img, opt);
    total.encode += r.timings.encode;
    total.maps += r.timings.maps;
    total.prefill += r.timings.prefill;
    total.generate += r.timings.generate;
    const auto stem = unique_stem(images[i], used);
    auto pred_mask = (r.map > bundle.threshold).to(torch::kUInt8) * static_cast<int64_t>(r.anomalous);
    anomalous += r.anomalous;
    nlohmann::ordered_json j;
    j["image"] = images[i].string();
    j["class"] = f.class_name.empty() ? "object" : f.class_name;
    j["model"] = f.model;
    j["pred_score"] = r.score;
    j["pred_label"] = r.anomalous ? 1 : 0;
    j["p_yes"] = r.p_yes;
    j["threshold"] = bundle.threshold;
    j["answer"] = r.answer;
    j["map_answer"] = model::map_answer(r.regions, !r.regions.empty(), r.defect_type);
    j["position"] = r.position;
    j["defect_type"] = r.defect_type;
    j["regions"] = nlohmann::json::array();
    for (const auto& reg : r.regions)
      j["regions"].push_back({{"position", reg.position}, {"area", reg.area}, {"centroid", {reg.centroid_x, reg.centroid_y}}});
    j["timings_ms"] = {{"encode", r.timings.encode * 1e3}, {"maps", r.timings.maps * 1e3},
                       {"prefill", r.timings.prefill * 1e3}, {"generate", r.timings.generate * 1e3}};
    j["anomaly_map"] = stem + ".safetensors";
    j["overlay"] = stem + "_overlay.png";
    std::ofstream(out_dir / (stem + ".json")) << j.dump(2) << "\n";
    io::save_safetensors(out_dir / (stem + ".safetensors"),
                         {{"anomaly_map", r.map.contiguous()}, {"pred_mask", pred_mask.contiguous()}});
    image::write_png(out_dir / (stem + "_overlay.png"), image::heatmap_overlay(img, r.map));
    if (f.grid) image::write_png(out_dir / (stem + "_grid.png"), image::result_grid(img, r.map, pred_mask, std::nullopt));
    summary << csv_field(images[i].string()) << "," << fmt::format("{:.6f}", r.score) << "," << (r.anomalous ? 1 : 0) << ","
            << r.regions.size() << "," << csv_field(r.answer) << ",," << fmt::format("{:.6f}", r.p_yes) << ","
            << csv_field(r.position) << "," << csv_field(r.defect_type) << "\n";
    std::cout << fmt::format("{}\t{:.4f}\tp_yes={:.4f}\t{}\n", images[i].string(), r.score, r.p_yes, r.answer);
    progress.step(static_cast<int64_t>(i + 1));
  }
  progress.finish();
  const auto n = std::max<int64_t>(1, static_cast<int64_t>(images.size()) - failed);
  std::cerr << fmt::format("detect: {} anomalous of {}; per image encode {:.1f} ms, maps {:.1f} ms, prefill {:.1f} ms, "
                           "generate {:.1f} ms; results in {}\n",
                           anomalous, n, total.encode * 1e3 / n, total.maps * 1e3 / n, total.prefill * 1e3 / n,
                           total.generate * 1e3 / n, out_dir.string());
  if (failed > 0) throw InputError(fmt::format("{} of {} images could not be read (see summary.csv)", failed, images.size()));
  if (f.fail_on_anomaly && anomalous > 0) {
    summary.close();
    std::cout.flush();
    std::exit(3);
  }
}

void run_detect(const DetectFlags& f) {
  if (f.threshold < 0 || f.batch < 1) throw InputError("--threshold must be >= 0 and --batch >= 1");
  if (!f.model.empty()) return run_detect_model(f);
  if (f.detector.vision.empty()) throw InputError("detect needs --vision (map pipeline) or --model BUNDLE (IAD-GPT)");
  const auto images = collect_images(f.inputs);
  const std::filesystem::path out_dir(f.out);
  std::filesystem::create_directories(out_dir);

  const auto post = load_post(f.post, f.class_name);
  anomaly::Detector detector(f.detector.options());
  if (!f.class_name.empty()) detector.set_class(f.class_name);
  if (!f.references.empty()) {
    std::vector<cv::Mat> refs;
    for (const auto& r : collect_images(f.references)) refs.push_back(image::decode_file(r));
    detector.set_references(refs);
  }
  std::cerr << fmt::format("detect: {} image(s), map mode {}, S = {}\n", images.size(),
                           anomaly::map_mode_name(detector.effective_mode()), detector.size());

  std::ofstream summary(out_dir / "summary.csv");
  summary << "image,score,label,regions,answer,error\n";
  std::set<std::string> used;
  int64_t anomalous = 0, failed = 0;
  Progress progress("detect", static_cast<int64_t>(images.size()));
  for (size_t start = 0; start < images.size(); start += f.batch) {
    const size_t end = std::min(images.size(), start + static_cast<size_t>(f.batch));
    std::vector<cv::Mat> batch;
    std::vector<std::filesystem::path> paths;
    for (size_t i = start; i < end; ++i) {
      try {
        batch.push_back(image::decode_file(images[i]));
        paths.push_back(images[i]);
      } catch (const InputError& e) {
        // One unreadable file is reported and skipped; the rest of the folder is still inspected.
        ++failed;
        summary << csv_field(images[i].string()) << ",,,,," << csv_field(e.what()) << "\n";
        std::cerr << "iadgpt: error: " << e.what() << "\n";
      }
    }
    if (batch.empty()) continue;
    auto detections = detector.detect(batch);
    for (auto& d : detections) anomaly::to_host(d);  // written as PNG and safetensors
    for (size_t b = 0; b < batch.size(); ++b) {
      const auto& d = detections[b];
      const auto stem = unique_stem(paths[b], used);
      auto full_map = anomaly::resize_map(d.map, batch[b].rows, batch[b].cols);
      float pred_score = d.score;
      bool label = d.score > f.threshold;
      torch::Tensor pred_mask;
      if (post) {
        // anomalib's convention: normalised score and map with the fitted thresholds at 0.5.
        auto prediction = eval::predict(*post, d.score, full_map);
        pred_score = prediction.pred_score;
        label = prediction.pred_label;
        full_map = prediction.anomaly_map;
        pred_mask = prediction.pred_mask.to(torch::kUInt8) * static_cast<int64_t>(label);
      } else {
        pred_mask = (full_map > f.threshold).to(torch::kUInt8) * static_cast<int64_t>(label);
      }
      auto regions = anomaly::find_regions(pred_mask.to(torch::kFloat32), 0.5, f.min_area);
      anomalous += label;
      const auto answer = anomaly::describe(regions);

      nlohmann::ordered_json j;
      j["image"] = paths[b].string();
      j["class"] = f.class_name.empty() ? "object" : f.class_name;
      j["mode"] = anomaly::map_mode_name(detector.effective_mode());
      j["pred_score"] = pred_score;
      j["pred_label"] = label ? 1 : 0;
      j["raw_score"] = d.score;
      if (post) {
        j["thresholds"] = nlohmann::json(*post);
      } else {
        j["threshold"] = f.threshold;
      }
      j["answer"] = answer;
      j["regions"] = nlohmann::json::array();
      for (const auto& r : regions) {
        j["regions"].push_back({{"position", r.position}, {"area", r.area},
                                {"centroid", {r.centroid_x, r.centroid_y}}});
      }
      j["anomaly_map"] = stem + ".safetensors";
      j["overlay"] = stem + "_overlay.png";
      std::ofstream(out_dir / (stem + ".json")) << j.dump(2) << "\n";
      io::save_safetensors(out_dir / (stem + ".safetensors"),
                           {{"anomaly_map", full_map.contiguous()}, {"pred_mask", pred_mask.contiguous()}});
      image::write_png(out_dir / (stem + "_overlay.png"), image::heatmap_overlay(batch[b], full_map));
      if (f.grid) {
        image::write_png(out_dir / (stem + "_grid.png"),
                         image::result_grid(batch[b], full_map, pred_mask, std::nullopt));
      }
      summary << csv_field(paths[b].string()) << "," << fmt::format("{:.6f}", pred_score) << "," << (label ? 1 : 0)
              << "," << regions.size() << "," << csv_field(answer) << ",\n";
      std::cout << fmt::format("{}\t{:.4f}\t{}\n", paths[b].string(), pred_score, answer);
    }
    progress.step(static_cast<int64_t>(end));
  }
  progress.finish();
  const double seconds = progress.seconds();
  std::cerr << fmt::format("detect: {} anomalous of {} in {:.2f} s ({:.1f} ms/image); results in {}\n", anomalous,
                           images.size() - failed, seconds, 1000.0 * seconds / std::max<size_t>(1, images.size()),
                           out_dir.string());
  if (failed > 0) throw InputError(fmt::format("{} of {} images could not be read (see summary.csv)", failed, images.size()));
  if (f.fail_on_anomaly && anomalous > 0) {
    summary.close();  // std::exit skips local destructors: the summary must be complete first
    std::cout.flush();
    std::exit(3);     // production-line signal, documented in --help
  }
}

}  // namespace

void add_detect(CLI::App& app) {
  auto flags = std::make_shared<DetectFlags>();
  auto* cmd = app.add_subcommand("detect", "Anomaly maps, scores, masks and positions for images or folders");
  flags->detector.add_to(*cmd);
  cmd->add_option("--class", flags->class_name, "Object class for the prompts (default: object)");
  cmd->add_option("--reference", flags->references, "Normal reference images or folders (few-shot)");
  cmd->add_option("--threshold", flags->threshold, "Raw map/score threshold for the label, mask and regions")->capture_default_str();
  cmd->add_option("--post", flags->post,
                  "Thresholds from `iadgpt eval --calibrate` (<out>.thresholds.json): normalised scores, threshold 0.5");
  cmd->add_option("--min-area", flags->min_area, "Smallest region reported, in pixels")->capture_default_str();
  cmd->add_option("--batch", flags->batch, "Images encoded together")->capture_default_str();
  cmd->add_flag("--grid", flags->grid, "Also write anomalib-style grids (input | overlay | mask | ground truth)");
  cmd->add_flag("--fail-on-anomaly", flags->fail_on_anomaly, "Exit with code 3 when any image is anomalous");
  cmd->add_option("--out", flags->out, "Output folder (JSON + safetensors + overlay per image, summary.csv)")->required();
  cmd->add_option("inputs", flags->inputs, "Images or folders")->required();
  cmd->get_option("--vision")->required(false);
  cmd->add_option("--model", flags->model, "IAD-GPT model bundle: also the LLM's answer, p_yes, position, defect type")
      ->excludes("--vision");
  cmd->add_option("--question", flags->question, "Question after the class description (--model; default: "
                                                 "\"Is there any anomaly in the image?\")");
  cmd->add_option("--max-tokens", flags->max_tokens, "Answer tokens at most (--model)")->capture_default_str();
  cmd->add_option("--seed", flags->seed, "Sampling seed (--model)")->capture_default_str();
  cmd->add_flag("--no-generate", flags->no_generate, "Fast decision only (one prefill); the answer from the map (--model)");
  cmd->callback([flags, cmd] {
    flags->threshold_set = cmd->count("--threshold") > 0;
    run_detect(*flags);
  });
}

}  // namespace iadgpt::cli
