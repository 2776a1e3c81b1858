// SCAFFOLD: replaced by the module owner; registers `info` so the program links.
#include <stdexcept>

#include "cli/commands.h"

namespace iadgpt::cli {

void add_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "(not implemented yet)");
  cmd->callback([] { throw std::runtime_error("info: not implemented yet"); });
}

}  // namespace iadgpt::cli
