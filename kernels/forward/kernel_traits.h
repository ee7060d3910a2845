// kernel_traits.h: compile-time shape of the fused forward kernel for one (dtype, head dim).
//
// Tile sizes (the values live in gsdpa_params.h, GsdpaFwdGeometry, so Rust launches with the same ones).
// Every warp owns WARP_ROWS = 16 M_TILES query rows (M_TILES m16 mma tiles), so BLOCK_M = WARP_ROWS * warps,
// and each K or V fragment loaded with ldmatrix feeds M_TILES mmas per n-tile. Shared memory holds one
// Q tile [BLOCK_M][D] and KV_STAGES K and V tiles [BLOCK_N][D], all 16-bit and swizzled
// (common/swizzle.h), and stays <= 99 KiB so the same binary runs on sm_86 / sm_89 (99 KiB per block):
//
//   D    BLOCK_M x BLOCK_N  warps x rows  K/V stages  smem    why
//   64   128 x 64           4 x 32        1           32 KiB  FA2's organisation (4 warps x 32 rows, two
//                                                             blocks per SM): every K/V ldmatrix feeds 4
//                                                             mmas. O (64) + S (64) f32 registers per
//                                                             thread; Q re-read with ldmatrix per k-step
//                                                             (2 per k-step for 16 mmas): kept in registers
//                                                             (32 more) it spills on sm_100 / sm_120 at 255.
//                                                             64 keys, not 128: S at 128 keys adds 64
//                                                             registers. Single-buffered, as D = 256.
//   128  128 x 64           8 x 16        2           96 KiB  Not yet at FA2's 4 x 32: O (128) + S (64) f32
//                                                             registers plus Q and K fragments, the loop's
//                                                             addresses and the diagnostics' sink state
//                                                             spill at 255 registers (16-90 bytes on sm_80
//                                                             / sm_90a, measured). So one 8-warp block per
//                                                             SM, Q (32 regs) kept in registers and K/V
//                                                             double-buffered (the shared memory beyond one
//                                                             buffer is free at one block per SM).
//                                                             Measured 2026-12-02: 4 x 32 at 64 keys (Q
//                                                             re-read) spills 80 bytes on sm_80, 16 without
//                                                             the sink state; 4 x 32 at 32 keys (FA2's
//                                                             sm_86 tile, 48 KiB) fits 255 registers but
//                                                             its loop gains only LDSM/HMMA (0.38 vs 0.50)
//                                                             and blocks per SM over 8 x 16, and loses
//                                                             non-HMMA/HMMA (4.27 vs 2.73) and int+pred
//                                                             (141 vs 36). BENCHMARKS.md has
//                                                             FlashAttention-2's own figures.
//   256  64 x 32            4 x 16        1           64 KiB  128 f32 O registers per thread leave no room for Q in
//                                                             registers (re-read with ldmatrix per k-step) nor for
//                                                             a 64-key score tile (64 x 64 spills at 255 registers);
//                                                             64 KiB also fits two blocks per SM on A100 (164 KiB).
//
// ptxas (CUDA 13.0, no spills, no stack; standalone compile of forward.cu): D = 64: 233 / 238 / 244 / 240
// registers on sm_80 / sm_90a / sm_100 / sm_120, two 4-warp blocks per SM; D = 128: 212 / 215 / 207 / 214,
// one 8-warp block (two would need <= 128 registers, which spills); D = 256: two 4-warp blocks.
//
// Addresses in the key loop (integer + predicate instructions per warp per key tile on the steady path,
// docs/sass.md; sm_80 / sm_90a, nvcc 13.0):
//   D    choice                                                        why
//   64   8 x 16 rows: K / V ldmatrix: 4 + 4 per-lane base registers,    the swizzle recomputed per ldmatrix was
//        computed once, the stage flipped by one XOR each; K / V        ~6 instructions per LDSM, and the row
//        prefetch: no row test (full tiles)                             test one ISETP per cp.async: 257 ->
//                                                                       46 / 45. The 8 registers are
//                                                                       loop-carried, so ptxas cannot
//                                                                       rematerialise them in the loop.
//        At 4 x 32 rows (single-buffered, Q re-read per k-step): the   103 / 50 (2026-12-02): on sm_80 ptxas
//        Q bases are a third set; K prefetch without row test, V load  (233 registers) rebuilt the Q, K and
//        of tile n with it (as D = 256). Single-buffered, the 12 bases  V bases in the loop; sm_90a kept
//        are made loop-carried (keep_in_registers: one XOR each per     them. Loop-carried: 63 / 64, one
//        tile)                                                          XOR per base per tile.
//   128  as D = 64 at 8 x 16 (the first entry)                         283 -> 39 / 37; 177 registers, 5
//                                                                       fewer than before.
//   256  the same, Q too (re-read per tile): one stage, so the bases    337 -> 156 on sm_80 (102 -> 100 on
//        are loop-invariant, made loop-carried as at D = 64; K         sm_90a); loop-carried bases: 112 /
//        prefetch without row test; the V load of tile n keeps its     114 (ptxas at 241 / 243 registers
//        row test (tile n may be the partial last)                     rebuilt some in the loop before).
//   all  the last tile visited runs after the loop (below), and the   2026-12-03: the tool's steady path
//        first tile's V comes with the prologue: no V row test and     had been the last tile's (its gate
//        no last-tile test in the loop                                 load has the most LDGSTS); the real
//                                                                       one: 43 / 47 / 63 at D = 128 / 64
//                                                                       / 256 (BENCHMARKS.md)
// Per-tile 64-bit source pointers (tile * BLOCK_N * row_stride) are recomputed, not stepped: a running
// pointer per tensor was measured 2-20 instructions worse (two more loop-carried register pairs).
//
// Pipeline. Double-buffered (D = 128): at the top of iteration n (one barrier) K(n-1) and V(n-1) are
// issued into the other stage, so each load has a whole iteration (both GEMMs and the softmax) to land.
// Single-buffered (D = 64 and 256, FlashAttention-2's scheme): K and V have one buffer each and their loads
// alternate, each overlapping one GEMM: V(n) is fetched while S = Q K(n)^T is computed, K(n-1) while the
// softmax and O += P V(n) run (two barriers per iteration); the first tile's V, the only one that may be
// partial, comes with Q and K in the prologue. Double buffering at D = 256 (96 KiB) would leave A100 one
// block per SM instead of two.
// Key tiles are visited from the last to the first, so the tiles that need masking (the partial last
// tile, the causal diagonal) come first and the loop bound skips tiles above the diagonal.
// The loop runs every tile but the last one visited (tile 0): that one leaves the loop at its barrier and
// runs after it, because instead of prefetching it fetches the elementwise gate tile into the Q region
// (double-buffered: at its start, Q being in registers; single-buffered: after its S = Q K^T), hiding
// under O += P V. So every iteration of the loop prefetches, and the loop tests for neither end.
//
// Softmax. The key loop uses OnlineSoftmax::update_lazy: O and the row sums are rescaled only when a
// tile raises some row's max of the warp's m-tile by more than 2^8 in p, which after the first tiles is
// rare. The common tile skips the O rescale (64 f32 multiplies per thread at D = 64 and 128, 128 at
// D = 256) and the corrections' exp2: non-HMMA per HMMA 3.94 -> 3.44 / 2.79 -> 2.29 / 3.08 -> 2.08 at
// D = 64 / 128 / 256 (sm_80, 2026-12-03).
#pragma once

#include "../common/fragments.h"

namespace gsdpa {
namespace fwd {

template <int D>
struct FwdGeometry;
template <>
struct FwdGeometry<64> {
    static constexpr int BLOCK_M = GSDPA_FWD_BLOCK_M_D64, BLOCK_N = GSDPA_FWD_BLOCK_N_D64,
                         THREADS = GSDPA_FWD_THREADS_D64, SMEM = GSDPA_FWD_SMEM_D64;
};
template <>
struct FwdGeometry<128> {
    static constexpr int BLOCK_M = GSDPA_FWD_BLOCK_M_D128, BLOCK_N = GSDPA_FWD_BLOCK_N_D128,
                         THREADS = GSDPA_FWD_THREADS_D128, SMEM = GSDPA_FWD_SMEM_D128;
};
template <>
struct FwdGeometry<256> {
    static constexpr int BLOCK_M = GSDPA_FWD_BLOCK_M_D256, BLOCK_N = GSDPA_FWD_BLOCK_N_D256,
                         THREADS = GSDPA_FWD_THREADS_D256, SMEM = GSDPA_FWD_SMEM_D256;
};

template <class T_, int D_>
struct FwdTraits {
    using T = T_;
    static constexpr int D = D_;
    static constexpr int BLOCK_M = FwdGeometry<D>::BLOCK_M;
    static constexpr int BLOCK_N = FwdGeometry<D>::BLOCK_N;
    static constexpr int THREADS = FwdGeometry<D>::THREADS;
    static constexpr int WARPS = THREADS / 32;
    // m16 mma tiles per warp: each warp owns M_TILES * 16 consecutive query rows of the block.
    static constexpr int M_TILES = BLOCK_M / (16 * WARPS);
    static constexpr int WARP_ROWS = 16 * M_TILES;

    // Q fragments for the whole head dim stay in registers (loaded once) instead of being re-read from
    // shared memory for every key tile. See the table above.
    static constexpr bool Q_IN_REGS = D == 128;

    // Register fragment counts per thread.
    static constexpr int K_STEPS_QK = D / 16;      // k-steps of S = Q K^T (over the head dim)
    static constexpr int N_TILES_S = BLOCK_N / 8;  // 16 x 8 score tiles per m-tile
    static constexpr int K_STEPS_PV = BLOCK_N / 16;  // k-steps of O += P V (over the keys)
    static constexpr int N_TILES_O = D / 8;        // 16 x 8 output tiles per m-tile

    // K/V buffers: two stages (double buffering) where Q lives in registers (the gate tile then replaces Q
    // at the start of the last key tile visited); see the pipeline note above.
    static constexpr int KV_STAGES = Q_IN_REGS ? 2 : 1;

    // Shared memory, in elements of T from the dynamic shared memory base:
    //   [Q: BLOCK_M x D][K: KV_STAGES x BLOCK_N x D][V: KV_STAGES x BLOCK_N x D]
    // Key tile n uses stage n % KV_STAGES. Reuse: the elementwise gate tile G (BLOCK_M x D) is fetched into
    // the Q region once Q is no longer read there; in the epilogue the Y tile is staged in the K+V region
    // and the ungated O tile in the Q region (after G has been read).
    static constexpr int TILE_KV = BLOCK_N * D;
    static constexpr int SMEM_Q = 0;
    static constexpr int SMEM_K = SMEM_Q + BLOCK_M * D;
    static constexpr int SMEM_V = SMEM_K + KV_STAGES * TILE_KV;
    static constexpr int SMEM_Y = SMEM_K;
    static constexpr int SMEM_O = SMEM_Q;
    static constexpr int SMEM_ELEMS = SMEM_V + KV_STAGES * TILE_KV;
    static constexpr int SMEM_BYTES = SMEM_ELEMS * int(sizeof(T));
    GSDPA_DEVICE static int smem_k(int n) { return SMEM_K + (KV_STAGES == 2 ? (n & 1) : 0) * TILE_KV; }
    GSDPA_DEVICE static int smem_v(int n) { return SMEM_V + (KV_STAGES == 2 ? (n & 1) : 0) * TILE_KV; }

    // The two stages' K (V) tiles at offsets that differ only in these bits, with every in-tile offset
    // below them (TILE_KV a power of two dividing both stage offsets): switching the stage of a
    // precomputed address is one XOR (forward.cu).
    static constexpr int K_STAGE_FLIP = SMEM_K ^ (SMEM_K + TILE_KV);
    static constexpr int V_STAGE_FLIP = SMEM_V ^ (SMEM_V + TILE_KV);
    static_assert((TILE_KV & (TILE_KV - 1)) == 0 && SMEM_K % TILE_KV == 0 && SMEM_V % TILE_KV == 0,
                  "stage offsets switch by XOR");

    static_assert(sizeof(T) == 2, "16-bit element types only");
    static_assert(BLOCK_M == WARP_ROWS * WARPS && M_TILES >= 1, "each warp owns M_TILES x 16 query rows");
    static_assert(BLOCK_N % 16 == 0 && D % 64 == 0, "whole mma tiles and swizzled 128-byte rows");
    static_assert(BLOCK_M <= 2 * KV_STAGES * BLOCK_N, "the Y tile is staged in the K+V region");
    static_assert(KV_STAGES == 1 || Q_IN_REGS, "double buffering fetches G during the last S = Q K^T");
    static_assert(SMEM_BYTES == FwdGeometry<D>::SMEM, "GSDPA_FWD_SMEM_* must match the layout");
    static_assert(SMEM_BYTES <= 99 * 1024, "must fit sm_86 / sm_89 (99 KiB per block)");
};

}  // namespace fwd
}  // namespace gsdpa
