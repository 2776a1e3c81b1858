// SCAFFOLD: replaced by the module owner; registers `llm-logits` so the program links.
#include <stdexcept>

#include "cli/commands.h"

namespace iadgpt::cli {

void add_llm_logits(CLI::App& app) {
  auto* cmd = app.add_subcommand("llm-logits", "(not implemented yet)");
  cmd->callback([] { throw std::runtime_error("llm-logits: not implemented yet"); });
}

}  // namespace iadgpt::cli
