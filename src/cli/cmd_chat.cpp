// SCAFFOLD: replaced by the module owner; registers `chat` so the program links.
#include <stdexcept>

#include "cli/commands.h"

namespace iadgpt::cli {

void add_chat(CLI::App& app) {
  auto* cmd = app.add_subcommand("chat", "(not implemented yet)");
  cmd->callback([] { throw std::runtime_error("chat: not implemented yet"); });
}

}  // namespace iadgpt::cli
