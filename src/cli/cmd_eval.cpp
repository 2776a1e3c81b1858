// `iadgpt eval`: flags and printing of the benchmark protocol of METHOD §4 (eval/protocol.h) —
// maps for every test image of every category, the field's metrics at 224 and at full
// resolution, per category and as the mean, in JSON and Markdown.
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <optional>
#include <tuple>

#include "anomaly/detector.h"
#include "cli/commands.h"
#include "cli/detector_flags.h"
#include "cli/progress.h"
#include "data/dataset.h"
#include "eval/model_protocol.h"
#include "eval/protocol.h"
#include "model/bundle.h"
#include "model/pipeline.h"
#include "io/error.h"

namespace iadgpt::cli {
namespace {

struct EvalFlags {
  DetectorFlags detector;
  std::string dataset, out, save_maps, grids, resolution = "both";
  std::vector<std::string> categories;
  int64_t shots = 0, rounds = 5, batch = 4;
  uint64_t seed = 0;
  double pro_fpr = 0.3;
  int64_t calibrate = 4;
  // --model: the whole model (eval/model_protocol.h)
  std::string model, save_answers;
  bool fast = false;
  int64_t max_tokens = 64;
};

std::pair<data::Kind, std::filesystem::path> parse_dataset(const std::string& dataset) {
  const auto colon = dataset.find(':');
  if (colon == std::string::npos) throw InputError("--dataset must be KIND:DIR (mvtec, visa, mvtec3d, folder)");
  return {data::parse_kind(dataset.substr(0, colon)), dataset.substr(colon + 1)};
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path);
  if (!out) throw InputError(fmt::format("cannot write {}", path.string()));
  out << text;
}

// The fields both protocols share (dataset, categories, shots and rounds, seed, PRO's FPR limit).
template <class Protocol>
Protocol protocol_from_flags(const EvalFlags& f) {
  Protocol p;
  std::tie(p.kind, p.root) = parse_dataset(f.dataset);
  p.categories = f.categories;
  p.shots = f.shots;
  p.rounds = f.rounds;
  p.seed = f.seed;
  p.pro_fpr = f.pro_fpr;
  return p;
}

// --model: P(Yes), answers, maps and positions of the whole model (the papers' tables).
void run_eval_model(const EvalFlags& f) {
  auto p = protocol_from_flags<eval::ModelProtocol>(f);
  p.fast = f.fast;
  p.max_tokens = f.max_tokens;
  auto bundle = model::read_bundle(f.model);
  f.detector.apply_to(bundle);
  model::IadGpt iadgpt(bundle);
  std::optional<Progress> progress;
  auto r = eval::run_model_protocol(iadgpt, p, [&](int64_t done, int64_t total) {
    if (!progress) progress.emplace("eval", total);
    progress->step(done);
  });
  if (progress) progress->finish();
  if (!f.save_answers.empty()) {
    eval::write_answers_csv(f.save_answers, r.answers);
    r.results["answers_file"] = f.save_answers;
  }
  const std::filesystem::path out(f.out);
  write_text(out, r.results.dump(2) + "\n");
  const auto md = eval::model_markdown(r.results);
  auto md_path = out;
  write_text(md_path.replace_extension(".md"), md);
  const double seconds = r.results["timing"]["seconds"].get<double>();
  std::cout << md << fmt::format("\n{} images in {:.1f} s ({:.2f} images/s); results in {}\n", r.images, seconds,
                                 r.images / std::max(seconds, 1e-9), out.string());
}

void run_eval(const EvalFlags& f) {
  if (!f.model.empty()) return run_eval_model(f);
  if (f.detector.vision.empty()) throw InputError("--vision (the map pipeline) or --model (the whole model) is required");
  auto p = protocol_from_flags<eval::MapProtocol>(f);
  p.batch = f.batch;
  p.calibrate = f.calibrate;
  p.grids = f.grids;
  p.save_maps = f.save_maps;
  p.resolutions.clear();
  if (f.resolution == "224" || f.resolution == "both") p.resolutions.push_back("224");
  if (f.resolution == "full" || f.resolution == "both") p.resolutions.push_back("full");
  if (p.resolutions.empty()) throw InputError("--resolution must be 224, full or both");
  anomaly::Detector detector(f.detector.options());
  std::optional<Progress> progress;
  auto r = eval::run_map_protocol(detector, p, [&](int64_t done, int64_t total) {
    if (!progress) progress.emplace("eval", total);
    progress->step(done);
  });
  if (progress) progress->finish();
  auto& results = r.results;
  const std::filesystem::path out(f.out);
  if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
  if (!r.thresholds.empty()) {
    auto thresholds_path = out;
    thresholds_path.replace_extension(".thresholds.json");
    std::ofstream(thresholds_path) << r.thresholds.dump(2) << "\n";
    results["thresholds_file"] = thresholds_path.string();
  }
  std::ofstream(out) << results.dump(2) << "\n";
  const auto md = eval::markdown(results, p.resolutions);
  auto md_path = out;
  std::ofstream(md_path.replace_extension(".md")) << md;
  const double seconds = results["timing"]["seconds"].get<double>();
  std::cout << md << fmt::format("\n{} images in {:.1f} s ({:.2f} images/s); results in {}\n", r.images, seconds,
                                 r.images / std::max(seconds, 1e-9), out.string());
}

}  // namespace

void add_eval(CLI::App& app) {
  auto flags = std::make_shared<EvalFlags>();
  auto* cmd = app.add_subcommand("eval", "Benchmark protocol on MVTec AD / VisA / MVTec 3D-AD / Folder layouts: the map "
                                         "pipeline (--vision …) or the whole model (--model BUNDLE)");
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
  cmd->get_option("--vision")->required(false);
  cmd->add_option("--model", flags->model,
                  "IAD-GPT model bundle: evaluate the whole model (P(Yes), answers, maps, positions) instead of the "
                  "map pipeline")
      ->excludes("--vision");
  cmd->add_flag("--fast", flags->fast, "With --model: the one-prefill Yes/No decision, no generated answer");
  cmd->add_option("--max-tokens", flags->max_tokens, "With --model: answer tokens at most")->capture_default_str();
  cmd->add_option("--save-answers", flags->save_answers,
                  "With --model: CSV of every image's P(Yes), decision, score, positions and answer");
  cmd->add_option("--out", flags->out, "results.json (a .md table is written beside it)")->required();
  cmd->callback([flags] { run_eval(*flags); });
}

}  // namespace iadgpt::cli
