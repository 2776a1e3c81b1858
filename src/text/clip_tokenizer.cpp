#include "text/clip_tokenizer.h"

#include <fmt/format.h>
#include <zlib.h>

#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/error.h"
#include "text/unicode.h"

namespace iadgpt::text {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kSot = "<|startoftext|>";
constexpr std::string_view kEot = "<|endoftext|>";
constexpr char kEndOfWord[] = "</w>";
// simple_tokenizer.py keeps merges[1 : 49152-256-2+1]: the header line, then 48894 merges.
constexpr std::size_t kNumMerges = 49152 - 256 - 2;
constexpr std::string_view kGzName = "bpe_simple_vocab_16e6.txt.gz";

std::string read_gzip(const fs::path& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw InputError(fmt::format("{}: cannot open the BPE vocabulary", path.string()));
  std::string out;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) out.append(buf, n);
  int err = 0;
  const char* msg = gzerror(f, &err);
  std::string what = (n < 0 && msg) ? msg : "";
  gzclose(f);
  if (n < 0) throw InputError(fmt::format("{}: corrupt gzip data ({})", path.string(), what));
  return out;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(fmt::format("{}: cannot open", path.string()));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Lines [1, 1 + kNumMerges) as "first second" strings.
std::vector<std::string> parse_merges(const std::string& text, const fs::path& path) {
  std::vector<std::string> merges;
  std::size_t pos = 0, line = 0;
  while (pos <= text.size() && merges.size() < kNumMerges) {
    std::size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string_view l(text.data() + pos, nl - pos);
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (line > 0 && !l.empty()) {
      const auto sp = l.find(' ');
      if (sp == std::string_view::npos || sp == 0 || sp + 1 == l.size() ||
          l.find(' ', sp + 1) != std::string_view::npos)
        throw InputError(fmt::format("{}: line {} is not a BPE merge 'a b': '{}'", path.string(),
                                     line + 1, l));
      merges.emplace_back(l);
    }
    ++line;
    pos = nl + 1;
  }
  if (merges.size() < 1000)
    throw InputError(fmt::format("{}: only {} BPE merges; not a CLIP vocabulary", path.string(),
                                 merges.size()));
  return merges;
}

// bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes get
// U+0100.. in byte order; returned in the order upstream lists them (the vocabulary's order).
std::vector<std::pair<int, char32_t>> bytes_to_unicode() {
  std::vector<std::pair<int, char32_t>> table;
  auto printable = [](int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  for (int b = 0; b < 256; ++b)
    if (printable(b)) table.emplace_back(b, static_cast<char32_t>(b));
  int n = 0;
  for (int b = 0; b < 256; ++b)
    if (!printable(b)) table.emplace_back(b, static_cast<char32_t>(256 + n++));
  return table;
}

bool is_hf_dir(const fs::path& dir) {
  return fs::is_regular_file(dir / "vocab.json") && fs::is_regular_file(dir / "merges.txt");
}

// Lower-cased text: the only characters IGNORECASE still folds onto the pattern's letters.
char32_t fold(char32_t c) { return c == 0x17F ? U's' : c; }  // ſ -> s (simple case folding)

bool match_at(std::u32string_view s, std::size_t i, std::string_view lit) {
  if (i + lit.size() > s.size()) return false;
  for (std::size_t k = 0; k < lit.size(); ++k)
    if (fold(s[i + k]) != static_cast<char32_t>(lit[k])) return false;
  return true;
}

}  // namespace

std::string clip_clean_text(std::string_view text) {
  // basic_clean: ftfy.fix_text (not applied, see header), html.unescape twice, strip.
  std::u32string s = utf8_decode(text);
  s = python_strip(html_unescape(html_unescape(s)));
  s = collapse_whitespace(s);  // whitespace_clean
  return utf8_encode(python_lower(s));
}

fs::path ClipTokenizer::find_beside(const fs::path& checkpoint) {
  const fs::path dir = fs::is_directory(checkpoint) ? checkpoint : checkpoint.parent_path();
  const fs::path base = dir.empty() ? fs::path(".") : dir;
  // Beside the file, or in a bpe/ folder as ImageBind and AnomalyGPT ship it.
  for (const fs::path& candidate :
       {base / kGzName, base / "bpe_simple_vocab_16e6.txt", base / "bpe" / kGzName})
    if (fs::is_regular_file(candidate)) return candidate;
  if (is_hf_dir(base)) return base;
  if (is_hf_dir(base / "tokenizer")) return base / "tokenizer";
  return {};
}

ClipTokenizer ClipTokenizer::load(const fs::path& path) {
  if (!fs::exists(path))
    throw InputError(fmt::format("{}: BPE vocabulary not found", path.string()));
  fs::path merges_path, vocab_path, gz_path;
  if (fs::is_directory(path)) {
    if (fs::is_regular_file(path / kGzName)) {
      gz_path = path / kGzName;
    } else if (is_hf_dir(path)) {
      merges_path = path / "merges.txt";
      vocab_path = path / "vocab.json";
    } else {
      throw InputError(fmt::format("{}: no {} and no vocab.json + merges.txt in this directory",
                                   path.string(), kGzName));
    }
  } else if (path.filename() == "vocab.json" || path.filename() == "merges.txt") {
    merges_path = path.parent_path() / "merges.txt";
    vocab_path = path.parent_path() / "vocab.json";
    if (!is_hf_dir(path.parent_path()))
      throw InputError(fmt::format("{}: vocab.json and merges.txt must sit together",
                                   path.parent_path().string()));
  } else {
    gz_path = path;
  }

  ClipTokenizer tok;
  if (!gz_path.empty()) {
    // gzopen reads plain files transparently, so an uncompressed .txt works as well.
    tok.build(parse_merges(read_gzip(gz_path), gz_path), {});
  } else {
    std::unordered_map<std::string, int64_t> vocab;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_file(vocab_path));
    } catch (const nlohmann::json::exception& e) {
      throw InputError(fmt::format("{}: invalid JSON ({})", vocab_path.string(), e.what()));
    }
    if (!j.is_object())
      throw InputError(fmt::format("{}: expected a JSON object token -> id", vocab_path.string()));
    for (auto& [k, v] : j.items()) {
      if (!v.is_number_integer())
        throw InputError(fmt::format("{}: id of '{}' is not an integer", vocab_path.string(), k));
      vocab.emplace(k, v.get<int64_t>());
    }
    tok.build(parse_merges(read_file(merges_path), merges_path), std::move(vocab));
  }
  return tok;
}

ClipTokenizer::ClipTokenizer(ClipTokenizer&& o) noexcept
    : encoder_(std::move(o.encoder_)),
      ranks_(std::move(o.ranks_)),
      sot_id_(o.sot_id_),
      eot_id_(o.eot_id_),
      cache_(std::move(o.cache_)) {
  for (int b = 0; b < 256; ++b) byte_encoder_[b] = std::move(o.byte_encoder_[b]);
}

void ClipTokenizer::build(std::vector<std::string> merges,
                          std::unordered_map<std::string, int64_t> vocab) {
  const auto table = bytes_to_unicode();
  for (const auto& [b, cp] : table) {
    byte_encoder_[b].clear();
    utf8_append(byte_encoder_[b], cp);
  }
  for (std::size_t r = 0; r < merges.size(); ++r) ranks_.emplace(merges[r], static_cast<int>(r));
  if (vocab.empty()) {
    // simple_tokenizer.py: bytes, bytes + "</w>", one entry per merge, then the two specials.
    int64_t id = 0;
    for (const auto& [b, cp] : table) encoder_.emplace(byte_encoder_[b], id++);
    for (const auto& [b, cp] : table) encoder_.emplace(byte_encoder_[b] + kEndOfWord, id++);
    for (const auto& m : merges) {
      std::string joined = m;
      joined.erase(joined.find(' '), 1);
      encoder_.emplace(std::move(joined), id++);
    }
    encoder_.emplace(std::string(kSot), id++);
    encoder_.emplace(std::string(kEot), id++);
  } else {
    encoder_ = std::move(vocab);
  }
  auto special = [&](std::string_view name) {
    auto it = encoder_.find(std::string(name));
    if (it == encoder_.end())
      throw InputError(fmt::format("CLIP vocabulary lacks the special token {}", name));
    return it->second;
  };
  sot_id_ = special(kSot);
  eot_id_ = special(kEot);
}

std::vector<std::string> ClipTokenizer::vocabulary() const {
  int64_t max_id = -1;
  for (const auto& [k, id] : encoder_) max_id = std::max(max_id, id);
  std::vector<std::string> out(static_cast<std::size_t>(max_id + 1));
  for (const auto& [k, id] : encoder_)
    if (id >= 0) out[id] = k;
  return out;
}

std::vector<std::string> ClipTokenizer::pre_tokenize(std::string_view text) const {
  // regex.findall(<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|
  //               [^\s\p{L}\p{N}]+, IGNORECASE): alternatives tried in order at each position,
  // characters matching none (whitespace, and U+0345 under IGNORECASE) are skipped.
  static constexpr std::string_view kLiterals[] = {kSot, kEot, "'s", "'t", "'re", "'ve",
                                                   "'m", "'ll", "'d"};
  const std::u32string s = utf8_decode(text);
  std::vector<std::string> pieces;
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t end = i;
    for (std::string_view lit : kLiterals)
      if (match_at(s, i, lit)) {
        end = i + lit.size();
        break;
      }
    if (end == i) {
      if (is_letter(s[i])) {
        while (end < s.size() && is_letter(s[end])) ++end;
      } else if (is_number(s[i])) {
        end = i + 1;
      } else {
        while (end < s.size() && is_clip_punct(s[end])) ++end;
      }
    }
    if (end == i) {
      ++i;
      continue;
    }
    pieces.push_back(utf8_encode(std::u32string_view(s).substr(i, end - i)));
    i = end;
  }
  return pieces;
}

const std::vector<std::string>& ClipTokenizer::bpe(const std::string& piece) const {
  {
    std::lock_guard lock(cache_mutex_);
    if (auto it = cache_.find(piece); it != cache_.end()) return it->second;
  }
  std::vector<std::string> word;
  if (piece == kSot || piece == kEot) {
    word.push_back(piece);  // upstream seeds its cache with the specials: they map to themselves
  } else {
    // Byte-level symbols; each byte becomes one printable code point.
    for (unsigned char b : piece) word.push_back(byte_encoder_[b]);
    word.back() += kEndOfWord;
    while (word.size() > 1) {
      int best = std::numeric_limits<int>::max();
      std::size_t best_i = 0;
      for (std::size_t k = 0; k + 1 < word.size(); ++k) {
        auto it = ranks_.find(word[k] + ' ' + word[k + 1]);
        if (it != ranks_.end() && it->second < best) {
          best = it->second;
          best_i = k;
        }
      }
      if (best == std::numeric_limits<int>::max()) break;
      // Merge every non-overlapping occurrence of the best pair, left to right.
      const std::string first = word[best_i], second = word[best_i + 1];
      std::vector<std::string> merged;
      merged.reserve(word.size());
      for (std::size_t k = 0; k < word.size();) {
        if (k + 1 < word.size() && word[k] == first && word[k + 1] == second) {
          merged.push_back(first + second);
          k += 2;
        } else {
          merged.push_back(std::move(word[k]));
          ++k;
        }
      }
      word = std::move(merged);
    }
  }
  std::lock_guard lock(cache_mutex_);
  return cache_.emplace(piece, std::move(word)).first->second;
}

std::vector<std::string> ClipTokenizer::encode_pieces(std::string_view text) const {
  std::vector<std::string> out;
  for (const std::string& piece : pre_tokenize(clip_clean_text(text)))
    for (const std::string& sym : bpe(piece)) out.push_back(sym);
  return out;
}

std::vector<int64_t> ClipTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids;
  for (const std::string& sym : encode_pieces(text)) {
    auto it = encoder_.find(sym);
    if (it == encoder_.end())
      throw InputError(fmt::format("BPE symbol '{}' is not in the vocabulary", sym));
    ids.push_back(it->second);
  }
  return ids;
}

std::vector<int64_t> ClipTokenizer::tokenize(std::string_view text, Truncation truncation,
                                             int64_t context_length) const {
  if (context_length < 2) throw InputError("context length must be at least 2");
  const std::vector<int64_t> bpe_ids = encode(text);
  std::vector<int64_t> row;
  row.reserve(context_length);
  row.push_back(sot_id_);
  row.insert(row.end(), bpe_ids.begin(), bpe_ids.end());
  row.push_back(eot_id_);
  if (static_cast<int64_t>(row.size()) > context_length) {
    switch (truncation) {
      case Truncation::Upstream:
        row.resize(context_length);
        row.back() = eot_id_;
        break;
      case Truncation::AnomalyGpt:
        row.resize(context_length);
        break;
      case Truncation::Error:
        throw InputError(fmt::format("text has {} BPE tokens; at most {} fit the context of {}",
                                     bpe_ids.size(), context_length - 2, context_length));
    }
  }
  row.resize(context_length, 0);
  return row;
}

torch::Tensor ClipTokenizer::tokenize_batch(const std::vector<std::string>& texts,
                                            Truncation truncation, int64_t context_length) const {
  auto out = torch::zeros({static_cast<int64_t>(texts.size()), context_length}, torch::kInt64);
  auto acc = out.accessor<int64_t, 2>();
  for (std::size_t n = 0; n < texts.size(); ++n) {
    const auto row = tokenize(texts[n], truncation, context_length);
    for (int64_t k = 0; k < context_length; ++k) acc[n][k] = row[k];
  }
  return out;
}

}  // namespace iadgpt::text
