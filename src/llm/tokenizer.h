// LLaMA tokenizer: SentencePiece (`tokenizer.model`) through Google's libsentencepiece.
//
//   auto tok = iadgpt::llm::Tokenizer::from_path("vicuna-7b");        // dir or tokenizer.model
//   std::vector<int64_t> ids = tok.encode("Hello world", /*bos=*/true);  // {1, 15043, 3186}
//   std::string text = tok.decode(ids);                                 // "Hello world"
//
// encode adds the SentencePiece dummy prefix as the model's normalizer says (LLaMA: "Hello" ->
// ▁Hello); special tokens are never parsed from text. decode follows byte fallback (<0xE2>...).
// Thread-safety: const methods may be called concurrently.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace iadgpt::llm {

class Tokenizer {
 public:
  // `path`: a tokenizer.model file, or a directory that contains one. InputError if unreadable.
  static Tokenizer from_path(const std::filesystem::path& path);

  std::vector<int64_t> encode(std::string_view text, bool bos = false, bool eos = false) const;
  std::string decode(std::span<const int64_t> ids) const;
  std::string piece(int64_t id) const;

  int64_t vocab_size() const;
  int64_t bos_id() const;
  int64_t eos_id() const;
  int64_t unk_id() const;

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

 private:
  Tokenizer();
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

// Streams text while ids arrive: emits the newly decoded suffix of the whole sequence, holding back
// an incomplete UTF-8 character (byte-fallback pieces arrive one byte at a time).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer) : tok_(&tokenizer) {}
  std::string push(int64_t id);  // new printable text (possibly empty)
  std::string flush();           // whatever was held back
  const std::string& text() const { return text_; }  // everything decoded so far

 private:
  const Tokenizer* tok_;
  std::vector<int64_t> ids_;
  std::string text_;
  size_t emitted_ = 0;
};

}  // namespace iadgpt::llm
