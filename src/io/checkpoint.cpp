// load_checkpoint: format detection by content, Hugging Face directories, dtype conversion.
#include "io/checkpoint.h"

#include <cstring>
#include <fstream>
#include <set>

#include <fmt/format.h>

#include "io/safetensors.h"

namespace iadgpt::io {

namespace {

std::string read_prefix(const std::filesystem::path& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(fmt::format("{}: cannot open", path.string()));
  std::string s(n, '\0');
  in.read(s.data(), static_cast<std::streamsize>(n));
  s.resize(static_cast<size_t>(in.gcount()));
  return s;
}

nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw InputError(fmt::format("{}: cannot open", path.string()));
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("{}: not valid JSON: {}", path.string(), e.what()));
  }
}

// Merges `part` into `all`; a tensor name present twice is an error (it would be ambiguous).
void merge_into(TensorMap& all, TensorMap&& part, const std::filesystem::path& from) {
  for (auto& [k, v] : part) {
    if (!all.emplace(k, std::move(v)).second)
      throw InputError(fmt::format("{}: tensor '{}' appears in more than one shard", from.string(), k));
  }
}

// *.index.json: {"metadata": ..., "weight_map": {tensor: shard file}}. Every shard is loaded
// once; every key of the index must be in the shard it names.
TensorMap load_sharded(const std::filesystem::path& index_path, bool safetensors,
                       std::map<std::string, std::string>* metadata, const LoadOptions& options) {
  auto index = read_json(index_path);
  auto wm = index.find("weight_map");
  if (!index.is_object() || wm == index.end() || !wm->is_object())
    throw InputError(fmt::format("{}: no 'weight_map' object", index_path.string()));
  std::map<std::string, std::vector<std::string>> keys_by_shard;
  for (const auto& [key, shard] : wm->items()) {
    if (!shard.is_string()) throw InputError(fmt::format("{}: weight_map['{}'] is not a file name", index_path.string(), key));
    const auto file = shard.get<std::string>();
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
      throw InputError(fmt::format("{}: weight_map['{}'] = '{}' is not a file in this directory", index_path.string(), key, file));
    keys_by_shard[file].push_back(key);
  }
  const auto dir = index_path.parent_path();
  TensorMap all;
  for (const auto& [file, keys] : keys_by_shard) {
    const auto shard_path = dir / file;
    if (!std::filesystem::exists(shard_path))
      throw InputError(fmt::format("{}: shard '{}' named in the index is missing (needed for '{}')", index_path.string(), file,
                                   keys.front()));
    TensorMap part = safetensors ? load_safetensors(shard_path, metadata) : load_torch_zip(shard_path, nullptr, options);
    apply_load_options(part, options);  // one shard at a time: converted before the next is read
    for (const auto& k : keys)
      if (!part.count(k) && (!options.keys || options.keys(k)))
        throw InputError(fmt::format("{}: tensor '{}' listed in {} is missing from the shard", shard_path.string(), k,
                                     index_path.filename().string()));
    merge_into(all, std::move(part), shard_path);
  }
  return all;
}

Checkpoint load_hf_dir(const std::filesystem::path& dir, const LoadOptions& options) {
  Checkpoint ck;
  ck.path = dir;
  ck.format = Format::HuggingFaceDir;
  if (std::filesystem::exists(dir / "config.json")) ck.hf_config = read_json(dir / "config.json");
  if (std::filesystem::exists(dir / "model.safetensors")) {
    ck.tensors = load_safetensors(dir / "model.safetensors", &ck.metadata);
  } else if (std::filesystem::exists(dir / "model.safetensors.index.json")) {
    ck.tensors = load_sharded(dir / "model.safetensors.index.json", true, &ck.metadata, options);
  } else if (std::filesystem::exists(dir / "pytorch_model.bin")) {
    ck.tensors = load_torch_zip(dir / "pytorch_model.bin", nullptr, options);
  } else if (std::filesystem::exists(dir / "pytorch_model.bin.index.json")) {
    ck.tensors = load_sharded(dir / "pytorch_model.bin.index.json", false, nullptr, options);
  } else {
    throw InputError(fmt::format(
        "{}: directory has no model.safetensors, model.safetensors.index.json, pytorch_model.bin or "
        "pytorch_model.bin.index.json",
        dir.string()));
  }
  return ck;
}

}  // namespace

Format detect_format(const std::filesystem::path& path) {
  if (std::filesystem::is_directory(path)) return Format::HuggingFaceDir;
  if (!std::filesystem::exists(path)) throw InputError(fmt::format("{}: no such file or directory", path.string()));
  const auto head = read_prefix(path, 16);
  if (head.size() >= 4 && head.compare(0, 4, "PK\x03\x04") == 0) return Format::TorchZip;
  // safetensors: u64 header length, then a JSON object. Checked before the pickle magic: a
  // header length such as 0x0280 also starts with the bytes 0x80 0x02.
  if (head.size() >= 9 && head[8] == '{') return Format::Safetensors;
  // Legacy torch.save (pre-1.6): a bare pickle stream, PROTO (0x80) 2..5.
  if (head.size() >= 2 && static_cast<uint8_t>(head[0]) == 0x80 && static_cast<uint8_t>(head[1]) >= 2 &&
      static_cast<uint8_t>(head[1]) <= 5)
    throw InputError(fmt::format(
        "{}: legacy non-zip PyTorch checkpoint; re-save with torch.save(..., _use_new_zipfile_serialization=True)",
        path.string()));
  throw InputError(fmt::format("{}: unrecognised checkpoint format (not safetensors, a PyTorch zip or a directory)",
                               path.string()));
}

void convert_floats(TensorMap& tensors, at::ScalarType dtype) {
  for (auto& [name, t] : tensors)
    if (t.is_floating_point() && t.scalar_type() != dtype) t = t.to(dtype);
}

void apply_load_options(TensorMap& tensors, const LoadOptions& options) {
  if (options.keys) std::erase_if(tensors, [&](const auto& kv) { return !options.keys(kv.first); });
  if (options.headers_only) {
    for (auto& [name, t] : tensors)
      if (!t.is_meta()) t = meta_tensor(t.sizes(), t.scalar_type());
  } else if (options.float_dtype) {
    convert_floats(tensors, *options.float_dtype);
  }
}

Checkpoint load_checkpoint(const std::filesystem::path& path, const LoadOptions& options) {
  Checkpoint ck;
  const auto name = path.filename().string();
  if (name.ends_with(".index.json") && std::filesystem::is_regular_file(path)) {
    // A shard index named directly: the same as its directory, without guessing the layout.
    ck.format = Format::HuggingFaceDir;
    if (std::filesystem::exists(path.parent_path() / "config.json")) ck.hf_config = read_json(path.parent_path() / "config.json");
    ck.tensors = load_sharded(path, name.find("safetensors") != std::string::npos, &ck.metadata, options);
    ck.path = path;
    return ck;
  }
  switch (detect_format(path)) {
    case Format::HuggingFaceDir:
      ck = load_hf_dir(path, options);
      break;
    case Format::Safetensors:
      ck.format = Format::Safetensors;
      ck.tensors = load_safetensors(path, &ck.metadata);
      break;
    case Format::TorchZip:
    case Format::TorchScript: {
      bool torchscript = false;
      ck.tensors = load_torch_zip(path, &torchscript, options);
      ck.format = torchscript ? Format::TorchScript : Format::TorchZip;
      break;
    }
  }
  ck.path = path;
  apply_load_options(ck.tensors, options);  // safetensors: views of the mapping until converted
  return ck;
}

ConvertStats convert_to_safetensors(const std::filesystem::path& in, const std::filesystem::path& out,
                                    const ConvertOptions& options, const std::map<std::string, std::string>& metadata) {
  if (options.batch_bytes == 0) throw InputError("convert: batch size must be > 0 bytes");
  const auto headers = load_checkpoint(in, {.keys = options.keys, .headers_only = true});
  std::vector<SafetensorsEntry> entries;
  ConvertStats stats;
  for (const auto& [name, t] : headers.tensors) {
    const bool convert = options.float_dtype && at::isFloatingType(t.scalar_type());
    entries.push_back({name, convert ? *options.float_dtype : t.scalar_type(), t.sizes().vec()});
    stats.parameters += t.numel();
  }
  if (entries.empty()) throw InputError(fmt::format("{}: no tensors to convert", in.string()));
  SafetensorsWriter writer(out, std::move(entries), metadata);
  const auto& order = writer.entries();
  const uint64_t total = order.back().end;
  for (size_t first = 0; first < order.size();) {
    // The next batch: whole tensors in name order, at least one, up to batch_bytes as written.
    size_t last = first + 1;
    while (last < order.size() && order[last].end - order[first].begin <= options.batch_bytes) ++last;
    std::set<std::string> batch;
    for (size_t i = first; i < last; ++i) batch.insert(order[i].name);
    auto part = load_checkpoint(in, {.float_dtype = options.float_dtype,
                                     .keys = [&](const std::string& k) { return batch.count(k) > 0; }});
    for (size_t i = first; i < last; ++i) {
      auto it = part.tensors.find(order[i].name);
      if (it == part.tensors.end())
        throw InputError(fmt::format("{}: tensor '{}' listed in the headers but not read", in.string(), order[i].name));
      writer.write(order[i].name, it->second);
      part.tensors.erase(it);  // its memory (or mapped pages) go at once
    }
    if (options.progress) options.progress(order[last - 1].end, total);
    first = last;
  }
  writer.commit();
  stats.tensors = static_cast<int64_t>(order.size());
  stats.bytes = total;
  return stats;
}

}  // namespace iadgpt::io
