// SCAFFOLD: replaced by the module owner; registers `generate` so the program links.
#include <stdexcept>

#include "cli/commands.h"

namespace iadgpt::cli {

void add_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "(not implemented yet)");
  cmd->callback([] { throw std::runtime_error("generate: not implemented yet"); });
}

}  // namespace iadgpt::cli
