#include "demo/report.h"

#include <fmt/format.h>

#include <fstream>

namespace iadgpt::demo {

std::string html_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {

std::string metric(const nlohmann::ordered_json& m, const char* key) {
  return m.contains(key) ? fmt::format("{:.3f}", m[key].get<double>()) : "–";
}

std::string metrics_row(const std::string& name, const nlohmann::ordered_json& m, const std::string& extra) {
  return fmt::format("<tr><td>{}</td>{}<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                     html_escape(name), extra, metric(m, "image_auroc_map"), metric(m, "image_auroc"), metric(m, "image_ap"),
                     metric(m, "pixel_auroc"),
                     metric(m, "pixel_ap"), metric(m, "aupro_0.3"), metric(m, "yes_no_accuracy"));
}

constexpr const char* kStyle = R"(
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
.demo{background:#fff3cd;border:2px solid #e0a800;padding:1em;border-radius:6px;font-size:1.05em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ccc;border-radius:6px;padding:6px;width:660px}
.card img{width:640px;image-rendering:auto}.ok{color:#197a2f}.bad{color:#b00020;font-weight:bold}
.small{color:#666;font-size:.9em})";

}  // namespace

void write_report(const std::filesystem::path& path, const ReportInput& r) {
  std::string h;
  h += "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>iadgpt demo report</title>";
  h += fmt::format("<style>{}</style></head><body>\n", kStyle);
  h += "<h1>iadgpt — demo report</h1>\n";
  h += "<p class=\"demo\"><b>This is a demo model.</b> Its image and text encoders are tiny and <b>randomly "
       "initialised</b>, and its tiny LLM learned only these answers, for a few minutes, on procedurally generated "
       "parts. It shows the whole pipeline running on your machine; it is <b>not</b> meant to inspect real parts. "
       "For real inspection use real weights (ImageBind-Huge or CLIP, a Vicuna/LLaMA LLM, AnomalyGPT deltas): see "
       "the section <b>“Real weights”</b> of the project's <code>README.md</code>.</p>\n";
  h += fmt::format("<h2>Yes/No accuracy on held-out parts: {:.1f} % ({}/{})</h2>\n", 100.0 * r.accuracy, r.correct,
                   r.total);
  h += "<p class=\"small\">Held-out parts were never seen in training: new normal parts and defects of five kinds "
       "(scratch, spot, missing piece, crack, contamination) drawn with new seeds. The answers are the trained LLM's, "
       "read from the anomaly maps through the expert tokens; the threshold of the drawn mask comes from a separate "
       "validation split.</p>\n";
  h += fmt::format("<p>Where: of the {} defective parts answered “Yes”, the answer's position words name a cell "
                   "that holds the defect for <b>{}</b>, the map's regions for <b>{}</b>.</p>\n",
                   r.positions, r.answer_position_right, r.map_position_right);
  std::string biases;
  for (const auto& [cls, bias] : r.decision_bias) biases += fmt::format("{}{} {:+.2f}", biases.empty() ? "" : ", ", cls, bias);
  h += fmt::format("<p class=\"small\">Standing before the test: the trainer's held-out synthetic pairs {:.3f}, its "
                   "validation parts (real-looking defects, never trained on) {:.3f}. Decision calibration per class "
                   "on the validation split (log-odds on “Yes” against “No”: {}): validation accuracy {:.3f} → "
                   "{:.3f}.</p>\n",
                   r.trainer_pairs, r.trainer_validation, html_escape(biases), r.validation_before, r.validation_after);
  h += "<table><tr><th>class</th><th>threshold</th><th>image AUROC (map)</th><th>image AUROC (P(Yes))</th><th>image AP (P(Yes))</th><th>pixel AUROC</th>"
       "<th>pixel AP</th><th>AUPRO 0.3</th><th>Yes/No acc.</th></tr>\n";
  for (const auto& c : r.classes)
    h += metrics_row(c.class_name, c.metrics, fmt::format("<td>{:.3f}</td>", c.threshold));
  h += metrics_row("mean", r.mean_metrics, "<td></td>");
  h += "</table>\n";
  h += fmt::format("<p class=\"small\">Settings: {} good reference parts per class (few-shot), {} map warm-up steps, "
                   "{} LLM training steps (stages 1-3), seed {}. Seconds: {}.</p>\n",
                   r.shots, r.steps, r.llm_steps, r.seed, html_escape(r.timings.dump()));
  if (!r.conversation.empty()) {
    h += fmt::format("<h2>A conversation about one held-out part ({})</h2>\n<table>\n",
                     html_escape(r.conversation.front().first));
    for (size_t i = 1; i < r.conversation.size(); ++i)
      h += fmt::format("<tr><td>{}</td><td style=\"text-align:left\">{}</td></tr>\n",
                       html_escape(r.conversation[i].first), html_escape(r.conversation[i].second));
    h += "</table>\n";
  }
  h += "<p class=\"small\">Each picture: input | heat-map overlay | predicted mask (map ≥ threshold) | ground truth.</p>\n";
  std::string current;
  for (const auto& it : r.items) {
    if (it.class_name != current) {
      if (!current.empty()) h += "</div>\n";
      current = it.class_name;
      h += fmt::format("<h3>{}</h3><div class=\"grid\">\n", html_escape(current));
    }
    const bool right = it.said_yes == it.anomalous;
    h += fmt::format(
        "<div class=\"card\"><img src=\"{}\" alt=\"{} {}\"><div><b>{}</b> · truth: {} · score {:.3f} (threshold "
        "{:.3f}) · P(Yes) {:.3f} · <span class=\"{}\">{}</span><br>answer: “{}”<br>map: {}{}</div></div>\n",
        html_escape(it.picture), html_escape(it.class_name), html_escape(it.defect), html_escape(it.defect),
        it.anomalous ? "anomalous" : "normal", it.score, it.threshold, it.p_yes, right ? "ok" : "bad",
        right ? "correct" : "wrong", html_escape(it.answer), it.map_position.empty() ? "no region" : html_escape(it.map_position),
        it.truth_position.empty() ? std::string()
                                  : fmt::format(" · defect in: {} (answer {}, map {})", html_escape(it.truth_position),
                                                it.answer_position_right ? "right" : "wrong",
                                                it.map_position_right ? "right" : "wrong"));
  }
  if (!current.empty()) h += "</div>\n";
  h += "</body></html>\n";
  std::ofstream f(path, std::ios::binary);
  f << h;
  if (!f) throw std::runtime_error("cannot write " + path.string());
}

void write_summary(const std::filesystem::path& path, const DemoResult& result, const std::vector<ReportItem>& items) {
  nlohmann::ordered_json summary{{"yes_no_accuracy", result.accuracy},
                                 {"correct", result.correct},
                                 {"total", result.total},
                                 {"positions", {{"answered_yes_on_defects", result.positions},
                                                {"answer_right", result.answer_position_right},
                                                {"map_right", result.map_position_right}}},
                                 {"trainer", {{"synthetic_pairs", result.trainer_pairs_accuracy},
                                              {"validation_parts", result.trainer_validation_accuracy}}},
                                 {"validation_calibrated", result.validation_accuracy},
                                 {"mean", result.mean_metrics},
                                 {"timings", result.timings}};
  for (const auto& c : result.classes) summary["classes"][c.class_name] = c.metrics;
  summary["parts"] = nlohmann::json::array();
  for (const auto& it : items)
    summary["parts"].push_back({{"class", it.class_name}, {"defect", it.defect}, {"anomalous", it.anomalous},
                                {"said_yes", it.said_yes}, {"answer", it.answer}, {"p_yes", it.p_yes},
                                {"score", it.score}, {"map_position", it.map_position}, {"picture", it.picture}});
  std::ofstream f(path, std::ios::binary);
  f << summary.dump(1) << "\n";
  if (!f) throw std::runtime_error("cannot write " + path.string());
}

}  // namespace iadgpt::demo
