// A read-only zip archive indexed from its central directory; records are read one at a time,
// on demand, straight into the caller's buffer (what lets a 4 GB .pth load only the tensors a
// model uses).
//
//   auto zip = iadgpt::io::ZipArchive(iadgpt::io::ByteSource::file("model.pth"), "model.pth");
//   const ZipEntry* e = zip.find("data/0");            // top folder ("archive/") stripped
//   zip.read(*e, buffer, "tensor 'w'");               // inflates if needed, checks CRC-32
//
// Opening reads only the end-of-central-directory records (zip64 too) and the central
// directory: no record data. Every offset and size is checked against the source size before
// use; a record is checked (local header, extent, CRC-32) when it is read. All errors are
// InputError naming the archive and, for record errors, the record and the caller's context.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace iadgpt::io {

// Random-access bytes: a file (pread) or a span in memory (fuzzing, embedded archives).
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual uint64_t size() const = 0;
  // Reads exactly out.size() bytes at `offset`; returns false if the source ends first.
  virtual bool read_at(uint64_t offset, std::span<uint8_t> out) const = 0;

  static std::shared_ptr<ByteSource> file(const std::filesystem::path& path);  // InputError if unreadable
  static std::shared_ptr<ByteSource> memory(std::span<const uint8_t> bytes);   // does not copy
};

struct ZipEntry {
  uint64_t local_header = 0;  // offset of the local file header
  uint64_t compressed = 0;
  uint64_t size = 0;          // uncompressed
  uint32_t crc32 = 0;
  uint16_t method = 0;        // 0 stored, 8 deflate
};

class ZipArchive {
 public:
  // Throws InputError "<what>: not a readable PyTorch zip archive: ..." when the directory is bad.
  ZipArchive(std::shared_ptr<ByteSource> source, std::string what);

  // Entries by name with the top folder of the first entry stripped (as torch.save writes:
  // "archive/data.pkl" -> "data.pkl"); entries outside that folder are not listed.
  const ZipEntry* find(const std::string& name) const;
  // Checks the record's local header and that its data lies inside the source (and, deflated,
  // that its stated size is reachable by deflate) without reading the data; returns the data
  // offset. Called before a buffer of entry.size bytes is allocated: a directory claiming
  // gigabytes fails here, not in the allocator.
  uint64_t locate(const ZipEntry& entry, const std::string& name, std::string_view context) const;
  // Reads the whole record into `out` (out.size() must equal entry.size); `context` (e.g.
  // "tensor 'w'") is added to errors: truncated, past the end, bad local header, CRC mismatch.
  void read(const ZipEntry& entry, const std::string& name, std::span<uint8_t> out, std::string_view context) const;
  std::string read_string(const std::string& name, size_t max_size) const;  // small records (data.pkl)

  const std::string& what() const { return what_; }

 private:
  std::shared_ptr<ByteSource> source_;
  std::string what_;
  std::map<std::string, ZipEntry> entries_;
};

}  // namespace iadgpt::io
