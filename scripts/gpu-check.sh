#!/usr/bin/env bash
# The prepared GPU check of issue 16: builds iadgpt against the CUDA libtorch of a PyTorch
# installation and runs, with --device cuda, the fixture parity checks, the real-size inference
# benches and 20 training steps of each stage at real size; prints one table. For a Linux machine with an NVIDIA GPU, CUDA, CMake, ninja and a CUDA PyTorch.
#
#   bash scripts/gpu-check.sh [OUT_DIR]        # default OUT_DIR: gpu-check-out
#   bash scripts/gpu-check.sh --pack           # on a machine with the Debian packages: copy the
#                                              # header-only libraries (fmt, nlohmann-json, CLI11,
#                                              # zlib.h) to gpu-vendor/ so that they travel with
#                                              # the checkout (about 2 MB; ignored by git)
#
# Where OpenCV, SentencePiece or cpp-httplib are missing, it builds iadgpt-min (IADGPT_MINIMAL:
# io, nn, vision, llm; bench encode, bench llm, llm-logits) instead of the whole program, with
# gpu-vendor/ for the headers the machine lacks.
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

if [ "${1:-}" = "--pack" ]; then
  vendor="$here/gpu-vendor"
  rm -rf "$vendor" && mkdir -p "$vendor"
  for h in fmt nlohmann CLI zlib.h zconf.h; do
    [ -e "/usr/include/$h" ] || cannot "--pack: /usr/include/$h not found (install the Debian packages: scripts/install-deps.sh)"
    cp -rL "/usr/include/$h" "$vendor/"
  done
  echo "gpu-check: headers packed in $vendor ($(du -sh "$vendor" | cut -f1))"
  exit 0
fi

# 1. A GPU, and a PyTorch that sees it (its libtorch is what we build against).
gpus="$("$nvidia_smi" -L 2>/dev/null | grep -c '^GPU ' || true)"
[ "${gpus:-0}" -ge 1 ] || cannot "no NVIDIA GPU found ('$nvidia_smi -L' lists none); run this on a machine with one"
prefix="$("$python" -c 'import sys, torch
if not torch.cuda.is_available(): sys.exit(3)
print(torch.utils.cmake_prefix_path)' 2>/dev/null)" \
  || cannot "no CUDA PyTorch ('$python' cannot import torch, or torch.cuda.is_available() is false): its libtorch is what this check builds against"
command -v cmake >/dev/null || cannot "cmake not found"
command -v ninja >/dev/null || cannot "ninja not found"

# 2. The whole program needs OpenCV, SentencePiece and cpp-httplib besides libtorch; without them
# the minimal build (iadgpt-min) runs the model-only checks.
full=1
for pc in opencv4 sentencepiece cpp-httplib; do pkg-config --exists "$pc" 2>/dev/null || full=0; done
vendor="$here/gpu-vendor"
if [ $full = 0 ] && [ ! -e /usr/include/fmt/format.h ] && [ ! -d "$vendor" ]; then
  cannot "no fmt/nlohmann-json/CLI11 headers here and no gpu-vendor/ beside the checkout (run 'bash scripts/gpu-check.sh --pack' where the Debian packages are, and bring gpu-vendor/ along)"
fi

# 3. Build against the CUDA libtorch.
mkdir -p "$out"
build="$out/build"
flags=(-DCMAKE_BUILD_TYPE=Release -DIADGPT_TESTS=OFF -DCMAKE_PREFIX_PATH="$prefix")
target=iadgpt
if [ $full = 0 ]; then
  flags+=(-DIADGPT_MINIMAL=ON -DIADGPT_VENDOR_INCLUDE="$vendor")
  target=iadgpt-min
fi
cmake -S "$here" -B "$build" -G Ninja "${flags[@]}" >"$out/cmake.log" 2>&1 || { echo "gpu-check: cmake failed: $out/cmake.log" >&2; exit 1; }
grep -q "libtorch with CUDA" "$out/cmake.log" || { echo "gpu-check: the libtorch found has no CUDA: $out/cmake.log" >&2; exit 1; }
cmake --build "$build" --target $target >"$out/build.log" 2>&1 || { echo "gpu-check: build failed: $out/build.log" >&2; exit 1; }
bin="$build/$target"

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

# Parity on the fixtures: the same forward on cpu and cuda. The LLM's logits (llama_tiny, f32 and
# bf16) in every build; with the whole program also a full inspection of the fixture bundle.
compare() {  # name, tolerance, a.safetensors, b.safetensors, tensor
  "$python" - "$@" <<'PY'
# Plain Python (no torch, no numpy): reads one F32/BF16 tensor from each safetensors file.
import array, json, struct, sys
def read(path, key):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n))[key]
        f.seek(8 + n + meta["data_offsets"][0])
        raw = f.read(meta["data_offsets"][1] - meta["data_offsets"][0])
    if meta["dtype"] == "F32":
        return array.array("f", raw)
    if meta["dtype"] == "BF16":  # the high half of an f32
        halves = array.array("H", raw)
        return array.array("f", struct.pack(f"<{len(halves)}I", *[h << 16 for h in halves]))
    raise SystemExit(f"{path}: {key} is {meta['dtype']}")
name, tol, a, b, key = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
x, y = read(a, key), read(b, key)
if len(x) != len(y): raise SystemExit(f"FAIL\t{key}: {len(x)} values against {len(y)}")
d = max(abs(p - q) for p, q in zip(x, y))
print(f"{'pass' if d <= tol else 'FAIL'}\tmax |cpu - cuda| {d:.2e} (tolerance {tol:g})")
PY
}
fixtures="$shared/fixtures"
if [ -d "$fixtures/llama_tiny" ]; then
  tokens="1,15,43,31,86,29,92,20,52,36,26,99,13,2,4,8"  # llama_tiny: 512 ids
  for dtype in f32 bf16; do
    for dev in cpu cuda; do
      "$bin" llm-logits --model "$fixtures/llama_tiny" --dtype $dtype --device $dev --tokens "$tokens" --chunk 8 \
        --out "$out/logits-$dtype-$dev.safetensors" >"$out/logits-$dtype-$dev.log" 2>&1
    done
    # f32: the issue's 1e-4. bf16: both devices round the activations to bf16 between projections
    # (relative 2^-8) but sum in different orders; 0.1 is a first bound for the fixture's logits
    # (|logit| < 10), to be confirmed by the first GPU run.
    tol=$([ $dtype = f32 ] && echo 1e-4 || echo 0.1)
    verdict="$(compare "logits $dtype" $tol "$out/logits-$dtype-cpu.safetensors" "$out/logits-$dtype-cuda.safetensors" logits 2>&1)" \
      || verdict="FAIL	$(tail -1 "$out/logits-$dtype-cuda.log")"
    row "llama_tiny logits, $dtype, cpu vs cuda" "${verdict%%	*}" "${verdict#*	}"
  done
else
  row "llama_tiny logits, cpu vs cuda" "skipped" "../shared/fixtures not beside the checkout"
fi
if [ $full = 1 ] && [ -d "$fixtures/imagebind_tiny" ]; then
  bundle="$out/bundle"
  "$bin" bundle create --vision "$fixtures/imagebind_tiny/imagebind_tiny.safetensors" \
    --vision-config "$fixtures/imagebind_tiny/config.json" \
    --vocab "$shared/data/tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz" \
    --llm "$fixtures/llama_tiny" --tokenizer "$fixtures/stories260K/tokenizer.model" \
    --init-random 3 --out "$bundle" >"$out/bundle.log" 2>&1
  img="$shared/data/hazelnut_toy/hazelnut/test/colour/00.jpg"
  for dev in cpu cuda; do
    "$bin" detect --model "$bundle" --device "$dev" --class hazelnut --max-tokens 8 --out "$out/detect-$dev" "$img" \
      >"$out/detect-$dev.log" 2>&1
  done
  verdict="$(compare "maps" 1e-4 "$out/detect-cpu/00.safetensors" "$out/detect-cuda/00.safetensors" anomaly_map 2>&1)" \
    || verdict="FAIL	$(tail -1 "$out/detect-cuda.log")"
  row "fixture bundle map, f32, cpu vs cuda" "${verdict%%	*}" "${verdict#*	}"
fi

# Real size, random weights.
if log=$(run_check "bench encode" "$bin" bench encode --device cuda --arch imagebind-huge --dtype bf16 --iters 10); then
  row "ImageBind-Huge bf16 encode" "ran" "$(grep -o '[0-9.]* ms/image' "$log" | head -1)"
else row "ImageBind-Huge bf16 encode" "FAIL" "$log"; fi
if log=$(run_check "bench llm" "$bin" bench llm --device cuda --arch llama-7b --prefill 64 --decode 32); then
  row "LLaMA-7B bf16 decode / prefill" "ran" "$(grep -o '= [0-9.]* tok/s' "$log" | tr '\n' ' ')"
else row "LLaMA-7B bf16 decode / prefill" "FAIL" "$log"; fi
if [ $full = 0 ]; then row "IAD-GPT per image (7B)" "skipped" "bench model needs the whole program (OpenCV)"
elif log=$(run_check "bench model" "$bin" bench model --device cuda --arch imagebind-huge+llama-7b --iters 3 --tokens 16); then
  row "IAD-GPT per image (7B)" "ran" "$(grep -o 'total [0-9.]* ms' "$log" | head -1)"
else row "IAD-GPT per image (7B)" "FAIL" "$log"; fi
# The counting mode (issue 16, item 1): the timed encode and decode loops under c10's sync-debug
# mode set to error; only the sampled token's copy (and the timer's wait) is planned. A FAIL row
# names the first unplanned copy or synchronisation (c10's message).
sync_row() {  # name, command...
  local name="$1"; shift
  if log=$(run_check "$name" "$@"); then row "$name" "pass" "no unplanned device-host copy"
  else row "$name" "FAIL" "$(grep -m1 -i 'synchroniz' "$log" || tail -1 "$log")"; fi
}
sync_row "encode loop, unplanned host syncs" "$bin" bench encode --device cuda --arch imagebind-huge --dtype bf16 --iters 2 --sync-check
sync_row "decode loop, unplanned host syncs" "$bin" bench llm --device cuda --arch llama-7b --prefill 16 --decode 8 --sync-check

# Training at real size (random weights, train/bench.h): 20 steps of each stage, ImageBind-Huge's
# taps + Vicuna-7B shapes with LoRA r 32, bf16 frozen base, bf16 autocast; stage 2 once more with
# gradient checkpointing at the 24 GB plan's batch (docs/GPU_MEMORY.md). Step time: the median
# after the first step; peak: the CUDA caching allocator's.
train_figures() {  # LOG: the last JSON line of bench train -> "step … ms, peak … GiB, loss … -> …"
  "$python" - "$1" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("{")]
j = json.loads(lines[-1])
peak = j["peak_device_bytes"] / 2**30
print("step %.0f ms (%d x %d tokens), peak %.1f GiB, loss %.3f -> %.3f"
      % (j["step_ms"], j["batch"], j["tokens"], peak, j["losses"][0], j["losses"][-1]))
PY
}
if [ $full = 0 ]; then row "7B training steps" "skipped" "bench train needs the whole program (OpenCV)"
else
  for spec in "1 4" "2 4" "3 4" "2 16 --gradient-checkpointing"; do
    set -- $spec
    stage=$1 batch=$2; shift 2
    name="7B LoRA training, stage $stage, batch $batch${1:+, checkpointing}"
    if log=$(run_check "train stage $stage $batch $*" "$bin" bench train --device cuda --arch imagebind-huge+llama-7b \
        --stage "$stage" --steps 20 --batch "$batch" --json "$@"); then
      row "$name" "ran" "$(train_figures "$log" 2>&1)"
    else row "$name" "FAIL" "$log"; fi
  done
fi

echo "| check | result | figures |"
echo "| --- | --- | --- |"
printf '%s\n' "${rows[@]}"
printf '%s\n' "${rows[@]}" | grep -q "| FAIL" && exit 1
exit 0
