// libFuzzer: arbitrary bytes as a PyTorch checkpoint. Inputs starting with the zip magic go
// through the archive reader (our ZipArchive + unpickler, every record read); everything else is fed
// to the restricted unpickler directly, with zero-filled storages. Property: InputError or a
// tensor map; any other exception, crash or sanitizer report is a finding.
#include <cstring>

#include "io/error.h"
#include "io/pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iadgpt::io;
  std::span<const uint8_t> bytes(data, size);
  try {
    if (size >= 4 && std::memcmp(data, "PK\x03\x04", 4) == 0) {
      auto t = load_torch_zip_bytes(bytes, "fuzz.zip");
      for (auto& [k, v] : t) (void)v.sum();  // touch every view: extents were validated
      return 0;
    }
    StorageLoader zeros = [](const std::string&, at::ScalarType dt, int64_t numel) {
      if (numel > (1 << 16)) throw iadgpt::InputError("fuzz: storage too large");  // a real record bounds it
      return zeros_tensor({numel}, dt);
    };
    auto r = unpickle_tensors(bytes, zeros, "fuzz.pkl");
    for (auto& [k, v] : r.tensors) (void)v.sum();
  } catch (const iadgpt::InputError&) {
  }
  return 0;
}
