#!/usr/bin/env bash
# The prepared GPU check of issue 16: builds iadgpt against the CUDA libtorch of a PyTorch
# installation and runs, with --device cuda, the fixture parity checks and the real-size benches;
# prints one table. For a Linux machine with an NVIDIA GPU, CUDA, CMake, ninja and a CUDA PyTorch.
#
#   bash scripts/gpu-check.sh [OUT_DIR]        # default OUT_DIR: gpu-check-out
#
# Exit codes: 0 the check ran (the table says what passed), 2 this machine cannot run it (one line
# on stderr saying why: no GPU, no CUDA PyTorch, a missing build dependency), 1 a step failed.
# Nothing in `make test` or CI runs it. Test hooks: NVIDIA_SMI and PYTHON name the programs used.
set -uo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-gpu-check-out}"
nvidia_smi="${NVIDIA_SMI:-nvidia-smi}"
python="${PYTHON:-python3}"

cannot() { echo "gpu-check: $*" >&2; exit 2; }

# 1. A GPU, and a PyTorch that sees it (its libtorch is what we build against).
gpus="$("$nvidia_smi" -L 2>/dev/null | grep -c '^GPU ' || true)"
[ "${gpus:-0}" -ge 1 ] || cannot "no NVIDIA GPU found ('$nvidia_smi -L' lists none); run this on a machine with one"
prefix="$("$python" -c 'import sys, torch
if not torch.cuda.is_available(): sys.exit(3)
print(torch.utils.cmake_prefix_path)' 2>/dev/null)" \
  || cannot "no CUDA PyTorch ('$python' cannot import torch, or torch.cuda.is_available() is false): its libtorch is what this check builds against"
command -v cmake >/dev/null || cannot "cmake not found"
command -v ninja >/dev/null || cannot "ninja not found"

# 2. The libraries iadgpt's program needs besides libtorch (there is no build without them yet).
missing=()
pkg-config --exists opencv4 2>/dev/null || missing+=(OpenCV)
pkg-config --exists sentencepiece 2>/dev/null || missing+=(SentencePiece)
pkg-config --exists cpp-httplib 2>/dev/null || missing+=(cpp-httplib)
[ -e /usr/include/CLI/CLI.hpp ] || missing+=(CLI11)
[ -e /usr/include/nlohmann/json.hpp ] || missing+=(nlohmann-json)
[ -e /usr/include/fmt/format.h ] || missing+=(fmt)
[ ${#missing[@]} -eq 0 ] || cannot "missing build dependencies: ${missing[*]} (the program needs them; a codec-free build is not there yet)"

# 3. Build against the CUDA libtorch.
mkdir -p "$out"
build="$out/build"
cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DIADGPT_TESTS=OFF \
  -DCMAKE_PREFIX_PATH="$prefix" >"$out/cmake.log" 2>&1 || { echo "gpu-check: cmake failed: $out/cmake.log" >&2; exit 1; }
grep -q "libtorch with CUDA" "$out/cmake.log" || { echo "gpu-check: the libtorch found has no CUDA: $out/cmake.log" >&2; exit 1; }
cmake --build "$build" --target iadgpt >"$out/build.log" 2>&1 || { echo "gpu-check: build failed: $out/build.log" >&2; exit 1; }
bin="$build/iadgpt"

# 4. Checks: each writes its log; the table collects one line per check.
shared="$here/../shared"
rows=()
row() { rows+=("$(printf '| %-44s | %-8s | %s |' "$1" "$2" "$3")"); }
run_check() {  # name, command...
  local name="$1"; shift
  local log="$out/$(echo "$name" | tr -c 'a-zA-Z0-9' _).log"
  if "$@" >"$log" 2>&1; then echo "$log"; return 0; fi
  echo "$log"; return 1
}

# Parity on the fixture bundle: the same inspection on cpu and cuda (fp32 and bf16).
if [ -d "$shared/fixtures" ]; then
  bundle="$out/bundle"
  "$bin" bundle create --vision "$shared/fixtures/imagebind_tiny/imagebind_tiny.safetensors" \
    --vision-config "$shared/fixtures/imagebind_tiny/config.json" \
    --vocab "$shared/data/tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz" \
    --llm "$shared/fixtures/llama_tiny" --tokenizer "$shared/fixtures/stories260K/tokenizer.model" \
    --init-random 3 --out "$bundle" >"$out/bundle.log" 2>&1
  img="$shared/data/hazelnut_toy/hazelnut/test/colour/00.jpg"
  for dev in cpu cuda; do
    "$bin" detect --model "$bundle" --device "$dev" --class hazelnut --max-tokens 8 --out "$out/detect-$dev" "$img" \
      >"$out/detect-$dev.log" 2>&1
  done
  verdict="$("$python" - "$out" <<'PY'
import json, sys
out = sys.argv[1]
a = json.load(open(f"{out}/detect-cpu/00.json")); b = json.load(open(f"{out}/detect-cuda/00.json"))
d = abs(a["p_yes"] - b["p_yes"]); s = abs(a["pred_score"] - b["pred_score"])
ok = d <= 1e-4 and s <= 1e-4
print(f"{'pass' if ok else 'FAIL'}\t|p_yes| diff {d:.2e}, score diff {s:.2e} (tolerance 1e-4, fp32)")
PY
)" || verdict="FAIL	detect failed: $out/detect-cuda.log"
  row "fixture bundle, fp32, cpu vs cuda" "${verdict%%	*}" "${verdict#*	}"
else
  row "fixture bundle, fp32, cpu vs cuda" "skipped" "../shared/fixtures not beside the checkout"
fi

# Real size, random weights.
if log=$(run_check "bench encode" "$bin" bench encode --device cuda --arch imagebind-huge --dtype bf16 --iters 10); then
  row "ImageBind-Huge bf16 encode" "ran" "$(grep -o '[0-9.]* ms/image' "$log" | head -1)"
else row "ImageBind-Huge bf16 encode" "FAIL" "$log"; fi
if log=$(run_check "bench llm" "$bin" bench llm --device cuda --arch llama-7b --prefill 64 --decode 32); then
  row "LLaMA-7B bf16 decode / prefill" "ran" "$(grep -o '= [0-9.]* tok/s' "$log" | tr '\n' ' ')"
else row "LLaMA-7B bf16 decode / prefill" "FAIL" "$log"; fi
if log=$(run_check "bench model" "$bin" bench model --device cuda --arch imagebind-huge+llama-7b --iters 3 --tokens 16); then
  row "IAD-GPT per image (7B)" "ran" "$(grep -o 'total [0-9.]* ms' "$log" | head -1)"
else row "IAD-GPT per image (7B)" "FAIL" "$log"; fi
row "training steps on cuda" "not built" "the trainer refuses --device cuda (issue 16)"

echo "| check | result | figures |"
echo "| --- | --- | --- |"
printf '%s\n' "${rows[@]}"
printf '%s\n' "${rows[@]}" | grep -q "| FAIL" && exit 1
exit 0
