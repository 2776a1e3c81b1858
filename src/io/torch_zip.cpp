// PyTorch zip checkpoints (torch.save since 1.6, TorchScript archives), read lazily: the zip's
// central directory and data.pkl are read first (no tensor data), data.pkl is interpreted by the
// restricted unpickler (io/pickle.h) over data-less meta storages, and then only the storage
// records of the wanted keys are read, one at a time, each converted to the target dtype at once
// so that the stored (fp32) copy is freed before the next record is read.
#include <cstring>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "io/checkpoint.h"
#include "io/pickle.h"
#include "io/zip_archive.h"

namespace iadgpt::io {

namespace {

// A storage key names a record data/<key>; keys are decimal in practice, never paths.
bool plain_key(const std::string& key) {
  if (key.empty() || key.size() > 64) return false;
  for (char c : key)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  return true;
}

// data.pkl of a 7B state dict is well under 1 MB; the cap only bounds a hostile directory entry.
constexpr size_t kMaxPickle = size_t{1} << 30;

// The archive with its pickle interpreted: every tensor as a meta view (shape, strides, offset,
// dtype) plus the storage record each one views.
struct IndexedArchive {
  ZipArchive zip;
  std::map<std::string, at::Tensor> views;                           // name -> meta view
  std::unordered_map<const c10::StorageImpl*, std::string> storage_of;  // meta storage -> key
  bool torchscript = false;
};

IndexedArchive index_archive(std::shared_ptr<ByteSource> source, const std::string& what) {
  IndexedArchive a{.zip = ZipArchive(std::move(source), what)};
  if (a.zip.find("byteorder")) {
    const auto order = a.zip.read_string("byteorder", 64);
    if (order != "little") throw InputError(fmt::format("{}: byteorder '{}' is not supported (little-endian only)", what, order));
  }
  const auto pkl = a.zip.read_string("data.pkl", kMaxPickle);
  StorageLoader meta = [&](const std::string& key, at::ScalarType dtype, int64_t numel) {
    if (!plain_key(key)) throw InputError(fmt::format("{}: storage key '{}' is not a plain name", what, key));
    const std::string record = "data/" + key;
    const ZipEntry* e = a.zip.find(record);
    if (!e) throw InputError(fmt::format("{}: storage record '{}' is missing", what, record));
    const auto itemsize = static_cast<int64_t>(c10::elementSize(dtype));
    const auto have = static_cast<int64_t>(std::min<uint64_t>(e->size / static_cast<uint64_t>(itemsize), INT64_MAX));
    if (numel > have)
      throw InputError(fmt::format("{}: storage record '{}' holds {} bytes, the pickle needs {} x {} bytes", what, record, e->size,
                                   numel, itemsize));
    auto t = meta_tensor({have}, dtype);
    a.storage_of[t.storage().unsafeGetStorageImpl()] = key;
    return t;
  };
  auto result = unpickle_tensors({reinterpret_cast<const uint8_t*>(pkl.data()), pkl.size()}, meta, what);
  a.views = std::move(result.tensors);
  a.torchscript = result.torchscript;
  return a;
}

// The whole storage record `key` as a 1-D CPU tensor of `dtype` (CRC-checked by the reader).
// With `scratch`, the record is read into that reused buffer and the tensor only views it: for
// a record converted at once, this saves faulting in fresh pages for every fp32 copy.
at::Tensor read_storage(const ZipArchive& zip, const std::string& key, at::ScalarType dtype, const std::string& tensor,
                        std::vector<uint8_t>* scratch = nullptr) {
  const std::string record = "data/" + key;
  const ZipEntry* e = zip.find(record);  // present: index_archive checked it
  const auto itemsize = static_cast<uint64_t>(c10::elementSize(dtype));
  const auto numel = static_cast<int64_t>(e->size / itemsize);
  const auto context = fmt::format("tensor '{}'", tensor);
  zip.locate(*e, record, context);  // before allocating what the directory claims
  if (scratch) {
    // Sized for the largest record so far, in multiples of 8 bytes: aligned for every dtype.
    if (scratch->size() < e->size) scratch->resize((e->size + 7) / 8 * 8);
    zip.read(*e, record, {scratch->data(), e->size}, context);
    return at::from_blob(scratch->data(), {numel}, at::TensorOptions().dtype(dtype));
  }
  auto buffer = empty_tensor({static_cast<int64_t>((e->size + itemsize - 1) / itemsize)}, dtype);
  zip.read(*e, record, {static_cast<uint8_t*>(buffer.data_ptr()), e->size}, context);
  return buffer.narrow(0, 0, numel);
}

// Reads the wanted tensors of an indexed archive. Without conversion, tensors that shared a
// storage in Python share one buffer here; with conversion each tensor is read, converted and
// its stored copy freed before the next one (peak: the converted model + one record).
TensorMap read_tensors(const IndexedArchive& a, const LoadOptions& o) {
  TensorMap out;
  std::map<std::string, at::Tensor> buffers;  // storage key -> buffer, unconverted tensors only
  std::vector<uint8_t> scratch;               // the stored copy of the record being converted
  for (const auto& [name, view] : a.views) {
    if (o.keys && !o.keys(name)) continue;
    if (o.headers_only) {
      out.emplace(name, view);
      continue;
    }
    const std::string& key = a.storage_of.at(view.storage().unsafeGetStorageImpl());
    const bool convert = o.float_dtype && view.is_floating_point() && view.scalar_type() != *o.float_dtype;
    at::Tensor buffer;
    if (convert) {
      buffer = read_storage(a.zip, key, view.scalar_type(), name, &scratch);
    } else if (auto it = buffers.find(key); it != buffers.end()) {
      buffer = it->second;
    } else {
      buffer = buffers.emplace(key, read_storage(a.zip, key, view.scalar_type(), name)).first->second;
    }
    auto t = buffer.as_strided(view.sizes(), view.strides(), view.storage_offset());
    out.emplace(name, convert ? t.to(*o.float_dtype) : t);  // .to copies: nothing keeps viewing scratch
  }
  return out;
}

}  // namespace

TensorMap load_torch_zip(const std::filesystem::path& path, bool* torchscript, const LoadOptions& options) {
  const auto a = index_archive(ByteSource::file(path), path.string());
  if (torchscript) *torchscript = a.torchscript;
  return read_tensors(a, options);
}

TensorMap load_torch_zip_bytes(std::span<const uint8_t> bytes, std::string_view what, bool* torchscript) {
  const auto a = index_archive(ByteSource::memory(bytes), std::string(what));
  if (torchscript) *torchscript = a.torchscript;
  return read_tensors(a, {});
}

}  // namespace iadgpt::io
