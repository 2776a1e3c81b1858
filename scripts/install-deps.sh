#!/usr/bin/env bash
# Installs the Debian packages iadgpt builds and tests with (docs/ARCHITECTURE.md).
# Idempotent: packages already present are not fetched again.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libopenblas0-openmp
  libopencv-dev
  libsentencepiece-dev
  nlohmann-json3-dev libcli11-dev libcpp-httplib-dev
  libfmt-dev zlib1g-dev
  libgtest-dev libgmock-dev
  clang libclang-rt-14-dev
  chromium fonts-dejavu-core
  libgloo-dev
)
# Node.js runs the browser test (tests/web). A machine that already has node and npm (e.g. from
# another repository) keeps them: Debian's npm package conflicts with those bundles.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
else
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# playwright-core for the browser test, pinned by tests/web/package-lock.json. It drives the
# Debian chromium above; it downloads no browser of its own.
web="$(dirname "$0")/../tests/web"
if [ ! -f "$web/node_modules/playwright-core/package.json" ] || [ "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ]; then
  echo "install-deps: npm ci in tests/web"
  (cd "$web" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
