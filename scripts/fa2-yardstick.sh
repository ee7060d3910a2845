#!/usr/bin/env bash
# Compiles FlashAttention-2's sm_80 forward kernel at the tile configurations it picks per head dim,
# with this repo's pinned nvcc, and reads them with the same SASS analysis as ours (`gsdpa sass`), so
# the two kernels' main loops are compared instruction for instruction (BENCHMARKS.md, "FlashAttention-2
# as the yardstick"). Nothing of it is built into the crate: it needs checkouts of FlashAttention (its
# csrc/flash_attn/src) and of CUTLASS (its include/, the version FlashAttention pins or newer), which
# the repo does not carry.
#
# Usage: scripts/fa2-yardstick.sh FLASH_ATTENTION_DIR CUTLASS_DIR [OUT_DIR]
#
# What is instantiated: the non-causal, dropout-free kernel for sequence lengths that are tile
# multiples (FlashAttention-2 compiles a separate kernel for that case; it has no row tests or masking
# on its steady path, so its integer counts are a lower bound for a kernel that handles any length),
# bf16, for sm_80 and sm_90a:
#   d64 128 x 128, d128 128 x 64 (A100 / H100), d128 128 x 32 (sm_86 / sm_89), d256 64 x 64.
# FlashAttention-2's sources include two PyTorch headers for its dropout RNG state; minimal stand-ins
# are written to OUT_DIR/stub (dropout is off in every instantiation).
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,17p "$0" >&2; exit 2; }
fa=$(realpath "$1")
cutlass=$(realpath "$2")
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${3:-$root/target/fa2-yardstick}")
mkdir -p "$out/stub/ATen/cuda/detail"
# shellcheck source=nvcc-env.sh
source "$root/scripts/nvcc-env.sh" >/dev/null

cat >"$out/stub/ATen/cuda/PhiloxCudaState.h" <<'STUB'
#pragma once
#include <cstdint>
namespace at { struct PhiloxCudaState { uint64_t seed_ = 0, offset_ = 0; }; }
STUB
cat >"$out/stub/ATen/cuda/detail/UnpackRaw.cuh" <<'STUB'
#pragma once
#include <tuple>
namespace at { namespace cuda { namespace philox {
__host__ __device__ inline std::tuple<uint64_t, uint64_t> unpack(at::PhiloxCudaState s) { return {s.seed_, s.offset_}; }
}}}
STUB
cat >"$out/fa2_fwd.cu" <<'UNIT'
#include "namespace_config.h"
#include "flash.h"
#include "flash_fwd_kernel.h"
// compute_attn<traits, dropout, causal, local, alibi, even_MN, even_K, softcap, return_softmax>
template <typename Traits>
__global__ void fa2_fwd(const __grid_constant__ flash::Flash_fwd_params params) {
    flash::compute_attn<Traits, false, false, false, false, true, true, false, false>(params);
}
#define FA2_FWD(D, M, N) \
    template __global__ void fa2_fwd<Flash_fwd_kernel_traits<D, M, N, 4, false, false, cutlass::bfloat16_t>>( \
        const __grid_constant__ flash::Flash_fwd_params);
FA2_FWD(64, 128, 128)
FA2_FWD(128, 128, 64)
FA2_FWD(128, 128, 32)
FA2_FWD(256, 64, 64)
UNIT

echo "== nvcc (a few minutes): $out/fa2_fwd.fatbin; ptxas report in $out/ptxas.log"
"$CUDA_HOME/bin/nvcc" -fatbin -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr --expt-extended-lambda \
    -Xptxas -v --threads 0 -I"$out/stub" -I"$cutlass/include" -I"$fa/csrc/flash_attn/src" \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a \
    "$out/fa2_fwd.cu" -o "$out/fa2_fwd.fatbin" >"$out/ptxas.log" 2>&1
# Registers and spills per kernel, with the mangled names shortened to d<D> <M>x<N>.
short='s/_Z7fa2_fwdI23Flash_fwd_kernel_traitsILi\([0-9]*\)ELi\([0-9]*\)ELi\([0-9]*\)ELi4E[A-Za-z0-9_]*/FA2_d\1_\2x\3/'
grep -A3 "Compiling entry" "$out/ptxas.log" | grep -v "^--" | paste - - - - | sed -e "$short" \
    -e 's/ptxas info *: //g' -e 's/Function properties for [A-Za-z0-9_]*//' -e "s/Compiling entry function '\([^']*\)' for '\([^']*\)'/\1 \2:/"
(cd "$root" && cargo build --release --example gsdpa -q)
PATH="$CUDA_HOME/bin:$PATH" "$root/target/release/examples/gsdpa" sass --fatbin "$out/fa2_fwd.fatbin" |
    sed -e "$short"
