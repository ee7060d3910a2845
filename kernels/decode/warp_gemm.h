// warp_gemm.h: the decode kernel's two warp GEMMs on swizzled shared-memory tiles.
//
// The forward's gemm_qk / gemm_pv (kernels/forward.cu) with Q always read from shared memory; kept here
// until the shared warp GEMM lands in common/ (the forward/backward refactor), then it should move there.
#pragma once

#include "traits.h"

namespace gsdpa {
namespace decode {

// S = Q K^T for this warp's 16 rows (from warp_row0 of the Q tile) x BLOCK_N keys of the K tile.
template <class Tr>
GSDPA_DEVICE void gemm_qk(float (&s)[Tr::N_TILES_S][4], const typename Tr::T *s_q, const typename Tr::T *s_k,
                          int warp_row0, int lane) {
    using T = typename Tr::T;
#pragma unroll
    for (int nt = 0; nt < Tr::N_TILES_S; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) s[nt][i] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < Tr::K_STEPS_QK; ++kk) {
        uint32_t a[4];
        ldsm_a<Tr::D>(a, s_q, warp_row0, kk * 16, lane);
#pragma unroll
        for (int np = 0; np < Tr::N_TILES_S / 2; ++np) {
            uint32_t bk[4];
            ldsm_b<Tr::D>(bk, s_k, np * 16, kk * 16, lane);
            const uint32_t b0[2] = {bk[0], bk[1]};
            const uint32_t b1[2] = {bk[2], bk[3]};
            mma_m16n8k16<T>(s[2 * np], a, b0, s[2 * np]);
            mma_m16n8k16<T>(s[2 * np + 1], a, b1, s[2 * np + 1]);
        }
    }
}

// O += P V: P (the softmax numerators in s) rounded to T and reused in registers as the A operand.
template <class Tr>
GSDPA_DEVICE void gemm_pv(float (&acc_o)[Tr::N_TILES_O][4], const float (&s)[Tr::N_TILES_S][4],
                          const typename Tr::T *s_v, int lane) {
    using T = typename Tr::T;
#pragma unroll
    for (int kk = 0; kk < Tr::K_STEPS_PV; ++kk) {
        uint32_t a[4];
        pack_c_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < Tr::N_TILES_O / 2; ++dp) {
            uint32_t bv[4];
            ldsm_b_trans<Tr::D>(bv, s_v, kk * 16, dp * 16, lane);
            const uint32_t b0[2] = {bv[0], bv[1]};
            const uint32_t b1[2] = {bv[2], bv[3]};
            mma_m16n8k16<T>(acc_o[2 * dp], a, b0, acc_o[2 * dp]);
            mma_m16n8k16<T>(acc_o[2 * dp + 1], a, b1, acc_o[2 * dp + 1]);
        }
    }
}

}  // namespace decode
}  // namespace gsdpa
