// SCAFFOLD: replaced by the module owner; registers `llm` so the program links.
#include <stdexcept>

#include "cli/commands.h"

namespace iadgpt::cli {

void add_bench_llm(CLI::App& app) {
  auto* cmd = app.add_subcommand("llm", "(not implemented yet)");
  cmd->callback([] { throw std::runtime_error("llm: not implemented yet"); });
}

}  // namespace iadgpt::cli
