// Training checkpoints (issue 6): one safetensors file per checkpoint under a directory,
// `step-<000000123>.safetensors`, written atomically — serialised to `.<name>.tmp`, fsync'ed,
// renamed over the final name, then the directory fsync'ed — so a crash or kill at any moment
// leaves either the previous good set or the new complete file, never a torn one. The newest N
// are kept. Metadata (JSON strings in the safetensors header) carries the step counters and the
// run's configuration.
//
//   train::CheckpointStore store(out / "checkpoints", /*keep=*/3);
//   store.save(120, tensors, {{"stage", "2"}});
//   if (auto c = store.latest()) resume_from(c->tensors, c->metadata);
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "io/checkpoint.h"

namespace iadgpt::train {

struct LoadedCheckpoint {
  int64_t step = 0;
  std::filesystem::path path;
  io::TensorMap tensors;  // owned copies (not mapping the file)
  std::map<std::string, std::string> metadata;
};

class CheckpointStore {
 public:
  CheckpointStore(std::filesystem::path directory, int64_t keep);

  // Writes step-<step>.safetensors atomically and prunes all but the newest `keep`. The optional
  // `after_bytes` hook runs after each chunk of the temporary file is written (tests use it to
  // die mid-write).
  std::filesystem::path save(int64_t step, const io::TensorMap& tensors,
                             const std::map<std::string, std::string>& metadata,
                             const std::function<void(size_t written)>& after_bytes = {}) const;

  // Complete checkpoints, oldest first (temporary files are ignored).
  std::vector<std::pair<int64_t, std::filesystem::path>> list() const;
  // The newest checkpoint that reads back; unreadable ones are skipped with a warning on stderr.
  std::optional<LoadedCheckpoint> latest() const;

  const std::filesystem::path& directory() const { return directory_; }

 private:
  std::filesystem::path directory_;
  int64_t keep_;
};

}  // namespace iadgpt::train
