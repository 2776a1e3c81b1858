#!/usr/bin/env bash
# The numerics matrix of issue 13 (not part of CI): runs the demo (`iadgpt demo`, what `make demo`
# checks) and the learning test (`TrainLearning.*` in build/test_demo) under each setting that
# changes the floating-point results on an x86-64 CPU, and prints one table row per setting.
#
#   scripts/numerics-matrix.sh                    # every setting, demo + learning test (~2 h on 2 cores)
#   scripts/numerics-matrix.sh --probe            # only: does the setting change the numerics? (~1 min each)
#   SETTINGS="default aten-avx512" scripts/numerics-matrix.sh
#   ONLY=demo scripts/numerics-matrix.sh          # or ONLY=learning
#
# Settings (one change each against "default", which is what `make demo` runs):
#   default          nothing set (ATen's kernels: AVX2; all cores)
#   aten-avx512      ATEN_CPU_CAPABILITY=avx512 (ATen's vectorised kernels at 512 bits)
#   aten-scalar      ATEN_CPU_CAPABILITY=default (ATen without explicit SIMD)
#   onednn-avx2      ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN's convolutions/matmuls, where ATen routes to it)
#   openblas-zen     OPENBLAS_CORETYPE=Zen (these machines pin Haswell; other GEMM kernels)
#   openblas-skx     OPENBLAS_CORETYPE=SkylakeX (OpenBLAS's AVX-512 GEMM kernels)
#   openblas-l2      OPENBLAS_L2_SIZE unset (these machines set 512; GEMM blocking follows the L2 size)
#   opencv-nosimd    OPENCV_CPU_DISABLE=AVX512_SKX,AVX2,FMA3,AVX (OpenCV's dispatch: generator, blur, resize)
#   threads-1        --threads 1 (how reductions are split between threads)
#   malloc-perturb   MALLOC_PERTURB_=165 (fresh heap memory filled with a pattern: uninitialised reads show)
# Measured with --probe (2026-12-02, AMD EPYC family 26): aten-avx512, aten-scalar, onednn-avx2,
# openblas-skx and threads-1 change the numerics; openblas-zen, openblas-l2, opencv-nosimd and
# malloc-perturb leave the training log bitwise equal (so no uninitialised read reaches it).
# Each run gets its own output folder under $OUT (default: numerics-out, ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
OUT=${OUT:-numerics-out}
PROBE=0
[ "${1:-}" = "--probe" ] && PROBE=1
SETTINGS=${SETTINGS:-"default aten-avx512 aten-scalar onednn-avx2 openblas-zen openblas-skx openblas-l2 opencv-nosimd threads-1 malloc-perturb"}
ONLY=${ONLY:-}
threads=$(nproc)

for bin in "$BUILD/iadgpt" "$BUILD/test_demo"; do
  [ -x "$bin" ] || { echo "numerics-matrix: $bin not built (make build)" >&2; exit 2; }
done

env_of() {
  case "$1" in
    default) echo "" ;;
    aten-avx512) echo "ATEN_CPU_CAPABILITY=avx512" ;;
    aten-scalar) echo "ATEN_CPU_CAPABILITY=default" ;;
    onednn-avx2) echo "ONEDNN_MAX_CPU_ISA=AVX2" ;;
    openblas-zen) echo "OPENBLAS_CORETYPE=Zen" ;;
    openblas-skx) echo "OPENBLAS_CORETYPE=SkylakeX" ;;
    openblas-l2) echo "-u OPENBLAS_L2_SIZE" ;;
    opencv-nosimd) echo "OPENCV_CPU_DISABLE=AVX512_SKX,AVX2,FMA3,AVX" ;;
    threads-1) echo "" ;;
    malloc-perturb) echo "MALLOC_PERTURB_=165" ;;
    *) echo "numerics-matrix: unknown setting '$1'" >&2; exit 2 ;;
  esac
}
threads_of() { [ "$1" = threads-1 ] && echo 1 || echo "$threads"; }

mkdir -p "$OUT"
if [ "$PROBE" = 1 ]; then
  # A short demo (2 classes, 20 LLM steps): the setting changes the numerics iff its training log
  # differs from the default's.
  printf '| setting | env | threads | changes the training log? | final ce |\n| --- | --- | --- | --- | --- |\n'
  for s in default $SETTINGS; do
    dir="$OUT/probe-$s"
    rm -rf "$dir"
    env $(env_of "$s") "$BUILD/iadgpt" --threads "$(threads_of "$s")" demo --out "$dir" --classes washer pcb \
      --steps 100 --llm-steps 20 > "$dir.log" 2>&1 || true
    ce=$(grep -o '"ce":[0-9.e-]*' "$dir/models/bundle/train.jsonl" 2>/dev/null | tail -1 | cut -d: -f2)
    if [ "$s" = default ]; then
      ref="$dir/models/bundle/train.jsonl"
      [ "$SETTINGS" = "${SETTINGS#default}" ] || continue
    fi
    same=$(cmp -s <(sed 's/"seconds":[0-9.e-]*//' "$ref") <(sed 's/"seconds":[0-9.e-]*//' "$dir/models/bundle/train.jsonl") \
           && echo no || echo YES)
    printf '| %s | %s | %s | %s | %s |\n' "$s" "$(env_of "$s")" "$(threads_of "$s")" "$same" "${ce:-failed}"
  done
  exit 0
fi

printf '| setting | env | threads | demo Yes/No | trainer: validation parts | learning test (40 pairs) |\n'
printf '| --- | --- | --- | --- | --- | --- |\n'
for s in $SETTINGS; do
  demo="-" val="-" learn="-"
  if [ "$ONLY" != learning ]; then
    dir="$OUT/demo-$s"
    env $(env_of "$s") "$BUILD/iadgpt" --threads "$(threads_of "$s")" demo --out "$dir" > "$dir.log" 2>&1 || true
    demo=$(grep -o 'Yes/No accuracy on held-out parts: .*' "$dir.log" | sed 's/.*: //' || true)
    val=$(grep -o 'validation parts ([^)]*): Yes/No accuracy [0-9.]*' "$dir.log" | tail -1 | awk '{print $NF}' || true)
    [ -n "$demo" ] || demo="failed ($dir.log)"
  fi
  if [ "$ONLY" != demo ]; then
    log="$OUT/learning-$s.log"
    env $(env_of "$s") IADGPT_TEST_THREADS="$(threads_of "$s")" "$BUILD/test_demo" --gtest_filter='TrainLearning.*' \
      > "$log" 2>&1 || true
    learn=$(grep -o 'Yes/No accuracy [0-9.]* with references' "$log" | awk '{print $3}' || true)
    grep -q '\[  PASSED  \] 1 test' "$log" && learn="$learn pass" || learn="${learn:-?} FAIL ($log)"
  fi
  printf '| %s | %s | %s | %s | %s | %s |\n' "$s" "$(env_of "$s")" "$(threads_of "$s")" "$demo" "${val:--}" "$learn"
done
