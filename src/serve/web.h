// The web page's files (src/serve/web/*), embedded in the binary at build time
// (cmake/embed_web.cmake writes web_assets.cpp into the build folder).
#pragma once
#include <span>
#include <string_view>

namespace iadgpt::serve {

struct WebAsset {
  std::string_view path;          // "/index.html", "/app.js", ...
  std::string_view content_type;
  std::string_view body;
};

std::span<const WebAsset> web_assets();

}  // namespace iadgpt::serve
