// libFuzzer: arbitrary bytes as a safetensors file. Property: the parser either throws
// InputError or returns tensors that serialize back to a file the parser reads identically.
// Any other exception, crash or sanitizer report is a finding.
#include <cstring>

#include "io/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iadgpt::io;
  std::map<std::string, at::Tensor> tensors;
  std::map<std::string, std::string> metadata;
  try {
    tensors = parse_safetensors({data, size}, "fuzz", &metadata);
  } catch (const iadgpt::InputError&) {
    return 0;
  }
  const std::string again = serialize_safetensors(tensors, metadata);
  std::map<std::string, std::string> metadata2;
  auto back = parse_safetensors({reinterpret_cast<const uint8_t*>(again.data()), again.size()}, "fuzz-rewritten", &metadata2);
  if (back.size() != tensors.size() || metadata2 != metadata) __builtin_trap();
  for (const auto& [k, t] : tensors) {
    const auto& u = back.at(k);
    // Bytes, not values: NaN payloads must survive too.
    if (u.scalar_type() != t.scalar_type() || u.sizes() != t.sizes()) __builtin_trap();
    if (t.numel() && std::memcmp(u.data_ptr(), t.data_ptr(), t.numel() * t.element_size()) != 0) __builtin_trap();
  }
  return 0;
}
