// Per-class text of the IAD-GPT prompt (METHOD §1.9) and the class's APG prompts as the pipeline
// uses them (keywords + sentences), independent of where they came from (built-in library or an
// `iadgpt apg` file).
#pragma once
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/bundle.h"

namespace iadgpt::model {

struct ClassPrompts {
  std::vector<std::string> keywords;   // abnormal attributes ("crack", "scratch", ...)
  std::vector<std::string> sentences;  // one per keyword; join the abnormal side of F_text
};

// "This is a photo of a bottle for anomaly detection, which should be round, without any damage,
// flaw, defect, scratch, hole or broken part." — AnomalyGPT's wording for its 27 classes (facts
// rewritten as a table here); with keywords the "without any ..." list names them instead.
std::string class_description(std::string_view class_name, std::span<const std::string> keywords);

// The class's APG prompts: from the bundle's prompts file when given (InputError when the file
// lacks the class), else the built-in library; nullopt when neither knows the class.
std::optional<ClassPrompts> find_class_prompts(const Bundle& bundle, std::string_view class_name);

}  // namespace iadgpt::model
