// kernel_traits.h: compile-time shape of the Hopper forward (forward_sm90.cu) for one (dtype, head dim).
//
// Block: 3 warpgroups (384 threads). Warpgroup 0 is the producer: one elected thread of its first warp
// issues every TMA load; the block's registers move to the consumers with setmaxnreg (56 / 224 per
// thread: 128 x 56 + 256 x 224 = 64512 of the SM's 65536). ptxas allocates each side within its budget:
// with 24 / 240 or 40 / 232 the producer's address arithmetic (24) or the d256 consumer spilled; 56 / 224
// has no spill at any head dim (CUDA 13.0). Warpgroups 1 and 2 are the consumers, each
// owning 64 of the BLOCK_M = 128 query rows (one wgmma m64 tile).
//
//   D    BLOCK_N  S regs  O regs  smem     why
//   64   128      64      32      83 KiB   128-key tiles: fewer barrier round trips per key
//   128  128      64      64      163 KiB  two K/V stages of 128 keys fit beside Q
//   256  64       32      128     195 KiB  128 O accumulators per thread leave room for a 64-key S only
//
// Shared memory (bytes from the dynamic base, 1024-aligned on the GPU): every tile is stored as D / 64
// column blocks of [rows][64] 16-bit elements, one 128-byte row each, 128-byte swizzled (16-byte chunk j
// of row r at chunk j ^ (r % 8)): exactly one TMA box per column block, and the layout the wgmma
// descriptors read with the 128-byte swizzle.
//   [Q: BLOCK_M x D][K: 2 stages x BLOCK_N x D][V: 2 stages x BLOCK_N x D][mbarriers: 1 KiB][sink mass: 2 KiB]
// The elementwise gate tile (BLOCK_M x D, same layout) replaces Q once both consumers are past their
// last S = Q K^T.
#pragma once

#include "../common/hopper/mbarrier.h"
#include "../common/hopper/tma.h"
#include "../common/hopper/wgmma.h"

namespace gsdpa {
namespace fwd90 {

template <int D>
struct Sm90BlockN;
template <>
struct Sm90BlockN<64> {
    static constexpr int value = GSDPA_FWD_SM90_BLOCK_N_D64, smem = GSDPA_FWD_SM90_SMEM_D64;
};
template <>
struct Sm90BlockN<128> {
    static constexpr int value = GSDPA_FWD_SM90_BLOCK_N_D128, smem = GSDPA_FWD_SM90_SMEM_D128;
};
template <>
struct Sm90BlockN<256> {
    static constexpr int value = GSDPA_FWD_SM90_BLOCK_N_D256, smem = GSDPA_FWD_SM90_SMEM_D256;
};

template <class T_, int D_>
struct Sm90Traits {
    using T = T_;
    static constexpr int D = D_;
    static constexpr int BLOCK_M = GSDPA_FWD_SM90_BLOCK_M;
    static constexpr int BLOCK_N = Sm90BlockN<D>::value;
    static constexpr int THREADS = GSDPA_FWD_SM90_THREADS;
    static constexpr int WG_ROWS = 64;  // query rows per consumer warpgroup
    static constexpr int CONSUMER_WARPS = 8;
    static constexpr int STAGES = 2;
    static constexpr int PRODUCER_REGS = 56, CONSUMER_REGS = 224;
    // Named barriers (0 is __syncthreads): the epilogue's, one per consumer warpgroup (128 threads), the
    // ping-pong's turns, one per consumer warpgroup (256 threads: it waits, the other arrives), and the
    // two consumer warpgroups' meeting before O is staged over K (256 threads; epilogue.h).
    static constexpr int EPILOGUE_BARRIER = 1, SCHEDULER_BARRIER = 3, KEYS_DONE_BARRIER = 5;

    static constexpr int BOX_COLS = GSDPA_FWD_SM90_BOX_COLS;  // 64 elements = 128 bytes
    static constexpr int COL_BLOCKS = D / BOX_COLS;
    static constexpr int ROW_BYTES = BOX_COLS * 2;

    // Fragment counts per consumer thread (wgmma accumulators as 8-column tiles of 4: the mma.sync C
    // layout, so forward/online_softmax.h and common/mask.h apply as they are).
    static constexpr int N_TILES_S = BLOCK_N / 8;
    static constexpr int N_TILES_O = D / 8;
    static constexpr int K_STEPS_QK = D / 16;
    static constexpr int K_STEPS_PV = BLOCK_N / 16;

    // Byte sizes and offsets.
    static constexpr int Q_BLOCK_BYTES = BLOCK_M * ROW_BYTES;   // one column block of Q
    static constexpr int KV_BLOCK_BYTES = BLOCK_N * ROW_BYTES;  // one column block of a K or V tile
    static constexpr int Q_BYTES = COL_BLOCKS * Q_BLOCK_BYTES;
    static constexpr int KV_BYTES = COL_BLOCKS * KV_BLOCK_BYTES;
    static constexpr int SMEM_Q = 0;
    static constexpr int SMEM_K = SMEM_Q + Q_BYTES;
    static constexpr int SMEM_V = SMEM_K + STAGES * KV_BYTES;
    static constexpr int SMEM_BARRIERS = SMEM_V + STAGES * KV_BYTES;
    // The sink mass diagnostic's sums: 8 bytes per consumer thread (forward_sm90.cu).
    static constexpr int SMEM_SINK = SMEM_BARRIERS + 1024;
    static constexpr int SMEM_BYTES = SMEM_SINK + 256 * 8;
    // With the elementwise gate, O is staged over the K stages (epilogue.h), in Q's layout: both
    // warpgroups' 64-row tiles must fit there.
    static_assert(STAGES * KV_BYTES >= Q_BYTES, "O's staging tile fits in the K stages");
    GSDPA_DEVICE static int smem_k(int stage) { return SMEM_K + stage * KV_BYTES; }
    GSDPA_DEVICE static int smem_v(int stage) { return SMEM_V + stage * KV_BYTES; }

    // Byte offset of element (row, col) of the Q tile (or the gate tile that replaces it).
    GSDPA_DEVICE static int q_tile_offset(int row, int col) {
        const int chunk = (col % BOX_COLS) / 8;
        return (col / BOX_COLS) * Q_BLOCK_BYTES + row * ROW_BYTES + ((chunk ^ (row % 8)) * 16) + (col % 8) * 2;
    }

    static_assert(sizeof(T) == 2, "16-bit element types only");
    static_assert(WG_ROWS == GSDPA_FWD_SM90_STORE_ROWS, "a TMA store box is one warpgroup's rows");
    static_assert(D % BOX_COLS == 0 && BLOCK_N % 16 == 0, "whole column blocks and k-steps");
    static_assert(Q_BLOCK_BYTES % 1024 == 0 && KV_BLOCK_BYTES % 1024 == 0, "tiles aligned to the swizzle repeat");
    static_assert(SMEM_BYTES == Sm90BlockN<D>::smem, "GSDPA_FWD_SM90_SMEM_* must match the layout");
    static_assert(SMEM_BYTES <= 227 * 1024, "sm_90: 227 KiB of shared memory per block");
    static_assert(128 * PRODUCER_REGS + 256 * CONSUMER_REGS <= 65536, "the register file");
};

}  // namespace fwd90
}  // namespace gsdpa
