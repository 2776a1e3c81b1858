// API keys of `iadgpt serve --api-key-file`: reading the file and checking a request's
// `Authorization: Bearer <key>` against it in constant time.
//
//   auto keys = serve::read_api_keys("keys.txt");            // InputError when unreadable or empty
//   bool ok = serve::ApiKeys(keys).accepts(req.get_header_value("Authorization"));
//
// The comparison's time depends on the number of keys and on the length of what the client sent,
// never on how much of a key it guessed right, so the keys cannot be found byte by byte.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace iadgpt::serve {

// One key a line; blank lines and lines starting with '#' are ignored; surrounding whitespace is
// trimmed. InputError names the file and the problem (unreadable, no key, a key with spaces).
std::vector<std::string> read_api_keys(const std::filesystem::path& path);

// The token of an `Authorization: Bearer <token>` header value ("" when the scheme is not Bearer).
std::string bearer_token(std::string_view authorization);

// True when a and b are equal; the time taken depends only on b's length (b = what the client sent).
bool constant_time_equal(std::string_view secret, std::string_view presented);

class ApiKeys {
 public:
  explicit ApiKeys(std::vector<std::string> keys) : keys_(std::move(keys)) {}
  bool enabled() const { return !keys_.empty(); }
  // Checks every key (no early exit), so the time does not say which key matched.
  bool accepts(std::string_view authorization_header) const;

 private:
  std::vector<std::string> keys_;
};

}  // namespace iadgpt::serve
