// safetensors reader (mmap, zero-copy) and writer. Format: huggingface/safetensors README.
#include "io/safetensors.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <fstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/mapped_file.h"

namespace iadgpt::io {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

namespace {

// The upstream reader refuses headers above 100 MB; a larger one is not a real checkpoint.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeName {
  std::string_view name;
  at::ScalarType dtype;
};
// The dtypes libtorch 1.13 can hold; F8_* and the unsigned wide types have no torch dtype here.
constexpr std::array<DtypeName, 10> kDtypes{{
    {"F32", at::kFloat},
    {"F16", at::kHalf},
    {"BF16", at::kBFloat16},
    {"F64", at::kDouble},
    {"I64", at::kLong},
    {"I32", at::kInt},
    {"I16", at::kShort},
    {"I8", at::kChar},
    {"U8", at::kByte},
    {"BOOL", at::kBool},
}};

std::optional<at::ScalarType> dtype_from_name(std::string_view name) {
  for (const auto& d : kDtypes)
    if (d.name == name) return d.dtype;
  return std::nullopt;
}

// A JSON number that is a non-negative integer (json ints parse as unsigned or signed).
std::optional<uint64_t> as_u64(const nlohmann::json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  return std::nullopt;
}

SafetensorsEntry parse_entry(const std::string& name, const nlohmann::json& v, uint64_t data_size,
                             std::string_view what) {
  auto fail = [&](std::string_view why) {
    return InputError(fmt::format("{}: safetensors tensor '{}': {}", what, name, why));
  };
  if (!v.is_object()) throw fail("entry is not a JSON object");
  auto dt = v.find("dtype");
  auto sh = v.find("shape");
  auto off = v.find("data_offsets");
  if (dt == v.end() || !dt->is_string()) throw fail("missing or non-string 'dtype'");
  if (sh == v.end() || !sh->is_array()) throw fail("missing or non-array 'shape'");
  if (off == v.end() || !off->is_array() || off->size() != 2) throw fail("'data_offsets' must be [begin, end]");

  SafetensorsEntry e;
  e.name = name;
  const auto dtype_name = dt->get<std::string>();
  auto dtype = dtype_from_name(dtype_name);
  if (!dtype) throw fail(fmt::format("unknown dtype '{}' (supported: F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL)", dtype_name));
  e.dtype = *dtype;

  // numel * itemsize computed with overflow checks: a hostile shape must not wrap around.
  uint64_t nbytes = c10::elementSize(e.dtype);
  for (const auto& d : *sh) {
    auto dim = as_u64(d);
    if (!dim || *dim > static_cast<uint64_t>(INT64_MAX)) throw fail(fmt::format("bad dimension {} in shape", d.dump()));
    if (__builtin_mul_overflow(nbytes, *dim, &nbytes)) throw fail(fmt::format("shape {} overflows", sh->dump()));
    e.shape.push_back(static_cast<int64_t>(*dim));
  }
  auto b = as_u64((*off)[0]);
  auto en = as_u64((*off)[1]);
  if (!b || !en) throw fail(fmt::format("data_offsets {} are not non-negative integers", off->dump()));
  if (*b > *en) throw fail(fmt::format("data_offsets {} has begin > end", off->dump()));
  if (*en > data_size)
    throw fail(fmt::format("data_offsets {} past the end of the data section ({} bytes)", off->dump(), data_size));
  e.begin = *b;
  e.end = *en;
  if (e.end - e.begin != nbytes)
    throw fail(fmt::format("shape {} x {} needs {} bytes but data_offsets {} hold {}", sh->dump(), dtype_name, nbytes,
                           off->dump(), e.end - e.begin));
  return e;
}

}  // namespace

std::string_view safetensors_dtype_name(at::ScalarType dtype) {
  for (const auto& d : kDtypes)
    if (d.dtype == dtype) return d.name;
  throw InputError(fmt::format("safetensors: cannot store dtype {}", c10::toString(dtype)));
}

SafetensorsHeader parse_safetensors_header(std::span<const uint8_t> bytes, std::string_view what) {
  if (bytes.size() < 8)
    throw InputError(fmt::format("{}: truncated safetensors file ({} bytes, need at least 8)", what, bytes.size()));
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  if (n > kMaxHeaderBytes) throw InputError(fmt::format("{}: safetensors header length {} is too large", what, n));
  if (n > bytes.size() - 8)
    throw InputError(fmt::format("{}: safetensors header length {} past end of file ({} bytes): truncated file?",
                                 what, n, bytes.size()));
  SafetensorsHeader h;
  h.data_start = 8 + n;
  const uint64_t data_size = bytes.size() - h.data_start;

  nlohmann::json j;
  try {
    j = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + n);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("{}: safetensors header is not valid JSON: {}", what, e.what()));
  }
  if (!j.is_object()) throw InputError(fmt::format("{}: safetensors header is not a JSON object", what));

  for (const auto& [key, value] : j.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) throw InputError(fmt::format("{}: safetensors __metadata__ is not an object", what));
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string())
          throw InputError(fmt::format("{}: safetensors __metadata__ value '{}' is not a string", what, mk));
        h.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    h.entries.push_back(parse_entry(key, value, data_size, what));
  }

  // Tensors must not share bytes: sort by begin and check each starts after the previous ends.
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& e : h.entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](auto* a, auto* b) { return std::tie(a->begin, a->end) < std::tie(b->begin, b->end); });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const auto* prev = by_offset[i - 1];
    const auto* cur = by_offset[i];
    if (cur->begin < prev->end)
      throw InputError(fmt::format("{}: safetensors tensors '{}' [{}, {}) and '{}' [{}, {}) have overlapping data_offsets",
                                   what, prev->name, prev->begin, prev->end, cur->name, cur->begin, cur->end));
  }
  std::sort(h.entries.begin(), h.entries.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return h;
}

std::map<std::string, at::Tensor> parse_safetensors(std::span<const uint8_t> bytes, std::string_view what,
                                                       std::map<std::string, std::string>* metadata) {
  auto h = parse_safetensors_header(bytes, what);
  std::map<std::string, at::Tensor> out;
  for (const auto& e : h.entries) {
    auto t = empty_tensor(e.shape, e.dtype);
    if (e.end > e.begin) std::memcpy(t.data_ptr(), bytes.data() + h.data_start + e.begin, e.end - e.begin);
    out.emplace(e.name, std::move(t));
  }
  if (metadata) *metadata = std::move(h.metadata);
  return out;
}

TensorMap load_safetensors(const std::filesystem::path& path, std::map<std::string, std::string>* metadata) {
  auto file = MappedFile::open(path);
  const auto what = path.string();
  auto h = parse_safetensors_header(file->bytes(), what);
  TensorMap out;
  for (const auto& e : h.entries) {
    uint8_t* p = file->mutable_data() + h.data_start + e.begin;
    at::Tensor t;
    if (reinterpret_cast<uintptr_t>(p) % c10::elementSize(e.dtype) == 0 && e.end > e.begin) {
      // Zero-copy: the tensor views the mapping and its deleter keeps the mapping alive.
      t = MappedFile::tensor(file, h.data_start + e.begin, e.shape, e.dtype);
    } else {
      // Misaligned (legal when the writer did not pad the header) or empty: copy.
      t = empty_tensor(e.shape, e.dtype);
      if (e.end > e.begin) std::memcpy(t.data_ptr(), p, e.end - e.begin);
    }
    out.emplace(e.name, std::move(t));
  }
  if (metadata) *metadata = std::move(h.metadata);
  return out;
}

namespace {

void check_name(const std::string& name) {
  if (name.empty() || name == "__metadata__") throw InputError(fmt::format("safetensors: invalid tensor name '{}'", name));
}

// Sorts `entries` by name, fills their offsets, and returns the header JSON, space-padded so the
// data section starts 8-aligned, behind its u64 length.
std::string header_bytes(std::vector<SafetensorsEntry>& entries, const std::map<std::string, std::string>& metadata) {
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  nlohmann::json j = nlohmann::json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    auto& e = entries[i];
    check_name(e.name);
    if (i > 0 && entries[i - 1].name == e.name) throw InputError(fmt::format("safetensors: tensor '{}' given twice", e.name));
    uint64_t numel = 1;
    for (auto d : e.shape) {
      if (d < 0) throw InputError(fmt::format("safetensors: tensor '{}' has a negative dimension", e.name));
      numel *= static_cast<uint64_t>(d);
    }
    e.begin = offset;
    e.end = offset + numel * c10::elementSize(e.dtype);
    offset = e.end;
    j[e.name] = {{"dtype", safetensors_dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {e.begin, e.end}}};
  }
  std::string header = j.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  const uint64_t n = header.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + header;
}

// The map's tensors, contiguous on the CPU, and their entries.
std::pair<std::vector<SafetensorsEntry>, std::vector<at::Tensor>> entries_of(const TensorMap& tensors) {
  std::vector<SafetensorsEntry> entries;
  std::vector<at::Tensor> data;
  for (const auto& [name, tensor] : tensors) {  // std::map: sorted by name, as upstream writes
    check_name(name);
    auto t = tensor.detach().to(at::kCPU).contiguous();
    entries.push_back({name, t.scalar_type(), t.sizes().vec()});
    data.push_back(std::move(t));
  }
  return {std::move(entries), std::move(data)};
}

}  // namespace

SafetensorsWriter::SafetensorsWriter(const std::filesystem::path& path, std::vector<SafetensorsEntry> entries,
                                     const std::map<std::string, std::string>& metadata)
    : path_(path), entries_(std::move(entries)) {
  const auto header = header_bytes(entries_, metadata);  // names and dtypes checked before the file exists
  file_ = std::make_unique<AtomicFile>(path);
  file_->write(header);
}

SafetensorsWriter::~SafetensorsWriter() = default;  // without commit AtomicFile removes the temporary

void SafetensorsWriter::write(const std::string& name, const at::Tensor& tensor) {
  if (next_ >= entries_.size())
    throw InputError(fmt::format("{}: tensor '{}' written after all {} declared ones", path_.string(), name, entries_.size()));
  const auto& e = entries_[next_];
  if (name != e.name)
    throw InputError(fmt::format("{}: tensor '{}' written where '{}' comes next (name order)", path_.string(), name, e.name));
  if (tensor.scalar_type() != e.dtype || tensor.sizes().vec() != e.shape)
    throw InputError(fmt::format("{}: tensor '{}' is {} [{}], declared {} [{}]", path_.string(), name,
                                 safetensors_dtype_name(tensor.scalar_type()), fmt::join(tensor.sizes(), ", "),
                                 safetensors_dtype_name(e.dtype), fmt::join(e.shape, ", ")));
  const auto t = tensor.detach().to(at::kCPU).contiguous();
  if (t.numel() > 0) file_->write(t.data_ptr(), e.end - e.begin);
  ++next_;
}

void SafetensorsWriter::commit() {
  if (next_ != entries_.size())
    throw InputError(fmt::format("{}: {} of {} tensors written (next: '{}')", path_.string(), next_, entries_.size(),
                                 entries_[next_].name));
  file_->commit();
}

std::string serialize_safetensors(const TensorMap& tensors, const std::map<std::string, std::string>& metadata) {
  auto [entries, data] = entries_of(tensors);
  std::string out = header_bytes(entries, metadata);
  for (const auto& t : data)
    if (t.numel() > 0) out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return out;
}

void save_safetensors(const std::filesystem::path& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata) {
  auto [entries, data] = entries_of(tensors);
  // Written beside the target, fsynced and renamed: a crash never leaves a half-written checkpoint.
  SafetensorsWriter out(path, entries, metadata);
  for (size_t i = 0; i < data.size(); ++i) out.write(entries[i].name, data[i]);
  out.commit();
}

}  // namespace iadgpt::io
