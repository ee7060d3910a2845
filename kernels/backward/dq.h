// dq.h: the deterministic dQ kernel. Grid (ceil(seqlen_q / BLOCK_M), heads_q, batch). One block owns
// BLOCK_M query rows of one head and loops over the key tiles in order, dQ in registers: no atomics, the
// same sums in the same order on every run. Tiles, warp grids and the shared-memory layout:
// backward/traits.h (DqTraits); the launch sequence: docs/backward.md.
//
// Per key tile: S = Q K^T, dP = dO V^T, dS = P * (dP - Delta) (backward/softmax_grad.h) through shared
// memory, dQ += dS K. K is double-buffered (read by S = Q K^T and again by dQ += dS K; one buffer in the
// LARGE_1STAGE tiles, refilled once dQ += dS K has consumed it); V is refilled once dS is known.
#pragma once

#include "softmax_grad.h"

namespace gsdpa {
namespace bwd {

template <class T, int D, BwdTiles TILES = BwdTiles::COMPACT>
GSDPA_DEVICE void dq(const GsdpaBwdParams &p) {
    using Tr = DqTraits<T, D, TILES>;
    constexpr int BM = Tr::BLOCK_M, BN = Tr::BLOCK_N, THREADS = Tr::THREADS, PC = Tr::P_DS_TILE_COLS;
    // mma tiles per warp along each dimension of the two GEMM outputs (traits.h).
    constexpr int SCORE_TM = Tr::SCORE_WARP_TILES_M, SCORE_TN = Tr::SCORE_WARP_TILES_N;
    constexpr int DQ_TM = Tr::DQ_WARP_TILES_M, DQ_TD = Tr::DQ_WARP_TILES_D;
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    const int h = int(blockIdx.y), b = int(blockIdx.z);
    const SeqlenInfo seq(p, b);
    const int m0 = int(blockIdx.x) * BM;
    if (m0 >= seq.seqlen_q) return;  // varlen: a shorter sequence (uniform over the block)
    const int rows = tmin(BM, seq.seqlen_q - m0);
    const int hkv = h / (p.heads_q / p.heads_kv);
    const bool causal = p.causal != 0;
    // Key tiles [0, n_tiles) hold a key visible to some row of the tile (the last row sees the most).
    const int n_tiles = key_tile_count<BM, BN>(m0, seq, causal);

    T *smem = reinterpret_cast<T *>(dynamic_smem());
    T *sQ = smem + Tr::SMEM_Q;
    T *sdO = smem + Tr::SMEM_DO;
    T *sK = smem + Tr::SMEM_K;
    T *sV = smem + Tr::SMEM_V;

    // This thread's first chunk of key tile 0 of K and V (cp_async_lane_offset), computed once: tile n's
    // is n BN rows further, one 64-bit multiply-add per tile instead of the whole (batch, row, head) offset.
    const int64_t k_row = p.k_stride.row, v_row = p.v_stride.row;
    const T *k_src = static_cast<const T *>(p.k) + seq.k_offset(p.k_stride, 0, hkv) +
                     cp_async_lane_offset<D, THREADS>(k_row, tid);
    const T *v_src = static_cast<const T *>(p.v) + seq.k_offset(p.v_stride, 0, hkv) +
                     cp_async_lane_offset<D, THREADS>(v_row, tid);
    auto load_k = [&](int n, T *dst) {
        cp_async_tile_from<BN, D, THREADS>(dst, k_src + int64_t(n) * BN * k_row, k_row, seq.seqlen_k - n * BN, tid);
    };
    auto load_v = [&](int n) {
        cp_async_tile_from<BN, D, THREADS>(sV, v_src + int64_t(n) * BN * v_row, v_row, seq.seqlen_k - n * BN, tid);
    };

    const GsdpaStrides do_stride = grad_out_stride(p);
    cp_async_tile<BM, D, THREADS>(sQ, static_cast<const T *>(p.q) + seq.q_offset(p.q_stride, m0, h), p.q_stride.row,
                                  rows, tid);
    cp_async_tile<BM, D, THREADS>(sdO, grad_out_base<T>(p) + seq.q_offset(do_stride, m0, h), do_stride.row, rows,
                                  tid);
    if constexpr (Tr::K_STAGES == 2) {
        if (n_tiles > 0) {
            load_k(0, sK);
            load_v(0);
        }
        cp_async_commit();
    } else {
        // One K buffer: two groups, as every tile leaves them (V, then K; the loop's first wait).
        if (n_tiles > 0) load_v(0);
        cp_async_commit();
        if (n_tiles > 0) load_k(0, sK);
        cp_async_commit();
    }

    // This warp's tile origin in each of the two output shapes (see traits.h).
    const int score_m0 = (warp / Tr::SCORE_WARPS_N) * SCORE_TM * 16;
    const int score_n0 = (warp % Tr::SCORE_WARPS_N) * SCORE_TN * 8;
    const int dq_m0 = (warp / Tr::DQ_WARPS_D) * DQ_TM * 16;
    const int dq_d0 = (warp % Tr::DQ_WARPS_D) * DQ_TD * 8;

    float lse2[SCORE_TM][2], delta[SCORE_TM][2];
    load_row_stats<Tr>(lse2, delta, p, seq.lse_offset(p.lse_batch_stride, p.lse_head_stride, h), m0 + score_m0,
                       seq.seqlen_q, lane);

    float acc_dq[DQ_TM][DQ_TD][4];
    zero_acc(acc_dq);

    // This lane's ldmatrix addresses, the warp's origin folded in, computed once (common/fragments.h,
    // LdsmLaneOffsets). dO = Q + BM D shares Q's set (an immediate); the two K sets follow K's double buffer
    // by one XOR per tile.
    const LdsmLaneOffsets<D> q_a = ldsm_a_offsets<D>(Tr::SMEM_Q + score_m0 * D, lane);  // Q, dO as A
    LdsmLaneOffsets<D> k_b = ldsm_b_operand_offsets<SCORE_TN, false, D>(Tr::SMEM_K, score_n0, lane);
    const LdsmLaneOffsets<D> v_b = ldsm_b_operand_offsets<SCORE_TN, false, D>(Tr::SMEM_V, score_n0, lane);
    const LdsmLaneOffsets<PC> ds_a = ldsm_a_offsets<PC>(Tr::SMEM_DS + dq_m0 * PC, lane);
    LdsmLaneOffsets<D> k_bt = ldsm_b_operand_offsets<DQ_TD, true, D>(Tr::SMEM_K, dq_d0, lane);
    const T *sdO_from_Q = smem + (Tr::SMEM_DO - Tr::SMEM_Q);

    for (int n = 0; n < n_tiles; ++n) {
        const int n0 = n * BN;
        float s[SCORE_TM][SCORE_TN][4], dp[SCORE_TM][SCORE_TN][4];
        zero_acc(s);
        zero_acc(dp);
        if constexpr (Tr::K_STAGES == 2) {
            cp_async_wait<0>();
            __syncthreads();  // K(n), V(n) (and Q, dO) landed; every warp is done with iteration n - 1
            if (n + 1 < n_tiles) load_k(n + 1, sK + ((n + 1) & 1) * BN * D);
            cp_async_commit();

            // S = Q K^T and dP = dO V^T: K and V stored [key][dim] = [n][k].
            warp_gemm_offsets<T, SCORE_TM, SCORE_TN, D / 16, false, D>(s, SmemOffsetsOperandA<D, T>{smem, q_a, 0},
                                                                         smem, k_b, lane);
            warp_gemm_offsets<T, SCORE_TM, SCORE_TN, D / 16, false, D>(
                dp, SmemOffsetsOperandA<D, T>{sdO_from_Q, q_a, 0}, smem, v_b, lane);
        } else {
            // One K buffer: K(n) was issued last (end of tile n - 1), so wait for V(n) alone and start with
            // dP = dO V^T while K(n) lands.
            cp_async_wait<1>();
            __syncthreads();  // V(n) (and Q, dO) landed
            warp_gemm_offsets<T, SCORE_TM, SCORE_TN, D / 16, false, D>(
                dp, SmemOffsetsOperandA<D, T>{sdO_from_Q, q_a, 0}, smem, v_b, lane);
            cp_async_wait<0>();
            __syncthreads();  // K(n) landed
            warp_gemm_offsets<T, SCORE_TM, SCORE_TN, D / 16, false, D>(s, SmemOffsetsOperandA<D, T>{smem, q_a, 0},
                                                                         smem, k_b, lane);
        }
        const bool mask = tile_needs_mask<BN>(n0, m0, seq, causal);
        softmax_grad_tile<Tr>(s, dp, lse2, delta, p.scale_log2, mask, seq, causal, m0 + score_m0, n0 + score_n0, lane);
        store_acc<PC>(smem + Tr::SMEM_DS, dp, score_m0, score_n0, 1.0f, lane);
        __syncthreads();  // dS complete; every warp is done with V(n): refill it
        if (n + 1 < n_tiles) load_v(n + 1);
        cp_async_commit();

        // dQ += dS K: A = dS [query][key], B = K stored [key][dim] = [k][n] (scaled at the end).
        warp_gemm_offsets<T, DQ_TM, DQ_TD, BN / 16, true, D>(acc_dq, SmemOffsetsOperandA<PC, T>{smem, ds_a, 0}, smem,
                                                              k_bt, lane);
        if constexpr (Tr::K_STAGES == 2) {
            k_b.flip(Tr::K_STAGE_FLIP);  // on to tile n + 1's K buffer
            k_bt.flip(Tr::K_STAGE_FLIP);
        } else {
            // One K buffer: dQ += dS K was K(n)'s last reader, so K(n + 1) streams in from here, once every
            // warp is past that GEMM (this barrier also covers the dS reads before tile n + 1 rewrites dS).
            if (n + 1 < n_tiles) {
                __syncthreads();  // every warp is done with K(n): refill it
                load_k(n + 1, sK);
            }
            cp_async_commit();
        }
    }

    cp_async_wait<0>();
    __syncthreads();  // every warp is done reading Q's region (and K)
    store_acc<D>(sQ, acc_dq, dq_m0, dq_d0, p.scale, lane);
    __syncthreads();
    store_tile<BM, D, THREADS>(static_cast<T *>(p.dq) + seq.q_offset(p.dq_stride, m0, h), p.dq_stride.row, sQ, rows,
                               tid);
}

}  // namespace bwd
}  // namespace gsdpa
