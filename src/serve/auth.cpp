#include "serve/auth.h"

#include <fmt/format.h>

#include <fstream>

#include "io/error.h"

namespace iadgpt::serve {

namespace {

std::string_view trim(std::string_view s) {
  const auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

}  // namespace

std::vector<std::string> read_api_keys(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw InputError(fmt::format("--api-key-file {}: cannot be read", path.string()));
  std::vector<std::string> keys;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    const auto key = trim(line);
    if (key.empty() || key.front() == '#') continue;
    // A space inside means two keys on one line or a stray comment: refuse rather than guess.
    if (key.find_first_of(" \t") != std::string_view::npos) {
      throw InputError(fmt::format("--api-key-file {}: line {} holds whitespace inside the key (one key a line)",
                                   path.string(), number));
    }
    keys.emplace_back(key);
  }
  if (in.bad()) throw InputError(fmt::format("--api-key-file {}: read error", path.string()));
  if (keys.empty()) {
    throw InputError(fmt::format("--api-key-file {}: no key in it (one key a line; blank lines and '#' comments "
                                 "are ignored)", path.string()));
  }
  return keys;
}

std::string bearer_token(std::string_view authorization) {
  authorization = trim(authorization);
  constexpr std::string_view scheme = "bearer ";
  if (authorization.size() <= scheme.size()) return {};
  for (size_t i = 0; i < scheme.size(); ++i) {  // the scheme is case-insensitive (RFC 7235)
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != scheme[i]) return {};
  }
  return std::string(trim(authorization.substr(scheme.size())));
}

bool constant_time_equal(std::string_view secret, std::string_view presented) {
  // Every byte of `presented` is compared with a byte of `secret` (wrapping around), so the loop
  // runs as long as the client's own input whatever the secret is; a length difference is folded
  // into the result instead of returning early.
  size_t diff = secret.size() ^ presented.size();
  if (secret.empty()) return presented.empty();
  for (size_t i = 0; i < presented.size(); ++i) {
    diff |= static_cast<unsigned char>(secret[i % secret.size()]) ^ static_cast<unsigned char>(presented[i]);
  }
  return diff == 0;
}

bool ApiKeys::accepts(std::string_view authorization_header) const {
  const auto token = bearer_token(authorization_header);
  if (token.empty()) return false;
  bool ok = false;
  for (const auto& key : keys_) ok |= constant_time_equal(key, token);
  return ok;
}

}  // namespace iadgpt::serve
