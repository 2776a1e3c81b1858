// SCAFFOLD: replaced by the module owner; registers `metrics` so the program links.
#include <stdexcept>

#include "cli/commands.h"

namespace iadgpt::cli {

void add_metrics(CLI::App& app) {
  auto* cmd = app.add_subcommand("metrics", "(not implemented yet)");
  cmd->callback([] { throw std::runtime_error("metrics: not implemented yet"); });
}

}  // namespace iadgpt::cli
