// Checkpoint I/O: every weight file a user downloads, read into named tensors.
//
//   auto ckpt = iadgpt::io::load_checkpoint("imagebind_huge.pth");           // auto-detects format
//   const at::Tensor& w = ckpt.tensors.at("modality_heads.vision.2.weight");
//   iadgpt::io::save_safetensors("out.safetensors", {{"embedding", e}});
//
// Formats: safetensors (mmap, validated before any data is read), PyTorch zip archives
// (.pth/.pt/.bin state dicts, possibly nested under `model`/`state_dict`, and TorchScript
// archives read as data) through a restricted unpickler, Hugging Face directories
// (config.json + model.safetensors | model.safetensors.index.json shards | pytorch_model*.bin).
// All errors are iadgpt::InputError naming the file and, where there is one, the key.
// Thread-safety: functions are re-entrant; returned tensors own (or share) their memory.
// Memory: PyTorch zips are read lazily (LoadOptions::keys / float_dtype / headers_only), record
// by record. Safetensors tensors are zero-copy views of a private (copy-on-write) mmap of the file,
// kept alive by the tensors' deleters; PyTorch zip tensors view the storage records read from
// the archive (tensors that shared a storage in Python share it here too). Use .clone() if
// you need an independent buffer; float_dtype conversion always copies.
#pragma once
#include "io/aten.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "io/error.h"

namespace iadgpt::io {

// Ordered by key: deterministic iteration for writers and `info`.
using TensorMap = std::map<std::string, at::Tensor>;

enum class Format { Safetensors, TorchZip, TorchScript, HuggingFaceDir };

struct Checkpoint {
  TensorMap tensors;
  Format format = Format::Safetensors;
  std::filesystem::path path;
  std::map<std::string, std::string> metadata;  // safetensors __metadata__, when present
  std::optional<nlohmann::json> hf_config;      // config.json of a Hugging Face directory
};

struct LoadOptions {
  // Convert every floating tensor to this dtype on load (integer tensors are kept).
  std::optional<at::ScalarType> float_dtype;
  // Only the keys this returns true for are loaded (empty: all). From a PyTorch zip the other
  // records are never read; each wanted one is read and converted before the next.
  std::function<bool(const std::string&)> keys;
  // Shapes and dtypes only: tensors on the meta device, no tensor data read (float_dtype is
  // ignored, the stored dtypes are reported). What `info` and config inference need.
  bool headers_only = false;
};

// Reads any supported layout; the format is detected from the content, not the extension.
Checkpoint load_checkpoint(const std::filesystem::path& path, const LoadOptions& options = {});

// Individual readers (load_checkpoint dispatches to them).
TensorMap load_safetensors(const std::filesystem::path& path,
                           std::map<std::string, std::string>* metadata = nullptr);
// `torchscript` (optional) is set when data.pkl was a TorchScript module tree rather than a dict.
// Lazy: the central directory and data.pkl are read first, then only the records `options` wants.
TensorMap load_torch_zip(const std::filesystem::path& path, bool* torchscript = nullptr, const LoadOptions& options = {});

// The format load_checkpoint would use; throws InputError for legacy pickles and unknown files.
Format detect_format(const std::filesystem::path& path);

// Casts every floating tensor to `dtype` (integer and bool tensors are kept).
void convert_floats(TensorMap& tensors, at::ScalarType dtype);

// Applies `options` to an already loaded map: drops unwanted keys, then meta tensors for
// headers_only, else converts floats. (load_checkpoint does this for every format.)
void apply_load_options(TensorMap& tensors, const LoadOptions& options);

// Rewrites a checkpoint of any supported layout as one safetensors file, streaming: the headers
// first (no data read), then the wanted tensors in name order, read `batch_bytes` at a time (each
// converted as read) and written at once, so memory stays near one batch plus the largest record
// whatever the checkpoint's size. `progress(done, total)` gets the bytes written so far.
struct ConvertOptions {
  std::optional<at::ScalarType> float_dtype;              // as LoadOptions::float_dtype
  std::function<bool(const std::string&)> keys;           // as LoadOptions::keys (empty: all)
  uint64_t batch_bytes = uint64_t{256} << 20;
  std::function<void(uint64_t done, uint64_t total)> progress;
};
struct ConvertStats {
  int64_t tensors = 0, parameters = 0;
  uint64_t bytes = 0;  // of the data section written
};
ConvertStats convert_to_safetensors(const std::filesystem::path& in, const std::filesystem::path& out,
                                    const ConvertOptions& options, const std::map<std::string, std::string>& metadata = {});

// Writes a safetensors file (F32/F16/BF16/I64/I32/U8/BOOL); tensors are made contiguous.
void save_safetensors(const std::filesystem::path& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace iadgpt::io
