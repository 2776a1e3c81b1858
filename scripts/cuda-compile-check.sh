#!/usr/bin/env bash
# Compiles, without a GPU and without a CUDA libtorch, the lines that only a CUDA build compiles
# (`#ifdef IADGPT_WITH_CUDA`, `USE_C10D_NCCL`): each translation unit of the CPU build that holds
# such lines is compiled again with both macros defined, syntax and types only (-fsyntax-only),
# against the c10/cuda, ATen/cuda and c10d NCCL headers that Debian's libtorch-dev ships and the
# CUDA toolkit's headers (cuda_runtime_api.h, nccl.h). Nothing is linked or run: a CUDA build can
# still fail at link time or behave differently at run time; scripts/gpu-check.sh is the real check.
#
#   bash scripts/cuda-compile-check.sh [--build DIR] [--cuda DIR]
#        defaults: --build build (a configured CPU build: its compile_commands.json),
#                  --cuda $CUDA_HOME or /usr/local/cuda
#
# Exit codes: 0 every unit compiled, 1 a unit failed (the compiler's messages are printed),
# 2 this machine cannot run the check (one line saying why). Not part of `make test`: the CUDA
# headers are not a Debian package on the build machines.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$root/build"
cuda="${CUDA_HOME:-/usr/local/cuda}"
cannot() { echo "cuda-compile-check: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="${2:?--build needs a directory}"; shift 2 ;;
    --cuda) cuda="${2:?--cuda needs a directory}"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) cannot "unknown argument $1 (see --help)" ;;
  esac
done
[ -f "$build/compile_commands.json" ] || cannot "$build/compile_commands.json not found (configure first: make configure)"
[ -f "$cuda/include/cuda_runtime_api.h" ] || cannot "no CUDA headers in $cuda/include (give --cuda DIR or set CUDA_HOME)"
[ -f "$cuda/include/nccl.h" ] || cannot "no nccl.h in $cuda/include (the NCCL lines need it)"
torch_include="$(sed -n 's/^Torch_DIR:PATH=//p' "$build/CMakeCache.txt" 2>/dev/null)"
for h in c10/cuda/CUDAFunctions.h torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp; do
  [ -f "/usr/include/$h" ] || [ -n "$(find "${torch_include:-/nonexistent}/../../../include" -path "*/$h" 2>/dev/null | head -1)" ] ||
    cannot "libtorch's $h not found (Debian's libtorch-dev ships it)"
done
command -v python3 >/dev/null || cannot "python3 is not installed"
# Debian's CPU libtorch ships the c10/cuda headers but not the one CMake generates for a CUDA
# build; its only content is whether c10_cuda is a shared library (it is, in every libtorch).
generated="$(mktemp -d)"
trap 'rm -rf "$generated"' EXIT
if [ ! -f /usr/include/c10/cuda/impl/cuda_cmake_macros.h ]; then
  mkdir -p "$generated/c10/cuda/impl"
  echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$generated/c10/cuda/impl/cuda_cmake_macros.h"
fi

python3 - "$root" "$build" "$cuda" "$generated" <<'PY'
import json, os, re, shlex, subprocess, sys

root, build, cuda, generated = sys.argv[1:]
guard = re.compile(r"IADGPT_WITH_CUDA|USE_C10D_NCCL")
entries = json.load(open(os.path.join(build, "compile_commands.json")))

def sources_of(path):
    """The file itself, or for a CMake unity file the sources it includes."""
    text = open(path, encoding="utf-8", errors="replace").read()
    included = re.findall(r'#include\s+"([^"]+\.(?:cpp|cc|cxx))"', text)
    return [path] + [p if os.path.isabs(p) else os.path.join(os.path.dirname(path), p) for p in included]

def has_guard(path):
    try:
        return bool(guard.search(open(path, encoding="utf-8", errors="replace").read()))
    except OSError:
        return False

units = [e for e in entries if any(has_guard(s) for s in sources_of(e["file"]))]
if not units:
    print("cuda-compile-check: no translation unit holds CUDA-only lines", file=sys.stderr)
    sys.exit(1)

failed = 0
for e in units:
    args = shlex.split(e["command"]) if "command" in e else list(e["arguments"])
    # Drop a launcher (cmake -E env ... ccache): start at the compiler.
    start = next(i for i, a in enumerate(args) if re.search(r"(g\+\+|c\+\+|clang\+\+)(-\d+)?$", a))
    args = args[start:]
    # No object file. The precompiled header stays: the CUDA macros appear in none of its headers.
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "-o":
            skip = True
            continue
        cleaned.append(a)
    cleaned += ["-fsyntax-only", "-DIADGPT_WITH_CUDA=1", "-DUSE_C10D_NCCL", "-isystem", os.path.join(cuda, "include"),
                "-isystem", generated]
    name = os.path.relpath(e["file"], root)
    shown = ", ".join(os.path.relpath(s, root) for s in sources_of(e["file"])[1:] if has_guard(s)) or name
    result = subprocess.run(cleaned, cwd=e["directory"], capture_output=True, text=True)
    if result.returncode != 0:
        failed += 1
        print(f"FAIL {shown}\n{result.stderr}", file=sys.stderr)
    else:
        print(f"ok   {shown}")
print(f"cuda-compile-check: {len(units) - failed} of {len(units)} translation units compiled with the CUDA lines")
sys.exit(1 if failed else 0)
PY
