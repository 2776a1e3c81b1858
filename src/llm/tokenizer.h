// LLaMA tokenizer: SentencePiece (`tokenizer.model`) through Google's libsentencepiece.
//
//   auto tok = iadgpt::llm::Tokenizer::from_path("vicuna-7b");        // dir or tokenizer.model
//   std::vector<int64_t> ids = tok.encode("Hello world", /*bos=*/true);  // {1, 15043, 3186}
//   std::string text = tok.decode(ids);                                 // "Hello world"
//
// encode adds the SentencePiece dummy prefix as the model's normalizer says (LLaMA: "Hello" ->
// ▁Hello); special tokens are never parsed from text. decode follows byte fallback (<0xE2>...).
// Thread-safety: const methods may be called concurrently. libsentencepiece is reached through a
// small shim loaded with dlopen (see spm_shim/spm_shim.cpp for why); it is looked up in
// $IADGPT_SPM_SHIM, beside the executable, then on the library path.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

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

  std::string path() const { return path_; }

 private:
  Tokenizer() = default;
  std::shared_ptr<void> sp_;  // SentencePieceProcessor owned by the shim
  std::string path_;
};

// Trains a SentencePiece model with the trainer's own flags, e.g. {"--input=corpus.txt",
// "--model_prefix=dir/tokenizer", "--vocab_size=512", "--model_type=bpe"}; writes
// <model_prefix>.model and .vocab. Runs `iadgpt-spm-train` (built beside the program; why a
// separate process: spm_shim/spm_train_main.cpp), found in $IADGPT_SPM_TRAIN, beside the
// executable, or as Debian's `spm_train` on PATH. InputError when training fails (the trainer's
// message is on stderr).
void train_tokenizer(const std::vector<std::string>& flags);

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
