// SCAFFOLD: replaced by the module owner; registers `encode` so the program links.
#include <stdexcept>

#include "cli/commands.h"

namespace iadgpt::cli {

void add_bench_encode(CLI::App& app) {
  auto* cmd = app.add_subcommand("encode", "(not implemented yet)");
  cmd->callback([] { throw std::runtime_error("encode: not implemented yet"); });
}

}  // namespace iadgpt::cli
