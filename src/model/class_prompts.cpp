#include "model/class_prompts.h"

#include <fmt/format.h>

#include <map>

#include "anomaly/prompts.h"

namespace iadgpt::model {
namespace {

// What AnomalyGPT's evaluation scripts tell the LLM about each MVTec AD and VisA class (the subject
// and what a good part looks like), as a table; the sentence around it is built below.
struct Description {
  const char* subject;      // after "This is a photo of "
  const char* requirement;  // before "without any ..."
};
const std::map<std::string, Description, std::less<>> kDescriptions = {
    // MVTec AD
    {"bottle", {"a bottle", "which should be round, "}},
    {"cable", {"three cables", "the cables cannot be missing or swapped, which should be "}},
    {"capsule", {"a capsule", "which should be black and orange, with print '500', "}},
    {"carpet", {"carpet", "which should be "}},
    {"grid", {"grid", "which should be "}},
    {"hazelnut", {"a hazelnut", "which should be "}},
    {"leather", {"leather", "which should be brown and "}},
    {"metal_nut", {"a metal nut", "which should not be flipped, "}},
    {"pill", {"a pill", "which should be white, with print 'FF' and red patterns, "}},
    {"screw", {"a screw", "whose tail should be sharp, "}},
    {"tile", {"tile", "which should be "}},
    {"toothbrush", {"a toothbrush", "which should be "}},
    {"transistor", {"a transistor", "which should be "}},
    {"wood", {"wood", "which should be brown with patterns, "}},
    {"zipper", {"a zipper", "which should be "}},
    // VisA
    {"candle", {"4 candles", "every candle should be round, "}},
    {"capsules", {"many small capsules", "every capsule is green and should be "}},
    {"cashew", {"a cashew", "which should be "}},
    {"chewinggum", {"a chewing gum", "which should be white, "}},
    {"fryum", {"a fryum on a green background", "which should be "}},
    {"macaroni1", {"4 macaronis", "which should be "}},
    {"macaroni2", {"4 macaronis", "which should be "}},
    {"pcb1", {"a printed circuit board", "which should be "}},
    {"pcb2", {"a printed circuit board", "which should be "}},
    {"pcb3", {"a printed circuit board", "which should be "}},
    {"pcb4", {"a printed circuit board", "which should be "}},
    {"pipe_fryum", {"a pipe fryum", "which should be "}},
};

// "a, b, c or d" (AnomalyGPT's list when there are no keywords).
std::string defect_list(std::span<const std::string> keywords) {
  if (keywords.empty()) return "damage, flaw, defect, scratch, hole or broken part";
  if (keywords.size() == 1) return keywords[0];
  std::string s;
  for (size_t i = 0; i + 1 < keywords.size(); ++i) s += (i ? ", " : "") + keywords[i];
  return s + " or " + keywords.back();
}

std::string class_key(std::string_view name) {
  std::string k(name);
  for (auto& c : k) c = c == ' ' ? '_' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return k;
}

}  // namespace

std::string class_description(std::string_view class_name, std::span<const std::string> keywords) {
  const auto list = defect_list(keywords);
  if (auto it = kDescriptions.find(class_key(class_name)); it != kDescriptions.end()) {
    return fmt::format("This is a photo of {} for anomaly detection, {}without any {}.", it->second.subject,
                       it->second.requirement, list);
  }
  const auto shown = anomaly::display_class_name(class_name);
  const bool vowel = !shown.empty() && std::string_view("aeiou").find(shown[0]) != std::string_view::npos;
  return fmt::format("This is a photo of {} {} for anomaly detection, which should be without any {}.",
                     vowel ? "an" : "a", shown, list);
}

}  // namespace iadgpt::model
