// The pipeline's use of the APG prompts (anomaly/apg.h): which prompts a class gets, and the
// class question of METHOD §1.9 with the APG keywords.
#include "model/class_prompts.h"
#include "model/pipeline.h"

namespace iadgpt::model {

std::optional<anomaly::AbnormalPrompts> find_class_prompts(const Bundle& bundle, std::string_view class_name) {
  return anomaly::prompts_for_class(class_name, bundle.prompts);
}

std::string class_question(std::string_view class_name, const anomaly::AbnormalPrompts* apg, std::string_view question) {
  const std::vector<std::string> none;
  return class_description(class_name, apg ? apg->keywords : none) + " " + std::string(question);
}

}  // namespace iadgpt::model
