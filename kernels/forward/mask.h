// mask.h: which keys a query row may see, which key tiles a block visits, and the masking of a score tile.
//
// Query i sees key j iff j < seqlen_k and, when causal, j <= i + seqlen_k - seqlen_q (bottom-right
// aligned, lengths of the current sequence). Everything is phrased through a row's "key limit", the last
// key it may see (< 0: none).
#pragma once

#include "kernel_traits.h"

namespace gsdpa {
namespace fwd {

// The last key query row `row` may see (-1 or less when it sees none).
GSDPA_DEVICE int key_limit(int row, int seqlen_q, int seqlen_k, bool causal) {
    const int last = seqlen_k - 1;
    return causal ? tmin(last, row + seqlen_k - seqlen_q) : last;
}

// Number of BLOCK_N key tiles the block whose first query row is m0 must visit: tiles [0, count).
// With causal masking the tiles after the one holding the block's last real row's key limit are skipped.
template <int BLOCK_M, int BLOCK_N>
GSDPA_DEVICE int key_tile_count(int m0, int seqlen_q, int seqlen_k, bool causal) {
    const int last_row = tmin(m0 + BLOCK_M, seqlen_q) - 1;
    const int limit = key_limit(last_row, seqlen_q, seqlen_k, causal);
    return limit < 0 ? 0 : limit / BLOCK_N + 1;
}

// Whether key tile n can contain a key that some row of the block must not see: the partial last tile,
// or (causal) a tile reaching past the block's first row's key limit. Uniform over the block.
template <int BLOCK_N>
GSDPA_DEVICE bool tile_needs_mask(int n, int m0, int seqlen_q, int seqlen_k, bool causal) {
    const int last_key = (n + 1) * BLOCK_N - 1;
    return last_key > key_limit(m0, seqlen_q, seqlen_k, causal);
}

// Sets to -inf the scores of one warp's 16 x BLOCK_N tile (key0 = first key of the tile) that lie past
// their row's key limit; limit[half] is the limit of row g (half 0) or g + 8 (half 1) of the warp's rows.
template <int N_TILES>
GSDPA_DEVICE void mask_scores(float (&s)[N_TILES][4], int key0, const int (&limit)[2], int lane) {
    const int key_base = key0 + 2 * (lane & 3);
#pragma unroll
    for (int nt = 0; nt < N_TILES; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            if (key_base + nt * 8 + (i & 1) > limit[i >> 1]) s[nt][i] = -INFINITY;
        }
    }
}

}  // namespace fwd
}  // namespace gsdpa
