// Running the built `iadgpt` from a test: exit code, stdout and stderr captured to files.
#pragma once
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/shared.h"

namespace iadgpt::test {

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

inline std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One shell word, single-quoted.
inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// `args` is appended to the program path as-is (the caller quotes paths with spaces).
inline RunResult run_iadgpt(const std::string& args) {
  static int counter = 0;
  const auto dir = scratch("run");
  const auto out = dir / ("out" + std::to_string(counter));
  const auto err = dir / ("err" + std::to_string(counter++));
  const std::string cmd = "'" + program().string() + "' " + args + " >'" + out.string() + "' 2>'" + err.string() + "'";
  const int status = std::system(cmd.c_str());
  RunResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// Each argument passed as one word, however it is spelled.
inline RunResult run_iadgpt(const std::vector<std::string>& args) {
  std::string line;
  for (const auto& a : args) line += " " + shell_quote(a);
  return run_iadgpt(line);
}

}  // namespace iadgpt::test
