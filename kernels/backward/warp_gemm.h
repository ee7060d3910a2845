// warp_gemm.h: one warp's share of a GEMM whose operands both sit in swizzled shared-memory tiles
// (common/swizzle.h), on mma.sync m16n8k16 with f32 accumulators.
//
// The backward runs five GEMMs per tile pair with different operand orientations; every one of them is
// this loop with the right ldmatrix flavour per operand (common/fragments.h):
//   A stored [m][k] -> ldsm_a        A stored [k][m] (P^T, dS^T from a [query][key] tile) -> ldsm_a_trans
//   B stored [n][k] -> ldsm_b        B stored [k][n] (dO, Q, K used as the right-hand side) -> ldsm_b_trans
#pragma once

#include "../common/fragments.h"

namespace gsdpa {
namespace bwd {

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

// acc (TM x TN mma tiles of 16 x 8, covering rows [m0, m0 + 16 TM) x columns [n0, n0 + 8 TN) of the
// product) += A[m0.., k0..k0 + 16 K_STEPS] * B[k0.., n0..].
//  A_KM: false -> a_tile stores A as [m][k] (A[m][k] = a_tile[m][k]); true -> as [k][m].
//  B_KN: false -> b_tile stores B as [n][k];                           true -> as [k][n].
// a_m0/a_k0 and b_n0/b_k0 are the product's coordinates; the tiles have A_COLS / B_COLS columns.
// All 32 lanes call it together.
template <class T, int TM, int TN, int K_STEPS, bool A_KM, bool B_KN, int A_COLS, int B_COLS>
GSDPA_DEVICE void warp_gemm(float (&acc)[TM][TN][4], const T *a_tile, int a_m0, int a_k0, const T *b_tile,
                            int b_n0, int b_k0, int lane) {
#pragma unroll
    for (int ks = 0; ks < K_STEPS; ++ks) {
        const int k = ks * 16;
        uint32_t a[TM][4];
#pragma unroll
        for (int mi = 0; mi < TM; ++mi) {
            if constexpr (A_KM) {
                ldsm_a_trans<A_COLS>(a[mi], a_tile, a_k0 + k, a_m0 + mi * 16, lane);
            } else {
                ldsm_a<A_COLS>(a[mi], a_tile, a_m0 + mi * 16, a_k0 + k, lane);
            }
        }
        if constexpr (TN == 1) {
            uint32_t b[2];
            if constexpr (B_KN) {
                ldsm_b_x2_trans<B_COLS>(b, b_tile, b_k0 + k, b_n0, lane);
            } else {
                ldsm_b_x2<B_COLS>(b, b_tile, b_n0, b_k0 + k, lane);
            }
#pragma unroll
            for (int mi = 0; mi < TM; ++mi) mma_m16n8k16<T>(acc[mi][0], a[mi], b, acc[mi][0]);
        } else {
            static_assert(TN % 2 == 0, "B operands are loaded two n-tiles at a time");
#pragma unroll
            for (int nj = 0; nj < TN; nj += 2) {
                uint32_t b[4];
                if constexpr (B_KN) {
                    ldsm_b_trans<B_COLS>(b, b_tile, b_k0 + k, b_n0 + nj * 8, lane);
                } else {
                    ldsm_b<B_COLS>(b, b_tile, b_n0 + nj * 8, b_k0 + k, lane);
                }
                const uint32_t b0[2] = {b[0], b[1]};
                const uint32_t b1[2] = {b[2], b[3]};
#pragma unroll
                for (int mi = 0; mi < TM; ++mi) {
                    mma_m16n8k16<T>(acc[mi][nj], a[mi], b0, acc[mi][nj]);
                    mma_m16n8k16<T>(acc[mi][nj + 1], a[mi], b1, acc[mi][nj + 1]);
                }
            }
        }
    }
}

template <int TM, int TN>
GSDPA_DEVICE void zero_acc(float (&acc)[TM][TN][4]) {
#pragma unroll
    for (int mi = 0; mi < TM; ++mi)
#pragma unroll
        for (int ni = 0; ni < TN; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;
}

// Writes a warp's accumulators (times `mul`), rounded to T, into a swizzled tile with COLS columns at
// rows [m0, m0 + 16 TM), columns [n0, n0 + 8 TN).
template <int COLS, class T, int TM, int TN>
GSDPA_DEVICE void store_acc(T *tile, const float (&acc)[TM][TN][4], int m0, int n0, float mul, int lane) {
#pragma unroll
    for (int mi = 0; mi < TM; ++mi) {
#pragma unroll
        for (int ni = 0; ni < TN; ++ni) {
            const float c[4] = {acc[mi][ni][0] * mul, acc[mi][ni][1] * mul, acc[mi][ni][2] * mul,
                                acc[mi][ni][3] * mul};
            store_c_frag<COLS>(tile, m0 + mi * 16, n0 + ni * 8, c, lane);
        }
    }
}

}  // namespace bwd
}  // namespace gsdpa
