#!/usr/bin/env bash
# Regenerates src/ffi/params.rs from kernels/gsdpa_params.h with bindgen (needs libclang:
# `apt-get install libclang-dev` on Debian). Commit the result; CI fails when the two differ.
# Usage: scripts/regen-bindings.sh [OUTPUT]   (default: src/ffi/params.rs)
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-src/ffi/params.rs}")"
tmp="$(mktemp)"
trap 'rm -f "$tmp" "$tmp.log"' EXIT
# Only the build script's bindgen step matters here: no emulator, and no nvcc even if one is around,
# so this takes seconds and never recompiles the kernels. The library itself is then type-checked
# against the committed bindings; if that fails (for example because they are stale, which is what
# this script fixes) the bindings were still written, so only a missing output is an error.
if ! env -u CUDA_HOME -u CUDA_PATH -u NVCC GSDPA_REQUIRE_NVCC=0 GSDPA_BINDGEN_OUT="$tmp" \
    cargo check --lib --no-default-features --features regen-bindings >"$tmp.log" 2>&1; then
    if [ ! -s "$tmp" ]; then
        cat "$tmp.log" >&2
        echo "regen-bindings: bindgen did not produce $out" >&2
        exit 1
    fi
    echo "regen-bindings: note: the library did not type-check (see below); the bindings were generated" >&2
    tail -n 20 "$tmp.log" >&2
fi
[ -s "$tmp" ] || { cat "$tmp.log" >&2; echo "regen-bindings: bindgen did not run (is the build script cached? touch kernels/gsdpa_params.h)" >&2; exit 1; }
cp "$tmp" "$out"
echo "wrote $out"
