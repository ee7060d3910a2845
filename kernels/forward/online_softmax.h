// online_softmax.h: the running row max and row sum of flash attention, per thread.
//
// A thread holds two rows of its warp's 16 (g and g + 8, row_half 0 and 1) and, of each, the columns
// 2t, 2t + 1 of every 8-column tile. The scale is folded into the exponent: with scale_log2 =
// scale * log2(e), p = 2^(s * scale_log2 - m * scale_log2) = e^(scale (s - m)), one FMA and one ex2 per
// score. The max is reduced over the quad every tile (all lanes of a row must subtract the same max);
// the sum stays a per-lane partial until finish().
//
// update() rescales every tile; update_lazy() (the mma.sync forward's key loop) only when the max rises
// by more than 2^8 in p, keeping O, l and the LSE relative to a slightly stale max otherwise.
//
// Rows that have seen no key yet keep m = -inf; the exponent base then is 0 instead of -inf * scale, so
// no -inf - (-inf) = NaN appears (masked scores are -inf and give p = 0). Requires 0 < scale <= 2^16
// (validation: MAX_SOFTMAX_SCALE), so that s * scale_log2 stays finite for every finite-range score.
#pragma once

#include "../common/fast_math.h"
#include "kernel_traits.h"

namespace gsdpa {
namespace fwd {

struct OnlineSoftmax {
    float row_max[2];  // running max of the raw (unscaled) scores, -inf before any visible key; with
                       // update_lazy, up to LAZY_RESCALE_LOG2 / scale_log2 below the true max
    float row_sum[2];  // this lane's partial sum of p, in units of 2^(row_max * scale_log2)

    GSDPA_DEVICE void init() {
        row_max[0] = row_max[1] = -INFINITY;
        row_sum[0] = row_sum[1] = 0.0f;
    }

    // Folds a (masked) score tile in: raises the row max, rescales the accumulated output and sum by
    // 2^((m_old - m_new) * scale_log2), and replaces the scores by the unnormalised p. Warp collective.
    template <int N_TILES_S, int N_TILES_O>
    GSDPA_DEVICE void update(float (&s)[N_TILES_S][4], float (&acc_o)[N_TILES_O][4], float scale_log2) {
        float correction[2];
        update_scores(s, scale_log2, correction);
        rescale(acc_o, correction);
    }

    // update()'s two halves, also called apart by a caller whose O accumulators are still being written
    // (the Hopper forward's PV wgmma of the previous tile in flight): update_scores() raises the max,
    // rescales the sum and replaces the scores by p, returning each row half's correction; rescale()
    // applies the corrections to O. Warp collective.
    template <int N_TILES_S>
    GSDPA_DEVICE void update_scores(float (&s)[N_TILES_S][4], float scale_log2, float (&correction)[2]) {
#pragma unroll
        for (int row_half = 0; row_half < 2; ++row_half) {
            float m = row_max[row_half];
#pragma unroll
            for (int nt = 0; nt < N_TILES_S; ++nt) {
                m = fmaxf(m, fmaxf(s[nt][2 * row_half], s[nt][2 * row_half + 1]));
            }
            m = quad_max(m);
            const float base = m == -INFINITY ? 0.0f : m * scale_log2;
            correction[row_half] = fast_exp2(row_max[row_half] * scale_log2 - base);
            row_max[row_half] = m;
            row_sum[row_half] *= correction[row_half];
            exponentiate(s, row_half, scale_log2, base);
        }
    }

    // Replaces row half `row_half` of the scores by p = 2^(s * scale_log2 - base) and adds them to the
    // lane's row sum.
    template <int N_TILES_S>
    GSDPA_DEVICE void exponentiate(float (&s)[N_TILES_S][4], int row_half, float scale_log2, float base) {
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < N_TILES_S; ++nt) {
#pragma unroll
            for (int i = 2 * row_half; i < 2 * row_half + 2; ++i) {
                s[nt][i] = fast_exp2(fmaf(s[nt][i], scale_log2, -base));
                sum += s[nt][i];
            }
        }
        row_sum[row_half] += sum;
    }

    // update() with the rescale done only when it matters (the mma.sync forward's key loop). The running
    // max of a row moves only when, in some row of the warp's m-tile, the tile's max exceeds it by more
    // than LAZY_RESCALE_LOG2 (in the log2 units of p); then every row of the m-tile takes its new max and O
    // and the sums are rescaled, as in update(). Otherwise p is taken relative to the old, slightly stale
    // max (so p <= 2^LAZY_RESCALE_LOG2 instead of <= 1) and O and the sums are left alone. This is exact,
    // not an approximation: O, the sum and the LSE are all kept relative to the same max, whichever it
    // is. f32 holds the extra factor of 2^8 with room to spare, and the 16-bit P keeps its relative
    // precision. Once the first tiles have set the max, a later tile rarely raises it by that much, so
    // the common tile skips the corrections' exp2 and the O rescale: 64 f32 multiplies per thread at
    // D = 64 and 128, 128 at D = 256 (kernels/forward/kernel_traits.h). The vote makes the branch uniform
    // over the warp. Warp collective.
    static constexpr float LAZY_RESCALE_LOG2 = 8.0f;

    template <int N_TILES_S, int N_TILES_O>
    GSDPA_DEVICE void update_lazy(float (&s)[N_TILES_S][4], float (&acc_o)[N_TILES_O][4], float scale_log2) {
        update_scores_lazy(s, scale_log2, [&](const float (&correction)[2]) { rescale(acc_o, correction); });
    }

    // update_lazy()'s first half, for a caller that rescales O later (the Hopper forward): returns whether
    // O needs the corrections (the same answer in every lane of the warp); they are 1 when it does not.
    template <int N_TILES_S>
    GSDPA_DEVICE bool update_scores_lazy(float (&s)[N_TILES_S][4], float scale_log2, float (&correction)[2]) {
        correction[0] = correction[1] = 1.0f;
        return update_scores_lazy(s, scale_log2, [&](const float (&c)[2]) {
            correction[0] = c[0];
            correction[1] = c[1];
        });
    }

    // The common part: raises the max (when the vote says so; then calls on_raise with the corrections) and
    // replaces the scores by p. Returns the vote.
    template <int N_TILES_S, class OnRaise>
    GSDPA_DEVICE bool update_scores_lazy(float (&s)[N_TILES_S][4], float scale_log2, OnRaise &&on_raise) {
        float tile_max[2];
        bool raise = false;
#pragma unroll
        for (int row_half = 0; row_half < 2; ++row_half) {
            float m = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < N_TILES_S; ++nt) {
                m = fmaxf(m, fmaxf(s[nt][2 * row_half], s[nt][2 * row_half + 1]));
            }
            tile_max[row_half] = quad_max(m);
            // A row with no visible key yet (max -inf) and any visible score: +inf > 8. Nothing visible
            // in the tile (-inf): false, also against -inf, where the difference is NaN.
            raise = raise || tile_max[row_half] * scale_log2 - row_max[row_half] * scale_log2 > LAZY_RESCALE_LOG2;
        }
        const bool raised = __any_sync(0xffffffffu, raise) != 0;
        if (raised) {
            float correction[2];
#pragma unroll
            for (int row_half = 0; row_half < 2; ++row_half) {
                const float m = fmaxf(row_max[row_half], tile_max[row_half]);
                const float base = m == -INFINITY ? 0.0f : m * scale_log2;
                correction[row_half] = fast_exp2(row_max[row_half] * scale_log2 - base);
                row_max[row_half] = m;
                row_sum[row_half] *= correction[row_half];
            }
            on_raise(correction);
        }
#pragma unroll
        for (int row_half = 0; row_half < 2; ++row_half) {
            const float base = row_max[row_half] == -INFINITY ? 0.0f : row_max[row_half] * scale_log2;
            exponentiate(s, row_half, scale_log2, base);
        }
        return raised;
    }

    template <int N_TILES_O>
    GSDPA_DEVICE static void rescale(float (&acc_o)[N_TILES_O][4], const float (&correction)[2]) {
#pragma unroll
        for (int nt = 0; nt < N_TILES_O; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) acc_o[nt][i] *= correction[i >> 1];
        }
    }

    // Completes the row sums over the quad. Returns, per row half, 1 / l (0 for a row that saw nothing, so
    // its output is 0) and the natural-log LSE, scale * m + ln(l) (-inf for a row that saw nothing). Warp
    // collective.
    GSDPA_DEVICE void finish(float scale_log2, float (&inv_sum)[2], float (&lse)[2]) {
#pragma unroll
        for (int row_half = 0; row_half < 2; ++row_half) {
            const float l = quad_sum(row_sum[row_half]);
            const bool empty = l == 0.0f || row_max[row_half] == -INFINITY;
            // l >= 1 here (the lane holding the row max adds 2^0), far from rcp.approx's flush-to-zero range.
            inv_sum[row_half] = empty ? 0.0f : fast_rcp(l);
            lse[row_half] = empty ? -INFINITY : (row_max[row_half] * scale_log2 + log2f(l)) * kLn2;
        }
    }
};

}  // namespace fwd
}  // namespace gsdpa
