// backward.cu: entry points of the fused gated backward kernels. Bodies: backward/preprocess.h (preprocess,
// convert), backward/dkdv.h, backward/dq.h; pieces they share: backward/common.h (overview and maths),
// backward/softmax_grad.h; tiles and why: backward/traits.h; launch sequence: gsdpa_params.h
// GsdpaBwdGeometry and docs/backward.md.
//
//   gsdpa_bwd_preprocess_{bf16,f16}        Delta, dO = dY * act(G), dG; zeroes dq_accum (fast mode)
//   gsdpa_bwd_dkdv_{bf16,f16}_d{64,128,256} dK, dV; fast mode also dQ into dq_accum (f32 atomics)
//   gsdpa_bwd_dq_{bf16,f16}_d{64,128,256}   deterministic mode: dQ without atomics
//   gsdpa_bwd_{dkdv,dq}_{bf16,f16}_d{128,256}_large, gsdpa_bwd_dq_{bf16,f16}_d64_large
//                                          the same with larger tiles, for devices with more than 99 KiB
//                                          of shared memory per block (backward/traits.h)
//   gsdpa_bwd_{dkdv,dq}_{bf16,f16}_d256_large_1stage D = 256's large tiles with one Q (dK/dV) or K (dQ)
//                                          buffer, for sm_80's 163 KiB
//   gsdpa_bwd_dq_convert_{bf16,f16}        fast mode: dq = dq_accum in the element type
#include "backward/dkdv.h"
#include "backward/dq.h"
#include "backward/preprocess.h"

#define GSDPA_BWD_ROWWISE(kind, body, dtype, T, THREADS)                                                  \
    extern "C" __global__ void __launch_bounds__(THREADS) gsdpa_bwd_##kind##_##dtype(const GsdpaBwdParams p) { \
        gsdpa::bwd::body<T>(p);                                                                          \
    }                                                                                                    \
    GSDPA_REGISTER_KERNEL(gsdpa_bwd_##kind##_##dtype, GsdpaBwdParams, THREADS)

#define GSDPA_BWD_TILED(kind, body, dtype, T, D, THREADS)                                                 \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                \
        gsdpa_bwd_##kind##_##dtype##_d##D(const GsdpaBwdParams p) {                                      \
        gsdpa::bwd::body<T, D>(p);                                                                       \
    }                                                                                                    \
    GSDPA_REGISTER_KERNEL(gsdpa_bwd_##kind##_##dtype##_d##D, GsdpaBwdParams, THREADS)

// The large tiles' entry points have a body only on the archs whose blocks may hold their shared memory
// (common/platform.h): elsewhere the launch is refused before it reaches the GPU.
#define GSDPA_BWD_TILED_LARGE_AS(kind, body, dtype, T, D, THREADS, SMEM, TILES, suffix)                   \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                \
        gsdpa_bwd_##kind##_##dtype##_d##D##suffix(const GsdpaBwdParams p) {                              \
        if constexpr ((SMEM) <= GSDPA_ARCH_MAX_DYNAMIC_SMEM_BYTES) {                                     \
            gsdpa::bwd::body<T, D, gsdpa::bwd::BwdTiles::TILES>(p);                                      \
        } else {                                                                                         \
            (void)p;                                                                                     \
        }                                                                                                \
    }                                                                                                    \
    GSDPA_REGISTER_KERNEL(gsdpa_bwd_##kind##_##dtype##_d##D##suffix, GsdpaBwdParams, THREADS)
#define GSDPA_BWD_TILED_LARGE(kind, body, dtype, T, D, THREADS, SMEM) \
    GSDPA_BWD_TILED_LARGE_AS(kind, body, dtype, T, D, THREADS, SMEM, LARGE, _large)
#define GSDPA_BWD_TILED_LARGE_1STAGE(kind, body, dtype, T, D, THREADS, SMEM) \
    GSDPA_BWD_TILED_LARGE_AS(kind, body, dtype, T, D, THREADS, SMEM, LARGE_1STAGE, _large_1stage)

GSDPA_BWD_ROWWISE(preprocess, preprocess, bf16, gsdpa::bf16, GSDPA_BWD_PRE_THREADS)
GSDPA_BWD_ROWWISE(preprocess, preprocess, f16, gsdpa::f16, GSDPA_BWD_PRE_THREADS)
GSDPA_BWD_ROWWISE(dq_convert, convert_dq, bf16, gsdpa::bf16, GSDPA_BWD_CONVERT_THREADS)
GSDPA_BWD_ROWWISE(dq_convert, convert_dq, f16, gsdpa::f16, GSDPA_BWD_CONVERT_THREADS)

GSDPA_BWD_TILED(dkdv, dkdv, bf16, gsdpa::bf16, 64, GSDPA_BWD_DKDV_THREADS_D64)
GSDPA_BWD_TILED(dkdv, dkdv, bf16, gsdpa::bf16, 128, GSDPA_BWD_DKDV_THREADS_D128)
GSDPA_BWD_TILED(dkdv, dkdv, bf16, gsdpa::bf16, 256, GSDPA_BWD_DKDV_THREADS_D256)
GSDPA_BWD_TILED(dkdv, dkdv, f16, gsdpa::f16, 64, GSDPA_BWD_DKDV_THREADS_D64)
GSDPA_BWD_TILED(dkdv, dkdv, f16, gsdpa::f16, 128, GSDPA_BWD_DKDV_THREADS_D128)
GSDPA_BWD_TILED(dkdv, dkdv, f16, gsdpa::f16, 256, GSDPA_BWD_DKDV_THREADS_D256)

GSDPA_BWD_TILED(dq, dq, bf16, gsdpa::bf16, 64, GSDPA_BWD_DQ_THREADS_D64)
GSDPA_BWD_TILED(dq, dq, bf16, gsdpa::bf16, 128, GSDPA_BWD_DQ_THREADS_D128)
GSDPA_BWD_TILED(dq, dq, bf16, gsdpa::bf16, 256, GSDPA_BWD_DQ_THREADS_D256)
GSDPA_BWD_TILED(dq, dq, f16, gsdpa::f16, 64, GSDPA_BWD_DQ_THREADS_D64)
GSDPA_BWD_TILED(dq, dq, f16, gsdpa::f16, 128, GSDPA_BWD_DQ_THREADS_D128)
GSDPA_BWD_TILED(dq, dq, f16, gsdpa::f16, 256, GSDPA_BWD_DQ_THREADS_D256)

GSDPA_BWD_TILED_LARGE(dq, dq, bf16, gsdpa::bf16, 64, GSDPA_BWD_LARGE_DQ_THREADS_D64, GSDPA_BWD_LARGE_DQ_SMEM_D64)
GSDPA_BWD_TILED_LARGE(dq, dq, f16, gsdpa::f16, 64, GSDPA_BWD_LARGE_DQ_THREADS_D64, GSDPA_BWD_LARGE_DQ_SMEM_D64)
GSDPA_BWD_TILED_LARGE(dkdv, dkdv, bf16, gsdpa::bf16, 128, GSDPA_BWD_LARGE_DKDV_THREADS_D128,
                      GSDPA_BWD_LARGE_DKDV_SMEM_D128)
GSDPA_BWD_TILED_LARGE(dkdv, dkdv, f16, gsdpa::f16, 128, GSDPA_BWD_LARGE_DKDV_THREADS_D128,
                      GSDPA_BWD_LARGE_DKDV_SMEM_D128)
GSDPA_BWD_TILED_LARGE(dq, dq, bf16, gsdpa::bf16, 128, GSDPA_BWD_LARGE_DQ_THREADS_D128,
                      GSDPA_BWD_LARGE_DQ_SMEM_D128)
GSDPA_BWD_TILED_LARGE(dq, dq, f16, gsdpa::f16, 128, GSDPA_BWD_LARGE_DQ_THREADS_D128,
                      GSDPA_BWD_LARGE_DQ_SMEM_D128)
GSDPA_BWD_TILED_LARGE(dkdv, dkdv, bf16, gsdpa::bf16, 256, GSDPA_BWD_LARGE_DKDV_THREADS_D256,
                      GSDPA_BWD_LARGE_DKDV_SMEM_D256)
GSDPA_BWD_TILED_LARGE(dkdv, dkdv, f16, gsdpa::f16, 256, GSDPA_BWD_LARGE_DKDV_THREADS_D256,
                      GSDPA_BWD_LARGE_DKDV_SMEM_D256)
GSDPA_BWD_TILED_LARGE(dq, dq, bf16, gsdpa::bf16, 256, GSDPA_BWD_LARGE_DQ_THREADS_D256,
                      GSDPA_BWD_LARGE_DQ_SMEM_D256)
GSDPA_BWD_TILED_LARGE(dq, dq, f16, gsdpa::f16, 256, GSDPA_BWD_LARGE_DQ_THREADS_D256,
                      GSDPA_BWD_LARGE_DQ_SMEM_D256)
GSDPA_BWD_TILED_LARGE_1STAGE(dkdv, dkdv, bf16, gsdpa::bf16, 256, GSDPA_BWD_LARGE_DKDV_THREADS_D256,
                             GSDPA_BWD_LARGE_1STAGE_DKDV_SMEM_D256)
GSDPA_BWD_TILED_LARGE_1STAGE(dkdv, dkdv, f16, gsdpa::f16, 256, GSDPA_BWD_LARGE_DKDV_THREADS_D256,
                             GSDPA_BWD_LARGE_1STAGE_DKDV_SMEM_D256)
GSDPA_BWD_TILED_LARGE_1STAGE(dq, dq, bf16, gsdpa::bf16, 256, GSDPA_BWD_LARGE_DQ_THREADS_D256,
                             GSDPA_BWD_LARGE_1STAGE_DQ_SMEM_D256)
GSDPA_BWD_TILED_LARGE_1STAGE(dq, dq, f16, gsdpa::f16, 256, GSDPA_BWD_LARGE_DQ_THREADS_D256,
                             GSDPA_BWD_LARGE_1STAGE_DQ_SMEM_D256)
