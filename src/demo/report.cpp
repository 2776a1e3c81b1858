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
  return fmt::format("<tr><td>{}</td>{}<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                     html_escape(name), extra, metric(m, "image_auroc"), metric(m, "image_ap"), metric(m, "pixel_auroc"),
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
  h += "<table><tr><th>class</th><th>threshold</th><th>image AUROC</th><th>image AP</th><th>pixel AUROC</th>"
       "<th>pixel AP</th><th>AUPRO 0.3</th><th>Yes/No acc.</th></tr>\n";
  for (const auto& c : r.classes)
    h += metrics_row(c.class_name, c.metrics, fmt::format("<td>{:.3f}</td>", c.threshold));
  h += metrics_row("mean", r.mean_metrics, "<td></td>");
  h += "</table>\n";
  h += fmt::format("<p class=\"small\">Settings: {} good reference parts per class (few-shot), {} map warm-up steps, "
                   "{} LLM training steps (stages 1-3), seed {}. Seconds: {}.</p>\n",
                   r.shots, r.steps, r.llm_steps, r.seed, html_escape(r.timings.dump()));
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
        "{:.3f}) · <span class=\"{}\">{}</span><br>“{}”</div></div>\n",
        html_escape(it.picture), html_escape(it.class_name), html_escape(it.defect), html_escape(it.defect),
        it.anomalous ? "anomalous" : "normal", it.score, it.threshold, right ? "ok" : "bad",
        right ? "correct" : "wrong", html_escape(it.answer));
  }
  if (!current.empty()) h += "</div>\n";
  h += "</body></html>\n";
  std::ofstream f(path, std::ios::binary);
  f << h;
  if (!f) throw std::runtime_error("cannot write " + path.string());
}

}  // namespace iadgpt::demo
