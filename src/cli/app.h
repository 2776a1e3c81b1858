// What every iadgpt program does around its commands, written once: the global `--threads`
// option and the mapping of exceptions to exit codes (0 success, 2 bad input, 3 a check the user
// asked for failed, 1 internal failure). Used by main.cpp and by minimal/main.cpp (iadgpt-min).
#pragma once
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <iostream>
#include <memory>
#include <thread>

#include "io/error.h"

namespace iadgpt::cli {

// --threads (0 = all cores): libtorch starts with one thread, so the count is always set.
inline void add_threads_option(CLI::App& app) {
  auto threads = std::make_shared<int>(0);
  app.add_option("--threads", *threads, "CPU threads for tensor math (0 = all cores)")->capture_default_str();
  app.parse_complete_callback([threads] {
    const int n = *threads > 0 ? *threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    torch::set_num_threads(n);
  });
}

// Parses and runs the command; the exit code of what happened.
inline int run_app(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "iadgpt: error: " << e.what() << "\n";
    return 2;
  } catch (const InputError& e) {
    std::cerr << "iadgpt: error: " << e.what() << "\n";
    return 2;
  } catch (const CheckFailed& e) {
    std::cerr << "iadgpt: check failed: " << e.what() << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "iadgpt: internal error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace iadgpt::cli
