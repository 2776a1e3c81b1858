// Per-class text of the IAD-GPT prompt (METHOD §1.9) and the class's APG prompts as the pipeline
// uses them (keywords + sentences), independent of where they came from (built-in library or an
// `iadgpt apg` file).
#pragma once
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "anomaly/apg.h"
#include "model/bundle.h"

namespace iadgpt::model {

// "This is a photo of a bottle for anomaly detection, which should be round, without any damage,
// flaw, defect, scratch, hole or broken part." — AnomalyGPT's wording for its 27 classes (facts
// rewritten as a table here); with keywords the "without any ..." list names them instead.
std::string class_description(std::string_view class_name, std::span<const std::string> keywords);

// The class's APG prompts: from the bundle's prompts file when it covers the class, else the
// built-in library (anomaly::prompts_for_class); nullopt when neither knows the class.
std::optional<anomaly::AbnormalPrompts> find_class_prompts(const Bundle& bundle, std::string_view class_name);

}  // namespace iadgpt::model
