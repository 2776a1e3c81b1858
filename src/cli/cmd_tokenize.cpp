// SCAFFOLD: replaced by the module owner; registers `tokenize` so the program links.
#include <stdexcept>

#include "cli/commands.h"

namespace iadgpt::cli {

void add_tokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "(not implemented yet)");
  cmd->callback([] { throw std::runtime_error("tokenize: not implemented yet"); });
}

}  // namespace iadgpt::cli
