#!/usr/bin/env bash
# The GPU suite, run on a machine with an NVIDIA GPU from the bundle scripts/gpu-suite-build.sh made:
#   bash gpu-bundle/gpu-suite-run.sh OUTDIR
# Needs no Rust toolchain and no network. Writes logs and results under OUTDIR and prints a summary.
#   1. device facts (nvidia-smi)
#   2. the GPU tests (GSDPA_REQUIRE_GPU=1, so a missing GPU fails): conformance GPU vs emulator, forward and
#      backward grids vs the f64 reference (test-gpu), the paged decode and append vs the f64 reference
#      (test-gpu_decode)
#   3. the Hopper conformance on the GPU (wgmma, TMA, mbarrier vs the emulator; sm_90 only, else skipped)
#      and the emulator-side tests that also cover the kernels (forward, conformance)
#   4. compute-sanitizer memcheck and racecheck on a small case, where compute-sanitizer exists
#   5. the forward bench (gsdpa bench --backward) and the decode bench (gsdpa bench --decode --json, a
#      subset of its shapes: GSDPA_DECODE_BENCH_SHAPE, comma-separated name substrings), unless
#      GSDPA_SKIP_BENCH=1
set -uo pipefail
BUNDLE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$BUNDLE/out}
mkdir -p "$OUT"
BIN=$BUNDLE/bin
export GSDPA_REQUIRE_GPU=1
status=0
summary=()
run() {  # run NAME CMD...: logs to OUT/NAME.log, records pass/fail
    local name=$1; shift
    local start=$SECONDS
    if "$@" >"$OUT/$name.log" 2>&1; then
        summary+=("PASS $name ($((SECONDS - start)) s)")
    else
        summary+=("FAIL $name ($((SECONDS - start)) s): see $name.log")
        status=1
    fi
    tail -n 3 "$OUT/$name.log"
}

date -u +%Y-%m-%dT%H:%M:%SZ | tee "$OUT/date.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/device.csv"
"$BIN/gsdpa" info --json >"$OUT/info.json" 2>&1

run gpu-tests "$BIN/test-gpu" --test-threads=1
if [ -x "$BIN/test-gpu_decode" ]; then
    run gpu-decode-tests "$BIN/test-gpu_decode" --test-threads=1
else
    summary+=("FAIL gpu-decode-tests: test-gpu_decode is not in the bundle")
    status=1
fi
run hopper-conformance "$BIN/test-conformance_hopper" gpu_ --test-threads=1
for t in conformance forward; do
    [ -x "$BIN/test-$t" ] && run "emulator-$t" "$BIN/test-$t"
done

if command -v compute-sanitizer >/dev/null; then
    run memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$BIN/test-gpu" conformance_gpu_matches_emulator
    run racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$BIN/gsdpa" demo --backend cuda --seqlen 128
else
    summary+=("SKIP compute-sanitizer: not installed")
fi

if [ "${GSDPA_SKIP_BENCH:-0}" != 1 ]; then
    # GSDPA_BENCH_SHAPE narrows the shapes (a substring of their names, e.g. "s8192") to fit a time budget.
    run bench "$BIN/gsdpa" bench --backward ${GSDPA_BENCH_SHAPE:+--shape "$GSDPA_BENCH_SHAPE"}
    cp "$OUT/bench.log" "$OUT/bench.txt"
    # The Hopper forward beside it, where the device is an sm_90 (elsewhere --kernel hopper is an error).
    if nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | grep -q '^9\.0'; then
        run bench-hopper "$BIN/gsdpa" bench --kernel hopper ${GSDPA_BENCH_SHAPE:+--shape "$GSDPA_BENCH_SHAPE"}
    fi
    # The decode targets are at batch >= 8 and context >= 8k; batch 1 and 256 bracket them. The whole
    # grid (16 shapes) also fits the suite's time on an H200: GSDPA_DECODE_BENCH_SHAPE=qwen3 runs it.
    run bench-decode "$BIN/gsdpa" bench --decode --json --shape "${GSDPA_DECODE_BENCH_SHAPE:-k8k,k32k}"
    cp "$OUT/bench-decode.log" "$OUT/bench-decode.json"
fi

printf '\n== GPU suite summary (%s)\n' "$(sed -n 2p "$OUT/device.csv" 2>/dev/null)"
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
[ -f "$OUT/bench.txt" ] && cat "$OUT/bench.txt"
[ -f "$OUT/bench-decode.json" ] && cat "$OUT/bench-decode.json"
exit $status
