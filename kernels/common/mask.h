// mask.h: which keys a query row may see, which tiles a block visits, and the masking of a score tile.
// Shared by the forward and the backward kernels.
//
// Query i of a sequence sees key j iff j < seqlen_k and, when causal, j <= i + causal_diagonal()
// (bottom-right aligned, lengths of the current sequence: common/seqlen_info.h, docs/conventions.md).
// Everything is phrased through a row's "key limit", the last key it may see (< 0: none); a key tile
// needs per-element masking only if it reaches past the smallest key limit among the block's rows.
#pragma once

#include "primitives.h"
#include "seqlen_info.h"

namespace gsdpa {

// The last key query row `row` of a sequence with these lengths may see (-1 or less when it sees none).
// The decode, whose sequences are paged, calls this form; the others pass their SeqlenInfo.
GSDPA_DEVICE int key_limit(int row, int seqlen_q, int seqlen_k, bool causal) {
    const int last = seqlen_k - 1;
    return causal ? tmin(last, row + (seqlen_k - seqlen_q)) : last;
}
GSDPA_DEVICE int key_limit(int row, const SeqlenInfo &seq, bool causal) {
    return key_limit(row, seq.seqlen_q, seq.seqlen_k, causal);
}

// The first query row that sees key `key` at all (causal; every row does otherwise). Rows before it can be
// skipped by a block that owns keys from `key` on.
GSDPA_DEVICE int first_row_seeing_key(int key, const SeqlenInfo &seq, bool causal) {
    return causal ? tmax(0, key - seq.causal_diagonal()) : 0;
}

// Whether query row `row` may see key `key`, i.e. key <= key_limit(row, seq, causal), spelled as two
// compares for the backward's per-element test (evaluated for every score of a masked tile): with
// key_limit's min there, ptxas gives the dQ kernel about 45 more registers at D = 128.
GSDPA_DEVICE bool key_visible(int key, int row, const SeqlenInfo &seq, bool causal) {
    return key < seq.seqlen_k && !(causal && key > row + seq.causal_diagonal());
}

// Number of BLOCK_N key tiles the block whose first query row is m0 must visit: tiles [0, count).
// With causal masking the tiles after the one holding the block's last real row's key limit are skipped.
template <int BLOCK_M, int BLOCK_N>
GSDPA_DEVICE int key_tile_count(int m0, const SeqlenInfo &seq, bool causal) {
    const int last_row = tmin(m0 + BLOCK_M, seq.seqlen_q) - 1;
    const int limit = key_limit(last_row, seq, causal);
    return limit < 0 ? 0 : limit / BLOCK_N + 1;
}

// Whether the BLOCK_N-key tile starting at key0 can contain a key that some row of the block (first row
// m0) must not see: the partial last tile, or (causal) a tile reaching past the first row's key limit
// (the smallest of the block's). Uniform over the block.
template <int BLOCK_N>
GSDPA_DEVICE bool tile_needs_mask(int key0, int m0, const SeqlenInfo &seq, bool causal) {
    const int last_key = key0 + BLOCK_N - 1;
    return last_key > key_limit(m0, seq, causal);
}

// The key tiles [first, first + count) on a key loop's common path: every row of the block (first row
// m0) sees every key of the tile, and the tile is not one of the `first` tiles at the start that need
// other rare work (the forward's sink tiles, forward/diagnostics.h; 0 for none). One subtraction and
// one unsigned comparison per tile tell the common tile from the rare one; the masked tiles are those
// past the range (the partial last tile and, causal, the tiles across the diagonal).
struct CommonKeyTiles {
    int first;
    unsigned count;
    GSDPA_DEVICE bool contains(int n) const { return unsigned(n - first) < count; }
};
template <int BLOCK_N>
GSDPA_DEVICE CommonKeyTiles common_key_tiles(int m0, const SeqlenInfo &seq, bool causal, int first) {
    // Tiles [0, full) end at or before the first row's key limit, the smallest of the block's
    // (tile_needs_mask is false for exactly these).
    const int visible = key_limit(m0, seq, causal) + 1;
    const int full = visible <= 0 ? 0 : visible / BLOCK_N;
    return CommonKeyTiles{first, unsigned(tmax(0, full - first))};
}

// The key of element e (0..3) of a lane's part of the 16 x 8 accumulator tile whose first key is key0
// (C layout, common/primitives.h: columns 2t and 2t + 1, t = lane % 4).
GSDPA_DEVICE int c_frag_key(int key0, int e, int lane) { return key0 + 2 * (lane & 3) + (e & 1); }

// Sets to -inf the scores of one warp's 16 x (8 N_TILES) tile (key0 = first key of the tile) that lie
// past their row's key limit; limit[row_half] is the limit of row g (row_half 0) or g + 8 (row_half 1)
// of the warp's 16 rows.
template <int N_TILES>
GSDPA_DEVICE void mask_scores(float (&s)[N_TILES][4], int key0, const int (&limit)[2], int lane) {
#pragma unroll
    for (int nt = 0; nt < N_TILES; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            if (c_frag_key(key0 + nt * 8, e, lane) > limit[e >> 1]) s[nt][e] = -INFINITY;
        }
    }
}

}  // namespace gsdpa
