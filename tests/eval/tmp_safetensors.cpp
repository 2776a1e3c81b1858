// TEMPORARY stand-in for io::load_safetensors until branch `io` is merged (then deleted).
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <fstream>

#include "eval/tmp_safetensors.h"

namespace iadgpt::test {

io::TensorMap load_tensors(const std::filesystem::path& path) {
  using io::TensorMap;
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InputError("cannot open " + path.string());
  uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  std::string header(n, '\0');
  f.read(header.data(), static_cast<std::streamsize>(n));
  std::vector<char> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto j = nlohmann::json::parse(header);
  TensorMap out;
  for (const auto& [key, v] : j.items()) {
    if (key == "__metadata__") continue;
    const std::string dt = v["dtype"];
    const auto dtype = dt == "F32" ? torch::kFloat32 : dt == "U8" ? torch::kUInt8 : torch::kFloat64;
    std::vector<int64_t> shape = v["shape"];
    const size_t b = v["data_offsets"][0], e = v["data_offsets"][1];
    auto t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
    std::memcpy(t.data_ptr(), data.data() + b, e - b);
    out[key] = t;
  }
  return out;
}

}  // namespace iadgpt::test
