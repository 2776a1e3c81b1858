#!/usr/bin/env bash
# Same-sitting speed comparison with llama.cpp on this CPU: `iadgpt bench llm` against llama.cpp's
# CPU library (node-llama-cpp's prebuilt build, from npm) on random weights of the same shape and
# format, alternating the two programs run after run. Prints one Markdown table of ranges.
#
#   bash scripts/llama-cpp-compare.sh [--arch tinyllama-1.1b|llama-7b] [--formats bf16,q8,q4]
#        [--threads 2] [--runs 3] [--prefill 64] [--decode 32] [--work DIR] [--iadgpt PATH]
#        [--from-files]
#
# --from-files: time ours on checkpoints read from files (`bench llm --model`: a Hugging Face
# directory of the random weights, and its q8/q4 from `iadgpt quantize`, written once into --work),
# memory-mapped from the page cache as llama.cpp maps its GGUF, instead of weights made in memory.
#
# Needs node + npm (the pinned package in scripts/llama-cpp is installed on first use), python3,
# and a built iadgpt. The GGUF files (2.2 / 1.2 / 0.65 GB for TinyLlama; 13.5 / 7.2 / 3.9 GB for
# LLaMA-7B) are written once into --work (default: llama-cpp-work/ in the checkout, git-ignored).
# docs/LLAMA_CPP_COMPARISON.md says how to read the figures. Exit 2 on a missing tool or bad flag.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
arch=tinyllama-1.1b formats=bf16,q8,q4 threads=2 runs=3 prefill=64 decode=32
work="$root/llama-cpp-work" iadgpt="$root/build/iadgpt" from_files=0
fail() { echo "llama-cpp-compare: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch="${2:?}"; shift 2 ;;
    --formats) formats="${2:?}"; shift 2 ;;
    --threads) threads="${2:?}"; shift 2 ;;
    --runs) runs="${2:?}"; shift 2 ;;
    --prefill) prefill="${2:?}"; shift 2 ;;
    --decode) decode="${2:?}"; shift 2 ;;
    --work) work="${2:?}"; shift 2 ;;
    --iadgpt) iadgpt="${2:?}"; shift 2 ;;
    --from-files) from_files=1; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown argument $1 (see --help)" ;;
  esac
done
case "$arch" in tinyllama-1.1b|llama-7b) ;; *) fail "--arch $arch: expected tinyllama-1.1b or llama-7b" ;; esac
for n in "$threads" "$runs" "$prefill" "$decode"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || fail "expected a positive integer, got '$n'"
done
command -v node >/dev/null || fail "node is not installed"
command -v npm >/dev/null || fail "npm is not installed"
command -v python3 >/dev/null || fail "python3 is not installed"
[ -x "$iadgpt" ] || fail "$iadgpt is not built (make build)"

pkg="$root/scripts/llama-cpp"
if [ ! -d "$pkg/node_modules/node-llama-cpp" ]; then
  echo "installing node-llama-cpp (pinned in scripts/llama-cpp/package-lock.json) ..." >&2
  # npm ci where the registry has every platform's package; where it has only linux-x64's (the
  # project's npm mirror: the lock file then lacks the others, and npm 11's ci refuses it), npm
  # install from the same lock file, which installs the same pinned versions.
  (cd "$pkg" && { npm ci --omit=optional --ignore-scripts --no-audit --no-fund >&2 2>/dev/null ||
                  npm install --omit=optional --ignore-scripts --no-audit --no-fund >&2; }) ||
    fail "npm could not install node-llama-cpp in $pkg"
  [ -d "$pkg/node_modules/@node-llama-cpp/linux-x64" ] || fail "npm installed no linux-x64 build of llama.cpp in $pkg"
fi
mkdir -p "$work"
results="$work/results.jsonl"
: > "$results"

IFS=, read -ra fmts <<< "$formats"
for f in "${fmts[@]}"; do
  case "$f" in bf16|q8|q4) ;; *) fail "--formats: unknown format '$f' (bf16, q8, q4)" ;; esac
  gguf_format=$([ "$f" = bf16 ] && echo bf16 || echo "${f}_0")
  gguf="$work/$arch-$gguf_format.gguf"
  if [ ! -s "$gguf" ]; then
    echo "writing $gguf ..." >&2
    python3 "$pkg/random_gguf.py" --arch "$arch" --format "$gguf_format" --out "$gguf.part" >&2
    mv "$gguf.part" "$gguf"
  fi
done

# --from-files: our checkpoints, one per format (bf16: the HF directory itself).
ours_dir() { [ "$1" = bf16 ] && echo "$work/$arch-hf" || echo "$work/$arch-hf-$1"; }
if [ "$from_files" = 1 ]; then
  if [ ! -s "$work/$arch-hf/model.safetensors" ]; then
    echo "writing $work/$arch-hf ..." >&2
    rm -rf "$work/$arch-hf.part"
    "$iadgpt" --threads "$threads" bench llm --arch "$arch" --prefill 1 --decode 1 --write-hf "$work/$arch-hf.part" >/dev/null 2>&1 ||
      fail "could not write $work/$arch-hf"
    mv "$work/$arch-hf.part" "$work/$arch-hf"
  fi
  for f in "${fmts[@]}"; do
    [ "$f" = bf16 ] || [ -s "$(ours_dir "$f")/config.json" ] ||
      "$iadgpt" quantize --in "$work/$arch-hf" --format "$f" --out "$(ours_dir "$f")" >&2 ||
      fail "could not quantize $work/$arch-hf to $f"
  done
fi

for run in $(seq "$runs"); do
  for f in "${fmts[@]}"; do
    quant=$([ "$f" = bf16 ] && echo none || echo "$f")
    gguf_format=$([ "$f" = bf16 ] && echo bf16 || echo "${f}_0")
    echo "run $run/$runs, $f: iadgpt ..." >&2
    subject=(--arch "$arch" --quant "$quant")
    [ "$from_files" = 1 ] && subject=(--model "$(ours_dir "$f")")
    "$iadgpt" --threads "$threads" bench llm "${subject[@]}" --prefill "$prefill" --decode "$decode" --json 2>/dev/null | tail -1 | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(json.dumps({"program": "iadgpt", "format": sys.argv[1], "pp_tok_s": r["prefill_tok_s"],
                  "tg_tok_s": r["decode_tok_s"], "bandwidth_gb_s": r["read_bandwidth_gb_s"]}))' "$f" >> "$results"
    echo "run $run/$runs, $f: llama.cpp ..." >&2
    node "$pkg/bench.mjs" "$work/$arch-$gguf_format.gguf" "$threads" "$prefill" "$decode" 1 2>/dev/null |
      grep '^{' | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line); r["format"] = sys.argv[1]; print(json.dumps(r))' "$f" >> "$results"
  done
done

python3 - "$results" "$arch" "$threads" "$prefill" "$decode" "$from_files" <<'PY'
import json, statistics, sys
path, arch, threads, prefill, decode, from_files = sys.argv[1:]
rows = [json.loads(l) for l in open(path)]
def cell(values):
    return f"{min(values):.1f}–{max(values):.1f}" if values else "–"
source = "checkpoints read from files" if from_files == "1" else "weights made in memory"
print(f"\n{arch}, {threads} threads, prefill {prefill} tokens, decode {decode} tokens, ours on {source}, ranges over the runs:\n")
# Ratios of medians, and of the best runs: on a shared host, neighbours only slow a run down, so
# each program's best run is the least disturbed one.
print("| format | iadgpt decode tok/s | llama.cpp decode tok/s | decode ratio (medians; best) | iadgpt prefill tok/s | llama.cpp prefill tok/s | prefill ratio (medians; best) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for fmt in dict.fromkeys(r["format"] for r in rows):
    get = lambda prog, key: [r[key] for r in rows if r["format"] == fmt and r["program"] == prog]
    ours_tg, theirs_tg = get("iadgpt", "tg_tok_s"), get("llama.cpp", "tg_tok_s")
    ours_pp, theirs_pp = get("iadgpt", "pp_tok_s"), get("llama.cpp", "pp_tok_s")
    ratio = lambda a, b: f"{statistics.median(a) / statistics.median(b):.2f}; {max(a) / max(b):.2f}" if a and b else "–"
    print(f"| {fmt} | {cell(ours_tg)} | {cell(theirs_tg)} | {ratio(ours_tg, theirs_tg)} | {cell(ours_pp)} | "
          f"{cell(theirs_pp)} | {ratio(ours_pp, theirs_pp)} |")
bw = [r["bandwidth_gb_s"] for r in rows if r["program"] == "iadgpt"]
print(f"\nmeasured read bandwidth during the iadgpt runs: {cell(bw)} GB/s; raw results: {path}")
PY
