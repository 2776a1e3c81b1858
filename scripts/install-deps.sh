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

# tests/web's packages, pinned by tests/web/package-lock.json: playwright-core for the browser
# test (it drives the Debian chromium above and downloads no browser of its own) and the official
# `openai` client for the API test. npm ci again when any of them is missing or the lock is newer.
web="$(dirname "$0")/../tests/web"
need_ci=0
for pkg in playwright-core openai; do
  [ -f "$web/node_modules/$pkg/package.json" ] || need_ci=1
done
[ "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ] && need_ci=1
if [ "$need_ci" = 1 ]; then
  echo "install-deps: npm ci in tests/web"
  (cd "$web" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
