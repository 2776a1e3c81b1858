#include "text/unicode.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <span>

#include "io/error.h"
#include "text/unicode_tables.h"

namespace iadgpt::text {
namespace {

using unicode::CodepointRange;

bool in_ranges(const CodepointRange* table, std::size_t size, char32_t cp) {
  std::span<const CodepointRange> ranges(table, size);
  auto it = std::upper_bound(ranges.begin(), ranges.end(), cp,
                             [](char32_t c, const CodepointRange& r) { return c < r.lo; });
  return it != ranges.begin() && cp <= std::prev(it)->hi;
}

const unicode::LowerPair* find_pair(const unicode::LowerPair* table, std::size_t size, char32_t cp) {
  std::span<const unicode::LowerPair> pairs(table, size);
  auto it = std::lower_bound(pairs.begin(), pairs.end(), cp,
                             [](const unicode::LowerPair& p, char32_t c) { return p.from < c; });
  return (it != pairs.end() && it->from == cp) ? &*it : nullptr;
}

bool is_cased(char32_t cp) { return in_ranges(unicode::kCased, unicode::kCased_size, cp); }
bool is_case_ignorable(char32_t cp) {
  return in_ranges(unicode::kCaseIgnorable, unicode::kCaseIgnorable_size, cp);
}

// CPython handle_capital_sigma: \p{cased}\p{case-ignorable}* Σ !(\p{case-ignorable}*\p{cased}).
bool final_sigma(std::u32string_view s, std::size_t i) {
  std::size_t j = i;
  while (j > 0 && is_case_ignorable(s[j - 1])) --j;
  if (j == 0 || !is_cased(s[j - 1])) return false;
  std::size_t k = i + 1;
  while (k < s.size() && is_case_ignorable(s[k])) ++k;
  return k == s.size() || !is_cased(s[k]);
}

const char* html_entity(std::string_view name) {
  std::span<const unicode::NamedEntity> ents(unicode::kHtmlEntities, unicode::kHtmlEntities_size);
  auto it = std::lower_bound(ents.begin(), ents.end(), name,
                             [](const unicode::NamedEntity& e, std::string_view n) {
                               return std::string_view(e.name) < n;
                             });
  return (it != ents.end() && std::string_view(it->name) == name) ? it->value : nullptr;
}

bool is_hex(char32_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// html._replace_charref for a numeric reference; digits are the characters after '#' / '#x'.
void append_numeric(std::u32string& out, std::u32string_view digits, int base) {
  // Python ints do not overflow; anything beyond 0x10FFFF gives U+FFFD, so saturate.
  uint64_t num = 0;
  for (char32_t c : digits) {
    uint32_t d = c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
    num = std::min<uint64_t>(num * base + d, 0x7FFFFFFF);
  }
  if (auto* p = find_pair(unicode::kHtmlInvalidCharref, unicode::kHtmlInvalidCharref_size,
                          static_cast<char32_t>(num));
      p && num < 0x110000) {
    out.push_back(p->to);
    return;
  }
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
    out.push_back(0xFFFD);
    return;
  }
  if (in_ranges(unicode::kHtmlInvalidCodepoint, unicode::kHtmlInvalidCodepoint_size,
                static_cast<char32_t>(num)))
    return;
  out.push_back(static_cast<char32_t>(num));
}

bool named_ref_char(char32_t c) {
  return c != '\t' && c != '\n' && c != '\f' && c != ' ' && c != '<' && c != '&' && c != '#' &&
         c != ';';
}

}  // namespace

void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string utf8_encode(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t cp : text) utf8_append(out, cp);
  return out;
}

std::u32string utf8_decode(std::string_view bytes) {
  std::u32string out;
  out.reserve(bytes.size());
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  const std::size_t n = bytes.size();
  for (std::size_t i = 0; i < n;) {
    unsigned char b = s[i];
    int len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    char32_t cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
    bool ok = len > 0 && i + len <= n;
    for (int k = 1; ok && k < len; ++k) {
      ok = (s[i + k] & 0xC0) == 0x80;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    static constexpr char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    ok = ok && cp >= kMin[len] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    if (!ok) throw InputError(fmt::format("text is not valid UTF-8 (byte offset {})", i));
    out.push_back(cp);
    i += len;
  }
  return out;
}

bool is_letter(char32_t cp) { return in_ranges(unicode::kLetter, unicode::kLetter_size, cp); }
bool is_number(char32_t cp) { return in_ranges(unicode::kNumber, unicode::kNumber_size, cp); }
bool is_space(char32_t cp) { return in_ranges(unicode::kSpace, unicode::kSpace_size, cp); }
bool is_clip_punct(char32_t cp) { return in_ranges(unicode::kPunct, unicode::kPunct_size, cp); }
bool is_strip_space(char32_t cp) {
  return in_ranges(unicode::kStripSpace, unicode::kStripSpace_size, cp);
}

std::u32string python_lower(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size() + 4);
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c == 0x130) {  // the one unconditional multi-code-point lowercase (SpecialCasing.txt)
      out.push_back(U'i');
      out.push_back(0x307);
    } else if (c == 0x3A3) {
      out.push_back(final_sigma(text, i) ? 0x3C2 : 0x3C3);
    } else if (const auto* p = find_pair(unicode::kLower, unicode::kLower_size, c)) {
      out.push_back(p->to);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::u32string python_strip(std::u32string_view text) {
  std::size_t b = 0, e = text.size();
  while (b < e && is_strip_space(text[b])) ++b;
  while (e > b && is_strip_space(text[e - 1])) --e;
  return std::u32string(text.substr(b, e - b));
}

std::u32string html_unescape(std::u32string_view s) {
  // Mirrors html.unescape's pattern &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?).
  std::u32string out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    if (s[i] != '&') {
      out.push_back(s[i++]);
      continue;
    }
    std::size_t j = i + 1;
    if (j < s.size() && s[j] == '#') {
      const bool hex = j + 1 < s.size() && (s[j + 1] == 'x' || s[j + 1] == 'X');
      std::size_t d0 = j + 1 + (hex ? 1 : 0), d1 = d0;
      while (d1 < s.size() && (hex ? is_hex(s[d1]) : (s[d1] >= '0' && s[d1] <= '9'))) ++d1;
      if (d1 == d0) {  // no digits: not a reference
        out.push_back(s[i++]);
        continue;
      }
      append_numeric(out, s.substr(d0, d1 - d0), hex ? 16 : 10);
      i = (d1 < s.size() && s[d1] == ';') ? d1 + 1 : d1;
      continue;
    }
    std::size_t e = j;
    while (e < s.size() && e - j < 32 && named_ref_char(s[e])) ++e;
    if (e == j) {
      out.push_back(s[i++]);
      continue;
    }
    if (e < s.size() && s[e] == ';') ++e;
    // The reference name is compared as UTF-8 (entity names are ASCII).
    const std::u32string_view name32 = s.substr(j, e - j);
    const std::string name = utf8_encode(name32);
    if (const char* v = html_entity(name)) {
      out += utf8_decode(v);
    } else {
      bool found = false;
      // Longest known prefix (at least 2 characters), e.g. "&ampx" -> "&x" (legacy names).
      for (std::size_t x = name32.size() - 1; x >= 2 && !found; --x) {
        if (const char* v2 = html_entity(utf8_encode(name32.substr(0, x)))) {
          out += utf8_decode(v2);
          out += name32.substr(x);
          found = true;
        }
      }
      if (!found) {
        out.push_back('&');
        out += name32;
      }
    }
    i = e;
  }
  return out;
}

std::u32string collapse_whitespace(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    if (is_space(text[i])) {
      while (i < text.size() && is_space(text[i])) ++i;
      out.push_back(U' ');
    } else {
      out.push_back(text[i++]);
    }
  }
  return python_strip(out);
}

}  // namespace iadgpt::text
