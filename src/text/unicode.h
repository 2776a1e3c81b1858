// Python-compatible text primitives for the CLIP tokenizer: UTF-8 <-> code points, the character
// classes of the `regex` module, `str.lower()`, `str.strip()`, `html.unescape()`.
//
//   std::u32string s = iadgpt::text::utf8_decode("Ελληνικά &amp; İstanbul");
//   s = iadgpt::text::python_lower(iadgpt::text::html_unescape(s));
//   std::string out = iadgpt::text::utf8_encode(s);
//
// All functions are pure and thread-safe.
#pragma once
#include <string>
#include <string_view>

namespace iadgpt::text {

// Throws iadgpt::InputError on invalid UTF-8 (naming the byte offset): upstream receives a Python
// str, so invalid bytes have no defined meaning.
std::u32string utf8_decode(std::string_view bytes);
std::string utf8_encode(std::u32string_view text);
void utf8_append(std::string& out, char32_t cp);

bool is_letter(char32_t cp);      // \p{L}
bool is_number(char32_t cp);      // \p{N}
bool is_space(char32_t cp);       // regex \s (Unicode White_Space)
// regex [^\s\p{L}\p{N}] under IGNORECASE: not quite the complement of the three above (U+0345).
bool is_clip_punct(char32_t cp);
bool is_strip_space(char32_t cp); // str.isspace()

// Python str.lower(): full mapping (U+0130 -> "i\u0307") and the Final_Sigma context.
std::u32string python_lower(std::u32string_view text);
// Python str.strip() with no argument.
std::u32string python_strip(std::u32string_view text);
// Python html.unescape(): numeric and HTML5 named character references, legacy prefixes included.
std::u32string html_unescape(std::u32string_view text);
// regex.sub(r'\s+', ' ', text).strip()
std::u32string collapse_whitespace(std::u32string_view text);

}  // namespace iadgpt::text
