#include "anomaly/apg.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <set>
#include <sstream>

#include "io/atomic_file.h"
#include "io/error.h"
#include "llm/generate.h"

namespace iadgpt::anomaly {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// "1. ", "1) ", "- ", "* ", "• " and markdown bold around the keyword are decoration, not content.
std::string_view strip_list_marker(std::string_view line) {
  line = trim(line);
  size_t digits = 0;
  while (digits < line.size() && std::isdigit(static_cast<unsigned char>(line[digits]))) ++digits;
  if (digits > 0 && digits < line.size() && (line[digits] == '.' || line[digits] == ')')) line.remove_prefix(digits + 1);
  line = trim(line);
  for (std::string_view bullet : {"- ", "* ", "\xE2\x80\xA2 ", "+ "}) {
    if (line.starts_with(bullet)) {
      line.remove_prefix(bullet.size());
      break;
    }
  }
  return trim(line);
}

std::string strip_emphasis(std::string_view s) {
  std::string out;
  for (char c : s)
    if (c != '*' && c != '"' && c != '`') out += c;
  return std::string(trim(out));
}

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

bool is_keyword(std::string_view keyword) {
  // A keyword is a short noun phrase: a few words, at least one letter.
  if (keyword.empty() || keyword.size() > 40) return false;
  if (std::count(keyword.begin(), keyword.end(), ' ') > 5) return false;  // at most six words
  return std::any_of(keyword.begin(), keyword.end(), [](unsigned char c) { return std::isalpha(c); });
}

std::vector<std::string> string_list(const nlohmann::json& j, std::string_view field, std::string_view where) {
  if (!j.contains(field) || !j[std::string(field)].is_array())
    throw InputError(fmt::format("{}: field '{}' must be a list of strings", where, field));
  std::vector<std::string> out;
  for (const auto& v : j[std::string(field)]) {
    if (!v.is_string() || trim(v.get<std::string>()).empty())
      throw InputError(fmt::format("{}: field '{}' must hold non-empty strings", where, field));
    out.push_back(v.get<std::string>());
  }
  return out;
}

}  // namespace

AbnormalPrompts parse_apg_reply(std::string_view class_name, std::string_view reply) {
  AbnormalPrompts out;
  out.class_name = std::string(class_name);
  std::set<std::string> seen;
  std::istringstream lines{std::string(reply)};
  std::string raw;
  while (std::getline(lines, raw) && out.keywords.size() < kMaxKeywords) {
    std::string_view line = strip_list_marker(raw);
    auto colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string keyword = lower(strip_emphasis(line.substr(0, colon)));
    std::string sentence = strip_emphasis(line.substr(colon + 1));
    if (!is_keyword(keyword) || sentence.size() < 3) continue;
    if (!seen.insert(keyword).second) continue;
    out.keywords.push_back(std::move(keyword));
    out.sentences.push_back(std::move(sentence));
  }
  return out;
}

nlohmann::json to_json(const AbnormalPrompts& prompts) {
  return {{"keywords", prompts.keywords},
          {"sentences", prompts.sentences},
          {"settings", prompts.settings.is_null() ? nlohmann::json::object() : prompts.settings}};
}

AbnormalPrompts prompts_from_json(std::string_view class_name, const nlohmann::json& j, std::string_view source) {
  std::string where = fmt::format("{}: class '{}'", source, class_name);
  if (!j.is_object()) throw InputError(where + ": must be an object");
  AbnormalPrompts out;
  out.class_name = std::string(class_name);
  out.keywords = string_list(j, "keywords", where);
  out.sentences = string_list(j, "sentences", where);
  if (out.keywords.size() != out.sentences.size())
    throw InputError(fmt::format("{}: {} keywords but {} sentences (one sentence per keyword)", where,
                                 out.keywords.size(), out.sentences.size()));
  if (out.keywords.empty()) throw InputError(where + ": no keywords");
  if (out.keywords.size() > kMaxKeywords)
    throw InputError(fmt::format("{}: {} keywords, at most {}", where, out.keywords.size(), kMaxKeywords));
  if (j.contains("settings")) out.settings = j["settings"];
  return out;
}

std::map<std::string, AbnormalPrompts> read_prompts_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(fmt::format("{}: cannot open prompts file", path.string()));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("{}: not valid JSON: {}", path.string(), e.what()));
  }
  if (!j.is_object() || j.value("format", "") != "iadgpt-apg")
    throw InputError(fmt::format("{}: not an APG prompts file (expected \"format\": \"iadgpt-apg\")", path.string()));
  if (!j.contains("version") || !j["version"].is_number_integer() || j["version"].get<int>() != 1)
    throw InputError(fmt::format("{}: unsupported APG prompts version (expected 1)", path.string()));
  if (!j.contains("classes") || !j["classes"].is_object() || j["classes"].empty())
    throw InputError(fmt::format("{}: field 'classes' must be a non-empty object", path.string()));
  std::map<std::string, AbnormalPrompts> out;
  for (const auto& [name, entry] : j["classes"].items()) out[name] = prompts_from_json(name, entry, path.string());
  return out;
}

void write_prompts_file(const std::filesystem::path& path, const std::map<std::string, AbnormalPrompts>& classes) {
  nlohmann::json j = {{"format", "iadgpt-apg"}, {"version", 1}, {"classes", nlohmann::json::object()}};
  for (const auto& [name, prompts] : classes) j["classes"][name] = to_json(prompts);
  io::write_file_atomic(path, j.dump(2) + "\n");
}

std::optional<AbnormalPrompts> prompts_for_class(std::string_view class_name,
                                                 const std::optional<std::filesystem::path>& file) {
  if (file) {
    auto classes = read_prompts_file(*file);
    if (auto it = classes.find(std::string(class_name)); it != classes.end()) return it->second;
  }
  return builtin_prompts(class_name);
}

std::vector<std::string> keyword_texts(const AbnormalPrompts& prompts) {
  const auto name = display_class_name(prompts.class_name);
  std::vector<std::string> texts;
  for (size_t i = 0; i < prompts.keywords.size(); ++i) {
    std::string sentence = prompts.sentences[i];
    if (!sentence.empty() && sentence.back() != '.') sentence += '.';
    texts.push_back(fmt::format("a photo of a {} with {}, {}", name, prompts.keywords[i], sentence));
  }
  return texts;
}

torch::Tensor keyword_embeddings(const AbnormalPrompts& prompts, const SentenceEncoder& encode,
                                 const PromptCache* cache, std::string_view model_identity) {
  if (prompts.keywords.empty()) throw InputError(fmt::format("APG: class '{}' has no keywords", prompts.class_name));
  // The cache stores TextFeatures: the per-keyword rows are kept as its abnormal sentences, and
  // the normal side (which it needs non-empty) holds the same rows — encoded once.
  PromptEnsemble ensemble{.class_name = "apg-keywords/" + prompts.class_name,
                          .normal = keyword_texts(prompts),
                          .abnormal = keyword_texts(prompts)};
  const auto key = cache ? cache->key(model_identity, ensemble) : std::string();
  if (cache)
    if (auto hit = cache->load(key)) return hit->abnormal_sentences;
  const auto rows = encode(ensemble.abnormal);
  auto features = reduce_text_features(rows, rows);
  if (cache) cache->store(key, features);
  return features.abnormal_sentences;
}

ApgScript apg_script(std::string_view class_name) {
  // Two worked examples teach the format (keyword: sentence, 6-10 lines) and the kind of content
  // (visible attributes: shape, colour, texture, type of damage) better than instructions alone.
  constexpr std::string_view kInstruction =
      "You are an expert in industrial visual inspection. List the abnormal attributes (defects) "
      "that a {} can show in a photo. Answer with 6 to 10 lines, each of the form "
      "'keyword: sentence', where the keyword is a short defect name and the sentence describes "
      "how the defect looks (shape, colour, texture).";
  ApgScript script;
  script.examples.push_back(
      {fmt::format(fmt::runtime(kInstruction), "ceramic plate"),
       "crack: a thin dark line splits the glazed surface of the plate\n"
       "chip: a small piece is missing from the rim of the plate\n"
       "stain: a brown discoloured patch spoils the white glaze\n"
       "scratch: a fine bright scratch runs across the plate\n"
       "bubble: a small raised bubble breaks the smooth glaze\n"
       "warp: the plate is bent and does not lie flat"});
  script.examples.push_back(
      {fmt::format(fmt::runtime(kInstruction), "copper wire"),
       "kink: the wire is bent sharply out of its straight line\n"
       "corrosion: green oxidised spots cover the copper surface\n"
       "nick: a small notch is cut into the wire\n"
       "fraying: loose strands stick out of the wire\n"
       "discoloration: part of the wire is darker than the rest\n"
       "flattening: the round wire is squashed flat"});
  std::string name = class_name.empty() ? std::string("object") : std::string(class_name);
  std::replace(name.begin(), name.end(), '_', ' ');
  script.request = fmt::format(fmt::runtime(kInstruction), name);
  return script;
}

AbnormalPrompts generate_prompts(const llm::LlamaModel& model, const llm::Tokenizer& tokenizer,
                                 std::string_view class_name, const ApgOptions& options) {
  auto script = apg_script(class_name);
  auto ids = llm::render_chat(tokenizer, options.chat_template, llm::default_system_prompt(options.chat_template),
                              script.examples, script.request);
  const auto prompt_tokens = static_cast<int64_t>(ids.size());
  if (prompt_tokens + 16 > model.max_positions())
    throw InputError(fmt::format("APG: the script for class '{}' is {} tokens, but {} has a context of only {} positions",
                                 class_name, prompt_tokens, model.source.string(), model.max_positions()));
  const int64_t capacity = std::min(prompt_tokens + options.max_tokens, model.max_positions());
  llm::KvCache cache(model, capacity);
  llm::GenerateOptions gen;
  gen.max_tokens = capacity - prompt_tokens;
  gen.sampling.temperature = options.temperature;
  gen.sampling.top_p = options.top_p;
  gen.sampling.seed = options.seed;
  gen.stop = llm::stop_strings(options.chat_template);
  std::vector<llm::Segment> prompt{llm::Segment::tokens(ids)};
  auto result = llm::generate(model, tokenizer, cache, prompt, gen);
  auto prompts = parse_apg_reply(class_name, result.text);
  if (prompts.keywords.empty())
    throw InputError(fmt::format("APG: the LLM's reply for class '{}' holds no 'keyword: sentence' line: \"{}\"",
                                 class_name, result.text.substr(0, 200)));
  prompts.settings = {{"source", "llm"},
                      {"model", model.source.string()},
                      {"template", std::string(llm::chat_template_name(options.chat_template))},
                      {"temperature", options.temperature},
                      {"top_p", options.top_p},
                      {"seed", options.seed},
                      {"max_tokens", options.max_tokens}};
  return prompts;
}

}  // namespace iadgpt::anomaly
