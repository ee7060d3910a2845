// paged_tile.h: where key j of a sequence lives in the paged cache, and the gathered tile copies.
//
// Key j of sequence b is slot j % block_size of block block_table[b][j / block_size]. Nothing the device
// holds is trusted: a key is loaded only if j < seqlen_k (the caller guarantees nothing about the slots
// past the length, NaN included) and its block id lies in [0, num_blocks); otherwise its tile row is
// zero-filled by cp.async with src-size 0, which reads nothing.
//
// A key tile is located once (PagedTile), not per 16-byte chunk: its first key j0 is a multiple of
// BLOCK_N = 32, hence of 16, and block sizes are multiples of 16, so slot0 = j0 % block_size is at most
// block_size - 16 and the tile's keys lie on at most two pages, page0 = j0 / block_size and page0 + 1.
// A row's slot is then slot0 + r, wrapped once onto the second page. The page and slot of j0 are carried
// from tile to tile (PagePosition): one division per split, none per tile or chunk.
//
// Table reads stay inside the sequence's row for every device value: seqlen_k has been checked against
// the table's capacity (split.h: seqlen_k <= max_blocks * block_size), and a page's entry is read only
// when that page holds a key below seqlen_k (page0: key j0; page0 + 1: key j0 + block_size - slot0),
// so its index k / block_size of a key k < seqlen_k is below max_blocks.
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

    // Block id of page `page`, or -1 when it is outside [0, num_blocks). The caller reads only pages
    // holding a key below seqlen_k (see the top comment).
    GSDPA_DEVICE int checked_block(int page) const {
        const int id = table_row[page];
        return (id >= 0 && id < num_blocks) ? id : -1;
    }
};

// Page and slot of a key, kept by the caller across consecutive tiles so that only the first tile of a
// split divides: advancing by BLOCK_N = 32 keys wraps the slot at most twice (block_size >= 16).
struct PagePosition {
    int page;  // key / block_size
    int slot;  // key % block_size

    GSDPA_DEVICE static PagePosition of_key(int key, int block_size) {
        const int page = key / block_size;
        return PagePosition{page, key - page * block_size};
    }

    // To the key BLOCK_N = 32 further: slot + 32 <= block_size + 16 <= 2 * block_size.
    GSDPA_DEVICE void advance_one_tile(int block_size) {
        slot += 32;
        if (slot >= block_size) slot -= block_size, ++page;
        if (slot >= block_size) slot -= block_size, ++page;
    }
};

// Where the keys j0 .. j0 + 31 of one tile live, for a cache with given strides. Computed once per tile
// by every thread (the values are uniform over the block); row_offset(r) is then division-free.
struct PagedTile {
    int64_t page_base[2];  // element offset of each page's slot 0, or -1: do not read that page
    int slot0;             // slot of key j0 in the first page
    int first_page_rows;   // block_size - slot0: rows 0 .. first_page_rows - 1 are on the first page
    int rows_loaded;       // seqlen_k - j0: rows at or past it are past the length
    int64_t slot_stride;

    // Tile of first key j0, which lies at `at` (at.page == j0 / block_size, at.slot == j0 % block_size).
    GSDPA_DEVICE PagedTile(const PagedSequence &seq, int j0, const PagePosition &at,
                           const GsdpaPagedStrides &stride) {
        slot0 = at.slot;
        first_page_rows = seq.block_size - at.slot;
        rows_loaded = seq.seqlen_k - j0;
        // Each page's entry is read only if the page holds a key below seqlen_k (the bounds argument).
        const int id0 = rows_loaded > 0 ? seq.checked_block(at.page) : -1;
        const int id1 = rows_loaded > first_page_rows ? seq.checked_block(at.page + 1) : -1;
        page_base[0] = id0 < 0 ? int64_t(-1) : int64_t(id0) * stride.block;
        page_base[1] = id1 < 0 ? int64_t(-1) : int64_t(id1) * stride.block;
        slot_stride = stride.slot;
    }

    // Element offset of row r's key (head 0 of its slot), or -1 when the row must be zero-filled.
    GSDPA_DEVICE int64_t row_offset(int r) const {
        const bool second = r >= first_page_rows;
        const int64_t base = second ? page_base[1] : page_base[0];
        const int slot = second ? r - first_page_rows : slot0 + r;
        return (r >= rows_loaded || base < 0) ? int64_t(-1) : base + int64_t(slot) * slot_stride;
    }
};

// Issues (does not commit) cp.async copies of a ROWS x COLS tile into `smem` (swizzled, as
// cp_async_tile in common/swizzle.h), row r from base + row_offset(r) elements; row_offset(r) < 0 means
// "zero-fill, read nothing" (the source address handed to cp.async is then `base`, never dereferenced).
// Every row of a gathered tile has its own address, so unlike cp_async_tile there is no running pointer;
// row_offset must be cheap (PagedTile::row_offset: a select, a multiply-add, no division, no table read).
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
