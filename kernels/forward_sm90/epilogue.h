// epilogue.h: the Hopper forward's output stage, per consumer warpgroup (64 rows).
//
// The same arithmetic as the mma.sync forward's epilogue (forward/epilogue.h): O = acc / l, Y = O * act(G)
// with the elementwise gate read per element pair, the headwise gate one logit per row, the same fast
// sigmoid / silu (common/activation.h), LSE = scale * m + ln(l) from forward/online_softmax.h.
//
// Y (and the optional O) leave through shared memory and a TMA store: each warp writes its 16 rows of the
// tile, rounded to T, with stmatrix into the warpgroup's 64 rows of the Q region (Q's swizzled layout,
// which is the store box's), every thread fences (fence.proxy.async: the TMA unit reads through the async
// proxy), the warpgroup meets at its named barrier, and thread 0 of the warpgroup issues one TMA store per
// 64-column block and waits until the unit has read the tile (cp.async.bulk.wait_group.read) before the
// tile is reused or the block ends. TMA clips the rows past seqlen_q (the tensor map's row extent). O goes
// first, the warpgroup meets again, then Y overwrites the tile. Where the launch could not describe an
// output with a tensor map (GsdpaFwdSm90Params::tma_store), it is stored from registers instead: 4-byte
// stores, rows past seqlen_q left alone.
//
// The warpgroup's Q rows are free here: its last S = Q K^T has retired, and the other warpgroup reads
// only its own rows. The elementwise gate tile was TMA-loaded over Q during the last key tile
// (forward_sm90.cu); each lane reads its gate pairs into registers before any row is overwritten (a warp
// reads and writes only its own 16 rows). The headwise logits (one per row) are read from global memory.
#pragma once

#include "../common/activation.h"
#include "../common/hopper/stmatrix.h"
#include "../forward/diagnostics.h"
#include "../forward/online_softmax.h"
#include "kernel_traits.h"

#if GSDPA_HOPPER
namespace gsdpa {
namespace fwd90 {

// Writes a lane's accumulator pairs of the warpgroup's 64 x D tile, rounded to T, straight from registers:
// 4-byte stores of rows < valid_rows (a quad covers 16 contiguous bytes of a row).
template <class Tr>
GSDPA_DEVICE void store_pairs(typename Tr::T *gmem, int64_t row_stride, const float (&acc)[Tr::N_TILES_O][4],
                              int warp_row0, int valid_rows, int lane) {
#pragma unroll
    for (int row_half = 0; row_half < 2; ++row_half) {
        const int row = warp_row0 + (lane >> 2) + 8 * row_half;
        if (row < valid_rows) {
            uint32_t *dst = reinterpret_cast<uint32_t *>(gmem + int64_t(row) * row_stride + 2 * (lane & 3));
#pragma unroll
            for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
                dst[nt * 4] = pack_float2<typename Tr::T>(acc[nt][2 * row_half], acc[nt][2 * row_half + 1]);
            }
        }
    }
}

// Writes a warp's 16 rows of the warpgroup's 64 x D tile, rounded to T, into shared memory with stmatrix
// (Q's layout: column block c at tile + c * Q_BLOCK_BYTES, 128-byte swizzled rows). Matrix j of each x4
// is rows 8 (j & 1) .. + 7 of 8-column tile nt + (j >> 1), whose row r lane 8 j + r addresses.
template <class Tr>
GSDPA_DEVICE void stage_tile(char *tile, const float (&acc)[Tr::N_TILES_O][4], int warp_row0, int lane) {
    using T = typename Tr::T;
    const int j = lane >> 3;
    const int row = warp_row0 + (lane & 7) + 8 * (j & 1);
#pragma unroll
    for (int nt = 0; nt < Tr::N_TILES_O; nt += 2) {
        const uint32_t r[4] = {pack_float2<T>(acc[nt][0], acc[nt][1]), pack_float2<T>(acc[nt][2], acc[nt][3]),
                               pack_float2<T>(acc[nt + 1][0], acc[nt + 1][1]),
                               pack_float2<T>(acc[nt + 1][2], acc[nt + 1][3])};
        stmatrix_x4(tile + Tr::q_tile_offset(row, (nt + (j >> 1)) * 8), r);
    }
}

// Hands the staged tile to the TMA unit: every thread's stmatrix writes are made visible to the async
// proxy, the warpgroup meets at named barrier `bar` (its 128 threads), and thread 0 stores the column
// blocks at (row, h, b) and waits until they have been read. Warpgroup collective.
template <class Tr>
GSDPA_DEVICE void tma_store_tile(const GsdpaTensorMap &map, const char *tile, int32_t row, int h, int b, int bar,
                                 int wtid) {
    fence_proxy_async();
    named_barrier_sync(bar, 128);
    if (wtid == 0) {
#pragma unroll
        for (int c = 0; c < Tr::COL_BLOCKS; ++c) {
            const int32_t coords[4] = {c * Tr::BOX_COLS, row, h, b};
            tma_store<4>(map, tile + c * Tr::Q_BLOCK_BYTES, coords);
        }
        bulk_commit();
        bulk_wait_read<0>();
    }
}

// Where one consumer warpgroup writes: its row 0 (query row m0 + 64 wg of the sequence) in y, o (null: not
// requested), g (null: no gate) and lse (null: not requested), and how many of its rows are real.
template <class T>
struct Sm90Outputs {
    T *y;
    T *o;
    const T *g;           // headwise gate logits (null otherwise)
    const char *g_tile;   // the elementwise gate tile in shared memory (Q's layout; null otherwise)
    int g_tile_row0;      // the warpgroup's first row in it
    float *lse;
    // The diagnostics (docs/diagnostics.md; null: not requested): the sink mass of row 0, laid out like
    // lse, with this thread's sink sums (forward_sm90.cu), and the warpgroup's first gate partial (one
    // per warp, forward/diagnostics.h).
    float *sink_mass;
    const float2 *sink_slot;
    float *gate_partials;
    int64_t y_row_stride, o_row_stride, g_row_stride;
    int rows;
    // The TMA store: the maps (null: that output is stored from registers), the warpgroup's 64 rows of
    // the Q region to stage in, the box coordinates of its row 0, and its named barrier.
    const GsdpaTensorMap *y_map, *o_map;
    char *stage;
    char *o_stage;  // O's staging rows with the elementwise gate (over the K stages), null otherwise
    int32_t store_row;
    int store_h, store_b, store_bar;
};

// Warp collective (the quad reductions of the softmax's finish).
template <class Tr>
GSDPA_DEVICE void write_outputs(const Sm90Outputs<typename Tr::T> &out, float (&acc_o)[Tr::N_TILES_O][4],
                                fwd::OnlineSoftmax &softmax, float scale_log2, int gate_mode, int activation,
                                int wtid) {
    using T = typename Tr::T;
    const int lane = wtid & 31;
    const int warp_row0 = (wtid >> 5) * 16;
    const int my_row[2] = {warp_row0 + (lane >> 2), warp_row0 + (lane >> 2) + 8};

    float inv_sum[2], lse[2];
    softmax.finish(scale_log2, inv_sum, lse);
    // The rows' sink mass: the quad's sums over the sink keys, in the units of the final row max as l is,
    // times 1 / l (0 for a row that saw no key), written like LSE.
    if (out.sink_mass != nullptr) {
        const float2 sums = ld_shared(out.sink_slot);
        const float mass[2] = {quad_sum(sums.x) * inv_sum[0], quad_sum(sums.y) * inv_sum[1]};
        if ((lane & 3) == 0) {
#pragma unroll
            for (int row_half = 0; row_half < 2; ++row_half) {
                if (my_row[row_half] < out.rows) out.sink_mass[my_row[row_half]] = mass[row_half];
            }
        }
    }
    // The gate partial sum: this lane's act(G) values of real rows (rows < rows), then the warp's in the
    // fixed butterfly order of fwd::warp_sum.
    const bool gate_partials = out.gate_partials != nullptr;
    float gate_sum = 0.0f;
#pragma unroll
    for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc_o[nt][i] *= inv_sum[i >> 1];
    }

    // The ungated O first. Without the elementwise gate it is staged in the warpgroup's Q rows, which Y
    // then reuses. With it those rows hold the gate tile, which Y still has to read, so O is staged in the
    // warpgroup's rows of a tile laid out like Q over the K stages (out.o_stage), once both warpgroups are
    // past their last wgmma reading K (forward_sm90.cu: the 256-thread barrier before this call).
    if (out.o != nullptr) {
        if (out.o_map != nullptr) {
            const bool over_q = gate_mode != GSDPA_GATE_ELEMENTWISE;
            char *o_stage = over_q ? out.stage : out.o_stage;
            stage_tile<Tr>(o_stage, acc_o, warp_row0, lane);
            tma_store_tile<Tr>(*out.o_map, o_stage, out.store_row, out.store_h, out.store_b, out.store_bar, wtid);
            // Thread 0 has waited for the TMA unit's read: the tile may be overwritten by Y.
            if (over_q && out.y_map != nullptr) named_barrier_sync(out.store_bar, 128);
        } else {
            store_pairs<Tr>(out.o, out.o_row_stride, acc_o, warp_row0, out.rows, lane);
        }
    }

    // Y = O * act(G), in place.
    if (gate_mode == GSDPA_GATE_ELEMENTWISE) {
#pragma unroll
        for (int row_half = 0; row_half < 2; ++row_half) {
            const int tile_row = out.g_tile_row0 + my_row[row_half];
#pragma unroll
            for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
                // Rows past seqlen_q hold TMA's zero fill; they are not stored.
                const float2 g = unpack_float2<T>(ld_shared(reinterpret_cast<const uint32_t *>(
                    out.g_tile + Tr::q_tile_offset(tile_row, nt * 8 + 2 * (lane & 3)))));
                const float a0 = gate_activation(g.x, activation), a1 = gate_activation(g.y, activation);
                if (gate_partials && my_row[row_half] < out.rows) gate_sum += a0 + a1;
                acc_o[nt][2 * row_half] *= a0;
                acc_o[nt][2 * row_half + 1] *= a1;
            }
        }
    } else if (gate_mode == GSDPA_GATE_HEADWISE) {
        float factor[2] = {1.0f, 1.0f};
#pragma unroll
        for (int row_half = 0; row_half < 2; ++row_half) {
            if (my_row[row_half] < out.rows) {
                factor[row_half] =
                    gate_activation(to_float(out.g[int64_t(my_row[row_half]) * out.g_row_stride]), activation);
                // One value per row: lane t = 0 of each quad counts it.
                if (gate_partials && (lane & 3) == 0) gate_sum += factor[row_half];
            }
        }
#pragma unroll
        for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) acc_o[nt][i] *= factor[i >> 1];
        }
    }

    if (gate_partials) {
        gate_sum = fwd::warp_sum(gate_sum);
        if (lane == 0) out.gate_partials[wtid >> 5] = gate_sum;
    }

    if (out.lse != nullptr && (lane & 3) == 0) {
#pragma unroll
        for (int row_half = 0; row_half < 2; ++row_half) {
            if (my_row[row_half] < out.rows) out.lse[my_row[row_half]] = lse[row_half];
        }
    }

    if (out.y_map != nullptr) {
        __syncwarp();  // the warp's stmatrix rows are other lanes' gate reads (a warp reads only its rows)
        stage_tile<Tr>(out.stage, acc_o, warp_row0, lane);
        tma_store_tile<Tr>(*out.y_map, out.stage, out.store_row, out.store_h, out.store_b, out.store_bar, wtid);
    } else {
        store_pairs<Tr>(out.y, out.y_row_stride, acc_o, warp_row0, out.rows, lane);
    }
}

}  // namespace fwd90
}  // namespace gsdpa
#endif
