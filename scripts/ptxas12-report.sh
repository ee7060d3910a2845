#!/usr/bin/env bash
# Writes CUDA 12.9 ptxas's resource report (`ptxas -v`) for every kernel and SASS arch to LOG, so the
# zero-spill check also covers the ptxas a CUDA 12.x build would use (for drivers older than 580).
#
#   scripts/ptxas12-report.sh LOG
#
# Needs CUDA_HOME at a 13.x nvcc (scripts/nvcc-env.sh) for the front end: it compiles kernels/*.cu to PTX
# per arch, exactly as the crate's build does (same flags, one unit), keeping the PTX. CUDA 12.9's ptxas
# (scripts/cuda12-env.sh) then assembles each arch's PTX. The PTX is declared `.version 8.8`, the newest
# ISA 12.9 reads, instead of 13.0's 9.0: the kernels use nothing newer (mma.sync, ldmatrix, cp.async), and
# if cicc ever emitted a 9.0-only instruction ptxas 12.9 would reject it and this script fail.
# Archs: GSDPA_CUDA_ARCHS, else the build's defaults (DEFAULT_ARCHS in build/archs.rs); tests/ptxas_report.rs
# checks that the report covers exactly the archs the crate was built for.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
log=$(realpath -m "${1:?usage: scripts/ptxas12-report.sh LOG}")
[ -x "${CUDA_HOME:-}/bin/nvcc" ] || { echo "ptxas12-report: CUDA_HOME has no bin/nvcc" >&2; exit 1; }
if [ -z "${GSDPA_PTXAS12:-}" ]; then
    # shellcheck source=cuda12-env.sh
    source scripts/cuda12-env.sh
fi

archs=${GSDPA_CUDA_ARCHS:-80,86,89,90a,100,120}
archs=$(echo "$archs" | tr ',' ' ' | sed 's/sm_//g; s/compute_//g')

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for cu in "$ROOT"/kernels/*.cu; do echo "#include \"$cu\""; done > "$work/gsdpa_kernels.cu"
gencode=()
for arch in $archs; do gencode+=(-gencode "arch=compute_$arch,code=compute_$arch"); done
start=$SECONDS
"$CUDA_HOME/bin/nvcc" -fatbin -std=c++17 -O3 --threads 0 -I "$ROOT/kernels" "${gencode[@]}" \
    --keep --keep-dir "$work" -o "$work/ptx.fatbin" "$work/gsdpa_kernels.cu"
echo "nvcc $("$CUDA_HOME/bin/nvcc" --version | grep -o 'V[0-9.]*' | tail -1): PTX for $archs in $((SECONDS - start)) s"

start=$SECONDS
for arch in $archs; do
    sed 's/^\.version 9\.[0-9]*$/.version 8.8/' "$work/gsdpa_kernels.compute_$arch.ptx" > "$work/$arch.ptx"
done
# Two archs at a time (CI has two cores); each writes its own log, concatenated in arch order.
printf '%s\n' $archs | xargs -P 2 -I{} sh -c \
    '"$0" -v -O3 --gpu-name sm_{} -o "$1/{}.cubin" "$1/{}.ptx" > "$1/{}.log" 2>&1 || { cat "$1/{}.log" >&2; exit 255; }' \
    "$GSDPA_PTXAS12" "$work"
for arch in $archs; do cat "$work/$arch.log"; done > "$log"
echo "ptxas $("$GSDPA_PTXAS12" --version | grep -o 'V[0-9.]*' | tail -1): $(grep -c 'Compiling entry' "$log") kernel reports in $((SECONDS - start)) s -> $log"
