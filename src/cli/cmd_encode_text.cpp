// SCAFFOLD: replaced by the module owner; registers `encode-text` so the program links.
#include <stdexcept>

#include "cli/commands.h"

namespace iadgpt::cli {

void add_encode_text(CLI::App& app) {
  auto* cmd = app.add_subcommand("encode-text", "(not implemented yet)");
  cmd->callback([] { throw std::runtime_error("encode-text: not implemented yet"); });
}

}  // namespace iadgpt::cli
