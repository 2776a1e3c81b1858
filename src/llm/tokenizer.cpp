#include "llm/tokenizer.h"

#include <fmt/format.h>
#include <sentencepiece_processor.h>

#include "io/error.h"

namespace iadgpt::llm {

Tokenizer::Tokenizer() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_path(const std::filesystem::path& path) {
  auto file = std::filesystem::is_directory(path) ? path / "tokenizer.model" : path;
  if (!std::filesystem::is_regular_file(file))
    throw InputError(fmt::format("{}: SentencePiece tokenizer.model not found", file.string()));
  Tokenizer t;
  if (auto status = t.sp_->Load(file.string()); !status.ok())
    throw InputError(fmt::format("{}: not a SentencePiece model ({})", file.string(), status.ToString()));
  return t;
}

std::vector<int64_t> Tokenizer::encode(std::string_view text, bool bos, bool eos) const {
  std::vector<int> pieces;
  if (auto status = sp_->Encode(text, &pieces); !status.ok())
    throw InputError(fmt::format("tokenizer: cannot encode text ({})", status.ToString()));
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
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size())
      throw InputError(fmt::format("token id {} is outside the tokenizer vocabulary [0, {})", id, vocab_size()));
    pieces.push_back(static_cast<int>(id));
  }
  std::string text;
  if (auto status = sp_->Decode(pieces, &text); !status.ok())
    throw std::runtime_error(fmt::format("tokenizer: cannot decode ({})", status.ToString()));
  return text;
}

std::string Tokenizer::piece(int64_t id) const { return sp_->IdToPiece(static_cast<int>(id)); }
int64_t Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }
int64_t Tokenizer::bos_id() const { return sp_->bos_id(); }
int64_t Tokenizer::eos_id() const { return sp_->eos_id(); }
int64_t Tokenizer::unk_id() const { return sp_->unk_id(); }

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

}  // namespace iadgpt::llm
