// paged_tile.h: where key j of a sequence lives in the paged cache, and the gathered tile copies.
//
// Key j of sequence b is slot j % block_size of block block_table[b][j / block_size]. Nothing the device
// holds is trusted: a key is loaded only if j < seqlen_k (the caller guarantees nothing about the slots
// past the length, NaN included) and its block id lies in [0, num_blocks); otherwise its tile row is
// zero-filled by cp.async with src-size 0, which reads nothing. seqlen_k itself has been checked against
// the table's capacity (split.h), so j / block_size < max_blocks and the table read stays in its row.
#pragma once

#include "traits.h"

namespace gsdpa {
namespace decode {

// One sequence's view of the paged cache.
struct PagedSequence {
    const int32_t *table_row;  // block_table + b * table_batch_stride
    int seqlen_k;              // validated: 0 <= seqlen_k <= max_blocks * block_size
    int block_size;
    int num_blocks;

    // Block id of key j's page, or -1 when key j must not be read (past the length or a bad id).
    GSDPA_DEVICE int block_of(int j) const {
        if (j >= seqlen_k) return -1;
        const int id = table_row[j / block_size];
        return (id >= 0 && id < num_blocks) ? id : -1;
    }

    // Element offset of key j's row (head 0 of its slot) in a cache with these strides, or -1.
    GSDPA_DEVICE int64_t key_offset(int j, const GsdpaPagedStrides &stride) const {
        const int id = block_of(j);
        return id < 0 ? int64_t(-1) : int64_t(id) * stride.block + int64_t(j % block_size) * stride.slot;
    }
};

// Issues (does not commit) cp.async copies of a ROWS x COLS tile into `smem` (swizzled, as
// cp_async_tile in common/swizzle.h), row r from base + row_offset(r) elements; row_offset(r) < 0 means
// "zero-fill, read nothing" (the source address handed to cp.async is then `base`, never dereferenced).
// Every row of a gathered tile has its own address, so unlike cp_async_tile there is no running pointer;
// the offsets are recomputed per chunk (a table read that hits L1) rather than kept live.
template <int ROWS, int COLS, int THREADS, class T, class RowOffset>
GSDPA_DEVICE void cp_async_gather(T *smem, const T *base, const RowOffset &row_offset, int tid) {
    constexpr int CHUNKS = COLS / 8;
    constexpr int TOTAL = ROWS * CHUNKS;
    static_assert(TOTAL % THREADS == 0, "every thread copies the same number of chunks");
    static_assert(THREADS % CHUNKS == 0, "a thread's chunks share one column");
    constexpr int ROW_STEP = THREADS / CHUNKS;
    const int chunk = tid % CHUNKS;
    const int row0 = tid / CHUNKS;
    const SwizzledColumn<COLS, ROW_STEP> dst(row0, chunk * 8);
#pragma unroll
    for (int i = 0; i < TOTAL / THREADS; ++i) {
        const int64_t offset = row_offset(row0 + i * ROW_STEP);
        const bool valid = offset >= 0;
        cp_async_16(smem + dst(i), valid ? base + offset + chunk * 8 : base, valid);
    }
}

}  // namespace decode
}  // namespace gsdpa
