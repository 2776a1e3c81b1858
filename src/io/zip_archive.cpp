// Zip reading for PyTorch checkpoints: central directory (zip64 included), then one record at a
// time. Layout: PKWARE APPNOTE 6.3, sections 4.3.7 (local header), 4.3.12 (central directory),
// 4.3.14-16 (zip64 end records), 4.5.3 (zip64 extra field).
#include "io/zip_archive.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "io/error.h"

namespace iadgpt::io {

namespace {

class FileSource final : public ByteSource {
 public:
  FileSource(int fd, uint64_t size) : fd_(fd), size_(size) {}
  ~FileSource() override { ::close(fd_); }
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;
  uint64_t size() const override { return size_; }
  bool read_at(uint64_t offset, std::span<uint8_t> out) const override {
    if (offset > size_ || out.size() > size_ - offset) return false;
    size_t done = 0;
    while (done < out.size()) {
      const ssize_t n = ::pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
      if (n <= 0) return false;  // EOF (the file shrank) or an I/O error
      done += static_cast<size_t>(n);
    }
    return true;
  }

 private:
  int fd_;
  uint64_t size_;
};

class MemorySource final : public ByteSource {
 public:
  explicit MemorySource(std::span<const uint8_t> bytes) : bytes_(bytes) {}
  uint64_t size() const override { return bytes_.size(); }
  bool read_at(uint64_t offset, std::span<uint8_t> out) const override {
    if (offset > bytes_.size() || out.size() > bytes_.size() - offset) return false;
    if (!out.empty()) std::memcpy(out.data(), bytes_.data() + offset, out.size());
    return true;
  }

 private:
  std::span<const uint8_t> bytes_;
};

uint16_t u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t u32(const uint8_t* p) { return static_cast<uint32_t>(u16(p)) | (static_cast<uint32_t>(u16(p + 2)) << 16); }
uint64_t u64(const uint8_t* p) { return static_cast<uint64_t>(u32(p)) | (static_cast<uint64_t>(u32(p + 4)) << 32); }

constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50;
constexpr uint32_t kEnd64LocatorSig = 0x07064b50, kEnd64Sig = 0x06064b50;
constexpr size_t kEndSize = 22, kCentralSize = 46, kLocalSize = 30, kEnd64LocatorSize = 20, kEnd64Size = 56;

struct Directory {
  uint64_t offset = 0, size = 0, count = 0;
};

[[noreturn]] void bad_zip(const std::string& what, std::string_view why) {
  throw InputError(fmt::format("{}: not a readable PyTorch zip archive: {}", what, why));
}

// The end-of-central-directory record is the last signature in the final 64 KiB + 22 bytes
// (its comment is at most 65535 bytes); zip64 archives add a locator just before it.
Directory find_directory(const ByteSource& src, const std::string& what) {
  const uint64_t n = src.size();
  if (n < kEndSize) bad_zip(what, "too short for an end-of-central-directory record");
  const uint64_t tail_size = std::min<uint64_t>(n, kEndSize + 65535 + kEnd64LocatorSize);
  std::vector<uint8_t> tail(tail_size);
  if (!src.read_at(n - tail_size, tail)) bad_zip(what, "cannot read the end of the file");
  size_t at = tail_size - kEndSize + 1;
  do {
    --at;
  } while (at > 0 && u32(&tail[at]) != kEndSig);
  if (u32(&tail[at]) != kEndSig) bad_zip(what, "no end-of-central-directory record");
  const uint8_t* e = &tail[at];
  Directory d{.offset = u32(e + 16), .size = u32(e + 12), .count = u16(e + 10)};
  if (d.offset == 0xFFFFFFFF || d.size == 0xFFFFFFFF || d.count == 0xFFFF) {
    if (at < kEnd64LocatorSize || u32(e - kEnd64LocatorSize) != kEnd64LocatorSig) bad_zip(what, "zip64 locator missing");
    const uint64_t end64 = u64(e - kEnd64LocatorSize + 8);
    uint8_t rec[kEnd64Size];
    if (!src.read_at(end64, rec) || u32(rec) != kEnd64Sig) bad_zip(what, "zip64 end-of-central-directory record missing");
    d = Directory{.offset = u64(rec + 48), .size = u64(rec + 40), .count = u64(rec + 32)};
  }
  if (d.offset > n || d.size > n - d.offset) bad_zip(what, "central directory lies outside the file");
  if (d.count > d.size / kCentralSize) bad_zip(what, "central directory too small for its entry count");
  return d;
}

// Zip64 extended information (header id 1): the 64-bit values of the fields set to 0xFFFFFFFF,
// in the order uncompressed size, compressed size, local header offset.
void apply_zip64_extra(std::span<const uint8_t> extra, ZipEntry& e, bool big_size, bool big_comp, bool big_offset,
                       const std::string& what, const std::string& name) {
  size_t at = 0;
  while (at + 4 <= extra.size()) {
    const uint16_t id = u16(&extra[at]), len = u16(&extra[at + 2]);
    if (at + 4 + len > extra.size()) bad_zip(what, fmt::format("extra field of '{}' overruns its entry", name));
    if (id == 1) {
      size_t p = at + 4;
      auto take = [&](uint64_t& field) {
        if (p + 8 > at + 4 + len) bad_zip(what, fmt::format("zip64 field of '{}' is too short", name));
        field = u64(&extra[p]);
        p += 8;
      };
      if (big_size) take(e.size);
      if (big_comp) take(e.compressed);
      if (big_offset) take(e.local_header);
      return;
    }
    at += 4 + len;
  }
  if (big_size || big_comp || big_offset) bad_zip(what, fmt::format("'{}' needs a zip64 field and has none", name));
}

}  // namespace

std::shared_ptr<ByteSource> ByteSource::file(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw InputError(fmt::format("{}: cannot open: {}", path.string(), std::strerror(errno)));
  const off_t end = ::lseek(fd, 0, SEEK_END);
  if (end < 0) {
    ::close(fd);
    throw InputError(fmt::format("{}: cannot seek: {}", path.string(), std::strerror(errno)));
  }
  return std::make_shared<FileSource>(fd, static_cast<uint64_t>(end));
}

std::shared_ptr<ByteSource> ByteSource::memory(std::span<const uint8_t> bytes) { return std::make_shared<MemorySource>(bytes); }

ZipArchive::ZipArchive(std::shared_ptr<ByteSource> source, std::string what) : source_(std::move(source)), what_(std::move(what)) {
  const Directory d = find_directory(*source_, what_);
  std::vector<uint8_t> dir(d.size);
  if (!source_->read_at(d.offset, dir)) bad_zip(what_, "cannot read the central directory");
  std::string prefix;
  size_t at = 0;
  for (uint64_t i = 0; i < d.count; ++i) {
    if (at + kCentralSize > dir.size() || u32(&dir[at]) != kCentralSig) bad_zip(what_, fmt::format("central directory entry {} is damaged", i));
    const uint8_t* c = &dir[at];
    const size_t name_len = u16(c + 28), extra_len = u16(c + 30), comment_len = u16(c + 32);
    if (at + kCentralSize + name_len + extra_len + comment_len > dir.size()) bad_zip(what_, fmt::format("central directory entry {} overruns the directory", i));
    std::string full(reinterpret_cast<const char*>(c + kCentralSize), name_len);
    ZipEntry e{.local_header = u32(c + 42), .compressed = u32(c + 20), .size = u32(c + 24), .crc32 = u32(c + 16), .method = u16(c + 10)};
    apply_zip64_extra({c + kCentralSize + name_len, extra_len}, e, e.size == 0xFFFFFFFF, e.compressed == 0xFFFFFFFF,
                      e.local_header == 0xFFFFFFFF, what_, full);
    at += kCentralSize + name_len + extra_len + comment_len;
    if (u16(c + 8) & 1) bad_zip(what_, fmt::format("'{}' is encrypted", full));
    // PyTorchStreamReader's convention: the first entry's top folder is the archive's name.
    if (i == 0) prefix = full.substr(0, full.find('/') + 1);
    if (prefix.empty() || !full.starts_with(prefix)) continue;
    if (!entries_.emplace(full.substr(prefix.size()), e).second) bad_zip(what_, fmt::format("'{}' appears twice", full));
  }
}

const ZipEntry* ZipArchive::find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

uint64_t ZipArchive::locate(const ZipEntry& e, const std::string& name, std::string_view context) const {
  uint8_t local[kLocalSize];
  if (!source_->read_at(e.local_header, local) || u32(local) != kLocalSig)
    throw InputError(fmt::format("{}: {}: record '{}' has no local header at byte {} (truncated or corrupt file)", what_, context,
                                 name, e.local_header));
  const uint64_t start = e.local_header + kLocalSize + u16(local + 26) + u16(local + 28);
  if (start > source_->size() || e.compressed > source_->size() - start)
    throw InputError(fmt::format("{}: {}: record '{}' needs bytes [{}, {}) but the file ends at byte {} (truncated file?)", what_,
                                 context, name, start, start + e.compressed, source_->size()));
  // Deflate expands at most 1032:1 (RFC 1951 stored-length limits); stored records are as long
  // as their data.
  const uint64_t reachable = e.method == 0 ? e.compressed : e.compressed * 1032 + 1024;
  if (e.size > reachable)
    throw InputError(fmt::format("{}: {}: record '{}' claims {} bytes from {} stored bytes", what_, context, name, e.size,
                                 e.compressed));
  return start;
}

void ZipArchive::read(const ZipEntry& e, const std::string& name, std::span<uint8_t> out, std::string_view context) const {
  if (out.size() != e.size) throw std::logic_error("ZipArchive::read: buffer size differs from the record size");
  const uint64_t start = locate(e, name, context);
  auto fail = [&](std::string_view why) {
    throw InputError(fmt::format("{}: {}: record '{}' {}", what_, context, name, why));
  };
  if (e.method == 0) {
    if (e.compressed != e.size) fail("is stored with two different sizes");
    if (!source_->read_at(start, out)) fail("cannot be read (truncated file?)");
  } else if (e.method == 8) {
    std::vector<uint8_t> packed(e.compressed);
    if (!source_->read_at(start, packed)) fail("cannot be read (truncated file?)");
    z_stream z{};
    if (inflateInit2(&z, -MAX_WBITS) != Z_OK) fail("cannot be inflated (zlib init)");
    z.next_in = packed.data();
    z.next_out = out.data();
    int rc = Z_OK;
    while (rc == Z_OK) {  // zlib counts in uInt: hand it at most 1 GiB of input and output at a time
      const auto in_done = static_cast<uint64_t>(z.next_in - packed.data());
      const auto out_done = static_cast<uint64_t>(z.next_out - out.data());
      if (z.avail_in == 0) z.avail_in = static_cast<uInt>(std::min<uint64_t>(packed.size() - in_done, 1u << 30));
      if (z.avail_out == 0) z.avail_out = static_cast<uInt>(std::min<uint64_t>(out.size() - out_done, 1u << 30));
      rc = inflate(&z, Z_NO_FLUSH);  // Z_BUF_ERROR: no progress possible (input ran out or output is full)
    }
    const auto out_done = static_cast<uint64_t>(z.next_out - out.data());
    inflateEnd(&z);
    if (rc != Z_STREAM_END || out_done != out.size()) fail("is not a valid deflate stream of the stated size");
  } else {
    fail(fmt::format("uses compression method {} (only stored and deflate are supported)", e.method));
  }
  // CRC-32 over the record, in 1 GiB pieces (zlib counts in uInt).
  uLong crc = crc32(0L, Z_NULL, 0);
  for (size_t at = 0; at < out.size(); at += 1u << 30)
    crc = crc32(crc, out.data() + at, static_cast<uInt>(std::min<size_t>(out.size() - at, 1u << 30)));
  if (static_cast<uint32_t>(crc) != e.crc32) fail(fmt::format("is corrupt (CRC-32 {:08x}, the directory says {:08x})", static_cast<uint32_t>(crc), e.crc32));
}

std::string ZipArchive::read_string(const std::string& name, size_t max_size) const {
  const ZipEntry* e = find(name);
  if (!e) throw InputError(fmt::format("{}: PyTorch zip archive has no {} record", what_, name));
  if (e->size > max_size) throw InputError(fmt::format("{}: record '{}' is {} bytes, more than the {} allowed", what_, name, e->size, max_size));
  locate(*e, name, name);  // before allocating what the directory claims
  std::string s(e->size, '\0');
  read(*e, name, {reinterpret_cast<uint8_t*>(s.data()), s.size()}, name);
  return s;
}

}  // namespace iadgpt::io
