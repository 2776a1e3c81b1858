#include "train/config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <set>

#include "data/dataset.h"
#include "data/synthesis.h"
#include "io/error.h"
#include "nn/device.h"

namespace iadgpt::train {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// Reads one object's fields with checks; every message starts with "<file>: '<key>'".
class Fields {
 public:
  Fields(const json& j, std::string file, std::string prefix) : j_(j), file_(std::move(file)), prefix_(std::move(prefix)) {
    if (!j_.is_object()) fail("", "an object", j_.type_name());
  }
  [[noreturn]] void fail(const std::string& key, const std::string& expected, const std::string& found) const {
    throw InputError(fmt::format("{}: '{}{}': expected {}, found {}", file_, prefix_, key, expected, found));
  }
  bool has(const std::string& key) { seen_.insert(key); return j_.contains(key) && !j_[key].is_null(); }
  const json& at(const std::string& key) { seen_.insert(key); return j_.at(key); }
  std::string found(const std::string& key) const { return j_.at(key).dump(); }

  std::string string(const std::string& key, std::optional<std::string> def, std::initializer_list<const char*> allowed = {}) {
    if (!has(key)) {
      if (!def) fail(key, "a string (required)", "nothing");
      return *def;
    }
    if (!j_[key].is_string()) fail(key, "a string", found(key));
    auto s = j_[key].get<std::string>();
    if (allowed.size() > 0) {
      bool ok = false;
      for (const char* a : allowed) ok = ok || s == a;
      if (!ok) {
        std::vector<std::string> names(allowed.begin(), allowed.end());
        fail(key, fmt::format("one of {}", fmt::join(names, ", ")), found(key));
      }
    }
    return s;
  }
  double number(const std::string& key, double def, double lo, double hi, bool lo_open = false) {
    if (!has(key)) return def;
    if (!j_[key].is_number()) fail(key, "a number", found(key));
    const double v = j_[key].get<double>();
    if (v < lo || v > hi || (lo_open && v == lo))
      fail(key, fmt::format("a number in {}{}, {}]", lo_open ? "(" : "[", lo, hi), found(key));
    return v;
  }
  int64_t integer(const std::string& key, int64_t def, int64_t lo, int64_t hi) {
    if (!has(key)) return def;
    if (!j_[key].is_number_integer()) fail(key, "an integer", found(key));
    const auto v = j_[key].get<int64_t>();
    if (v < lo || v > hi) fail(key, fmt::format("an integer in [{}, {}]", lo, hi), found(key));
    return v;
  }
  bool boolean(const std::string& key, bool def) {
    if (!has(key)) return def;
    if (!j_[key].is_boolean()) fail(key, "true or false", found(key));
    return j_[key].get<bool>();
  }
  // A path relative to the config's directory; must exist unless `may_be_missing`.
  fs::path path(const std::string& key, const fs::path& base, bool required, bool may_be_missing = false) {
    if (!has(key)) {
      if (required) fail(key, "a path (required)", "nothing");
      return {};
    }
    if (!j_[key].is_string() || j_[key].get<std::string>().empty()) fail(key, "a path", found(key));
    fs::path p = j_[key].get<std::string>();
    if (p.is_relative()) p = base / p;
    if (!may_be_missing && !fs::exists(p)) fail(key, "an existing path", fmt::format("'{}' (no such file or directory)", p.string()));
    return p;
  }
  void reject_unknown() const {
    for (const auto& [k, v] : j_.items())
      if (!seen_.count(k)) throw InputError(fmt::format("{}: unknown key '{}{}'", file_, prefix_, k));
  }

 private:
  const json& j_;
  std::string file_, prefix_;
  std::set<std::string> seen_;
};

}  // namespace

// The first human/gpt exchange of every entry of a PandaGPT/LLaVA instruction file; InputError
// names the entry and what is wrong (untrusted JSON: nothing is assumed about its shape).
static std::vector<InstructionConfig::Entry> read_instruction_entries(const InstructionConfig& ic, const std::string& source) {
  const auto where = fmt::format("{}: 'instructions.file' {}", source, ic.file.string());
  std::ifstream in(ic.file);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw InputError(fmt::format("{}: not JSON ({})", where, e.what()));
  }
  if (!j.is_array() || j.empty()) throw InputError(fmt::format("{}: expected a non-empty list of entries", where));
  std::vector<InstructionConfig::Entry> out;
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& e = j[i];
    auto bad = [&](const std::string& what) { return InputError(fmt::format("{}: entry {}: {}", where, i, what)); };
    if (!e.is_object()) throw bad("not an object");
    const char* image_key = e.contains("image") ? "image" : "image_name";
    if (!e.contains(image_key) || !e[image_key].is_string()) throw bad("no \"image\" or \"image_name\" string");
    const char* turns_key = e.contains("conversations") ? "conversations" : "conversation";
    if (!e.contains(turns_key) || !e[turns_key].is_array()) throw bad("no \"conversations\" list");
    std::string question, answer;
    for (const auto& t : e[turns_key]) {
      if (!t.is_object() || !t.contains("from") || !t.contains("value") || !t["from"].is_string() || !t["value"].is_string())
        throw bad("a turn without \"from\" and \"value\" strings");
      const auto from = t["from"].get<std::string>();
      if (question.empty() && from == "human") question = t["value"].get<std::string>();
      else if (!question.empty() && from == "gpt") {
        answer = t["value"].get<std::string>();
        break;
      }
    }
    for (const std::string tag : {"<image>", "<Img>", "</Img>"})
      for (auto at = question.find(tag); at != std::string::npos; at = question.find(tag)) question.erase(at, tag.size());
    while (!question.empty() && std::isspace(static_cast<unsigned char>(question.front()))) question.erase(0, 1);
    while (!question.empty() && std::isspace(static_cast<unsigned char>(question.back()))) question.pop_back();
    if (question.empty() || answer.empty()) throw bad("no human turn followed by a gpt turn");
    const fs::path image = ic.images / e[image_key].get<std::string>();
    if (!fs::is_regular_file(image)) throw bad(fmt::format("image '{}' not found", image.string()));
    out.push_back({image, question, answer});
  }
  return out;
}

// The fields every dataset entry shares (`datasets[i]`, `validation`): kind, root and the
// categories, all of the tree's when none are named.
static DatasetConfig dataset_fields(Fields& d, const fs::path& base) {
  DatasetConfig dc;
  dc.kind = d.string("kind", "mvtec", {"mvtec", "visa", "mvtec3d", "folder"});
  dc.root = d.path("root", base, true);
  if (d.has("categories")) {
    const auto& cats = d.at("categories");
    if (!cats.is_array()) d.fail("categories", "an array of names", cats.dump());
    for (const auto& cat : cats) {
      if (!cat.is_string()) d.fail("categories", "an array of names", cats.dump());
      dc.categories.push_back(cat.get<std::string>());
    }
  }
  if (dc.categories.empty()) dc.categories = data::categories(data::parse_kind(dc.kind), dc.root);
  if (dc.categories.empty()) d.fail("root", "a dataset with at least one category", dc.root.string());
  return dc;
}

TrainConfig parse_train_config(const json& j, const fs::path& source) {
  TrainConfig c;
  c.source = source;
  const std::string file = source.string();
  const fs::path base = source.has_parent_path() ? source.parent_path() : fs::path(".");
  Fields f(j, file, "");

  c.out = f.path("out", base, true, /*may_be_missing=*/true);
  c.vision = f.path("vision", base, true);
  if (f.has("vision_config")) {
    const auto& v = f.at("vision_config");
    if (v.is_object()) {
      c.vision_config = v;
    } else if (v.is_string()) {
      auto p = f.path("vision_config", base, true);
      std::ifstream in(p);
      try {
        c.vision_config = json::parse(in);
      } catch (const json::exception& e) {
        f.fail("vision_config", "a JSON file", fmt::format("'{}' ({})", p.string(), e.what()));
      }
    } else {
      f.fail("vision_config", "an object or a path", f.found("vision_config"));
    }
  }
  if (f.has("text")) c.text = f.path("text", base, true);
  if (f.has("vocab")) c.vocab = f.path("vocab", base, true);
  if (f.has("taps")) {
    const auto& t = f.at("taps");
    if (!t.is_array()) f.fail("taps", "an array of block indices", t.dump());
    for (const auto& v : t) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0) f.fail("taps", "non-negative integers", t.dump());
      c.taps.push_back(v.get<int64_t>());
    }
    if (c.taps.size() != 4) f.fail("taps", "exactly 4 blocks (the multi-mask fusion takes 4 layer maps)", t.dump());
  }
  c.image_size = f.integer("image_size", 224, 14, 4096);

  c.llm = f.path("llm", base, true);
  if (!fs::exists(c.llm / "config.json")) f.fail("llm", "a Hugging Face LLaMA directory with config.json", c.llm.string());
  if (f.has("tokenizer")) c.tokenizer = f.path("tokenizer", base, true);
  else if (!fs::exists(c.llm / "tokenizer.model"))
    f.fail("tokenizer", "a tokenizer.model path (the llm directory has none)", "nothing");
  if (f.has("delta")) c.delta = f.path("delta", base, true);
  if (f.has("anomalygpt")) c.anomalygpt = f.path("anomalygpt", base, true);
  c.delta_lora_alpha = f.number("delta_lora_alpha", 32, 0, 1e6, true);
  c.llm_tuning = f.string("llm_tuning", "lora", {"frozen", "lora", "full"});
  c.llm_dtype = f.string("llm_dtype", "f32", {"f32", "bf16"});
  if (c.llm_dtype != "f32" && c.llm_tuning == "full") f.fail("llm_dtype", "f32 with llm_tuning full", c.llm_dtype);
  if (f.has("lora")) {
    Fields l(f.at("lora"), file, "lora.");
    c.lora.rank = l.integer("rank", 32, 1, 4096);
    c.lora.alpha = l.number("alpha", 32, 0, 1e6, true);
    c.lora.dropout = l.number("dropout", 0.1, 0, 0.99);
    l.reject_unknown();
  }
  c.llm_lr = f.number("llm_lr", 1e-4, 0, 10);

  if (!f.has("datasets")) f.fail("datasets", "a non-empty array (required)", "nothing");
  const auto& ds = f.at("datasets");
  if (!ds.is_array() || ds.empty()) f.fail("datasets", "a non-empty array", ds.dump());
  for (size_t i = 0; i < ds.size(); ++i) {
    Fields d(ds[i], file, fmt::format("datasets[{}].", i));
    DatasetConfig dc = dataset_fields(d, base);
    // Dataset layout checked now, never mid-run: every category must list normal training images.
    const auto kind = data::parse_kind(dc.kind);
    for (const auto& cat : dc.categories) {
      auto samples = data::list_samples(kind, dc.root, cat);
      int64_t normals = 0;
      for (const auto& s : samples) normals += s.split == data::Split::Train && s.label == 0;
      if (normals < 2)
        d.fail("categories", "categories with at least 2 normal training images",
               fmt::format("'{}' with {}", cat, normals));
    }
    d.reject_unknown();
    c.datasets.push_back(std::move(dc));
  }
  if (f.has("validation")) {
    Fields v(f.at("validation"), file, "validation.");
    DatasetConfig vc = dataset_fields(v, base);
    const auto kind = data::parse_kind(vc.kind);
    for (const auto& cat : vc.categories) {
      bool trained = false;
      for (const auto& d : c.datasets) trained |= std::find(d.categories.begin(), d.categories.end(), cat) != d.categories.end();
      if (!trained) v.fail("categories", "training categories only (their text and references are the model's)", "'" + cat + "'");
      int64_t normal = 0, anomalous = 0;
      for (const auto& s : data::list_samples(kind, vc.root, cat))
        if (s.split == data::Split::Test) (s.label ? anomalous : normal) += 1;
      if (normal + anomalous == 0) v.fail("categories", "categories with test images", fmt::format("'{}' with none", cat));
    }
    v.reject_unknown();
    c.validation = std::move(vc);
  }
  c.synthesis = f.string("synthesis", "nsa", {"nsa", "cutpaste", "perlin"});
  if (f.has("textures")) c.textures = f.path("textures", base, true);
  if (c.synthesis == "perlin" && !c.textures) f.fail("textures", "a texture directory (synthesis is perlin)", "nothing");
  c.per_image = f.integer("per_image", 1, 1, 1000);
  c.holdout = f.integer("holdout", 2, 0, 1000);
  c.eval_per_image = f.integer("eval_per_image", 1, 1, 1000);
  c.references = f.integer("references", 2, 1, 16);
  c.few_shot_probability = f.number("few_shot_probability", 0.5, 0, 1);
  c.map = f.string("map", "auto", {"auto", "few-shot"});
  if (c.map == "few-shot" && c.few_shot_probability < 1)
    f.fail("map", "'auto' unless few_shot_probability is 1 (every step needs the references' map)", "'few-shot'");
  c.decision_weight = f.number("decision_weight", 0, 0, 1000);
  c.mmf_init = f.string("mmf_init", "kaiming", {"kaiming", "torch"});

  if (f.has("instructions")) {
    Fields in(f.at("instructions"), file, "instructions.");
    InstructionConfig ic;
    ic.file = in.path("file", base, true);
    ic.images = in.path("images", base, true);
    ic.share = in.number("share", 0.1, 0, 1, true);
    in.reject_unknown();
    ic.entries = read_instruction_entries(ic, file);
    c.instructions = ic;
  }
  if (f.has("map_warmup")) {
    Fields w(f.at("map_warmup"), file, "map_warmup.");
    c.map_warmup.steps = w.integer("steps", 0, 0, 1000000);
    if (c.map_warmup.steps > 0 && c.anomalygpt)
      w.fail("steps", "0 with 'anomalygpt' (the decoder comes from the delta; the warm-up trains a fresh one)",
             std::to_string(c.map_warmup.steps));
    c.map_warmup.per_image = w.integer("per_image", 20, 1, 1000);
    c.map_warmup.batch_size = w.integer("batch_size", 8, 1, 4096);
    c.map_warmup.lr = w.number("lr", 1e-3, 0, 10, true);
    c.map_warmup.loss_size = w.integer("loss_size", 56, 8, 1024);
    w.reject_unknown();
  }
  if (!f.has("stages")) f.fail("stages", "a non-empty array (required)", "nothing");
  const auto& st = f.at("stages");
  if (!st.is_array() || st.empty()) f.fail("stages", "a non-empty array", st.dump());
  for (size_t i = 0; i < st.size(); ++i) {
    Fields s(st[i], file, fmt::format("stages[{}].", i));
    StageConfig sc;
    sc.stage = s.integer("stage", 0, 1, 3);
    if (sc.stage == 0) s.fail("stage", "1, 2 or 3 (required)", "nothing");
    sc.steps = s.integer("steps", 100, 1, 100'000'000);
    sc.lr = s.number("lr", 1e-3, 0, 10, true);
    sc.llm = s.boolean("llm", true);
    s.reject_unknown();
    c.stages.push_back(sc);
  }
  c.batch_size = f.integer("batch_size", 16, 1, 1'000'000);
  c.grad_accum = f.integer("grad_accum", 1, 1, 1'000'000);
  c.gradient_checkpointing = f.boolean("gradient_checkpointing", false);
  if (f.has("gradients")) c.gradients = f.string("gradients", std::nullopt, {"per_example", "batched"});
  c.warmup = f.number("warmup", 0.1, 0, 1);
  c.weight_decay = f.number("weight_decay", 1e-3, 0, 1);
  if (f.has("betas")) {
    const auto& b = f.at("betas");
    if (!b.is_array() || b.size() != 2 || !b[0].is_number() || !b[1].is_number() || b[0].get<double>() < 0 ||
        b[0].get<double>() >= 1 || b[1].get<double>() < 0 || b[1].get<double>() >= 1)
      f.fail("betas", "[beta1, beta2] with both in [0, 1)", b.dump());
    c.beta1 = b[0].get<double>();
    c.beta2 = b[1].get<double>();
  }
  c.eps = f.number("eps", 1e-8, 0, 1, true);
  c.clip = f.number("clip", 1.0, 0, 1e9);
  c.seed = static_cast<uint64_t>(f.integer("seed", 0, 0, INT64_MAX));
  c.checkpoint_every = f.integer("checkpoint_every", 50, 0, INT64_MAX);
  c.keep = f.integer("keep", 3, 1, 1000);
  c.eval_every = f.integer("eval_every", 0, 0, INT64_MAX);
  c.log_every = f.integer("log_every", 1, 1, INT64_MAX);
  c.resume = f.boolean("resume", true);
  c.bf16_autocast = f.boolean("bf16_autocast", false);
  c.device = f.string("device", "cpu");
  if (!nn::is_device_name(c.device)) f.fail("device", "cpu, cuda or cuda:N", c.device);
  c.stop_after = f.integer("stop_after", 0, 0, INT64_MAX);
  f.reject_unknown();
  return c;
}

bool uses_batched_gradients(const TrainConfig& config, const torch::Device& device) {
  return config.gradients.empty() ? !device.is_cpu() : config.gradients == "batched";
}

torch::Device training_device(std::string_view name) { return nn::parse_device(name, "training device"); }

TrainConfig read_train_config(const fs::path& file) {
  std::ifstream in(file);
  if (!in) throw InputError(fmt::format("{}: cannot open the training config", file.string()));
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw InputError(fmt::format("{}: invalid JSON: {}", file.string(), e.what()));
  }
  return parse_train_config(j, file);
}

nlohmann::json TrainConfig::to_json() const {
  json stages_j = json::array();
  for (const auto& s : stages) stages_j.push_back({{"stage", s.stage}, {"steps", s.steps}, {"lr", s.lr}, {"llm", s.llm}});
  json ds = json::array();
  for (const auto& d : datasets) ds.push_back({{"kind", d.kind}, {"root", d.root.string()}, {"categories", d.categories}});
  // What decides the trajectory (not the bookkeeping): a resumed run must have the same.
  json j = {{"vision", vision.string()}, {"taps", taps}, {"image_size", image_size}, {"llm", llm.string()},
          {"delta", delta ? delta->string() : ""}, {"anomalygpt", anomalygpt ? anomalygpt->string() : ""},
          {"delta_lora_alpha", delta_lora_alpha}, {"llm_tuning", llm_tuning}, {"lora", {c10::str(lora.rank), lora.alpha, lora.dropout}}, {"llm_lr", llm_lr},
          {"datasets", ds}, {"synthesis", synthesis}, {"per_image", per_image}, {"holdout", holdout},
          {"references", references}, {"few_shot_probability", few_shot_probability}, {"map", map},
          {"decision_weight", decision_weight}, {"mmf_init", mmf_init}, {"bf16_autocast", bf16_autocast},
          {"instructions", instructions ? nlohmann::json{instructions->file.string(), instructions->images.string(), instructions->share} : nlohmann::json()}, {"stages", stages_j},
          {"map_warmup", {map_warmup.steps, map_warmup.per_image, map_warmup.batch_size, map_warmup.lr, map_warmup.loss_size}},
          {"batch_size", batch_size}, {"grad_accum", grad_accum}, {"warmup", warmup}, {"weight_decay", weight_decay},
          {"betas", {beta1, beta2}}, {"eps", eps}, {"clip", clip}, {"seed", seed}};
  // Only when set, so that checkpoints written before the key existed still resume.
  if (!gradients.empty()) j["gradients"] = gradients;
  if (llm_dtype != "f32") j["llm_dtype"] = llm_dtype;
  return j;
}

}  // namespace iadgpt::train
