// split.h: which queries and keys one decode block handles, and the checks of the device-side values.
//
// A block is (row block m, split s) x kv head x batch: blockIdx.x = m * num_splits + s. The sequence's
// key tiles [0, ceil(seqlen_k / BLOCK_N)) are cut into num_splits contiguous ranges of equal tile count;
// split s visits its range (less the tiles past its rows' causal limit). Every split writes a partial O
// and LSE (combine.h merges them), an empty split LSE = -inf and O = 0.
//
// Safety (docs/decode.md): the lengths, the block table and cu_seqlens_q live on the device and may be
// anything. A block checks, before reading a single key:
//   - 0 <= seqlen_k <= max_blocks * block_size (so every table index it forms is inside the row);
//   - every block id of the pages overlapping its split's whole key range (not just the causally
//     visited part): the union over the splits is every page of the length, so each split set of each
//     (row block, kv head) finds a bad id and the combine turns the sequence's every row into NaN;
//   - varlen: 0 <= cu_seqlens_q[b] <= cu_seqlens_q[b + 1] <= total_q and the length <= max_seqlen_q.
// A failed check stores GSDPA_DECODE_STATUS_INVALID_INPUT into *status (a plain store: every writer
// stores the same value) and makes the block's rows NaN (a bad cu_seqlens_q: no rows, nothing written).
#pragma once

#include "paged_tile.h"

namespace gsdpa {
namespace decode {

// The query side of sequence b: its first packed token and its number of queries.
struct QuerySpan {
    int token0;   // index of query 0 in the packed [Tq] token order (b * seqlen_q when not varlen)
    int seqlen_q;
    bool valid;
};

GSDPA_DEVICE QuerySpan query_span(const GsdpaDecodeParams &p, int b) {
    if (p.cu_seqlens_q == nullptr) return QuerySpan{b * p.seqlen_q, p.seqlen_q, true};
    const int start = p.cu_seqlens_q[b], end = p.cu_seqlens_q[b + 1];
    const bool valid = start >= 0 && start <= end && end <= p.total_q && end - start <= p.seqlen_q;
    return valid ? QuerySpan{start, end - start, true} : QuerySpan{0, 0, false};
}

// Whether a device length can be followed: 0 <= seqlen_k <= max_blocks * block_size.
GSDPA_DEVICE bool seqlen_k_valid(const GsdpaDecodeParams &p, int seqlen_k) {
    return seqlen_k >= 0 && int64_t(seqlen_k) <= int64_t(p.max_blocks) * int64_t(p.block_size);
}

// Split s's range of key tiles, [begin, end), of a sequence with n_tiles key tiles.
struct TileRange {
    int begin;
    int end;
};

GSDPA_DEVICE TileRange split_tiles(int n_tiles, int num_splits, int split) {
    const int per_split = ceil_div(n_tiles, num_splits);
    const int begin = tmin(split * per_split, n_tiles);
    return TileRange{begin, tmin(begin + per_split, n_tiles)};
}

// True when a block id of a page overlapping keys [key_begin, key_end) (already clamped to seqlen_k)
// lies outside [0, num_blocks). Block-wide: all threads call it and get the same answer. `flag` is a
// word of shared memory this function owns for its duration.
template <int THREADS>
GSDPA_DEVICE bool any_bad_block(const PagedSequence &seq, int key_begin, int key_end, int *flag, int tid) {
    if (tid == 0) *flag = 0;
    __syncthreads();
    if (key_end > key_begin) {
        const int page_end = (key_end - 1) / seq.block_size + 1;
        for (int page = key_begin / seq.block_size + tid; page < page_end; page += THREADS) {
            const int id = seq.table_row[page];
            if (id < 0 || id >= seq.num_blocks) *flag = 1;  // every writer stores the same value
        }
    }
    __syncthreads();
    const bool bad = *flag != 0;
    __syncthreads();  // everyone has read the flag before the shared memory is reused
    return bad;
}

GSDPA_DEVICE void report_invalid(const GsdpaDecodeParams &p) {
    if (p.status != nullptr) *p.status = GSDPA_DECODE_STATUS_INVALID_INPUT;
}

}  // namespace decode
}  // namespace gsdpa
