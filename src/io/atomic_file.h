// Atomic file replacement: write to `.<name>.tmp` beside the target, fsync, rename over `path`, fsync the
// directory. A crash or kill at any point leaves either the old file or the new one, never a
// half-written one (what checkpoints, bundles and prompt files need). One writer per target.
//
//   io::AtomicFile out("ckpt.safetensors");
//   out.write(header); out.write(data);
//   out.commit();                      // without commit the destructor removes the temporary
#pragma once
#include <filesystem>
#include <functional>
#include <string_view>

namespace iadgpt::io {

class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t size);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  void commit();  // fsync, rename, fsync the directory; InputError on failure

  const std::filesystem::path& temporary() const { return tmp_; }

 private:
  std::filesystem::path path_, tmp_;
  int fd_ = -1;
};

// Writes `bytes` to `path` through AtomicFile (readers see the old file or the whole new one), in
// 1 MiB pieces, calling `after_bytes` after each (tests kill the writer part-way there).
void write_file_atomic(const std::filesystem::path& path, std::string_view bytes,
                       const std::function<void(std::size_t written)>& after_bytes = {});

}  // namespace iadgpt::io
