#include "model/bundle.h"

#include <fmt/format.h>

#include <cmath>
#include <unistd.h>

#include <fstream>
#include <set>

#include "io/checkpoint.h"
#include "io/error.h"
#include "llm/config.h"
#include "llm/export.h"
#include "llm/lora.h"
#include "llm/options.h"
#include "nn/device.h"
#include "nn/weights.h"
#include "vision/loader.h"

namespace iadgpt::model {
namespace fs = std::filesystem;
namespace {

constexpr const char* kFormat = "iadgpt-bundle";
constexpr int kVersion = 1;

// Every field iadgpt.json may hold; anything else is a typo the user should hear about.
const std::set<std::string> kFields = {
    "format", "version", "vision", "text", "vocab", "vision_config", "llm", "tokenizer", "lora", "delta", "anomalygpt",
    "lora_alpha", "decoder", "tge", "mmf", "expert", "prompts", "image_size", "taps", "mode", "map", "rotations",
    "dtype", "device", "threshold", "decision_bias", "quant", "vision_quant"};

fs::path delta_name(const Bundle& b) { return b.anomalygpt ? *b.anomalygpt : *b.delta; }

std::string where(const fs::path& dir) { return (dir / "iadgpt.json").string(); }

template <typename T>
T field(const nlohmann::json& j, const std::string& key, const fs::path& dir, const char* expected) {
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw InputError(fmt::format("{}: field '{}' must be {}, found {}", where(dir), key, expected, j.at(key).dump()));
  }
}

fs::path resolve(const fs::path& dir, const fs::path& p) { return p.is_absolute() ? p : dir / p; }

std::optional<fs::path> optional_path(const nlohmann::json& j, const std::string& key, const fs::path& dir) {
  if (!j.contains(key) || j.at(key).is_null()) return std::nullopt;
  return resolve(dir, field<std::string>(j, key, dir, "a path string"));
}

// Written relative when the file lies inside the bundle directory, so a bundle can be moved.
std::string portable(const fs::path& p, const fs::path& dir) {
  if (dir.empty()) return p.string();
  auto rel = fs::weakly_canonical(p).lexically_relative(fs::weakly_canonical(dir));
  if (!rel.empty() && *rel.begin() != "..") return rel.string();
  return fs::absolute(p).string();
}

void require_exists(const fs::path& dir, const std::string& key, const fs::path& p, bool directory = false) {
  std::error_code ec;
  if (!fs::exists(p, ec)) throw InputError(fmt::format("{}: field '{}': {} does not exist", where(dir), key, p.string()));
  if (directory && !fs::is_directory(p, ec))
    throw InputError(fmt::format("{}: field '{}': {} is not a directory", where(dir), key, p.string()));
}

// The width a tensor must have, or InputError naming the bundle field, the file and the key.
void expect_dim(const io::TensorMap& t, const std::string& key, int64_t axis, int64_t expected, const std::string& field_name,
                const fs::path& file, const fs::path& dir, const std::string& what) {
  auto it = t.find(key);
  if (it == t.end()) throw InputError(fmt::format("{}: field '{}': {} has no tensor '{}'", where(dir), field_name, file.string(), key));
  if (it->second.dim() <= axis || it->second.size(axis) != expected) {
    throw InputError(fmt::format("{}: field '{}': {} tensor '{}' has shape {}, but {} is {}", where(dir), field_name,
                                 file.string(), key, nn::shape_string(it->second.sizes()), what, expected));
  }
}

}  // namespace

std::optional<io::TensorMap> load_deltas(const Bundle& b) { return resolve_sources(b).deltas; }

BundleSources resolve_sources(const Bundle& b) {
  BundleSources out;
  std::optional<io::TensorMap> panda, agpt;
  if (b.delta) panda = io::load_checkpoint(*b.delta).tensors;
  if (b.anomalygpt) agpt = io::load_checkpoint(*b.anomalygpt).tensors;
  auto file_with = [&](auto&& has) -> std::optional<fs::path> {
    if (agpt && has(*agpt)) return b.anomalygpt;
    if (panda && has(*panda)) return b.delta;
    return std::nullopt;
  };
  out.decoder = b.decoder ? b.decoder : file_with([](const io::TensorMap& t) { return t.count("image_decoder.fc.0.weight") > 0; });
  out.lora_delta = file_with([](const io::TensorMap& t) {
      for (const auto& [k, v] : t)
        if (k.find("lora_A") != std::string::npos) return true;
      return false;
    });
  out.delta_name = b.anomalygpt ? b.anomalygpt->string() : b.delta ? b.delta->string() : "";
  if (panda || agpt) {
    out.deltas.emplace(panda ? std::move(*panda) : io::TensorMap{});
    if (agpt)
      for (auto& [k, t] : *agpt) (*out.deltas)[k] = t;
  }
  return out;
}

Bundle bundle_from_json(const nlohmann::json& j, const fs::path& dir) {
  if (!j.is_object()) throw InputError(fmt::format("{}: expected a JSON object", where(dir)));
  for (const auto& item : j.items()) {
    if (!kFields.count(item.key()))
      throw InputError(fmt::format("{}: unknown field '{}'", where(dir), item.key()));
  }
  if (j.contains("format") && field<std::string>(j, "format", dir, "a string") != kFormat)
    throw InputError(fmt::format("{}: field 'format' must be \"{}\"", where(dir), kFormat));
  if (j.contains("version") && field<int>(j, "version", dir, "an integer") != kVersion)
    throw InputError(fmt::format("{}: field 'version': this program reads version {}, found {}", where(dir), kVersion,
                                 j.at("version").dump()));
  Bundle b;
  b.dir = dir;
  for (const char* key : {"vision", "llm"}) {
    if (!j.contains(key) || j.at(key).is_null()) throw InputError(fmt::format("{}: missing field '{}'", where(dir), key));
  }
  b.vision = *optional_path(j, "vision", dir);
  b.llm = *optional_path(j, "llm", dir);
  b.text = optional_path(j, "text", dir);
  b.vocab = optional_path(j, "vocab", dir);
  b.tokenizer = optional_path(j, "tokenizer", dir);
  b.lora = optional_path(j, "lora", dir);
  b.delta = optional_path(j, "delta", dir);
  b.anomalygpt = optional_path(j, "anomalygpt", dir);
  b.decoder = optional_path(j, "decoder", dir);
  b.tge = optional_path(j, "tge", dir);
  b.mmf = optional_path(j, "mmf", dir);
  b.prompts = optional_path(j, "prompts", dir);
  if (j.contains("vision_config") && !j.at("vision_config").is_null()) {
    if (!j.at("vision_config").is_object())
      throw InputError(fmt::format("{}: field 'vision_config' must be a JSON object", where(dir)));
    b.vision_config = j.at("vision_config");
  }
  if (j.contains("lora_alpha")) b.lora_alpha = field<double>(j, "lora_alpha", dir, "a number");
  if (j.contains("expert")) b.expert = field<std::string>(j, "expert", dir, "a string");
  if (j.contains("mode")) b.mode = field<std::string>(j, "mode", dir, "a string");
  if (j.contains("map")) b.map = field<std::string>(j, "map", dir, "a string");
  if (j.contains("rotations")) b.rotations = field<bool>(j, "rotations", dir, "true or false");
  if (j.contains("dtype")) b.dtype = field<std::string>(j, "dtype", dir, "a string");
  if (j.contains("quant")) b.quant = field<std::string>(j, "quant", dir, "a string");
  if (j.contains("vision_quant")) b.vision_quant = field<std::string>(j, "vision_quant", dir, "a string");
  if (j.contains("device")) b.device = field<std::string>(j, "device", dir, "a string");
  if (j.contains("image_size")) b.image_size = field<int64_t>(j, "image_size", dir, "an integer");
  if (j.contains("taps")) b.taps = field<std::vector<int64_t>>(j, "taps", dir, "a list of integers");
  if (j.contains("threshold")) b.threshold = field<double>(j, "threshold", dir, "a number");
  if (j.contains("decision_bias"))
    b.decision_bias = field<std::map<std::string, double>>(j, "decision_bias", dir, "an object of class → log-odds");

  if (b.expert != "mmf" && b.expert != "prompt_learner")
    throw InputError(fmt::format("{}: field 'expert': unknown expert '{}' (expected mmf or prompt_learner)", where(dir), b.expert));
  if (b.mode != "self-supervised" && b.mode != "few-shot")
    throw InputError(fmt::format("{}: field 'mode': unknown mode '{}' (expected self-supervised or few-shot)", where(dir), b.mode));
  if (b.map != "auto" && b.map != "few-shot" && b.map != "blend")
    throw InputError(fmt::format("{}: field 'map': unknown map '{}' (expected auto, few-shot or blend)", where(dir), b.map));
  if (b.map == "blend" && !b.decoder && !b.delta && !b.anomalygpt)
    throw InputError(fmt::format("{}: field 'map': 'blend' needs a decoder (field 'decoder' or a delta with one)", where(dir)));
  if (b.dtype != "f32" && b.dtype != "bf16")
    throw InputError(fmt::format("{}: field 'dtype': unknown dtype '{}' (expected f32 or bf16)", where(dir), b.dtype));
  nn::parse_quant_format(b.quant, fmt::format("{}: field 'quant'", where(dir)));
  vision_quant_format(b);
  if (!nn::is_device_name(b.device))
    throw InputError(fmt::format("{}: field 'device': unknown device '{}' (expected cpu, cuda or cuda:N)", where(dir), b.device));
  if (b.image_size <= 0) throw InputError(fmt::format("{}: field 'image_size' must be positive, found {}", where(dir), b.image_size));
  if (!(b.threshold > 0 && b.threshold < 1))
    throw InputError(fmt::format("{}: field 'threshold' must lie in (0, 1), found {}", where(dir), b.threshold));
  for (const auto& [cls, bias] : b.decision_bias)
    if (!std::isfinite(bias) || std::abs(bias) > 100)
      throw InputError(fmt::format("{}: field 'decision_bias': class '{}' needs a log-odds in [-100, 100], found {}",
                                   where(dir), cls, bias));
  if (!(b.lora_alpha > 0)) throw InputError(fmt::format("{}: field 'lora_alpha' must be positive", where(dir)));
  for (auto t : b.taps)
    if (t < 0) throw InputError(fmt::format("{}: field 'taps': negative block index {}", where(dir), t));
  if (!b.taps.empty() && b.taps.size() != 4 && b.expert == "mmf")
    throw InputError(fmt::format("{}: field 'taps': the multi-mask fusion needs 4 tapped layers, found {}", where(dir), b.taps.size()));
  return b;
}

nlohmann::json bundle_to_json(const Bundle& b) {
  nlohmann::json j;
  j["format"] = kFormat;
  j["version"] = kVersion;
  auto put = [&](const char* key, const std::optional<fs::path>& p) {
    if (p) j[key] = portable(*p, b.dir);
  };
  j["vision"] = portable(b.vision, b.dir);
  put("text", b.text);
  put("vocab", b.vocab);
  if (b.vision_config) j["vision_config"] = *b.vision_config;
  j["llm"] = portable(b.llm, b.dir);
  put("tokenizer", b.tokenizer);
  put("lora", b.lora);
  put("delta", b.delta);
  put("anomalygpt", b.anomalygpt);
  if (b.delta || b.anomalygpt) j["lora_alpha"] = b.lora_alpha;
  put("decoder", b.decoder);
  put("tge", b.tge);
  put("mmf", b.mmf);
  j["expert"] = b.expert;
  put("prompts", b.prompts);
  j["image_size"] = b.image_size;
  if (!b.taps.empty()) j["taps"] = b.taps;
  j["mode"] = b.mode;
  if (b.map != "auto") j["map"] = b.map;
  if (b.rotations) j["rotations"] = true;
  j["dtype"] = b.dtype;
  if (b.quant != "none") j["quant"] = b.quant;
  if (b.vision_quant != "none") j["vision_quant"] = b.vision_quant;
  if (b.device != "cpu") j["device"] = b.device;
  j["threshold"] = b.threshold;
  if (!b.decision_bias.empty()) j["decision_bias"] = b.decision_bias;
  return j;
}

nn::QuantFormat vision_quant_format(const Bundle& b) {
  return vision::parse_vision_quant(b.vision_quant, fmt::format("{}: field 'vision_quant'", where(b.dir)));
}

void validate_llm_quant(const Bundle& b) {
  const auto stored = llm::stored_quant_format(b.llm / "config.json");
  if (stored != nn::QuantFormat::None && b.quant != nn::quant_format_name(stored))
    throw InputError(fmt::format("{}: field 'quant' is '{}', but the LLM {} is stored quantized as {}", where(b.dir), b.quant,
                                 b.llm.string(), nn::quant_format_name(stored)));
  if (stored != nn::QuantFormat::None && b.lora)
    throw InputError(fmt::format("{}: field 'lora': the LLM is stored quantized ({}), so a LoRA cannot be merged into it; "
                                 "give the unquantized LLM with this LoRA to `iadgpt quantize`", where(b.dir), b.quant));
}

void validate_vision_quant(const Bundle& b) {
  const auto stored = vision::stored_vision_quant(io::load_checkpoint(b.vision, {.headers_only = true}));
  if (stored != nn::QuantFormat::None && vision_quant_format(b) != stored)
    throw InputError(fmt::format("{}: field 'vision_quant' is '{}', but the vision tower {} is stored quantized as {}",
                                 where(b.dir), b.vision_quant, b.vision.string(), nn::quant_format_name(stored)));
}

void validate_bundle(const Bundle& b) {
  const auto& dir = b.dir;
  require_exists(dir, "vision", b.vision);
  require_exists(dir, "llm", b.llm, /*directory=*/true);
  require_exists(dir, "llm", b.llm / "config.json");
  if (b.tokenizer) require_exists(dir, "tokenizer", *b.tokenizer);
  else if (!fs::exists(b.llm / "tokenizer.model"))
    throw InputError(fmt::format("{}: field 'llm': {} has no tokenizer.model (or give field 'tokenizer')", where(dir),
                                 b.llm.string()));
  const std::pair<const char*, const std::optional<fs::path>*> optional_files[] = {
      {"text", &b.text}, {"vocab", &b.vocab}, {"lora", &b.lora}, {"delta", &b.delta}, {"anomalygpt", &b.anomalygpt}, {"decoder", &b.decoder},
      {"tge", &b.tge}, {"mmf", &b.mmf}, {"prompts", &b.prompts}};
  for (const auto& [key, p] : optional_files)
    if (*p) require_exists(dir, key, **p);

  const auto llm_config = llm::LlamaConfig::from_file(b.llm / "config.json");
  validate_llm_quant(b);
  const int64_t hidden = llm_config.hidden_size;
  const std::string llm_what = fmt::format("the LLM hidden size ({} config.json)", b.llm.string());

  vision::VisionOptions vopt;
  vopt.config = b.vision_config;
  const auto vcfg = vision::infer_vit_config(io::load_checkpoint(b.vision, {.headers_only = true}), vopt);
  validate_vision_quant(b);
  const int64_t layers = b.taps.empty() ? static_cast<int64_t>(vcfg.default_taps().size()) : static_cast<int64_t>(b.taps.size());
  for (auto t : b.taps)
    if (t >= vcfg.layers)
      throw InputError(fmt::format("{}: field 'taps': block {} is outside the vision tower's {} blocks", where(dir), t, vcfg.layers));
  if (b.image_size != vcfg.image_size)
    throw InputError(fmt::format("{}: field 'image_size' is {}, but the vision tower's input size is {}", where(dir),
                                 b.image_size, vcfg.image_size));

  std::optional<io::TensorMap> delta = load_deltas(b);
  if (delta && delta->count("llama_proj.weight")) {
    expect_dim(*delta, "llama_proj.weight", 0, hidden, "delta", delta_name(b), dir, llm_what);
    expect_dim(*delta, "llama_proj.weight", 1, vcfg.embed_dim, "delta", delta_name(b), dir, "the vision embedding width");
  }
  auto check_decoder = [&](const io::TensorMap& t, const std::string& prefix, const std::string& key, const fs::path& file) {
    for (int64_t l = 0; l < layers; ++l) {
      const auto w = fmt::format("{}fc.{}.weight", prefix, l);
      expect_dim(t, w, 0, vcfg.embed_dim, key, file, dir, "the vision embedding width");
      expect_dim(t, w, 1, vcfg.width, key, file, dir, "the vision tower width");
    }
  };
  if (b.decoder) check_decoder(io::load_checkpoint(*b.decoder).tensors, "", "decoder", *b.decoder);
  else if (delta && delta->count("image_decoder.fc.0.weight")) check_decoder(*delta, "image_decoder.", "delta", delta_name(b));
  if (b.tge) {
    const auto t = io::load_checkpoint(*b.tge).tensors;
    for (const char* k : {"normal_path.weight", "abnormal_path.weight"}) {
      expect_dim(t, k, 0, hidden, "tge", *b.tge, dir, llm_what);
      expect_dim(t, k, 1, 2 * vcfg.embed_dim, "tge", *b.tge, dir, "twice the vision embedding width");
    }
    if (t.count("llama_proj.weight")) expect_dim(t, "llama_proj.weight", 0, hidden, "tge", *b.tge, dir, llm_what);
  }
  if (!b.tge && !(delta && delta->count("llama_proj.weight")))
    throw InputError(fmt::format("{}: no image projection: give field 'tge' (our adapter) or a 'delta' with llama_proj", where(dir)));
  if (b.expert == "mmf") {
    if (!b.mmf) throw InputError(fmt::format("{}: missing field 'mmf' (expert is mmf)", where(dir)));
    {
      const auto t = io::load_checkpoint(*b.mmf).tensors;
      expect_dim(t, "cell_proj.weight", 0, hidden, "mmf", *b.mmf, dir, llm_what);
      expect_dim(t, "base_tokens", 1, hidden, "mmf", *b.mmf, dir, llm_what);
    }
    if (layers != 4)
      throw InputError(fmt::format("{}: the multi-mask fusion needs 4 tapped layers, the tower gives {}", where(dir), layers));
  } else {
    if (!delta || !delta->count("prompt_learner.base_prompts"))
      throw InputError(fmt::format("{}: field 'expert' is prompt_learner, but no 'delta' with prompt_learner.* tensors is given",
                                   where(dir)));
    expect_dim(*delta, "prompt_learner.base_prompts", 1, hidden, "delta", delta_name(b), dir, llm_what);
  }
}

Bundle read_bundle(const fs::path& dir) {
  const auto file = dir / "iadgpt.json";
  std::ifstream in(file);
  if (!in) throw InputError(fmt::format("{}: no model bundle here (cannot open iadgpt.json)", file.string()));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("{}: invalid JSON: {}", file.string(), e.what()));
  }
  auto b = bundle_from_json(j, dir);
  validate_bundle(b);
  return b;
}

llm::LlamaModel load_bundle_llm(const Bundle& b, const BundleSources& sources, torch::Dtype dtype) {
  const auto quant = nn::parse_quant_format(b.quant, fmt::format("{}: field 'quant'", where(b.dir)));
  // Stored quantized: its LoRAs were merged before it was quantized (quantize_bundle).
  if (const auto stored = llm::stored_quant_format(b.llm / "config.json"); stored != nn::QuantFormat::None) {
    if (stored != quant)
      throw InputError(fmt::format("{}: quantization '{}' asked, but the LLM {} is stored quantized as {}", where(b.dir),
                                   b.quant, b.llm.string(), nn::quant_format_name(stored)));
    return llm::load_model(b.llm, {.dtype = torch::kBFloat16});
  }
  // Quantized at load: merged in the checkpoint's own precision, then quantized from it.
  auto m = llm::load_model(b.llm, {.dtype = quant == nn::QuantFormat::None ? dtype : llm::source_dtype(b.llm)});
  // The released LoRA first, then one trained on top of it (train/config.h `delta`).
  if (sources.lora_delta) llm::merge_lora(m, llm::load_pandagpt_delta(*sources.lora_delta, b.lora_alpha));
  if (b.lora) llm::merge_lora(m, llm::load_lora(*b.lora));
  if (quant != nn::QuantFormat::None) llm::quantize_model(m, quant);
  return m;
}

Bundle quantize_bundle(const Bundle& b, nn::QuantFormat format, const fs::path& out) {
  if (format == nn::QuantFormat::None) throw InputError("quantize: no format given (expected q8 or q4)");
  if (b.quant != "none")
    throw InputError(fmt::format("{}: the bundle is already quantized ({}); quantize the unquantized bundle instead",
                                 where(b.dir), b.quant));
  Bundle q = b;
  q.quant = nn::quant_format_name(format);
  const auto model = load_bundle_llm(q, resolve_sources(b), torch::kFloat32);
  const auto llm_dir = out / "llm";
  llm::save_quantized_checkpoint(llm_dir, model.config, model.weights);
  if (!b.tokenizer && fs::exists(b.llm / "tokenizer.model"))
    fs::copy_file(b.llm / "tokenizer.model", llm_dir / "tokenizer.model", fs::copy_options::overwrite_existing);
  q.llm = llm_dir;
  q.lora.reset();
  write_bundle(q, out);
  return read_bundle(out);
}

void write_bundle(const Bundle& bundle, const fs::path& dir) {
  fs::create_directories(dir);
  Bundle b = bundle;
  b.dir = dir;
  const auto text = bundle_to_json(b).dump(2) + "\n";
  const auto target = dir / "iadgpt.json";
  const auto tmp = dir / fmt::format(".iadgpt.json.{}.tmp", ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw InputError(fmt::format("{}: cannot write", tmp.string()));
    out << text;
    out.flush();
    if (!out) throw InputError(fmt::format("{}: write failed", tmp.string()));
  }
  std::error_code ec;
  fs::rename(tmp, target, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw InputError(fmt::format("{}: cannot write: {}", target.string(), ec.message()));
  }
}

}  // namespace iadgpt::model
