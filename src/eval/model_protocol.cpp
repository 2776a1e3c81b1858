#include "eval/model_protocol.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>

#include <fmt/ranges.h>

#include "anomaly/detector.h"
#include "anomaly/position.h"
#include "eval/metrics.h"
#include "image/decode.h"
#include "io/error.h"

namespace iadgpt::eval {

namespace {

ModelAnswer answer_row(const data::Sample& s, int64_t round, const model::Inspection& r, bool fast,
                       const torch::Tensor& mask) {
  ModelAnswer a;
  a.category = s.category;
  a.image = s.image.string();
  a.defect = s.defect;
  a.round = round;
  a.label = s.label;
  a.p_yes = r.p_yes;
  a.log_odds = static_cast<float>(r.log_odds);
  a.said_yes = fast ? r.anomalous : parse_yes_no(r.answer).value_or(r.anomalous);
  a.score = r.score;
  a.answer = r.answer;
  a.position = r.position;
  a.defect_type = r.defect_type;
  if (s.label == 1) {
    const auto truth = anomaly::cells_of_mask(mask);
    a.truth_cells = fmt::format("{}", fmt::join(truth, ", "));
    // Scored where the model says Yes and the ground truth has a region.
    if (a.said_yes && !truth.empty()) a.position_right = names_a_cell_of(r.answer, truth) ? 1 : 0;
  }
  return a;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace

bool names_a_cell_of(std::string_view text, const std::vector<std::string>& truth) {
  for (const auto& cell : anomaly::cells_named(text))
    if (std::find(truth.begin(), truth.end(), cell) != truth.end()) return true;
  return false;
}

ModelRun inspect_samples(model::IadGpt& iadgpt, const std::vector<data::Sample>& test, const ModelProtocol& p,
                         int64_t round, const OnInspection& on_image, const std::function<void()>& step) {
  ModelRun run;
  run.size = iadgpt.bundle().image_size;
  for (const auto& s : test) {
    const auto img = image::decode_file(s.image);
    const auto r = iadgpt.inspect(img, {.generate = !p.fast, .max_tokens = p.max_tokens});
    const auto mask = data::sample_mask(s, img.rows, img.cols);
    run.answers.push_back(answer_row(s, round, r, p.fast, mask));
    const auto map = anomaly::resize_map(r.map.to(torch::kFloat32), run.size, run.size).contiguous();
    const auto mask_s = resize_mask_nearest(mask, run.size).contiguous();
    run.maps.insert(run.maps.end(), map.data_ptr<float>(), map.data_ptr<float>() + map.numel());
    run.masks.insert(run.masks.end(), mask_s.data_ptr<uint8_t>(), mask_s.data_ptr<uint8_t>() + mask_s.numel());
    if (on_image) on_image(s, img, r, run.answers.back());
    if (step) step();
  }
  return run;
}

nlohmann::ordered_json model_metrics(const ModelRun& run, double pro_fpr) {
  std::vector<float> log_odds, scores;
  std::vector<uint8_t> labels, said_yes;
  int64_t scored = 0, right = 0;
  for (const auto& a : run.answers) {
    log_odds.push_back(a.log_odds);
    scores.push_back(a.score);
    labels.push_back(static_cast<uint8_t>(a.label));
    said_yes.push_back(a.said_yes);
    if (a.position_right >= 0) ++scored, right += a.position_right;
  }
  nlohmann::ordered_json m;
  try {
    const auto n = static_cast<int64_t>(run.answers.size());
    MetricsInput in{.image_scores = log_odds, .image_labels = labels,
                    .pixels = {.maps = run.maps, .masks = run.masks, .n = n, .h = run.size, .w = run.size}};
    m = to_json(compute_metrics(in, pro_fpr));
    m["image_auroc_map"] = binary_metrics(scores, labels).auroc;
  } catch (const InputError& e) {
    m["error"] = e.what();  // e.g. a category without anomalies: reported, not fatal
  }
  m["yes_no_accuracy"] = yes_no_accuracy(said_yes, labels);
  m["position_scored"] = scored;
  if (scored > 0) m["position_accuracy"] = static_cast<double>(right) / static_cast<double>(scored);
  return m;
}

ModelProtocolResult run_model_protocol(model::IadGpt& iadgpt, const ModelProtocol& p, const ProgressFn& progress) {
  if (!std::filesystem::is_directory(p.root)) throw InputError(fmt::format("dataset folder not found: {}", p.root.string()));
  if (p.shots < 0 || p.rounds < 1 || p.max_tokens < 1)
    throw InputError("--shots >= 0, --rounds >= 1 and --max-tokens >= 1 are required");
  if (p.shots == 0 && iadgpt.bundle().mode == "few-shot")
    throw InputError("the bundle's mode is few-shot: give --shots (1, 2 or 4 in the papers)");
  const auto categories = p.categories.empty() ? data::categories(p.kind, p.root) : p.categories;
  const int64_t rounds = p.shots > 0 ? p.rounds : 1;
  std::map<std::string, std::vector<data::Sample>> samples;
  int64_t total = 0, done = 0;
  for (const auto& cat : categories) {  // list everything first: a bad layout fails before inference
    samples[cat] = data::list_samples(p.kind, p.root, cat);
    total += rounds * std::count_if(samples[cat].begin(), samples[cat].end(),
                                    [](const data::Sample& s) { return s.split == data::Split::Test; });
  }
  const auto t0 = std::chrono::steady_clock::now();
  ModelProtocolResult out;
  auto& results = out.results;
  results["dataset"] = std::string(data::kind_name(p.kind)) + ":" + p.root.string();
  results["setting"] = p.shots > 0 ? fmt::format("few-shot, {} shot{}", p.shots, p.shots > 1 ? "s" : "") : "unsupervised";
  results["shots"] = p.shots;
  results["rounds"] = rounds;
  results["seed"] = p.seed;
  results["pro_fpr"] = p.pro_fpr;
  results["answers"] = p.fast ? "decision (one prefill)" : "generated";
  results["categories"] = nlohmann::ordered_json::object();
  for (const auto& cat : categories) {
    std::vector<data::Sample> test, train_good;
    for (const auto& s : samples[cat]) {
      if (s.split == data::Split::Test) test.push_back(s);
      if (s.split == data::Split::Train && s.label == 0) train_good.push_back(s);
    }
    iadgpt.set_class(cat);
    std::vector<nlohmann::ordered_json> per_round;
    for (int64_t r = 0; r < rounds; ++r) {
      std::vector<cv::Mat> refs;
      if (p.shots > 0)
        for (const auto& s : draw_references(train_good, p.shots, p.seed + r)) refs.push_back(image::decode_file(s.image));
      iadgpt.set_references(refs);
      auto run = inspect_samples(iadgpt, test, p, r, {}, [&] {
        if (progress) progress(++done, total);
      });
      per_round.push_back(model_metrics(run, p.pro_fpr));
      out.answers.insert(out.answers.end(), run.answers.begin(), run.answers.end());
    }
    nlohmann::ordered_json entry;
    entry["test_images"] = test.size();
    entry["anomalous"] = std::count_if(test.begin(), test.end(), [](const data::Sample& s) { return s.label == 1; });
    entry["metrics"] = per_round[0].contains("error") ? per_round[0] : mean_of(per_round);
    if (rounds > 1) entry["rounds"] = per_round;
    results["categories"][cat] = entry;
  }
  std::vector<nlohmann::ordered_json> per_category;
  for (const auto& [cat, entry] : results["categories"].items())
    if (!entry["metrics"].contains("error")) per_category.push_back(entry["metrics"]);
  results["mean"] = mean_of(per_category);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  out.images = done;
  results["timing"] = {{"seconds", seconds}, {"images", done}, {"images_per_second", done / std::max(seconds, 1e-9)}};
  return out;
}

std::string model_markdown(const nlohmann::ordered_json& results) {
  const std::vector<std::pair<std::string, std::string>> columns = {
      {"image_auroc", "image AUROC (P(Yes))"}, {"image_auroc_map", "image AUROC (map)"}, {"pixel_auroc", "pixel AUROC"},
      {aupro_key(results.value("pro_fpr", 0.3)), "AUPRO"}, {"yes_no_accuracy", "Yes/No accuracy"}, {"position_accuracy", "position accuracy"}};
  std::string md = fmt::format("\n### {} — {} ({} answers)\n\n| category |", results["dataset"].get<std::string>(),
                               results["setting"].get<std::string>(), results["answers"].get<std::string>());
  for (const auto& [key, title] : columns) md += " " + title + " |";
  md += "\n|---|";
  for (size_t i = 0; i < columns.size(); ++i) md += "---:|";
  md += "\n";
  auto row = [&](const std::string& name, const nlohmann::ordered_json& m) {
    md += "| " + name + " |";
    for (const auto& [key, title] : columns)
      md += m.contains(key) && m[key].is_number() ? fmt::format(" {:.4f} |", m[key].get<double>()) : " – |";
    md += "\n";
  };
  for (const auto& [cat, entry] : results["categories"].items()) row(cat, entry["metrics"]);
  row("**mean**", results["mean"]);
  return md;
}

void write_answers_csv(const std::filesystem::path& path, std::span<const ModelAnswer> answers) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path);
  if (!out) throw InputError(fmt::format("cannot write {}", path.string()));
  out << "category,round,image,defect,label,p_yes,log_odds,said_yes,score,position_right,truth_cells,position,defect_type,answer\n";
  for (const auto& a : answers)
    out << fmt::format("{},{},{},{},{},{:.17g},{:.9g},{},{:.9g},{},{},{},{},{}\n", csv_field(a.category), a.round,
                       csv_field(a.image), csv_field(a.defect), a.label, a.p_yes, a.log_odds, a.said_yes ? 1 : 0,
                       a.score, a.position_right, csv_field(a.truth_cells), csv_field(a.position),
                       csv_field(a.defect_type), csv_field(a.answer));
}

}  // namespace iadgpt::eval
