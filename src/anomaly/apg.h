// Abnormal Prompt Generator (METHOD §2): per object class, abnormal-attribute keywords and one
// descriptive sentence per keyword. Written by an LLM through a fixed script (`generate_prompts`)
// or taken from the built-in library we wrote for the 15 MVTec AD and 12 VisA classes.
//
//   auto apg = anomaly::builtin_prompts("hazelnut");                 // std::optional
//   auto extra = apg->sentences;                                      // join the abnormal side of F_text
//   auto file = anomaly::read_prompts_file("prompts.json");           // LLM-made, per class
//
// The sentences join the abnormal side of F_text (§1.3); the per-keyword embeddings name the
// defect type (§1.10).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "anomaly/prompts.h"
#include "llm/chat.h"
#include "llm/model.h"
#include "llm/tokenizer.h"

namespace iadgpt::anomaly {

struct AbnormalPrompts {
  std::string class_name;             // as given ("metal_nut")
  std::vector<std::string> keywords;  // lower case, unique, at most kMaxKeywords
  std::vector<std::string> sentences; // one per keyword, same order
  nlohmann::json settings;            // how they were made: {"source": "builtin"} or the LLM settings
};

inline constexpr std::size_t kMaxKeywords = 10;

// The built-in library (nullopt for classes it does not cover); names as in MVTec AD / VisA.
std::optional<AbnormalPrompts> builtin_prompts(std::string_view class_name);
std::vector<std::string> builtin_classes();

// Parses an LLM reply of `keyword: sentence` lines: numbering and bullets stripped, keywords
// lower-cased, lines without a keyword or sentence dropped, duplicates dropped, at most 10 kept.
AbnormalPrompts parse_apg_reply(std::string_view class_name, std::string_view reply);

// Prompts file (JSON): {"format": "iadgpt-apg", "version": 1, "classes": {name: {keywords,
// sentences, settings}}}. Reading validates every field (InputError names it).
std::map<std::string, AbnormalPrompts> read_prompts_file(const std::filesystem::path& path);
void write_prompts_file(const std::filesystem::path& path, const std::map<std::string, AbnormalPrompts>& classes);
nlohmann::json to_json(const AbnormalPrompts& prompts);
AbnormalPrompts prompts_from_json(std::string_view class_name, const nlohmann::json& j, std::string_view source);

// The class's prompts from a file when it covers the class, else the built-in library, else nullopt.
std::optional<AbnormalPrompts> prompts_for_class(std::string_view class_name,
                                                 const std::optional<std::filesystem::path>& file);

// One text per keyword for the text tower ("a photo of a hazelnut with crack, the brown shell of
// the hazelnut has a crack."), and their normalised embeddings [K, D] — the defect-type
// vocabulary of METHOD §1.10. With a cache, embeddings are stored like F_text (§1.3).
std::vector<std::string> keyword_texts(const AbnormalPrompts& prompts);
torch::Tensor keyword_embeddings(const AbnormalPrompts& prompts, const SentenceEncoder& encode,
                                 const PromptCache* cache = nullptr, std::string_view model_identity = {});

// The question-and-answer script: an instruction and two worked examples as earlier chat turns,
// then the request for `class_name`. Returned as (history, question) for llm::render_chat.
struct ApgScript {
  std::vector<llm::Turn> examples;
  std::string request;
};
ApgScript apg_script(std::string_view class_name);

struct ApgOptions {
  llm::ChatTemplate chat_template = llm::ChatTemplate::VicunaV0;
  double temperature = 0.7;
  double top_p = 0.9;
  uint64_t seed = 0;
  int64_t max_tokens = 400;
};

// Runs the script on the LLM (sampling with the fixed seed) and parses the reply. InputError when
// the reply holds no usable `keyword: sentence` line.
AbnormalPrompts generate_prompts(const llm::LlamaModel& model, const llm::Tokenizer& tokenizer,
                                 std::string_view class_name, const ApgOptions& options);

}  // namespace iadgpt::anomaly
