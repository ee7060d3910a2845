#!/usr/bin/env bash
# Builds everything the GPU suite needs, here (no GPU needed), into gpu-bundle/ (git-ignored, < 64 MiB):
# the release test binaries the suite runs (test-gpu, test-gpu_decode, ...), the gsdpa CLI (with its forward
# and decode benches) and scripts/gpu-suite-run.sh.
# Then, on a machine with an NVIDIA GPU and no Rust toolchain: copy gpu-bundle/ there and run
#   bash gpu-bundle/gpu-suite-run.sh OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# nvcc from the pinned PyPI wheels (shared with .ci/run), unless CUDA_HOME already points at a toolkit.
if [[ -z "${CUDA_HOME:-}" ]]; then
    source scripts/nvcc-env.sh
fi
export GSDPA_REQUIRE_NVCC=1

BUNDLE=$ROOT/gpu-bundle
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin"

echo "== building release test binaries and the CLI"
# --message-format=json names the test executables (their file names carry a hash).
cargo test --release --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' > "$BUNDLE/tests.txt"
cargo build --release --example gsdpa

# Only the test binaries gpu-suite-run.sh runs: five of them embed the fatbin (about 9 MiB each at all
# archs), and the bundle must stay under 64 MiB. Fail here, not on the GPU machine, if one is missing.
# (The emulator-only backward test left the bundle for the Hopper conformance, whose gpu_* tests compare
# wgmma, TMA and mbarrier on an sm_90 GPU with the emulator.)
SUITE_TESTS="gpu gpu_decode conformance conformance_hopper forward"
while read -r name exe; do
    case " $SUITE_TESTS " in *" $name "*) cp "$exe" "$BUNDLE/bin/test-$name" ;; esac
done < "$BUNDLE/tests.txt"
for t in $SUITE_TESTS; do
    [ -x "$BUNDLE/bin/test-$t" ] || { echo "test-$t missing from the bundle" >&2; exit 1; }
done
cp "${CARGO_TARGET_DIR:-target}/release/examples/gsdpa" "$BUNDLE/bin/gsdpa"
strip "$BUNDLE"/bin/* 2>/dev/null || true
cp scripts/gpu-suite-run.sh "$BUNDLE/"
rm "$BUNDLE/tests.txt"
du -sh "$BUNDLE"
ls -la "$BUNDLE/bin"
if [ "$(du -sm "$BUNDLE" | cut -f1)" -ge 64 ]; then
    echo "gpu-bundle/ is 64 MiB or more: it must stay under 64 MiB" >&2
    exit 1
fi
