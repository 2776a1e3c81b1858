#include "llm/tokenizer.h"

#include <dlfcn.h>
#include <spawn.h>
#include <sys/wait.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "io/error.h"

namespace iadgpt::llm {
namespace {

// The shim's entry points (spm_shim/spm_shim.cpp), resolved once per process.
struct SpmApi {
  void* (*load)(const std::string*, std::string*);
  void (*free)(void*);
  bool (*encode)(const void*, std::string_view, std::vector<int>*, std::string*);
  bool (*decode)(const void*, const std::vector<int>*, std::string*, std::string*);
  void (*piece)(const void*, int, std::string*);
  int (*info)(const void*, int);
};

constexpr const char* kShimName = "libiadgpt_spm.so";

std::vector<std::string> shim_candidates() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("IADGPT_SPM_SHIM"); env && *env) out.emplace_back(env);
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    out.push_back((exe.parent_path() / kShimName).string());
    out.push_back((exe.parent_path() / "../lib" / kShimName).string());
  }
  out.emplace_back(kShimName);  // LD_LIBRARY_PATH / system paths
  return out;
}

const SpmApi& api() {
  static SpmApi table = [] {
    void* handle = nullptr;
    std::string tried;
    for (const auto& path : shim_candidates()) {
      // RTLD_DEEPBIND: sentencepiece resolves to its own bundled protobuf first (see the shim).
      handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (handle) break;
      tried += fmt::format("\n  {}: {}", path, dlerror());
    }
    if (!handle) throw std::runtime_error("cannot load the SentencePiece shim " + std::string(kShimName) + tried);
    auto sym = [&](const char* name) {
      void* p = dlsym(handle, name);
      if (!p) throw std::runtime_error(fmt::format("{}: missing symbol {}", kShimName, name));
      return p;
    };
    SpmApi a;
    a.load = reinterpret_cast<decltype(a.load)>(sym("iadgpt_spm_load"));
    a.free = reinterpret_cast<decltype(a.free)>(sym("iadgpt_spm_free"));
    a.encode = reinterpret_cast<decltype(a.encode)>(sym("iadgpt_spm_encode"));
    a.decode = reinterpret_cast<decltype(a.decode)>(sym("iadgpt_spm_decode"));
    a.piece = reinterpret_cast<decltype(a.piece)>(sym("iadgpt_spm_piece"));
    a.info = reinterpret_cast<decltype(a.info)>(sym("iadgpt_spm_info"));
    return a;
  }();
  return table;
}

}  // namespace

Tokenizer Tokenizer::from_path(const std::filesystem::path& path) {
  auto file = std::filesystem::is_directory(path) ? path / "tokenizer.model" : path;
  if (!std::filesystem::is_regular_file(file))
    throw InputError(fmt::format("{}: SentencePiece tokenizer.model not found", file.string()));
  const auto& a = api();
  std::string error, name = file.string();
  void* sp = a.load(&name, &error);
  if (!sp) throw InputError(fmt::format("{}: not a SentencePiece model ({})", name, error));
  Tokenizer t;
  t.sp_ = std::shared_ptr<void>(sp, a.free);
  t.path_ = name;
  return t;
}

std::vector<int64_t> Tokenizer::encode(std::string_view text, bool bos, bool eos) const {
  std::vector<int> pieces;
  std::string error;
  if (!api().encode(sp_.get(), text, &pieces, &error))
    throw InputError(fmt::format("tokenizer: cannot encode text ({})", error));
  std::vector<int64_t> ids;
  ids.reserve(pieces.size() + 2);
  if (bos) ids.push_back(bos_id());
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  if (eos) ids.push_back(eos_id());
  return ids;
}

std::string Tokenizer::decode(std::span<const int64_t> ids) const {
  std::vector<int> pieces;
  pieces.reserve(ids.size());
  const int64_t n = vocab_size();
  for (int64_t id : ids) {
    if (id < 0 || id >= n)
      throw InputError(fmt::format("token id {} is outside the tokenizer vocabulary [0, {})", id, n));
    pieces.push_back(static_cast<int>(id));
  }
  std::string text, error;
  if (!api().decode(sp_.get(), &pieces, &text, &error))
    throw std::runtime_error(fmt::format("tokenizer: cannot decode ({})", error));
  return text;
}

std::string Tokenizer::piece(int64_t id) const {
  std::string p;
  api().piece(sp_.get(), static_cast<int>(id), &p);
  return p;
}
int64_t Tokenizer::vocab_size() const { return api().info(sp_.get(), 0); }
int64_t Tokenizer::bos_id() const { return api().info(sp_.get(), 1); }
int64_t Tokenizer::eos_id() const { return api().info(sp_.get(), 2); }
int64_t Tokenizer::unk_id() const { return api().info(sp_.get(), 3); }

namespace {
// True when `s` ends inside a UTF-8 sequence or with U+FFFD produced by a partial byte run.
bool ends_incomplete(const std::string& s) {
  if (s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0) return true;
  for (size_t back = 1; back <= std::min<size_t>(4, s.size()); ++back) {
    unsigned char c = s[s.size() - back];
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
    size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return need > back;
  }
  return false;
}
}  // namespace

std::string StreamDecoder::push(int64_t id) {
  ids_.push_back(id);
  auto full = tok_->decode(ids_);
  if (ends_incomplete(full)) return {};
  text_ = std::move(full);
  // A later piece can change earlier text only at the held-back tail, so emit what is new.
  std::string out = emitted_ <= text_.size() ? text_.substr(emitted_) : std::string{};
  emitted_ = text_.size();
  return out;
}

std::string StreamDecoder::flush() {
  auto full = tok_->decode(ids_);
  std::string out = emitted_ <= full.size() ? full.substr(emitted_) : std::string{};
  text_ = std::move(full);
  emitted_ = text_.size();
  return out;
}

void train_tokenizer(const std::vector<std::string>& flags) {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("IADGPT_SPM_TRAIN"); env && *env) candidates.emplace_back(env);
  std::error_code ec;
  if (auto exe = std::filesystem::read_symlink("/proc/self/exe", ec); !ec)
    candidates.push_back((exe.parent_path() / "iadgpt-spm-train").string());
  std::string program = "spm_train";  // Debian's `sentencepiece` package, on PATH
  for (const auto& c : candidates)
    if (std::filesystem::is_regular_file(c)) {
      program = c;
      break;
    }
  std::vector<std::string> args{program};
  args.insert(args.end(), flags.begin(), flags.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (int err = posix_spawnp(&pid, program.c_str(), nullptr, nullptr, argv.data(), environ); err != 0)
    throw std::runtime_error(fmt::format("cannot start the SentencePiece trainer {}: {}", program, std::strerror(err)));
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) throw std::runtime_error("waitpid failed for " + program);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw InputError(fmt::format("SentencePiece training failed ({} exited with status {}; its message is above)",
                                 program, WIFEXITED(status) ? WEXITSTATUS(status) : -1));
}

}  // namespace iadgpt::llm
