// Error types shared by every module.
//
// InputError: the user's input is wrong (file, flag, checkpoint, image, request). The CLI turns
// it into one line `iadgpt: error: <what>` and exit code 2. Anything else is an internal failure
// (exit code 1). Messages carry their context (file, key, expected vs found).
//
// CheckFailed: the command ran to the end, but a result missed a bar the user asked for (e.g.
// `demo --min-accuracy`). One line `iadgpt: check failed: <what>` and exit code 3.
//
//   throw iadgpt::InputError(fmt::format("{}: tensor '{}' has shape {}, expected {}", ...));
#pragma once
#include <stdexcept>
#include <string>

namespace iadgpt {

class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class CheckFailed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace iadgpt
