// epilogue.h: the Hopper forward's output stage, per consumer warpgroup (64 rows).
//
// The same arithmetic as the mma.sync forward's epilogue (forward/epilogue.h): O = acc / l, Y = O * act(G)
// with the elementwise gate read per element pair, the headwise gate one logit per row, the same fast
// sigmoid / silu (common/activation.h), LSE = scale * m + ln(l) from forward/online_softmax.h. Y (and O)
// are rounded to T and stored from registers, rows past seqlen_q left alone: no staging through shared
// memory and no TMA store yet (the emulator's race detector does not order hand-offs through a
// warpgroup's partial named barrier, so a staged store is left for a TMA store; docs/hopper-forward.md).
// The elementwise gate tile was TMA-loaded over Q during the last key tile (forward_sm90.cu); the
// headwise logits (one per row) are read from global memory here.
#pragma once

#include "../common/activation.h"
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
    int64_t y_row_stride, o_row_stride, g_row_stride;
    int rows;
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
#pragma unroll
    for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc_o[nt][i] *= inv_sum[i >> 1];
    }

    if (out.o != nullptr) store_pairs<Tr>(out.o, out.o_row_stride, acc_o, warp_row0, out.rows, lane);

    float y[Tr::N_TILES_O][4];
    if (gate_mode == GSDPA_GATE_ELEMENTWISE) {
#pragma unroll
        for (int row_half = 0; row_half < 2; ++row_half) {
            const int tile_row = out.g_tile_row0 + my_row[row_half];
#pragma unroll
            for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
                // Rows past seqlen_q hold TMA's zero fill; they are not stored.
                const float2 g = unpack_float2<T>(ld_shared(reinterpret_cast<const uint32_t *>(
                    out.g_tile + Tr::q_tile_offset(tile_row, nt * 8 + 2 * (lane & 3)))));
                const float2 a = make_float2(gate_activation(g.x, activation), gate_activation(g.y, activation));
                y[nt][2 * row_half] = acc_o[nt][2 * row_half] * a.x;
                y[nt][2 * row_half + 1] = acc_o[nt][2 * row_half + 1] * a.y;
            }
        }
    } else {
        float factor[2] = {1.0f, 1.0f};
        if (gate_mode == GSDPA_GATE_HEADWISE) {
#pragma unroll
            for (int row_half = 0; row_half < 2; ++row_half) {
                if (my_row[row_half] < out.rows) {
                    factor[row_half] =
                        gate_activation(to_float(out.g[int64_t(my_row[row_half]) * out.g_row_stride]), activation);
                }
            }
        }
#pragma unroll
        for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) y[nt][i] = acc_o[nt][i] * factor[i >> 1];
        }
    }

    if (out.lse != nullptr && (lane & 3) == 0) {
#pragma unroll
        for (int row_half = 0; row_half < 2; ++row_half) {
            if (my_row[row_half] < out.rows) out.lse[my_row[row_half]] = lse[row_half];
        }
    }

    store_pairs<Tr>(out.y, out.y_row_stride, y, warp_row0, out.rows, lane);
}

}  // namespace fwd90
}  // namespace gsdpa
#endif
