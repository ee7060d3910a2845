// fragments.h: mma.sync m16n8k16 operand fragments to and from swizzled shared-memory tiles
// (common/swizzle.h), plus the quad reductions over a fragment row. Shared by the forward and backward
// kernels. Fragment layouts: docs/ptx-primitives.md and the comments in primitives.h
// (g = lane / 4, t = lane % 4). An accumulator fragment row is a "row half": row_half 0 is row g of the
// 16-row tile, row_half 1 row g + 8.
//
// Naming: `ldsm_*` load one warp's operand fragments with one ldmatrix.x4; `tile` is the base of a
// swizzled tile with COLS columns; coordinates are in elements of that tile. Every lane of the warp must
// call them together (they are warp collectives), with the same coordinates.
#pragma once

#include "swizzle.h"

namespace gsdpa {

// A operand (16 x 16, m x k) where the tile stores A row-major: A[m][k] = tile[row0 + m][col0 + k].
// Matrices 0..3 = (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15) give a[0..3].
template <int COLS, class T>
GSDPA_DEVICE void ldsm_a(uint32_t (&a)[4], const T *tile, int row0, int col0, int lane) {
    const int row = row0 + (lane & 15);
    const int col = col0 + ((lane >> 4) << 3);
    ldmatrix_x4(a, tile + swizzle<COLS>(row, col));
}

// A operand (16 x 16, m x k) where the tile stores A transposed: A[m][k] = tile[row0 + k][col0 + m]
// (e.g. P^T or dS^T in a backward, from a tile stored [query][key]).
template <int COLS, class T>
GSDPA_DEVICE void ldsm_a_trans(uint32_t (&a)[4], const T *tile, int row0, int col0, int lane) {
    const int j = lane >> 3;  // the matrix this lane addresses a row of
    const int row = row0 + (lane & 7) + ((j >> 1) << 3);
    const int col = col0 + ((j & 1) << 3);
    ldmatrix_x4_trans(a, tile + swizzle<COLS>(row, col));
}

// B operands of two adjacent n-tiles (16 x 8 each, k x n) where the tile stores B as [n][k]
// (k contiguous; e.g. K for S = Q K^T): B[k][n] = tile[row0 + n][col0 + k], n in 0..15.
// b[0], b[1]: n-tile n = 0..7; b[2], b[3]: n-tile n = 8..15 (pass {b[0], b[1]} / {b[2], b[3]} to the mma).
template <int COLS, class T>
GSDPA_DEVICE void ldsm_b(uint32_t (&b)[4], const T *tile, int row0, int col0, int lane) {
    const int j = lane >> 3;
    const int row = row0 + (lane & 7) + ((j >> 1) << 3);
    const int col = col0 + ((j & 1) << 3);
    ldmatrix_x4(b, tile + swizzle<COLS>(row, col));
}

// B operand of ONE n-tile (16 x 8, k x n) with ldmatrix.x2 where the tile stores B as [n][k]:
// B[k][n] = tile[row0 + n][col0 + k]. Lanes 0-7 address matrix 0 (k 0-7), lanes 8-15 matrix 1 (k 8-15);
// lanes 16-31 repeat those addresses (ignored by ldmatrix.x2).
template <int COLS, class T>
GSDPA_DEVICE void ldsm_b_x2(uint32_t (&b)[2], const T *tile, int row0, int col0, int lane) {
    const int row = row0 + (lane & 7);
    const int col = col0 + (((lane >> 3) & 1) << 3);
    ldmatrix_x2(b, tile + swizzle<COLS>(row, col));
}

// Same, the tile storing B as [k][n]: B[k][n] = tile[row0 + k][col0 + n]; .trans turns the stored rows (k)
// into the fragment's columns.
template <int COLS, class T>
GSDPA_DEVICE void ldsm_b_x2_trans(uint32_t (&b)[2], const T *tile, int row0, int col0, int lane) {
    const int row = row0 + (lane & 15);
    ldmatrix_x2_trans(b, tile + swizzle<COLS>(row, col0));
}

// B operands of two adjacent n-tiles where the tile stores B as [k][n] (n contiguous; e.g. V for O = P V):
// B[k][n] = tile[row0 + k][col0 + n], k in 0..15, n in 0..15. Same register order as ldsm_b.
template <int COLS, class T>
GSDPA_DEVICE void ldsm_b_trans(uint32_t (&b)[4], const T *tile, int row0, int col0, int lane) {
    const int j = lane >> 3;
    const int row = row0 + (lane & 7) + ((j & 1) << 3);
    const int col = col0 + ((j >> 1) << 3);
    ldmatrix_x4_trans(b, tile + swizzle<COLS>(row, col));
}

// A lane's ldmatrix.x4 addresses for every 16 x 16 fragment of a swizzled tile of 16-bit elements,
// computed once (outside a key loop) instead of per ldmatrix. The ldsm_* functions above address, per
// lane, tile row row0 + lane_row and column col0 + 8 lane_chunk (lane_row, lane_chunk fixed by the lane
// and the pattern). For row0 % 8 == 0 and col0 % 16 == 0 the swizzle of that element is
//   row0 * COLS + (col0 & ~63) + lane_row * COLS + ((((col0 / 16) % 4) * 2 + lane_chunk) ^ (lane_row % 8)) * 8
// (common/swizzle.h): the lane's part depends on the fragment only through (col0 / 16) % 4, so four base
// offsets per lane cover the tile and every fragment's address is a base register plus a compile-time
// immediate once the GEMM loops are unrolled. The bases are kept in bytes (ldmatrix's address unit, so
// no per-use scaling) and include the tile's offset from the shared-memory base.
// A warp that works on a sub-tile folds its origin in once: its first row (a multiple of 8) into the
// tile offset (row * COLS), its first column (a multiple of 16) as col_origin. Base v then addresses
// column col_origin + 16 v, whose 64-column line and swizzle chunk the constructor resolves; a fragment at
// col0 past that origin is base (col0 / 16) % 4 plus 64-column lines as an immediate, as before (the
// chunk of a column repeats every 64 columns, common/swizzle.h).
template <int COLS>
struct LdsmLaneOffsets {
    static_assert(COLS % 64 == 0, "a swizzled tile row must be a whole number of 128-byte lines");
    static constexpr int ELEM_BYTES = 2;
    int base_bytes[4];
    // tile_offset: the tile's offset from the shared-memory base, in elements; col_origin: see above.
    GSDPA_DEVICE LdsmLaneOffsets(int tile_offset, int lane_row, int lane_chunk, int col_origin = 0) {
#pragma unroll
        for (int v = 0; v < 4; ++v) {
            const int col = col_origin + 16 * v;  // the lane's column is col + 8 lane_chunk
            base_bytes[v] = ELEM_BYTES * (tile_offset + lane_row * COLS + (col & ~63) +
                                          (((((col >> 3) & 7) + lane_chunk) ^ (lane_row & 7)) << 3));
        }
    }
    // The lane's ldmatrix row address of the fragment at (row0, col0) of the tile (row0 % 8 == 0,
    // col0 % 16 == 0), from the shared-memory base `smem`.
    template <class T>
    GSDPA_DEVICE const T *at(const T *smem, int row0, int col0) const {
        return reinterpret_cast<const T *>(reinterpret_cast<const char *>(smem) + base_bytes[(col0 >> 4) & 3] +
                                           ELEM_BYTES * (row0 * COLS + (col0 & ~63)));
    }
    // Moves the addresses to a tile whose offset differs from this one's only in the bits of
    // flip_elements (and whose in-tile offsets lie below those bits).
    GSDPA_DEVICE void flip(int flip_elements) {
#pragma unroll
        for (int v = 0; v < 4; ++v) base_bytes[v] ^= ELEM_BYTES * flip_elements;
    }
    // Called once per iteration of a loop across which the addresses stay the same, with a value that
    // is always 0 but that the compiler cannot prove so (e.g. a non-negative length >> 31): the bases
    // become loop-carried values, which ptxas keeps in registers, where it would otherwise rebuild
    // loop-invariant ones from the lane index inside the loop when registers are short (about 40
    // integer instructions per key tile in the forward at D = 64 on sm_80). Costs one LOP3 per base.
    GSDPA_DEVICE void keep_in_registers(int opaque_zero) {
#pragma unroll
        for (int v = 0; v < 4; ++v) base_bytes[v] ^= opaque_zero;
    }
};

// The lane offsets of each ldsm_* pattern above (col_origin: see LdsmLaneOffsets).
// ldsm_a (A stored [m][k]).
template <int COLS>
GSDPA_DEVICE LdsmLaneOffsets<COLS> ldsm_a_offsets(int tile_offset, int lane, int col_origin = 0) {
    return LdsmLaneOffsets<COLS>(tile_offset, lane & 15, lane >> 4, col_origin);
}
// ldsm_b (B stored [n][k], two n-tiles); ldsm_a_trans addresses the same rows and columns.
template <int COLS>
GSDPA_DEVICE LdsmLaneOffsets<COLS> ldsm_b_offsets(int tile_offset, int lane, int col_origin = 0) {
    const int j = lane >> 3;
    return LdsmLaneOffsets<COLS>(tile_offset, (lane & 7) + ((j >> 1) << 3), j & 1, col_origin);
}
template <int COLS>
GSDPA_DEVICE LdsmLaneOffsets<COLS> ldsm_a_trans_offsets(int tile_offset, int lane, int col_origin = 0) {
    return ldsm_b_offsets<COLS>(tile_offset, lane, col_origin);
}
// ldsm_b_trans (B stored [k][n], two n-tiles).
template <int COLS>
GSDPA_DEVICE LdsmLaneOffsets<COLS> ldsm_b_trans_offsets(int tile_offset, int lane, int col_origin = 0) {
    const int j = lane >> 3;
    return LdsmLaneOffsets<COLS>(tile_offset, (lane & 7) + ((j & 1) << 3), j >> 1, col_origin);
}
// ldsm_b_x2 (B stored [n][k], one n-tile; lanes 16-31 repeat lanes 0-15, which ldmatrix.x2 ignores).
template <int COLS>
GSDPA_DEVICE LdsmLaneOffsets<COLS> ldsm_b_x2_offsets(int tile_offset, int lane, int col_origin = 0) {
    return LdsmLaneOffsets<COLS>(tile_offset, lane & 7, (lane >> 3) & 1, col_origin);
}
// ldsm_b_x2_trans (B stored [k][n], one n-tile).
template <int COLS>
GSDPA_DEVICE LdsmLaneOffsets<COLS> ldsm_b_x2_trans_offsets(int tile_offset, int lane, int col_origin = 0) {
    return LdsmLaneOffsets<COLS>(tile_offset, lane & 15, 0, col_origin);
}

// The f32 accumulators of two adjacent 16 x 8 tiles (columns 0-7 in c0, 8-15 in c1), rounded to T and
// packed: exactly the A operand of an m16n8k16 over k = those 16 columns (the register-reuse corollary in
// docs/ptx-primitives.md: the forward's P never leaves registers).
template <class T>
GSDPA_DEVICE void pack_c_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
    a[0] = pack_float2<T>(c0[0], c0[1]);
    a[1] = pack_float2<T>(c0[2], c0[3]);
    a[2] = pack_float2<T>(c1[0], c1[1]);
    a[3] = pack_float2<T>(c1[2], c1[3]);
}

// Element offsets, in a swizzled tile with COLS columns, of the two 16-bit pairs a lane holds of a 16 x 8
// accumulator tile at (row0, col0): row_half 0 is row row0 + g, row_half 1 row row0 + g + 8; both at
// columns col0 + 2t, col0 + 2t + 1 (c[2 * row_half], c[2 * row_half + 1]). The pair is 4-byte aligned.
template <int COLS>
GSDPA_DEVICE int c_frag_offset(int row0, int col0, int row_half, int lane) {
    return swizzle<COLS>(row0 + (lane >> 2) + 8 * row_half, col0 + 2 * (lane & 3));
}

// Writes a lane's part of a 16 x 8 f32 accumulator tile at (row0, col0), rounded to T, into a swizzled
// tile (4-byte stores; a warp's stores are conflict-free).
template <int COLS, class T>
GSDPA_DEVICE void store_c_frag(T *tile, int row0, int col0, const float (&c)[4], int lane) {
#pragma unroll
    for (int row_half = 0; row_half < 2; ++row_half) {
        // st_shared: a plain store on the GPU; on the emulator the race detector sees it.
        st_shared(reinterpret_cast<uint32_t *>(tile + c_frag_offset<COLS>(row0, col0, row_half, lane)),
                  pack_float2<T>(c[2 * row_half], c[2 * row_half + 1]));
    }
}

// A lane's store offsets into a swizzled tile with COLS columns for a warp's TN accumulator tiles along
// a row, computed once outside a loop: the element of (row0 + r, col0 + 8 ni + 2t) with r = g + 8 row_half
// + 16 mi. The swizzle depends on a row only through row % 8 (g here, whatever mi and row_half), so the
// row part is linear, an immediate; the column part differs per n-tile (its chunk is XORed with g) and is
// one register each. row0 % 8 == 0.
template <int COLS, int TN>
struct CFragOffsets {
    int base[TN];  // elements
    GSDPA_DEVICE CFragOffsets(int tile_offset, int row0, int col0, int lane) {
#pragma unroll
        for (int ni = 0; ni < TN; ++ni) base[ni] = tile_offset + c_frag_offset<COLS>(row0, col0 + 8 * ni, 0, lane);
    }
    // The element offset of the pair at (mi, ni, row_half).
    GSDPA_DEVICE int at(int mi, int ni, int row_half) const { return base[ni] + (16 * mi + 8 * row_half) * COLS; }
    // As LdsmLaneOffsets::keep_in_registers: loop-carried, so not rebuilt inside the loop.
    GSDPA_DEVICE void keep_in_registers(int opaque_zero) {
#pragma unroll
        for (int ni = 0; ni < TN; ++ni) base[ni] ^= opaque_zero;
    }
};

// Reads the two 16-bit values at the positions a lane holds of a 16 x 8 accumulator tile at
// (row0, col0), row half `row_half`, as floats.
template <int COLS, class T>
GSDPA_DEVICE float2 load_c_pair(const T *tile, int row0, int col0, int row_half, int lane) {
    return unpack_float2<T>(
        ld_shared(reinterpret_cast<const uint32_t *>(tile + c_frag_offset<COLS>(row0, col0, row_half, lane))));
}

// Max / sum over the 4 lanes of a quad (the lanes holding one accumulator row); every lane gets the result.
GSDPA_DEVICE float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
    return x;
}
GSDPA_DEVICE float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    return x;
}

}  // namespace gsdpa
