// PyTorch zip checkpoints (torch.save since 1.6, TorchScript archives): the zip is read by
// libtorch's PyTorchStreamReader, data.pkl by our restricted unpickler (io/pickle.h).
#include <caffe2/serialize/file_adapter.h>
#include <caffe2/serialize/inline_container.h>

#include <cstring>

#include <fmt/format.h>

#include "io/checkpoint.h"
#include "io/pickle.h"

namespace iadgpt::io {

namespace {

// A storage key names a record data/<key>; keys are decimal in practice, never paths.
bool plain_key(const std::string& key) {
  if (key.empty() || key.size() > 64) return false;
  for (char c : key)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  return true;
}

// Bounds-checked in-memory reader (libtorch's MemoryReadAdapter trusts every position).
class SpanReadAdapter final : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit SpanReadAdapter(std::span<const uint8_t> bytes) : bytes_(bytes) {}
  size_t size() const override { return bytes_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char*) const override {
    if (pos >= bytes_.size()) return 0;
    n = std::min<uint64_t>(n, bytes_.size() - pos);
    std::memcpy(buf, bytes_.data() + pos, n);
    return n;
  }

 private:
  std::span<const uint8_t> bytes_;
};

TensorMap read_archive(std::shared_ptr<caffe2::serialize::ReadAdapterInterface> adapter, const std::string& what,
                       bool* torchscript) {
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  try {
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(std::move(adapter));
  } catch (const c10::Error& e) {
    throw InputError(fmt::format("{}: not a readable PyTorch zip archive: {}", what, e.what_without_backtrace()));
  }
  try {
    // PyTorchStreamReader strips the top folder (archive/, pytorch_model/, ...) from names.
    if (!reader->hasRecord("data.pkl"))
      throw InputError(fmt::format("{}: PyTorch zip archive has no data.pkl record", what));
    if (reader->hasRecord("byteorder")) {
      auto [ptr, n] = reader->getRecord("byteorder");
      std::string order(static_cast<const char*>(ptr.get()), n);
      if (order != "little") throw InputError(fmt::format("{}: byteorder '{}' is not supported (little-endian only)", what, order));
    }
    auto [pkl, pkl_size] = reader->getRecord("data.pkl");

    StorageLoader load = [&](const std::string& key, at::ScalarType dtype, int64_t numel) {
      if (!plain_key(key)) throw InputError(fmt::format("{}: storage key '{}' is not a plain name", what, key));
      const std::string record = "data/" + key;
      if (!reader->hasRecord(record)) throw InputError(fmt::format("{}: storage record '{}' is missing", what, record));
      auto [data, nbytes] = reader->getRecord(record);
      const auto itemsize = static_cast<int64_t>(c10::elementSize(dtype));
      if (numel > static_cast<int64_t>(nbytes) / itemsize)
        throw InputError(fmt::format("{}: storage record '{}' holds {} bytes, the pickle needs {} x {} bytes", what, record,
                                     nbytes, numel, itemsize));
      // The tensor owns the record buffer (64-byte aligned by libtorch's allocator).
      auto owner = std::make_shared<at::DataPtr>(std::move(data));
      void* p = owner->get();
      const int64_t have = static_cast<int64_t>(nbytes) / itemsize;
      if (have == 0) return empty_tensor({0}, dtype);
      return at::from_blob(p, {have}, [owner](void*) {}, at::TensorOptions().dtype(dtype));
    };
    auto result = unpickle_tensors(std::span<const uint8_t>(static_cast<const uint8_t*>(pkl.get()), pkl_size), load, what);
    if (torchscript) *torchscript = result.torchscript;
    return std::move(result.tensors);
  } catch (const c10::Error& e) {
    throw InputError(fmt::format("{}: corrupt PyTorch zip archive: {}", what, e.what_without_backtrace()));
  }
}

}  // namespace

TensorMap load_torch_zip(const std::filesystem::path& path, bool* torchscript) {
  std::shared_ptr<caffe2::serialize::ReadAdapterInterface> adapter;
  try {
    adapter = std::make_shared<caffe2::serialize::FileAdapter>(path.string());
  } catch (const c10::Error& e) {
    throw InputError(fmt::format("{}: cannot open: {}", path.string(), e.what_without_backtrace()));
  }
  return read_archive(std::move(adapter), path.string(), torchscript);
}

TensorMap load_torch_zip_bytes(std::span<const uint8_t> bytes, std::string_view what, bool* torchscript) {
  return read_archive(std::make_shared<SpanReadAdapter>(bytes), std::string(what), torchscript);
}

}  // namespace iadgpt::io
