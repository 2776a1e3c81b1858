// Unicode facts the CLIP tokenizer needs, as sorted tables generated from Python's own libraries
// (scripts/gen_text_unicode_tables.py writes unicode_tables.cpp). Upstream CLIP gets them from
// Python's `regex` (\s, \p{L}, \p{N}), `str.lower()` and `html.unescape`; asking the same
// libraries once keeps our answers identical instead of approximated.
#pragma once
#include <cstddef>

namespace iadgpt::text::unicode {

struct CodepointRange {
  char32_t lo, hi;  // inclusive
};
struct LowerPair {
  char32_t from, to;
};
struct NamedEntity {
  const char* name;   // without '&', with ';' when the reference needs it
  const char* value;  // UTF-8
};

extern const CodepointRange kLetter[];               // regex [\p{L}] (IGNORECASE)
extern const std::size_t kLetter_size;
extern const CodepointRange kNumber[];               // regex [\p{N}] (IGNORECASE)
extern const std::size_t kNumber_size;
extern const CodepointRange kPunct[];                // regex [^\s\p{L}\p{N}] (IGNORECASE)
extern const std::size_t kPunct_size;
extern const CodepointRange kSpace[];                // regex \s
extern const std::size_t kSpace_size;
extern const CodepointRange kStripSpace[];           // str.isspace() (str.strip)
extern const std::size_t kStripSpace_size;
extern const CodepointRange kCased[];                // \p{Cased} (final sigma rule)
extern const std::size_t kCased_size;
extern const CodepointRange kCaseIgnorable[];        // \p{Case_Ignorable} (final sigma rule)
extern const std::size_t kCaseIgnorable_size;
extern const LowerPair kLower[];                     // str.lower(), one-codepoint results
extern const std::size_t kLower_size;
extern const NamedEntity kHtmlEntities[];            // html.entities.html5, sorted bytewise
extern const std::size_t kHtmlEntities_size;
extern const LowerPair kHtmlInvalidCharref[];        // html._invalid_charrefs
extern const std::size_t kHtmlInvalidCharref_size;
extern const CodepointRange kHtmlInvalidCodepoint[]; // html._invalid_codepoints (dropped)
extern const std::size_t kHtmlInvalidCodepoint_size;

}  // namespace iadgpt::text::unicode
