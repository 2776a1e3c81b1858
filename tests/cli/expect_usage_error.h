// What the CLI tests expect of bad input: exit code 2 and one line on stderr that names the problem.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "common/run.h"

namespace iadgpt::test {

inline void expect_one_line_naming(const RunResult& r, const std::string& what) {
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

}  // namespace iadgpt::test
