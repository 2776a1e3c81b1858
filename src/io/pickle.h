// Restricted unpickler for the data.pkl of PyTorch zip checkpoints and TorchScript archives.
//
//   auto loader = [&](const std::string& key, at::ScalarType dt, int64_t numel) { ... };  // data/<key>
//   UnpickledTensors r = iadgpt::io::unpickle_tensors(bytes, loader, "model.pth");
//   r.tensors.at("visual.conv1.weight");
//
// It interprets pickle opcodes (protocols 2-5) as DATA: nothing is imported or executed. Only
// the callables a state dict needs are recognised, and only by name:
//   collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter,
//   torch._utils._rebuild_parameter_with_state, torch.<Float|Half|BFloat16|Double|Long|Int|
//   Short|Char|Byte|Bool>Storage (inside persistent ids), and __torch__.* classes (TorchScript
//   modules, kept as plain attribute containers). Any other GLOBAL, a call of anything else,
//   or an unsupported opcode is an InputError naming the opcode, the byte offset and the global.
//
// The result is flattened to dotted names: nested dicts and module objects contribute their key
// as a path component ("visual" -> "transformer" -> "resblocks" -> "0" ...). If the top object is
// a dict with a `state_dict` or `model` entry that holds tensors, only that entry is used.
// Non-tensor leaves (ints, strings, `training` flags, None) are skipped.
#pragma once
#include "io/aten.h"

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>

namespace iadgpt::io {

// Returns a 1-D tensor of `dtype` holding the storage record `key` with at least `numel`
// elements; throws InputError when the record is missing or too short.
using StorageLoader = std::function<at::Tensor(const std::string& key, at::ScalarType dtype, int64_t numel)>;

struct UnpickledTensors {
  std::map<std::string, at::Tensor> tensors;
  bool torchscript = false;  // the top object was a __torch__.* module, not a dict
};

// The in-memory counterpart of load_torch_zip (fuzzing entry point; also for embedded archives).
std::map<std::string, at::Tensor> load_torch_zip_bytes(std::span<const uint8_t> zip, std::string_view what,
                                                          bool* torchscript = nullptr);

UnpickledTensors unpickle_tensors(std::span<const uint8_t> pickle, const StorageLoader& load_storage,
                                  std::string_view what);

}  // namespace iadgpt::io
