// swizzle.h: the shared-memory layout of 16-bit tiles, and the block-wide copies between global and
// shared memory that use it. Shared by the forward and backward kernels.
//
// Layout. A ROWS x COLS tile of 16-bit elements is stored row-major, COLS * 2 bytes per row, cut into
// 16-byte chunks of 8 elements. Logical chunk c of row r is stored at chunk position c ^ (r % 8) of the
// same row (the XOR touches only the low 3 bits of c, so it stays inside the row; COLS must therefore be
// a multiple of 64 elements = 8 chunks = 128 bytes).
//
// Why: shared memory has 32 four-byte banks (128 bytes per "line"). ldmatrix reads, per 8x8 matrix,
// 8 rows x 16 bytes at the same logical column; rows are a multiple of 128 bytes apart, so unswizzled
// all 8 rows would hit the same 4 banks (an 8-way conflict). With the XOR, 8 consecutive rows land in 8
// distinct 16-byte bank groups: conflict-free, for ldmatrix and ldmatrix.trans alike. Whole-row 16-byte
// accesses (cp.async fills, the epilogue's coalesced stores) and 4-byte accumulator-fragment accesses
// (8 rows x 4 lanes x 4 bytes at one logical chunk) are conflict-free as well.
#pragma once

#include "vec16.h"

namespace gsdpa {

// Element offset of logical element (row, col) in a swizzled tile with COLS columns.
template <int COLS>
GSDPA_DEVICE int swizzle(int row, int col) {
    static_assert(COLS % 64 == 0, "a swizzled tile row must be a whole number of 128-byte lines");
    // Written as (128-byte line) + (swizzled chunk within the line) + (element within the chunk) so that,
    // for a compile-time column, everything but the 3-bit XOR folds into an immediate offset: a warp's
    // loop over columns then needs at most 8 address registers per row pattern instead of one per column.
    return row * COLS + (col & ~63) + ((((col >> 3) & 7) ^ (row & 7)) << 3) + (col & 7);
}

// The swizzled offsets of column `col` in rows row0, row0 + STEP, row0 + 2 STEP, ...: offset(i) =
// base[i % VARIANTS] + i * STEP * COLS. Since (row0 + i STEP) % 8 repeats with period 8 / gcd(STEP, 8),
// only that many base offsets exist; spelling this out lets the compiler use one register per variant
// plus immediate offsets, instead of one live register per row (which spills at D = 256).
template <int COLS, int STEP>
struct SwizzledColumn {
    static constexpr int gcd8(int a) { return (a % 8 == 0) ? 8 : (a % 4 == 0) ? 4 : (a % 2 == 0) ? 2 : 1; }
    static constexpr int VARIANTS = 8 / gcd8(STEP);
    int base[VARIANTS];
    GSDPA_DEVICE SwizzledColumn(int row0, int col) {
#pragma unroll
        for (int v = 0; v < VARIANTS; ++v) base[v] = swizzle<COLS>(row0 + v * STEP, col) - v * STEP * COLS;
    }
    GSDPA_DEVICE int operator()(int i) const { return base[i % VARIANTS] + i * STEP * COLS; }
};

// How THREADS threads split a ROWS x COLS tile of 16-bit elements into 16-byte chunks (8 elements) for
// the copies below: thread tid owns column chunk tid % CHUNKS of rows row0(tid), row0(tid) + ROW_STEP, ...
// (PER_THREAD of them). Every thread gets the same number of chunks, all in one column, which keeps the
// address math of the copies cheap.
template <int ROWS, int COLS, int THREADS>
struct TileChunks {
    static constexpr int CHUNKS = COLS / 8;  // 16-byte chunks per row
    static constexpr int TOTAL = ROWS * CHUNKS;
    static constexpr int PER_THREAD = TOTAL / THREADS;
    static constexpr int ROW_STEP = THREADS / CHUNKS;  // rows between a thread's consecutive chunks
    static_assert(TOTAL % THREADS == 0, "every thread copies the same number of chunks");
    static_assert(THREADS % CHUNKS == 0, "a thread's chunks share one column");
    GSDPA_DEVICE static int row0(int tid) { return tid / CHUNKS; }
    GSDPA_DEVICE static int col0(int tid) { return (tid % CHUNKS) * 8; }
};

// The element offset, from a tile's first row in global memory, of the first 16-byte chunk that thread
// `tid` copies in cp_async_tile<ROWS, COLS, THREADS> (its later chunks follow THREADS / (COLS / 8) rows
// apart). A key loop that copies many tiles from one tensor adds this to the tensor's base once, so that
// only one 64-bit pointer per tensor is live across the loop (the *_from forms below take it).
template <int COLS, int THREADS>
GSDPA_DEVICE int64_t cp_async_lane_offset(int64_t row_stride, int tid) {
    using C = TileChunks<THREADS / (COLS / 8), COLS, THREADS>;  // any tile shape: the split is per row
    return int64_t(C::row0(tid)) * row_stride + C::col0(tid);
}

// Issues (does not commit) cp.async copies of a ROWS x COLS tile into `smem` (swizzled): row r < valid_rows
// comes from row r of the tile in global memory, r * row_stride elements after its first row, rows >=
// valid_rows are zero-filled without reading global memory (valid_rows may be <= 0 or >= ROWS). Called by
// all THREADS threads of the block with their thread index; `src` is the thread's first chunk (the tile's
// first row plus cp_async_lane_offset); row_stride must keep every row 16-byte aligned.
template <int ROWS, int COLS, int THREADS, class T>
GSDPA_DEVICE void cp_async_tile_from(T *smem, const T *src, int64_t row_stride, int valid_rows, int tid) {
    using C = TileChunks<ROWS, COLS, THREADS>;
    const int row0 = C::row0(tid);
    // One running source pointer advanced by a fixed step, rather than row * row_stride per chunk: the
    // latter gives the compiler one loop-invariant 64-bit offset per chunk to keep live across the
    // caller's key loop (16 register pairs per tile at D = 256), which spills.
    const int64_t step = int64_t(C::ROW_STEP) * row_stride;
    const SwizzledColumn<COLS, C::ROW_STEP> dst(row0, C::col0(tid));
    // Chunk i's row test as i * ROW_STEP < valid_rows - row0: one register and an immediate per chunk (the
    // form row0 + i * ROW_STEP < valid_rows let the compiler keep every chunk's row live across a key loop).
    const int rows_left = valid_rows - row0;
#pragma unroll
    for (int i = 0; i < C::PER_THREAD; ++i) {
        // An invalid row reads nothing (src-size 0), so its (possibly out-of-range) address is never used.
        cp_async_16(smem + dst(i), src, i * C::ROW_STEP < rows_left);
        src += step;
    }
}

// The same, from the tile's first row `gmem` (the lane's offset computed here), with the row test written
// row0 + i * ROW_STEP < valid_rows: for tiles loaded once (prologues), and for the per-tile Q and dO loads
// of the dK/dV tiles that recompute their offsets (backward/traits.h, STEP_TILE_OFFSETS), whose register
// allocation is tuned to it.
template <int ROWS, int COLS, int THREADS, class T>
GSDPA_DEVICE void cp_async_tile(T *smem, const T *gmem, int64_t row_stride, int valid_rows, int tid) {
    using C = TileChunks<ROWS, COLS, THREADS>;
    const int row0 = C::row0(tid);
    const int64_t step = int64_t(C::ROW_STEP) * row_stride;  // one running source pointer, as above
    const T *src = gmem + int64_t(row0) * row_stride + C::col0(tid);
    const SwizzledColumn<COLS, C::ROW_STEP> dst(row0, C::col0(tid));
#pragma unroll
    for (int i = 0; i < C::PER_THREAD; ++i) {
        cp_async_16(smem + dst(i), src, row0 + i * C::ROW_STEP < valid_rows);
        src += step;
    }
}

// cp_async_tile_from for a tile whose ROWS rows are all valid (a key loop's full tiles): the same copies,
// without a row test (and its predicate) per chunk.
template <int ROWS, int COLS, int THREADS, class T>
GSDPA_DEVICE void cp_async_full_tile_from(T *smem, const T *src, int64_t row_stride, int tid) {
    using C = TileChunks<ROWS, COLS, THREADS>;
    const int64_t step = int64_t(C::ROW_STEP) * row_stride;  // one running source pointer, as in cp_async_tile
    const SwizzledColumn<COLS, C::ROW_STEP> dst(C::row0(tid), C::col0(tid));
#pragma unroll
    for (int i = 0; i < C::PER_THREAD; ++i) {
        cp_async_16(smem + dst(i), src, true);
        src += step;
    }
}

// The same, from the tile's first row `gmem`.
template <int ROWS, int COLS, int THREADS, class T>
GSDPA_DEVICE void cp_async_full_tile(T *smem, const T *gmem, int64_t row_stride, int tid) {
    cp_async_full_tile_from<ROWS, COLS, THREADS>(smem, gmem + cp_async_lane_offset<COLS, THREADS>(row_stride, tid),
                                                 row_stride, tid);
}

// Copies rows [0, valid_rows) of a swizzled ROWS x COLS tile from shared memory to gmem (row r at
// gmem + r * row_stride) with 16-byte stores; consecutive threads write consecutive chunks of a row, so
// a warp's stores coalesce. Called by all THREADS threads; the caller synchronises before (the tile is
// complete) and, if the tile is reused, after.
template <int ROWS, int COLS, int THREADS, class T>
GSDPA_DEVICE void store_tile(T *gmem, int64_t row_stride, const T *smem, int valid_rows, int tid) {
    using C = TileChunks<ROWS, COLS, THREADS>;
    const int row0 = C::row0(tid);
    const SwizzledColumn<COLS, C::ROW_STEP> src(row0, C::col0(tid));
    T *dst = gmem + int64_t(row0) * row_stride + C::col0(tid);
    const int64_t step = int64_t(C::ROW_STEP) * row_stride;
#pragma unroll
    for (int i = 0; i < C::PER_THREAD; ++i) {
        if (row0 + i * C::ROW_STEP < valid_rows) {
            store_vec16(dst, ld_shared(reinterpret_cast<const uint4 *>(smem + src(i))));
        }
        dst += step;
    }
}

}  // namespace gsdpa
