// softmax_grad.h: the backward's recomputation of P from the forward's LSE, and dS from dP, for the
// score tiles of the dK/dV and dQ kernels (Tr: a BwdTileShape, backward/traits.h).
//
// P = exp(scale S - LSE) = 2^(S scale_log2 - LSE log2 e) (common/constants.h) needs no running max: the
// forward's LSE already normalises it. dS = P * (dP - Delta), Delta = rowsum(dO * O) from the preprocess.
// A lane holds, of each 16 x 8 score tile, rows g and g + 8 (row_half 0 and 1) at keys 2t and 2t + 1
// (common/primitives.h); the row statistics are therefore loaded per (m-tile, row_half).
#pragma once

#include "common.h"

namespace gsdpa {
namespace bwd {

// The LSE (times log2 e, the kernels use exp2) and Delta of the rows this lane holds in the score layout:
// row first_row + 16 mi + g + 8 row_half. Rows past the sequence and rows that see no key (LSE = -inf)
// get +inf, so that P = exp2(S * scale_log2 - inf) = 0 exactly.
template <class Tr>
GSDPA_DEVICE void load_row_stats(float (&lse2)[Tr::SCORE_WARP_TILES_M][2], float (&delta)[Tr::SCORE_WARP_TILES_M][2],
                                 const GsdpaBwdParams &p, int64_t lse0, int first_row, int seqlen_q, int lane) {
#pragma unroll
    for (int mi = 0; mi < Tr::SCORE_WARP_TILES_M; ++mi) {
#pragma unroll
        for (int row_half = 0; row_half < 2; ++row_half) {
            const int row = first_row + mi * 16 + (lane >> 2) + 8 * row_half;
            float l = INFINITY, d = 0.0f;
            if (row < seqlen_q) {
                const float lse = p.lse[lse0 + row];
                l = lse == -INFINITY ? INFINITY : lse * kLog2e;
                d = p.delta[lse0 + row];
            }
            lse2[mi][row_half] = l;
            delta[mi][row_half] = d;
        }
    }
}

// Turns the S accumulators into P and the dP accumulators into dS = P * (dP - Delta), in place.
// (row0, col0): the warp's first query row / key in the sequence. With MASKED (the tile needs masking:
// tile_needs_mask, common/mask.h), keys past their row's key limit (key_visible is false) get P = 0. The
// mask is applied to P after the exponential, not to S before it: a masked key then contributes exactly 0
// even when the row's LSE is not finite. MASKED is a template parameter so that the kernels branch once
// per tile between the two bodies (softmax_grad_tile): with a run-time flag ptxas predicates the mask's
// compares into the common, unmasked tile's path.
template <class Tr, bool MASKED>
GSDPA_DEVICE void softmax_grad(float (&s)[Tr::SCORE_WARP_TILES_M][Tr::SCORE_WARP_TILES_N][4],
                               float (&dp)[Tr::SCORE_WARP_TILES_M][Tr::SCORE_WARP_TILES_N][4],
                               const float (&lse2)[Tr::SCORE_WARP_TILES_M][2],
                               const float (&delta)[Tr::SCORE_WARP_TILES_M][2], float scale_log2,
                               const SeqlenInfo &seq, bool causal, int row0, int col0, int lane) {
#pragma unroll
    for (int mi = 0; mi < Tr::SCORE_WARP_TILES_M; ++mi) {
#pragma unroll
        for (int ni = 0; ni < Tr::SCORE_WARP_TILES_N; ++ni) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int row_half = e >> 1;
                float pv = fast_exp2(s[mi][ni][e] * scale_log2 - lse2[mi][row_half]);
                if constexpr (MASKED) {
                    const int row = row0 + mi * 16 + (lane >> 2) + 8 * row_half;
                    if (!key_visible(c_frag_key(col0 + ni * 8, e, lane), row, seq, causal)) pv = 0.0f;
                }
                s[mi][ni][e] = pv;
                dp[mi][ni][e] = pv * (dp[mi][ni][e] - delta[mi][row_half]);
            }
        }
    }
}

// softmax_grad for one score tile, masked or not (uniform over the block).
template <class Tr>
GSDPA_DEVICE void softmax_grad_tile(float (&s)[Tr::SCORE_WARP_TILES_M][Tr::SCORE_WARP_TILES_N][4],
                                    float (&dp)[Tr::SCORE_WARP_TILES_M][Tr::SCORE_WARP_TILES_N][4],
                                    const float (&lse2)[Tr::SCORE_WARP_TILES_M][2],
                                    const float (&delta)[Tr::SCORE_WARP_TILES_M][2], float scale_log2, bool mask,
                                    const SeqlenInfo &seq, bool causal, int row0, int col0, int lane) {
    if (mask) {
        softmax_grad<Tr, true>(s, dp, lse2, delta, scale_log2, seq, causal, row0, col0, lane);
    } else {
        softmax_grad<Tr, false>(s, dp, lse2, delta, scale_log2, seq, causal, row0, col0, lane);
    }
}

}  // namespace bwd
}  // namespace gsdpa
