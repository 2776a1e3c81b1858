// A minimal torch.save writer for tests and the load benchmark: pickle protocol 2 of a flat
// {name: tensor} dict (_rebuild_tensor_v2 with persistent storage ids, one storage per
// tensor, as torch.save writes a state dict), zipped by libtorch's PyTorchStreamWriter (stored
// records, 64-byte aligned, zip64 when needed). Tensors are produced one at a time by `make`,
// so a multi-GB checkpoint is written without holding it in memory.
#pragma once
#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace iadgpt::test {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

inline void pickle_u32(std::string& p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p.push_back(static_cast<char>(v >> (8 * i)));
}
inline void pickle_str(std::string& p, const std::string& s) {
  p.push_back('X');  // BINUNICODE
  pickle_u32(p, static_cast<uint32_t>(s.size()));
  p += s;
}
inline void pickle_int(std::string& p, int64_t v) {  // BININT (fits every test shape)
  p.push_back('J');
  pickle_u32(p, static_cast<uint32_t>(v));
}
inline void pickle_ints(std::string& p, const std::vector<int64_t>& v) {
  p.push_back('(');
  for (auto x : v) pickle_int(p, x);
  p.push_back('t');
}

// data.pkl for fp32 tensors `specs`, storage i = "i" holding specs[i].
inline std::string state_dict_pickle(const std::vector<TensorSpec>& specs) {
  std::string p = "\x80\x02}(";  // PROTO 2, EMPTY_DICT, MARK
  for (size_t i = 0; i < specs.size(); ++i) {
    std::vector<int64_t> strides(specs[i].shape.size(), 1);
    int64_t numel = 1;
    for (size_t d = specs[i].shape.size(); d-- > 0;) {
      strides[d] = numel;
      numel *= specs[i].shape[d];
    }
    pickle_str(p, specs[i].name);
    p += "ctorch._utils\n_rebuild_tensor_v2\n((";
    pickle_str(p, "storage");
    p += "ctorch\nFloatStorage\n";
    pickle_str(p, std::to_string(i));
    pickle_str(p, "cpu");
    pickle_int(p, numel);
    p += "tQ";  // TUPLE, BINPERSID
    pickle_int(p, 0);
    pickle_ints(p, specs[i].shape);
    pickle_ints(p, strides);
    p += "\x89" "ccollections\nOrderedDict\n)RtR";  // requires_grad False, OrderedDict(), TUPLE, REDUCE
  }
  p += "u.";  // SETITEMS, STOP
  return p;
}

// Writes `specs` as a torch.save zip; make(i) returns the fp32 contiguous values of specs[i].
inline void write_torch_save(const std::filesystem::path& path, const std::vector<TensorSpec>& specs,
                             const std::function<torch::Tensor(size_t)>& make) {
  caffe2::serialize::PyTorchStreamWriter w(path.string());
  const auto pkl = state_dict_pickle(specs);
  w.writeRecord("data.pkl", pkl.data(), pkl.size());
  w.writeRecord("byteorder", "little", 6);
  for (size_t i = 0; i < specs.size(); ++i) {
    auto t = make(i).to(torch::kFloat32).contiguous();
    TORCH_CHECK(t.sizes() == torch::IntArrayRef(specs[i].shape), "write_torch_save: shape of ", specs[i].name);
    w.writeRecord("data/" + std::to_string(i), t.data_ptr(), static_cast<size_t>(t.numel()) * 4);
  }
  w.writeEndOfFile();
}

}  // namespace iadgpt::test
