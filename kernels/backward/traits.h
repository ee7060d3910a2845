// traits.h: compile-time shape of the fused backward kernels for one (dtype, head dim).
//
// The backward is FlashAttention-2's: P = exp(scale Q K^T - LSE) is recomputed tile by tile, and five
// GEMMs run per (query tile, key tile) pair:
//   S  = Q K^T       (BLOCK_M x BLOCK_N, k = D)       dP = dO V^T   (same shape)
//   dV += P^T dO     (BLOCK_N x D, k = BLOCK_M)       dK += dS^T Q  (same shape)
//   dQ  = dS K       (BLOCK_M x D, k = BLOCK_N)
// with dS = P * (dP - Delta). Each GEMM has its own warp layout (its output shape differs), so P and dS
// go through shared memory between them, as in FlashAttention-2; Q, K, V, dO tiles are read from shared
// memory with ldmatrix for every GEMM that needs them.
//
// Tile sizes (the values live in gsdpa_params.h, GsdpaBwdGeometry, so Rust launches with the same ones).
// All kernels use 8 warps. Limits: dynamic shared memory <= 99 KiB (sm_86 / sm_89) for the compact tiles,
// <= 163 KiB (sm_80; sm_90 allows 227) for D = 128's large ones and D = 256's one-stage ones, <= 227 KiB
// for D = 256's two-stage ones (BwdTiles, below; src/launch.rs picks one at launch from the device's
// opt-in limit); registers: the dK and dV accumulators (2 * BLOCK_N * D f32 per block) must leave room for
// the S and dP tiles, within 255 per thread and without spills.
//
//   D    dkdv BLOCK_M x BLOCK_N   smem     dq BLOCK_M x BLOCK_N   smem     why
//   64   64 x 128                 88 KiB   64 x 128               80 KiB   dK+dV: 64 f32 regs per thread,
//                                                                          S+dP: 64. FA2's sm_86 tile.
//   128  64 x 64                  96 KiB   64 x 64                88 KiB   dK+dV 64 regs, S+dP 32. A 128-key
//                                                                          tile (FA2 on A100) needs 144 KiB.
//   256  32 x 32                  88 KiB   32 x 32                84 KiB   dK+dV 64 regs. K, V (32 KiB each
//                                                                          at 64 keys) + Q + dO do not fit
//                                                                          99 KiB with any 64-row tile.
// Large tiles (kernels *_large):
//   128  64 x 128                 144 KiB  64 x 128               144 KiB  FA2's A100 tile. dK+dV 128 regs,
//                                                                          S+dP 64: 255 registers, no
//                                                                          spills once dO shares Q's
//                                                                          ldmatrix bases (36 B of spills
//                                                                          with its own, 72 B without the
//                                                                          hoisted P / dS stores, sm_80).
//                                                                          Key tiles of 128 halve the dQ
//                                                                          atomics per FLOP; 32 x 32 score
//                                                                          and 32 x 64 dK/dV warp tiles
//                                                                          give 0.44 LDSM per HMMA (0.62).
//   256  64 x 64                  176 KiB  64 x 64                168 KiB  sm_90 (above sm_80's 163 KiB
//                                                                          with Q double-buffered). dK+dV
//                                                                          128 regs, S+dP 32: 255 registers
//                                                                          (dQ 218), no spills. 32 x 16
//                                                                          score and 32 x 64 dK/dV, dQ warp
//                                                                          tiles: 0.56 LDSM per HMMA (1.31
//                                                                          compact), 0.62 for dQ (1.54).
//                                                                          The hoisted P / dS stores
//                                                                          (HOIST_SCORE_STORES) spill here
//                                                                          (4 bytes on sm_90a).
//   256  64 x 64, 1 stage         144 KiB  64 x 64, 1 stage       136 KiB  sm_80 (*_large_1stage, LARGE_1STAGE
//                                                                          below): the same tiles with one
//                                                                          Q buffer (dK/dV) and one K
//                                                                          buffer (dQ), FA2's A100 choice.
//                                                                          The next tile streams in once
//                                                                          its last reader is done
//                                                                          (dkdv.h, dq.h).
//                                                                          255 registers (dQ 168), no
//                                                                          spills; LDSM per HMMA as the
//                                                                          two-stage ones'. sm_90 runs
//                                                                          the two-stage ones.
//   64   (compact dK/dV)                   128 x 128              112 KiB  dQ only (the deterministic
//                                                                          mode's kernel): FA2's 128 x 128
//                                                                          with 16 x 128 score and 32 x 32
//                                                                          dQ warp tiles, 0.54 LDSM and
//                                                                          3.15 non-HMMA per HMMA (compact:
//                                                                          0.58 and 3.66), 255 registers,
//                                                                          no spills. The score grids
//                                                                          4 x 2 and 2 x 4 (0.42-0.46,
//                                                                          2.80-2.93) spill 4-8 bytes on
//                                                                          sm_80.
// D = 64's dK/dV kernel keeps its compact tiles: it already has 128-key tiles (so no fewer atomics per
// FLOP from FA2's 128 x 128) and 0.50 LDSM per HMMA. FA2's 128 x 128 (144 KiB) was tried on sm_80 with the
// warp grids (score rows, dK/dV keys, dQ rows) = (2, 4, 4), (4, 4, 4), (2, 2, 2), (4, 2, 2): it spills 4-8
// bytes at 255 registers in every one (128 registers of S+dP beside the 64 of dK+dV), for 0.44-0.50 LDSM
// and 3.15-3.31 non-HMMA per HMMA against 0.50 and 3.35 compact.
//
// Shared memory of the dK/dV kernel (elements of T, 16-bit, every tile swizzled, common/swizzle.h):
//   [K: BLOCK_N x D][V: BLOCK_N x D][Q: Q_STAGES x BLOCK_M x D][dO: BLOCK_M x D][P: BLOCK_M x PC][dS: BLOCK_M x PC]
// Q is double-buffered (the next query tile streams in during the whole iteration; one buffer in the
// LARGE_1STAGE tiles, refilled once dK += dS^T Q has consumed it); dO has one buffer, refilled once
// dV += P^T dO has consumed it. PC = P_DS_TILE_COLS = max(BLOCK_N, 64): a swizzled row is a
// whole 128-byte line, so the 32-key tiles of D = 256 are padded (4 KiB, unused columns never read).
// The epilogue stages dK in the K region and dV in the V region for 16-byte coalesced stores.
//
// Shared memory of the deterministic dQ kernel:
//   [Q: BLOCK_M x D][dO: BLOCK_M x D][K: K_STAGES x BLOCK_N x D][V: BLOCK_N x D][dS: BLOCK_M x PC]
// K is double-buffered (it is read by S = Q K^T and again by dQ += dS K; one buffer in the LARGE_1STAGE
// tiles, refilled once dQ += dS K has consumed it); V is refilled once dS is known.
// The epilogue stages dQ in the Q region.
#pragma once

#include "../common/fragments.h"

namespace gsdpa {
namespace bwd {

// The two tile configurations of each head dim. COMPACT fits the 99 KiB of dynamic shared memory a block
// may opt in to on sm_86 and sm_89 (and so every arch); LARGE needs more and runs where the device allows
// it (D = 128: sm_80 and sm_90; D = 256: sm_90 only); LARGE_1STAGE is D = 256's LARGE with one Q buffer in
// dK/dV and one K buffer in dQ, for sm_80 (src/launch.rs chooses at launch from the device's limit).
enum class BwdTiles { COMPACT, LARGE, LARGE_1STAGE };

template <int D, BwdTiles TILES = BwdTiles::COMPACT>
struct BwdGeometry;
template <>
struct BwdGeometry<64> {
    static constexpr int DKDV_BLOCK_M = GSDPA_BWD_DKDV_BLOCK_M_D64, DKDV_BLOCK_N = GSDPA_BWD_DKDV_BLOCK_N_D64,
                         DKDV_THREADS = GSDPA_BWD_DKDV_THREADS_D64, DKDV_SMEM = GSDPA_BWD_DKDV_SMEM_D64;
    static constexpr int DQ_BLOCK_M = GSDPA_BWD_DQ_BLOCK_M_D64, DQ_BLOCK_N = GSDPA_BWD_DQ_BLOCK_N_D64,
                         DQ_THREADS = GSDPA_BWD_DQ_THREADS_D64, DQ_SMEM = GSDPA_BWD_DQ_SMEM_D64;
    // Warp grids (warps along the first output dimension; the rest go along the second):
    // S/dP 2 x 4 -> 32 x 32 per warp; dK/dV 4 x 2 -> 32 keys x 32 dims; dQ 4 x 2 -> 16 rows x 32 dims.
    static constexpr int SCORE_WARPS_M = 2, DKDV_WARPS_N = 4, DQ_WARPS_M = 4;
    static constexpr int SMEM_CEILING = 99 * 1024;
};
// D = 64's large tiles have a dQ kernel only (the dK/dV kernel at 128 x 128 spills, table above): the
// dK/dV fields are the compact ones, and no dK/dV kernel is built with these.
template <>
struct BwdGeometry<64, BwdTiles::LARGE> {
    static constexpr int DKDV_BLOCK_M = GSDPA_BWD_DKDV_BLOCK_M_D64, DKDV_BLOCK_N = GSDPA_BWD_DKDV_BLOCK_N_D64,
                         DKDV_THREADS = GSDPA_BWD_DKDV_THREADS_D64, DKDV_SMEM = GSDPA_BWD_DKDV_SMEM_D64;
    static constexpr int DQ_BLOCK_M = GSDPA_BWD_LARGE_DQ_BLOCK_M_D64, DQ_BLOCK_N = GSDPA_BWD_LARGE_DQ_BLOCK_N_D64,
                         DQ_THREADS = GSDPA_BWD_LARGE_DQ_THREADS_D64, DQ_SMEM = GSDPA_BWD_LARGE_DQ_SMEM_D64;
    // S/dP 8 x 1 -> 16 x 128; dQ 4 x 2 -> 32 rows x 32 dims (table above).
    static constexpr int SCORE_WARPS_M = 8, DKDV_WARPS_N = 4, DQ_WARPS_M = 4;
    // sm_80's opt-in limit, the smallest of the archs that launch this configuration.
    static constexpr int SMEM_CEILING = 163 * 1024;
};
template <>
struct BwdGeometry<128> {
    static constexpr int DKDV_BLOCK_M = GSDPA_BWD_DKDV_BLOCK_M_D128, DKDV_BLOCK_N = GSDPA_BWD_DKDV_BLOCK_N_D128,
                         DKDV_THREADS = GSDPA_BWD_DKDV_THREADS_D128, DKDV_SMEM = GSDPA_BWD_DKDV_SMEM_D128;
    static constexpr int DQ_BLOCK_M = GSDPA_BWD_DQ_BLOCK_M_D128, DQ_BLOCK_N = GSDPA_BWD_DQ_BLOCK_N_D128,
                         DQ_THREADS = GSDPA_BWD_DQ_THREADS_D128, DQ_SMEM = GSDPA_BWD_DQ_SMEM_D128;
    // S/dP 2 x 4 -> 32 x 16; dK/dV 2 x 4 -> 32 x 32; dQ 2 x 4 -> 32 x 32.
    static constexpr int SCORE_WARPS_M = 2, DKDV_WARPS_N = 2, DQ_WARPS_M = 2;
    static constexpr int SMEM_CEILING = 99 * 1024;
};
template <>
struct BwdGeometry<128, BwdTiles::LARGE> {
    static constexpr int DKDV_BLOCK_M = GSDPA_BWD_LARGE_DKDV_BLOCK_M_D128,
                         DKDV_BLOCK_N = GSDPA_BWD_LARGE_DKDV_BLOCK_N_D128,
                         DKDV_THREADS = GSDPA_BWD_LARGE_DKDV_THREADS_D128, DKDV_SMEM = GSDPA_BWD_LARGE_DKDV_SMEM_D128;
    static constexpr int DQ_BLOCK_M = GSDPA_BWD_LARGE_DQ_BLOCK_M_D128, DQ_BLOCK_N = GSDPA_BWD_LARGE_DQ_BLOCK_N_D128,
                         DQ_THREADS = GSDPA_BWD_LARGE_DQ_THREADS_D128, DQ_SMEM = GSDPA_BWD_LARGE_DQ_SMEM_D128;
    // S/dP 2 x 4 -> 32 x 32; dK/dV 4 x 2 -> 32 keys x 64 dims; dQ 2 x 4 -> 32 x 32 (table above).
    static constexpr int SCORE_WARPS_M = 2, DKDV_WARPS_N = 4, DQ_WARPS_M = 2;
    // sm_80's opt-in limit, the smallest of the archs that launch this configuration.
    static constexpr int SMEM_CEILING = 163 * 1024;
};
template <>
struct BwdGeometry<256, BwdTiles::LARGE> {
    static constexpr int DKDV_BLOCK_M = GSDPA_BWD_LARGE_DKDV_BLOCK_M_D256,
                         DKDV_BLOCK_N = GSDPA_BWD_LARGE_DKDV_BLOCK_N_D256,
                         DKDV_THREADS = GSDPA_BWD_LARGE_DKDV_THREADS_D256, DKDV_SMEM = GSDPA_BWD_LARGE_DKDV_SMEM_D256;
    static constexpr int DQ_BLOCK_M = GSDPA_BWD_LARGE_DQ_BLOCK_M_D256, DQ_BLOCK_N = GSDPA_BWD_LARGE_DQ_BLOCK_N_D256,
                         DQ_THREADS = GSDPA_BWD_LARGE_DQ_THREADS_D256, DQ_SMEM = GSDPA_BWD_LARGE_DQ_SMEM_D256;
    // S/dP 2 x 4 -> 32 x 16; dK/dV 2 x 4 -> 32 keys x 64 dims; dQ 2 x 4 -> 32 x 64 (table above).
    static constexpr int SCORE_WARPS_M = 2, DKDV_WARPS_N = 2, DQ_WARPS_M = 2;
    // sm_90's opt-in limit: only sm_90 launches this configuration.
    static constexpr int SMEM_CEILING = 227 * 1024;
};
// The same tiles, one Q buffer in dK/dV and one K buffer in dQ (DkdvTraits::Q_STAGES, DqTraits::K_STAGES).
template <>
struct BwdGeometry<256, BwdTiles::LARGE_1STAGE> : BwdGeometry<256, BwdTiles::LARGE> {
    static constexpr int DKDV_SMEM = GSDPA_BWD_LARGE_1STAGE_DKDV_SMEM_D256;
    static constexpr int DQ_SMEM = GSDPA_BWD_LARGE_1STAGE_DQ_SMEM_D256;
    // sm_80's opt-in limit, the smallest of the archs that launch this configuration.
    static constexpr int SMEM_CEILING = 163 * 1024;
};
template <>
struct BwdGeometry<256> {
    static constexpr int DKDV_BLOCK_M = GSDPA_BWD_DKDV_BLOCK_M_D256, DKDV_BLOCK_N = GSDPA_BWD_DKDV_BLOCK_N_D256,
                         DKDV_THREADS = GSDPA_BWD_DKDV_THREADS_D256, DKDV_SMEM = GSDPA_BWD_DKDV_SMEM_D256;
    static constexpr int DQ_BLOCK_M = GSDPA_BWD_DQ_BLOCK_M_D256, DQ_BLOCK_N = GSDPA_BWD_DQ_BLOCK_N_D256,
                         DQ_THREADS = GSDPA_BWD_DQ_THREADS_D256, DQ_SMEM = GSDPA_BWD_DQ_SMEM_D256;
    // S/dP 2 x 4 -> 16 x 8 (one mma tile per warp: the 32 x 32 tile has only 8); dK/dV 2 x 4 -> 16 x 64;
    // dQ 2 x 4 -> 16 x 64.
    static constexpr int SCORE_WARPS_M = 2, DKDV_WARPS_N = 2, DQ_WARPS_M = 2;
    static constexpr int SMEM_CEILING = 99 * 1024;
};

// Shapes shared by both main kernels for one tile configuration (BLOCK_M query rows x BLOCK_N keys). Each
// of the three GEMM output shapes has its own warp grid; a warp's share of it is a grid of 16 x 8 mma
// tiles ("warp tiles"), counted per output dimension.
template <class T_, int D_, int BLOCK_M_, int BLOCK_N_, int THREADS_, int SCORE_WARPS_M_, int DKDV_WARPS_N_,
          int DQ_WARPS_M_>
struct BwdTileShape {
    using T = T_;
    static constexpr int D = D_;
    static constexpr int BLOCK_M = BLOCK_M_;
    static constexpr int BLOCK_N = BLOCK_N_;
    static constexpr int THREADS = THREADS_;
    static constexpr int WARPS = THREADS / 32;
    // Columns of the shared-memory P and dS tiles: swizzled rows are whole 128-byte lines (see the table
    // above), so a 32-key tile is padded to 64 columns.
    static constexpr int P_DS_TILE_COLS = BLOCK_N < 64 ? 64 : BLOCK_N;

    // S, dP (scores): BLOCK_M x BLOCK_N; warps SCORE_WARPS_M x SCORE_WARPS_N, each
    // (16 SCORE_WARP_TILES_M) x (8 SCORE_WARP_TILES_N).
    static constexpr int SCORE_WARPS_M = SCORE_WARPS_M_;
    static constexpr int SCORE_WARPS_N = WARPS / SCORE_WARPS_M;
    static constexpr int SCORE_WARP_TILES_M = BLOCK_M / SCORE_WARPS_M / 16;
    static constexpr int SCORE_WARP_TILES_N = BLOCK_N / SCORE_WARPS_N / 8;
    // dK, dV: BLOCK_N keys x D; warps DKDV_WARPS_N (keys) x DKDV_WARPS_D (dims), each
    // (16 DKDV_WARP_TILES_N) x (8 DKDV_WARP_TILES_D).
    static constexpr int DKDV_WARPS_N = DKDV_WARPS_N_;
    static constexpr int DKDV_WARPS_D = WARPS / DKDV_WARPS_N;
    static constexpr int DKDV_WARP_TILES_N = BLOCK_N / DKDV_WARPS_N / 16;
    static constexpr int DKDV_WARP_TILES_D = D / DKDV_WARPS_D / 8;
    // dQ: BLOCK_M rows x D; warps DQ_WARPS_M x DQ_WARPS_D, each (16 DQ_WARP_TILES_M) x (8 DQ_WARP_TILES_D).
    static constexpr int DQ_WARPS_M = DQ_WARPS_M_;
    static constexpr int DQ_WARPS_D = WARPS / DQ_WARPS_M;
    static constexpr int DQ_WARP_TILES_M = BLOCK_M / DQ_WARPS_M / 16;
    static constexpr int DQ_WARP_TILES_D = D / DQ_WARPS_D / 8;

    static_assert(sizeof(T) == 2, "16-bit element types only");
    static_assert(D % 64 == 0, "swizzled rows are whole 128-byte lines");
    static_assert(WARPS % SCORE_WARPS_M == 0 && WARPS % DKDV_WARPS_N == 0 && WARPS % DQ_WARPS_M == 0, "warp grid");
    static_assert(SCORE_WARP_TILES_M * SCORE_WARPS_M * 16 == BLOCK_M, "S tiling (rows)");
    static_assert(SCORE_WARP_TILES_N * SCORE_WARPS_N * 8 == BLOCK_N, "S tiling (keys)");
    static_assert(DKDV_WARP_TILES_N * DKDV_WARPS_N * 16 == BLOCK_N, "dK/dV tiling (keys)");
    static_assert(DKDV_WARP_TILES_D * DKDV_WARPS_D * 8 == D, "dK/dV tiling (dims)");
    static_assert(DQ_WARP_TILES_M * DQ_WARPS_M * 16 == BLOCK_M, "dQ tiling (rows)");
    static_assert(DQ_WARP_TILES_D * DQ_WARPS_D * 8 == D, "dQ tiling (dims)");
    static_assert(DKDV_WARP_TILES_D % 2 == 0 && DQ_WARP_TILES_D % 2 == 0,
                  "B operands are loaded two n-tiles at a time");
    static_assert(SCORE_WARP_TILES_N % 2 == 0 || SCORE_WARP_TILES_N == 1, "one n-tile is loaded with ldmatrix.x2");
};

template <class T, int D, BwdTiles TILES, class G = BwdGeometry<D, TILES>>
using DkdvTileShape = BwdTileShape<T, D, G::DKDV_BLOCK_M, G::DKDV_BLOCK_N, G::DKDV_THREADS, G::SCORE_WARPS_M,
                                   G::DKDV_WARPS_N, G::DQ_WARPS_M>;

template <class T, int D, BwdTiles TILES, class G = BwdGeometry<D, TILES>>
using DqTileShape = BwdTileShape<T, D, G::DQ_BLOCK_M, G::DQ_BLOCK_N, G::DQ_THREADS, G::SCORE_WARPS_M,
                                 G::DKDV_WARPS_N, G::DQ_WARPS_M>;

template <class T, int D, BwdTiles TILES = BwdTiles::COMPACT>
struct DkdvTraits : DkdvTileShape<T, D, TILES> {
    using Shape = DkdvTileShape<T, D, TILES>;
    using Geometry = BwdGeometry<D, TILES>;
    // Q's buffers: 2 (the next query tile loads during the whole iteration) or, in LARGE_1STAGE, 1 (it
    // loads once dK += dS^T Q has read the current one, dkdv.h).
    static constexpr int Q_STAGES = TILES == BwdTiles::LARGE_1STAGE ? 1 : 2;
    // Offsets in elements of T from the dynamic shared memory base (layout in the comment at the top).
    static constexpr int SMEM_K = 0;
    static constexpr int SMEM_V = SMEM_K + Shape::BLOCK_N * D;
    static constexpr int SMEM_Q = SMEM_V + Shape::BLOCK_N * D;  // Q_STAGES buffers
    static constexpr int SMEM_DO = SMEM_Q + Q_STAGES * Shape::BLOCK_M * D;
    static constexpr int SMEM_P = SMEM_DO + Shape::BLOCK_M * D;
    static constexpr int SMEM_DS = SMEM_P + Shape::BLOCK_M * Shape::P_DS_TILE_COLS;
    static constexpr int SMEM_ELEMS = SMEM_DS + Shape::BLOCK_M * Shape::P_DS_TILE_COLS;
    static constexpr int SMEM_BYTES = SMEM_ELEMS * 2;
    // The P and dS stores through per-lane offsets computed once (CFragOffsets, common/fragments.h) rather
    // than swizzled per store: ptxas otherwise rebuilds those addresses in the loop at D = 64 and 128
    // (int+pred per tile 248 -> 182 and 239 -> 186 on sm_80). At D = 256 ptxas rebuilds other addresses
    // instead (compact tile: int+pred 142 -> 152 on sm_80, measured with the loop-carried bases of
    // dkdv.h), so not there; in D = 256's large tile they spill (4 bytes on sm_90a).
    static constexpr bool HOIST_SCORE_STORES = D <= 128;
    // Those offsets made loop-carried too (keep_in_registers, once per iteration) in the compact tile at
    // D = 128, where ptxas rebuilt them in the loop (int+pred 127 -> 111 on sm_80, 2026-12-03); at D = 64
    // it keeps them anyway, and the XORs cost 9.
    static constexpr bool KEEP_SCORE_STORES = HOIST_SCORE_STORES && D == 128 && TILES == BwdTiles::COMPACT;
    // dO's ldmatrix addresses as Q's plus a base that follows Q's double buffer (dkdv.h), rather than dO's
    // own two sets of four registers: the large tile's dK and dV accumulators (128 registers) leave no
    // room for them (36 bytes of spills on sm_80 with them).
    static constexpr bool SHARE_Q_DO_OFFSETS = TILES != BwdTiles::COMPACT;
    // The next Q / dO tile's source offsets and the LSE / delta offset stepped from tile to tile (dkdv.h,
    // TilePos) rather than recomputed from (head, row): int+pred per tile on sm_80 126 / 163 / 142 ->
    // 86 / 127 / 102 at D = 64 / 128 / 256 (compact; D = 128: 111 with KEEP_SCORE_STORES), 189 -> 152 at
    // D = 256 (large, sm_90a). The stepped offsets stay live across the loop: at D = 128's large tile and
    // in D = 256's one-stage tile they spill 8 bytes on sm_80 (2026-12-03), so those recompute them.
    static constexpr bool STEP_TILE_OFFSETS = TILES == BwdTiles::COMPACT || (TILES == BwdTiles::LARGE && D == 256);
    // Q's two buffers at offsets that differ only in these bits, every in-buffer offset below them: the
    // lane's ldmatrix addresses switch buffers with one XOR (dkdv.h). 0 with one buffer (never applied).
    static constexpr int Q_TILE = Shape::BLOCK_M * D;
    static constexpr int Q_STAGE_FLIP = Q_STAGES == 2 ? SMEM_Q ^ (SMEM_Q + Q_TILE) : 0;
    static_assert(Q_STAGES == 1 || ((Q_TILE & (Q_TILE - 1)) == 0 && SMEM_Q % Q_TILE == 0),
                  "Q buffers switch by XOR");
    static_assert(SMEM_BYTES == Geometry::DKDV_SMEM, "GSDPA_BWD_[LARGE_]DKDV_SMEM_* must match the layout");
    static_assert(SMEM_BYTES <= Geometry::SMEM_CEILING, "must fit the opt-in limit of the archs it runs on");
};

template <class T, int D, BwdTiles TILES = BwdTiles::COMPACT>
struct DqTraits : DqTileShape<T, D, TILES> {
    using Shape = DqTileShape<T, D, TILES>;
    using Geometry = BwdGeometry<D, TILES>;
    // K's buffers: 2 or, in LARGE_1STAGE, 1 (the next key tile loads once dQ += dS K has read it, dq.h).
    static constexpr int K_STAGES = TILES == BwdTiles::LARGE_1STAGE ? 1 : 2;
    static constexpr int SMEM_Q = 0;
    static constexpr int SMEM_DO = SMEM_Q + Shape::BLOCK_M * D;
    static constexpr int SMEM_K = SMEM_DO + Shape::BLOCK_M * D;  // K_STAGES buffers
    static constexpr int SMEM_V = SMEM_K + K_STAGES * Shape::BLOCK_N * D;
    static constexpr int SMEM_DS = SMEM_V + Shape::BLOCK_N * D;
    static constexpr int SMEM_ELEMS = SMEM_DS + Shape::BLOCK_M * Shape::P_DS_TILE_COLS;
    static constexpr int SMEM_BYTES = SMEM_ELEMS * 2;
    // K's two buffers switch by XOR, as Q's in DkdvTraits (dq.h); 0 with one buffer (never applied).
    static constexpr int K_TILE = Shape::BLOCK_N * D;
    static constexpr int K_STAGE_FLIP = K_STAGES == 2 ? SMEM_K ^ (SMEM_K + K_TILE) : 0;
    static_assert(K_STAGES == 1 || ((K_TILE & (K_TILE - 1)) == 0 && SMEM_K % K_TILE == 0),
                  "K buffers switch by XOR");
    static_assert(SMEM_BYTES == Geometry::DQ_SMEM, "GSDPA_BWD_[LARGE_]DQ_SMEM_* must match the layout");
    static_assert(SMEM_BYTES <= Geometry::SMEM_CEILING, "must fit the opt-in limit of the archs it runs on");
};

}  // namespace bwd
}  // namespace gsdpa
