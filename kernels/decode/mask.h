// mask.h: which keys a decode query row may see, and the masking of a score tile.
//
// Same rule as the forward (bottom-right aligned causal): query i of a sequence with seqlen_q queries
// and seqlen_k keys sees key j iff j < seqlen_k and, when causal, j <= i + seqlen_k - seqlen_q.
// This duplicates forward/mask.h's key_limit and mask_scores on purpose while the forward and backward
// helpers are being moved into common/; it should move to common/ once that refactor lands.
#pragma once

#include "traits.h"

namespace gsdpa {
namespace decode {

// The last key query i may see (-1 or less when it sees none).
GSDPA_DEVICE int key_limit(int i, int seqlen_q, int seqlen_k, bool causal) {
    const int last = seqlen_k - 1;
    return causal ? tmin(last, i + seqlen_k - seqlen_q) : last;
}

// Sets to -inf the scores of one warp's 16 x BLOCK_N tile (key0 = first key of the tile) that lie past
// their row's key limit; limit[half] is the limit of row g (half 0) or g + 8 (half 1) of the warp.
// Masking by -inf is what keeps a zero-filled (unloaded) key out of the softmax; zero-filling is what
// keeps a NaN in an unused slot out of O += P V (0 * NaN would be NaN).
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

}  // namespace decode
}  // namespace gsdpa
