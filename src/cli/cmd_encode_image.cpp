// SCAFFOLD: replaced by the module owner; registers `encode-image` so the program links.
#include <stdexcept>

#include "cli/commands.h"

namespace iadgpt::cli {

void add_encode_image(CLI::App& app) {
  auto* cmd = app.add_subcommand("encode-image", "(not implemented yet)");
  cmd->callback([] { throw std::runtime_error("encode-image: not implemented yet"); });
}

}  // namespace iadgpt::cli
