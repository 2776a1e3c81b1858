// The CLIP byte-level BPE tokenizer (openai/CLIP simple_tokenizer.py, also used verbatim by
// ImageBind and AnomalyGPT), reproduced id for id without Python.
//
//   auto tok = iadgpt::text::ClipTokenizer::load("bpe_simple_vocab_16e6.txt.gz");
//   std::vector<int64_t> row = tok.tokenize("a photo of a damaged screw.");  // 77 ids
//   torch::Tensor ids = tok.tokenize_batch({"a", "b"});                     // [2,77] int64
//
// Pipeline (upstream order): html.unescape twice + strip, collapse whitespace, str.lower(),
// the pre-tokenizer regex, UTF-8 bytes -> printable code points, BPE with `</w>` on each
// word's last symbol, then [SOT] + ids + [EOT] zero padded. ftfy.fix_text is NOT applied: it
// needs ftfy's heuristics and data (mojibake repair, NFC, quote straightening); texts it would
// change (fullwidth letters, curly quotes, decomposed accents, mojibake) may get other ids.
// Plain text, the prompts of this project and every reference case are unaffected.
// Thread-safety: const methods are safe to call concurrently (the BPE cache is locked).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace iadgpt::text {

enum class Truncation {
  Upstream,    // [SOT] + bpe[:L-2] + [EOT] (clip.tokenize(truncate=True), ImageBind)
  AnomalyGpt,  // ([SOT] + bpe + [EOT])[:L]: the EOT is lost on long texts (AnomalyGPT's copy)
  Error,       // throw InputError when the text does not fit (clip.tokenize's default)
};

class ClipTokenizer {
 public:
  static constexpr int64_t kContextLength = 77;

  // `path`: bpe_simple_vocab_16e6.txt(.gz), a vocab.json or merges.txt file, or a directory
  // holding either the .txt.gz or vocab.json + merges.txt (Hugging Face layout).
  static ClipTokenizer load(const std::filesystem::path& path);
  // Looks beside a checkpoint (its directory, or the directory itself; also bpe/ and tokenizer/
  // subfolders) for bpe_simple_vocab_16e6.txt(.gz) or vocab.json + merges.txt.
  // Returns an empty path when none is there.
  static std::filesystem::path find_beside(const std::filesystem::path& checkpoint);

  ClipTokenizer(ClipTokenizer&& other) noexcept;
  ClipTokenizer& operator=(ClipTokenizer&&) = delete;

  // SimpleTokenizer.encode: BPE ids without SOT/EOT, untruncated.
  std::vector<int64_t> encode(std::string_view text) const;
  // SimpleTokenizer.bpe pieces as vocabulary strings (for tests and `tokenize --pieces`).
  std::vector<std::string> encode_pieces(std::string_view text) const;
  // One padded row of `context_length` ids.
  std::vector<int64_t> tokenize(std::string_view text, Truncation truncation = Truncation::Upstream,
                                int64_t context_length = kContextLength) const;
  // [n, context_length] int64.
  torch::Tensor tokenize_batch(const std::vector<std::string>& texts,
                               Truncation truncation = Truncation::Upstream,
                               int64_t context_length = kContextLength) const;

  int64_t sot_id() const { return sot_id_; }
  int64_t eot_id() const { return eot_id_; }
  int64_t vocab_size() const { return static_cast<int64_t>(encoder_.size()); }
  // Vocabulary strings indexed by id (ids without a string stay empty).
  std::vector<std::string> vocabulary() const;

 private:
  ClipTokenizer() = default;
  void build(std::vector<std::string> merges, std::unordered_map<std::string, int64_t> vocab);
  const std::vector<std::string>& bpe(const std::string& piece) const;
  std::vector<std::string> pre_tokenize(std::string_view text) const;

  std::unordered_map<std::string, int64_t> encoder_;  // vocabulary string -> id
  std::unordered_map<std::string, int> ranks_;        // "first second" -> merge rank
  std::string byte_encoder_[256];                     // byte -> UTF-8 of its printable stand-in
  int64_t sot_id_ = 0, eot_id_ = 0;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<std::string>> cache_;
};

// SimpleTokenizer's basic_clean (without ftfy) + whitespace_clean + lower(), as UTF-8.
std::string clip_clean_text(std::string_view text);

}  // namespace iadgpt::text
