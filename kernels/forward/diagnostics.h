// diagnostics.h: the forward's optional measurements of the gated-attention paper's two diagnostics
// (docs/diagnostics.md): the attention sink mass per query row and the mean gate score per head. Both
// are off (null output pointers, n_sink = 0) by default.
//
// Sink mass. For a row with final max m and sum l, the mass on keys j < n_sink is
//   sum_{j < n_sink} 2^(s_j * scale_log2 - m * scale_log2) / l.
// The key loop visits tiles from the last to the first, so the tiles holding keys below n_sink are the
// last ones it visits. They take the loop's rare path (with the masked tiles, common/mask.h
// CommonKeyTiles), where add() folds the lane's raw scores of its sink columns into a per-lane sum
// relative to the lane's own running max (an online softmax of just those scores). finish() brings
// every lane's sum to the row's final max, adds the quad and multiplies by 1 / l, as the output is
// normalised. No P is stored, and the common tile's code is the same as without diagnostics.
//
// Gate partials. The epilogue already evaluates act(G) for every output element (elementwise) or row
// (headwise); each warp sums the values of its real rows (rows < seqlen_q) in registers, reduces over
// its lanes in a fixed butterfly order and writes one float per warp. gsdpa_diag_gate_stats
// (gate_stats.cu) adds a head's partials in index order: the result does not depend on scheduling.
#pragma once

#include "online_softmax.h"

namespace gsdpa {
namespace fwd {

struct SinkMass {
    float partial[2];  // this lane's sum of 2^(s * scale_log2 - base) over its sink columns
    float base[2];     // this lane's max of s * scale_log2 over its sink columns (-inf: none yet)

    GSDPA_DEVICE void init() {
        partial[0] = partial[1] = 0.0f;
        base[0] = base[1] = -INFINITY;
    }

    // Folds in the raw (masked) scores of keys below n_sink of a score tile whose first key is key0,
    // one score at a time (an online max and sum per row), stopping at the first 8-key column group
    // past n_sink: this runs on the loop's rare path, where few registers are free, and usually only
    // for a handful of keys. Masked scores are -inf and add 0.
    template <int N_TILES_S>
    GSDPA_DEVICE void add(const float (&s)[N_TILES_S][4], int key0, int n_sink, float scale_log2, int lane) {
        // The lane's column c = nt * 8 + 2 (lane % 4) + j of the tile counts iff key0 + c < n_sink.
        const int limit = n_sink - key0 - 2 * (lane & 3);
#pragma unroll
        for (int nt = 0; nt < N_TILES_S; ++nt) {
            if (nt * 8 >= limit) break;
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                if (nt * 8 + j >= limit) break;
#pragma unroll
                for (int row_half = 0; row_half < 2; ++row_half) {
                    const float x = s[nt][2 * row_half + j] * scale_log2;
                    const float m = fmaxf(base[row_half], x);
                    // Nothing visible yet: base 0 keeps -inf - (-inf) out; both terms are then 0.
                    const float b = m == -INFINITY ? 0.0f : m;
                    partial[row_half] = partial[row_half] * fast_exp2(base[row_half] - b) + fast_exp2(x - b);
                    base[row_half] = m;
                }
            }
        }
    }

    // The sink mass of the thread's two rows, given OnlineSoftmax::finish's inv_sum (0 for a row that saw
    // no key). Warp collective.
    GSDPA_DEVICE void finish(const OnlineSoftmax &softmax, float scale_log2, const float (&inv_sum)[2],
                             float (&mass)[2]) const {
#pragma unroll
        for (int row_half = 0; row_half < 2; ++row_half) {
            const float m = softmax.row_max[row_half];
            const float final_base = m == -INFINITY ? 0.0f : m * scale_log2;
            // The row max covers the sink scores up to update_lazy's slack: base <= final_base + 8, so
            // the factor is at most 2^8 (-inf base: the lane saw none, 0).
            const float lane_sum = partial[row_half] * fast_exp2(base[row_half] - final_base);
            mass[row_half] = quad_sum(lane_sum) * inv_sum[row_half];
        }
    }
};

// Sum over the 32 lanes of a warp in a fixed butterfly order; every lane gets the result.
GSDPA_DEVICE float warp_sum(float x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

}  // namespace fwd
}  // namespace gsdpa
