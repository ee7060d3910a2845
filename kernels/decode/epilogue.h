// epilogue.h: what a decode block writes for its rows.
//
// One split (num_splits == 1): the final Y = O * act(G) in dtype and the LSE, straight from the
// accumulator registers (a decode block has at most a few hundred output rows; staging them through
// shared memory for 16-byte stores, as the forward does, is not worth a barrier here).
// Several splits: this split's O (normalised by its own row sum) and LSE in f32 into the workspace,
// merged by combine.h, which applies the gate.
// Rows that see no key: Y = 0 (the gate is not read), LSE = -inf, as in the forward. Rows of a block
// that failed a device-value check (split.h): NaN in Y / O and LSE.
#pragma once

#include "../common/activation.h"
#include "../forward/online_softmax.h"
#include "traits.h"

namespace gsdpa {
namespace decode {

// Element offset of (sequence b, query i, packed token t, head h) in a [B, Sq, H(, D)] tensor, or in a
// packed [Tq, H(, D)] one when varlen (the batch stride is then unused).
GSDPA_DEVICE int64_t token_offset(const GsdpaStrides &stride, bool varlen, int b, int i, int t, int h) {
    return (varlen ? int64_t(t) * stride.row : int64_t(b) * stride.batch + int64_t(i) * stride.row) +
           int64_t(h) * stride.head;
}

// f32 offset of row (token t, head h) of split s in the workspace: lse_partial [S, Tq, Hq], o_partial the
// same times D.
GSDPA_DEVICE int64_t partial_row(const GsdpaDecodeParams &p, int split, int t, int h) {
    return (int64_t(split) * p.total_q + t) * p.heads_q + h;
}

// Offset of the LSE of (b, i, t, h): [B, Hq, Sq], or [Hq, Tq] when varlen.
GSDPA_DEVICE int64_t lse_offset(const GsdpaDecodeParams &p, bool varlen, int b, int i, int t, int h) {
    return (varlen ? int64_t(t) : int64_t(b) * p.lse_batch_stride + i) + int64_t(h) * p.lse_head_stride;
}

// Which query a block row is: position i in its sequence, packed token t, query head h.
struct RowQuery {
    int i;
    int t;
    int h;
};

// Everything a block's epilogue needs to place its rows.
struct BlockRows {
    int b;
    int kv_head;
    int group;       // query heads per kv head
    int token0;      // packed token of the sequence's query 0
    int m0;          // first block row (row r = i * group + hg)
    int rows_total;  // group * seqlen_q of this sequence
    bool varlen;

    GSDPA_DEVICE RowQuery query(int rr) const {
        const int i = rr / group;
        return RowQuery{i, token0 + i, kv_head * group + rr % group};
    }
};

template <class Tr>
GSDPA_DEVICE void write_decode_outputs(const GsdpaDecodeParams &p, const BlockRows &rows,
                                       float (&acc_o)[Tr::N_TILES_O][4], fwd::OnlineSoftmax &softmax,
                                       bool invalid, int split, int tid) {
    using T = typename Tr::T;
    const int lane = tid & 31;
    const int warp_row0 = (tid >> 5) * 16;
    const int col0 = 2 * (lane & 3);

    float inv_sum[2], lse[2];
    softmax.finish(p.scale_log2, inv_sum, lse);

#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int rr = rows.m0 + warp_row0 + (lane >> 2) + 8 * half;
        if (rr >= rows.rows_total) continue;
        const RowQuery q = rows.query(rr);
        const bool empty = lse[half] == -INFINITY;
        const float row_lse = invalid ? NAN : lse[half];

        if (p.num_splits > 1) {
            float *o = p.o_partial + partial_row(p, split, q.t, q.h) * Tr::D;
#pragma unroll
            for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
                float2 v = make_float2(acc_o[nt][2 * half] * inv_sum[half], acc_o[nt][2 * half + 1] * inv_sum[half]);
                if (invalid) v = make_float2(NAN, NAN);
                *reinterpret_cast<float2 *>(o + nt * 8 + col0) = v;
            }
            if ((lane & 3) == 0) p.lse_partial[partial_row(p, split, q.t, q.h)] = row_lse;
            continue;
        }

        const int gate_mode = (empty || invalid) ? int(GSDPA_GATE_NONE) : p.gate_mode;
        float factor = 1.0f;
        if (gate_mode == GSDPA_GATE_HEADWISE) {
            const T *g = static_cast<const T *>(p.g) + token_offset(p.g_stride, rows.varlen, rows.b, q.i, q.t, q.h);
            factor = gate_activation(to_float(*g), p.activation);
        }
        const T *g_row = gate_mode == GSDPA_GATE_ELEMENTWISE
                             ? static_cast<const T *>(p.g) + token_offset(p.g_stride, rows.varlen, rows.b, q.i, q.t, q.h)
                             : nullptr;
        T *y = static_cast<T *>(p.y) + token_offset(p.y_stride, rows.varlen, rows.b, q.i, q.t, q.h);
#pragma unroll
        for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
            const int col = nt * 8 + col0;
            float2 v = make_float2(acc_o[nt][2 * half] * inv_sum[half] * factor,
                                   acc_o[nt][2 * half + 1] * inv_sum[half] * factor);
            if (g_row != nullptr) {
                const float2 g = unpack_float2<T>(*reinterpret_cast<const uint32_t *>(g_row + col));
                v.x *= gate_activation(g.x, p.activation);
                v.y *= gate_activation(g.y, p.activation);
            }
            if (invalid) v = make_float2(NAN, NAN);
            *reinterpret_cast<uint32_t *>(y + col) = pack_float2<T>(v.x, v.y);
        }
        if (p.lse != nullptr && (lane & 3) == 0) p.lse[lse_offset(p, rows.varlen, rows.b, q.i, q.t, q.h)] = row_lse;
    }
}

}  // namespace decode
}  // namespace gsdpa
