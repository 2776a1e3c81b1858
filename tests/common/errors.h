// The message of the InputError a call throws, for tests that check what an error names; a
// test failure (and "") when the call throws nothing.
#pragma once
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "io/error.h"

namespace iadgpt::test {

inline std::string input_error_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no InputError thrown";
  return "";
}

}  // namespace iadgpt::test
