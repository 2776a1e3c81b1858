// The pipeline's view of the APG prompts (anomaly/apg.h).
#include <fmt/format.h>

#include "io/error.h"
#include "model/class_prompts.h"

namespace iadgpt::model {

std::optional<ClassPrompts> find_class_prompts(const Bundle& bundle, std::string_view class_name) {
  if (bundle.prompts)
    throw InputError(fmt::format("{}: APG prompt files are read by the APG module, which this build does not have yet",
                                 bundle.prompts->string()));
  return std::nullopt;
}

}  // namespace iadgpt::model
