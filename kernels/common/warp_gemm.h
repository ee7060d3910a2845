// warp_gemm.h: one warp's share of a GEMM on mma.sync m16n8k16 with f32 accumulators, the B operand in
// a swizzled shared-memory tile (common/swizzle.h), the A operand in shared memory or in registers.
// Shared by the forward (S = Q K^T, O += P V) and the backward (S, dP, dV, dK, dQ).
//
// The warp computes TM x TN mma tiles of 16 x 8 (rows [m0, m0 + 16 TM) x columns [n0, n0 + 8 TN) of the
// product), accumulating over K_STEPS k-steps of 16; every GEMM of the kernels is this loop with the right
// operand source (fragment layouts: common/primitives.h, docs/ptx-primitives.md):
//   A stored [m][k] in shared memory        -> ldsm_a        (Q for S = Q K^T, dS for dQ = dS K)
//   A stored [k][m] in shared memory        -> ldsm_a_trans  (P^T, dS^T from a [query][key] tile)
//   A in registers as mma fragments         -> copied        (the forward's Q, loaded once)
//   A = f32 accumulators of an earlier GEMM -> pack_c_to_a   (the forward's P: C fragments are A fragments)
//   B stored [n][k] -> ldsm_b (K, V as the right-hand side of Q K^T, dO V^T)
//   B stored [k][n] -> ldsm_b_trans (V for P V; dO, Q, K as the right-hand side of P^T dO, dS^T Q, dS K)
// Per k-step the TM A fragments are fetched first, then B two n-tiles at a time (one ldmatrix.x4; a single
// n-tile with ldmatrix.x2), each B fragment feeding TM mmas. warp_gemm_offsets is the same loop for a key
// loop that hoists the lane's ldmatrix addresses (LdsmLaneOffsets, common/fragments.h; the forward).
#pragma once

#include "fragments.h"

namespace gsdpa {

// Where the A operand of k-step ks, m-tile mi, comes from. Each has
// `void load(uint32_t (&a)[4], int ks, int mi, int lane) const`.

// A in a swizzled shared-memory tile with COLS columns, A[m][k] at (m0 + m, k0 + k) (TRANSPOSED = false)
// or at (k0 + k, m0 + m) (TRANSPOSED = true).
template <int COLS, bool TRANSPOSED, class T>
struct SmemOperandA {
    const T *tile;
    int m0, k0;
    GSDPA_DEVICE void load(uint32_t (&a)[4], int ks, int mi, int lane) const {
        if constexpr (TRANSPOSED) {
            ldsm_a_trans<COLS>(a, tile, k0 + ks * 16, m0 + mi * 16, lane);
        } else {
            ldsm_a<COLS>(a, tile, m0 + mi * 16, k0 + ks * 16, lane);
        }
    }
};

// A in a swizzled shared-memory tile stored [m][k] (TRANSPOSED = false: the ldsm_a_offsets pattern) or
// [k][m] (TRANSPOSED = true: ldsm_a_trans_offsets), addressed through the lane's precomputed offsets (the
// tile's own offset and the warp's origin included, from `smem`), the warp's rows from m0 past that.
template <int COLS, class T, bool TRANSPOSED = false>
struct SmemOffsetsOperandA {
    const T *smem;
    const LdsmLaneOffsets<COLS> &offsets;
    int m0;
    GSDPA_DEVICE void load(uint32_t (&a)[4], int ks, int mi, int) const {
        if constexpr (TRANSPOSED) {
            ldmatrix_x4_trans(a, offsets.at(smem, ks * 16, m0 + mi * 16));
        } else {
            ldmatrix_x4(a, offsets.at(smem, m0 + mi * 16, ks * 16));
        }
    }
};

// A already held as mma A fragments, frag[mi][ks].
template <int TM, int K_STEPS>
struct FragmentOperandA {
    const uint32_t (&frag)[TM][K_STEPS][4];
    GSDPA_DEVICE void load(uint32_t (&a)[4], int ks, int mi, int) const {
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = frag[mi][ks][i];
    }
};

// A = the f32 accumulators of an earlier GEMM (TM x 2 K_STEPS tiles of 16 x 8), rounded to T: the
// accumulator tiles 2 ks and 2 ks + 1 are exactly the A fragment of k-step ks (common/fragments.h).
template <class T, int TM, int K_STEPS>
struct AccumulatorOperandA {
    const float (&acc)[TM][2 * K_STEPS][4];
    GSDPA_DEVICE void load(uint32_t (&a)[4], int ks, int mi, int) const {
        pack_c_to_a<T>(a, acc[mi][2 * ks], acc[mi][2 * ks + 1]);
    }
};

// The mmas of one k-step for n-tiles nj and nj + 1 of every m-tile: b holds both n-tiles' B fragments as
// one ldmatrix.x4 left them (b[0..1]: n-tile nj, b[2..3]: nj + 1), each feeding TM mmas.
template <class T, int TM, int TN>
GSDPA_DEVICE void mma_n_tile_pair(float (&acc)[TM][TN][4], const uint32_t (&a)[TM][4], const uint32_t (&b)[4],
                                  int nj) {
    const uint32_t b0[2] = {b[0], b[1]};
    const uint32_t b1[2] = {b[2], b[3]};
#pragma unroll
    for (int mi = 0; mi < TM; ++mi) {
        mma_m16n8k16<T>(acc[mi][nj], a[mi], b0, acc[mi][nj]);
        mma_m16n8k16<T>(acc[mi][nj + 1], a[mi], b1, acc[mi][nj + 1]);
    }
}

// acc += A[.., 16 K_STEPS] * B[16 K_STEPS, b_n0 .. b_n0 + 8 TN), A from a_src (above), B from b_tile
// (B_COLS columns) stored [n][k] (B_KN = false: B[k][n] = b_tile[b_n0 + n][b_k0 + k]) or [k][n]
// (B_KN = true: B[k][n] = b_tile[b_k0 + k][b_n0 + n]). All 32 lanes call it together.
template <class T, int TM, int TN, int K_STEPS, bool B_KN, int B_COLS, class OperandA>
GSDPA_DEVICE void warp_gemm_from(float (&acc)[TM][TN][4], const OperandA &a_src, const T *b_tile, int b_n0,
                                 int b_k0, int lane) {
#pragma unroll
    for (int ks = 0; ks < K_STEPS; ++ks) {
        const int k = ks * 16;
        uint32_t a[TM][4];
#pragma unroll
        for (int mi = 0; mi < TM; ++mi) a_src.load(a[mi], ks, mi, lane);
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
                mma_n_tile_pair<T>(acc, a, b, nj);
            }
        }
    }
}

// The same GEMM over a whole B tile (b_n0 = b_k0 = 0), B addressed through the lane's precomputed offsets
// (LdsmLaneOffsets, common/fragments.h; the tile's own offset and the warp's origin included, from `smem`;
// build them with ldsm_b_operand_offsets below): every ldmatrix address is one of four base registers plus
// an immediate, nothing is recomputed per k-step.
template <class T, int TM, int TN, int K_STEPS, bool B_KN, int B_COLS, class OperandA>
GSDPA_DEVICE void warp_gemm_offsets(float (&acc)[TM][TN][4], const OperandA &a_src, const T *smem,
                                    const LdsmLaneOffsets<B_COLS> &b_offsets, int lane) {
    static_assert(TN % 2 == 0 || TN == 1, "B operands are loaded two n-tiles at a time, or one");
#pragma unroll
    for (int ks = 0; ks < K_STEPS; ++ks) {
        uint32_t a[TM][4];
#pragma unroll
        for (int mi = 0; mi < TM; ++mi) a_src.load(a[mi], ks, mi, lane);
        if constexpr (TN == 1) {
            uint32_t b[2];
            if constexpr (B_KN) {
                ldmatrix_x2_trans(b, b_offsets.at(smem, ks * 16, 0));
            } else {
                ldmatrix_x2(b, b_offsets.at(smem, 0, ks * 16));
            }
#pragma unroll
            for (int mi = 0; mi < TM; ++mi) mma_m16n8k16<T>(acc[mi][0], a[mi], b, acc[mi][0]);
        } else {
#pragma unroll
            for (int nj = 0; nj < TN; nj += 2) {
                uint32_t b[4];
                if constexpr (B_KN) {
                    ldmatrix_x4_trans(b, b_offsets.at(smem, ks * 16, nj * 8));
                } else {
                    ldmatrix_x4(b, b_offsets.at(smem, nj * 8, ks * 16));
                }
                mma_n_tile_pair<T>(acc, a, b, nj);
            }
        }
    }
}

// The lane offsets of the B loads warp_gemm_offsets issues for TN n-tiles of a tile stored [n][k]
// (B_KN = false) or [k][n] (B_KN = true). The warp's B origin: its first n (a multiple of 8 for [n][k],
// of 16 for [k][n]); tile_offset in elements.
template <int TN, bool B_KN, int COLS>
GSDPA_DEVICE LdsmLaneOffsets<COLS> ldsm_b_operand_offsets(int tile_offset, int n_origin, int lane) {
    if constexpr (B_KN) {
        return TN == 1 ? ldsm_b_x2_trans_offsets<COLS>(tile_offset, lane, n_origin)
                       : ldsm_b_trans_offsets<COLS>(tile_offset, lane, n_origin);
    } else {
        return TN == 1 ? ldsm_b_x2_offsets<COLS>(tile_offset + n_origin * COLS, lane)
                       : ldsm_b_offsets<COLS>(tile_offset + n_origin * COLS, lane);
    }
}

// Both operands in shared memory: A in a_tile (A_COLS columns) stored [m][k] (A_KM = false) or [k][m]
// (A_KM = true), its rows of the product from a_m0, its k from a_k0.
template <class T, int TM, int TN, int K_STEPS, bool A_KM, bool B_KN, int A_COLS, int B_COLS>
GSDPA_DEVICE void warp_gemm(float (&acc)[TM][TN][4], const T *a_tile, int a_m0, int a_k0, const T *b_tile,
                            int b_n0, int b_k0, int lane) {
    const SmemOperandA<A_COLS, A_KM, T> a_src{a_tile, a_m0, a_k0};
    warp_gemm_from<T, TM, TN, K_STEPS, B_KN, B_COLS>(acc, a_src, b_tile, b_n0, b_k0, lane);
}

// A from registers ("rs"), as mma fragments a_frag[mi][ks].
template <class T, int TM, int TN, int K_STEPS, bool B_KN, int B_COLS>
GSDPA_DEVICE void warp_gemm_rs(float (&acc)[TM][TN][4], const uint32_t (&a_frag)[TM][K_STEPS][4], const T *b_tile,
                               int b_n0, int b_k0, int lane) {
    const FragmentOperandA<TM, K_STEPS> a_src{a_frag};
    warp_gemm_from<T, TM, TN, K_STEPS, B_KN, B_COLS>(acc, a_src, b_tile, b_n0, b_k0, lane);
}

// A from registers ("rs"), as the f32 accumulators of an earlier GEMM, a_acc[mi][2 ks + 0/1], rounded to T.
template <class T, int TM, int TN, int K_STEPS, bool B_KN, int B_COLS>
GSDPA_DEVICE void warp_gemm_rs(float (&acc)[TM][TN][4], const float (&a_acc)[TM][2 * K_STEPS][4], const T *b_tile,
                               int b_n0, int b_k0, int lane) {
    const AccumulatorOperandA<T, TM, K_STEPS> a_src{a_acc};
    warp_gemm_from<T, TM, TN, K_STEPS, B_KN, B_COLS>(acc, a_src, b_tile, b_n0, b_k0, lane);
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

// store_acc through precomputed lane offsets (CFragOffsets, common/fragments.h; the tile's offset and
// the warp's origin included, from `smem`).
template <int COLS, class T, int TM, int TN>
GSDPA_DEVICE void store_acc_offsets(T *smem, const CFragOffsets<COLS, TN> &offsets, const float (&acc)[TM][TN][4],
                                    float mul) {
#pragma unroll
    for (int mi = 0; mi < TM; ++mi) {
#pragma unroll
        for (int ni = 0; ni < TN; ++ni) {
#pragma unroll
            for (int row_half = 0; row_half < 2; ++row_half) {
                st_shared(reinterpret_cast<uint32_t *>(smem + offsets.at(mi, ni, row_half)),
                          pack_float2<T>(acc[mi][ni][2 * row_half] * mul, acc[mi][ni][2 * row_half + 1] * mul));
            }
        }
    }
}

}  // namespace gsdpa
