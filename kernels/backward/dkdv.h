// dkdv.h: the dK / dV kernel (and, in fast mode, dQ by atomics). Grid (ceil(seqlen_k / BLOCK_N), heads_kv,
// batch). One block owns BLOCK_N keys of one kv head and loops over (query head of the group, query
// tile); dK and dV stay in registers for the whole loop. Tiles, warp grids and the shared-memory layout:
// backward/traits.h (DkdvTraits); the launch sequence: docs/backward.md.
//
// Per iteration (one query tile of one query head):
//   S = Q K^T, dP = dO V^T                 (score warp grid, both operands from shared memory)
//   P, dS = P * (dP - Delta)               (backward/softmax_grad.h), written to shared memory
//   dV += P^T dO, dK += dS^T Q             (dK/dV warp grid, A transposed from the [query][key] tiles)
//   fast mode: dq_accum += scale * dS K    (dQ warp grid, f32 atomics)
// Q is double-buffered (one buffer in the LARGE_1STAGE tiles, refilled once dK += dS^T Q has consumed
// it); dO is refilled once dV += P^T dO has consumed it.
#pragma once

#include "softmax_grad.h"

namespace gsdpa {
namespace bwd {

template <class T, int D, BwdTiles TILES = BwdTiles::COMPACT>
GSDPA_DEVICE void dkdv(const GsdpaBwdParams &p) {
    using Tr = DkdvTraits<T, D, TILES>;
    constexpr int BM = Tr::BLOCK_M, BN = Tr::BLOCK_N, THREADS = Tr::THREADS, PC = Tr::P_DS_TILE_COLS;
    // mma tiles per warp along each dimension of the three GEMM outputs (traits.h).
    constexpr int SCORE_TM = Tr::SCORE_WARP_TILES_M, SCORE_TN = Tr::SCORE_WARP_TILES_N;
    constexpr int DKDV_TN = Tr::DKDV_WARP_TILES_N, DKDV_TD = Tr::DKDV_WARP_TILES_D;
    constexpr int DQ_TM = Tr::DQ_WARP_TILES_M, DQ_TD = Tr::DQ_WARP_TILES_D;
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    const int hkv = int(blockIdx.y), b = int(blockIdx.z);
    const SeqlenInfo seq(p, b);
    const int n0 = int(blockIdx.x) * BN;
    if (n0 >= seq.seqlen_k) return;  // varlen: a shorter sequence (uniform over the block)
    const int keys = tmin(BN, seq.seqlen_k - n0);
    const int group = p.heads_q / p.heads_kv;
    const bool causal = p.causal != 0;

    // Query tiles to visit: with causal masking, the rows before the first that sees key n0 see none of
    // this block's keys.
    const int m_first = first_row_seeing_key(n0, seq, causal) / BM;
    const int per_head = tmax(0, ceil_div(seq.seqlen_q, BM) - m_first);
    const int iters = group * per_head;

    T *smem = reinterpret_cast<T *>(dynamic_smem());
    T *sK = smem + Tr::SMEM_K;
    T *sV = smem + Tr::SMEM_V;
    T *sQ = smem + Tr::SMEM_Q;
    T *sdO = smem + Tr::SMEM_DO;

    const T *q_base = static_cast<const T *>(p.q);
    const T *do_base = grad_out_base<T>(p);
    const GsdpaStrides do_stride = grad_out_stride(p);

    // The (query head, query tile) pairs are visited head by head: a tile position advances by one query
    // tile, wrapping to the next head of the group after per_head tiles (no division in the loop). With
    // STEP_TILE_OFFSETS (traits.h) it carries its element offsets into Q and dO (of this thread's first
    // cp.async chunk, the tile's first row plus cp_async_lane_offset) and into LSE / delta (of the head's
    // row 0), stepped along rather than recomputed from (h, m0): per tile and tensor one 64-bit add
    // instead of three 64-bit multiply-adds. Without it they are recomputed where used.
    struct TilePos {
        int h, m0;
        int64_t q, dout, lse;
    };
    const int64_t q_row = p.q_stride.row, do_row = do_stride.row;
    const int64_t q_step = int64_t(BM) * q_row, do_step = int64_t(BM) * do_row;
    // From a head's last query tile to the next head's first.
    const int64_t q_wrap = p.q_stride.head - (per_head - 1) * q_step;
    const int64_t do_wrap = do_stride.head - (per_head - 1) * do_step;
    const TilePos first_tile{hkv * group, m_first * BM,
                             seq.q_offset(p.q_stride, m_first * BM, hkv * group) +
                                 cp_async_lane_offset<D, THREADS>(q_row, tid),
                             seq.q_offset(do_stride, m_first * BM, hkv * group) +
                                 cp_async_lane_offset<D, THREADS>(do_row, tid),
                             seq.lse_offset(p.lse_batch_stride, p.lse_head_stride, hkv * group)};
    auto next_tile = [&](TilePos t) {
        t.m0 += BM;
        const bool wrap = t.m0 == (m_first + per_head) * BM;
        if (wrap) {
            t.m0 = m_first * BM;
            ++t.h;
        }
        if constexpr (Tr::STEP_TILE_OFFSETS) {
            t.q += wrap ? q_wrap : q_step;
            t.dout += wrap ? do_wrap : do_step;
            if (wrap) t.lse += p.lse_head_stride;
        }
        return t;
    };
    auto load_q = [&](const TilePos &t, T *dst) {
        if constexpr (Tr::STEP_TILE_OFFSETS) {
            cp_async_tile_from<BM, D, THREADS>(dst, q_base + t.q, q_row, seq.seqlen_q - t.m0, tid);
        } else {
            cp_async_tile<BM, D, THREADS>(dst, q_base + seq.q_offset(p.q_stride, t.m0, t.h), q_row,
                                          seq.seqlen_q - t.m0, tid);
        }
    };
    auto load_do = [&](const TilePos &t) {
        if constexpr (Tr::STEP_TILE_OFFSETS) {
            cp_async_tile_from<BM, D, THREADS>(sdO, do_base + t.dout, do_row, seq.seqlen_q - t.m0, tid);
        } else {
            cp_async_tile<BM, D, THREADS>(sdO, do_base + seq.q_offset(do_stride, t.m0, t.h), do_row,
                                          seq.seqlen_q - t.m0, tid);
        }
    };
    auto lse_of = [&](const TilePos &t) {
        return Tr::STEP_TILE_OFFSETS ? t.lse : seq.lse_offset(p.lse_batch_stride, p.lse_head_stride, t.h);
    };

    cp_async_tile<BN, D, THREADS>(sK, static_cast<const T *>(p.k) + seq.k_offset(p.k_stride, n0, hkv),
                                  p.k_stride.row, keys, tid);
    cp_async_tile<BN, D, THREADS>(sV, static_cast<const T *>(p.v) + seq.k_offset(p.v_stride, n0, hkv),
                                  p.v_stride.row, keys, tid);
    if constexpr (Tr::Q_STAGES == 2) {
        if (iters > 0) {
            load_q(first_tile, sQ);
            load_do(first_tile);
        }
        cp_async_commit();
    } else {
        // One Q buffer: two groups, as every iteration leaves them (dO, then Q; the loop's first wait).
        if (iters > 0) load_do(first_tile);
        cp_async_commit();
        if (iters > 0) load_q(first_tile, sQ);
        cp_async_commit();
    }

    // This warp's tile origin in each of the three output shapes (see traits.h).
    const int score_m0 = (warp / Tr::SCORE_WARPS_N) * SCORE_TM * 16;
    const int score_n0 = (warp % Tr::SCORE_WARPS_N) * SCORE_TN * 8;
    const int dkdv_n0 = (warp / Tr::DKDV_WARPS_D) * DKDV_TN * 16;
    const int dkdv_d0 = (warp % Tr::DKDV_WARPS_D) * DKDV_TD * 8;
    const int dq_m0 = (warp / Tr::DQ_WARPS_D) * DQ_TM * 16;
    const int dq_d0 = (warp % Tr::DQ_WARPS_D) * DQ_TD * 8;

    float acc_dk[DKDV_TN][DKDV_TD][4], acc_dv[DKDV_TN][DKDV_TD][4];
    zero_acc(acc_dk);
    zero_acc(acc_dv);

    // This lane's ldmatrix addresses for every GEMM operand, the warp's origin folded in, computed once
    // (common/fragments.h, LdsmLaneOffsets): in the loop each fragment address is a base register plus an
    // immediate. Tiles at a fixed distance share one set (V = K + BN D, dS = P + BM PC, both immediates);
    // the two Q sets follow Q's double buffer by one XOR per iteration.
    LdsmLaneOffsets<D> q_a = ldsm_a_offsets<D>(Tr::SMEM_Q + score_m0 * D, lane);  // Q as A of S
    LdsmLaneOffsets<D> kv_b = ldsm_b_operand_offsets<SCORE_TN, false, D>(Tr::SMEM_K, score_n0, lane);
    LdsmLaneOffsets<PC> p_at = ldsm_a_trans_offsets<PC>(Tr::SMEM_P, lane, dkdv_n0);  // P^T, dS^T
    LdsmLaneOffsets<D> q_b = ldsm_b_operand_offsets<DKDV_TD, true, D>(Tr::SMEM_Q, dkdv_d0, lane);
    // dO as A of dP and as B of dV: its own two sets from smem, or (traits.h, SHARE_Q_DO_OFFSETS) Q's two
    // sets from a base that follows Q's double buffer, SMEM_DO minus the current Q buffer's offset away.
    LdsmLaneOffsets<D> do_own_a = ldsm_a_offsets<D>(Tr::SMEM_DO + score_m0 * D, lane);
    LdsmLaneOffsets<D> do_own_b = ldsm_b_operand_offsets<DKDV_TD, true, D>(Tr::SMEM_DO, dkdv_d0, lane);
    const LdsmLaneOffsets<D> &do_a = Tr::SHARE_Q_DO_OFFSETS ? q_a : do_own_a;
    const LdsmLaneOffsets<D> &do_b = Tr::SHARE_Q_DO_OFFSETS ? q_b : do_own_b;
    int do_shift = Tr::SHARE_Q_DO_OFFSETS ? Tr::SMEM_DO - Tr::SMEM_Q : 0;  // elements, from smem
    // The compact tiles have registers to spare for the loop-invariant bases (K/V, P/dS, dO's own), yet
    // ptxas rebuilds them from the lane index inside the loop unless they are loop-carried (fragments.h,
    // keep_in_registers, once per iteration below). Not in the large tile (SHARE_Q_DO_OFFSETS): at 255
    // registers the same change spills there.
    const int opaque_zero = seq.seqlen_k >> 31;  // seqlen_k >= 0
    const T *sV_from_K = smem + (Tr::SMEM_V - Tr::SMEM_K);  // K's offsets, read in V
    T *sdS_from_P = smem + (Tr::SMEM_DS - Tr::SMEM_P);
    // Where this lane stores its part of the warp's P and dS tiles (same distance again), where that pays
    // (traits.h, HOIST_SCORE_STORES).
    CFragOffsets<PC, SCORE_TN> score_store(Tr::SMEM_P, score_m0, score_n0, lane);
    auto store_scores = [&](const float (&p_tile)[SCORE_TM][SCORE_TN][4],
                            const float (&ds_tile)[SCORE_TM][SCORE_TN][4]) {
        if constexpr (Tr::HOIST_SCORE_STORES) {
            store_acc_offsets(smem, score_store, p_tile, 1.0f);
            store_acc_offsets(sdS_from_P, score_store, ds_tile, 1.0f);
        } else {
            store_acc<PC>(smem + Tr::SMEM_P, p_tile, score_m0, score_n0, 1.0f, lane);
            store_acc<PC>(smem + Tr::SMEM_DS, ds_tile, score_m0, score_n0, 1.0f, lane);
        }
    };

    TilePos tile = first_tile;
    for (int it = 0; it < iters; ++it, tile = next_tile(tile)) {
        const int h = tile.h, m0 = tile.m0;
        const TilePos next = next_tile(tile);
        if constexpr (Tr::Q_STAGES == 2) {
            cp_async_wait<0>();
            __syncthreads();  // Q(it), dO(it) (and K, V) landed; every warp is done with iteration it - 1
            if (it + 1 < iters) load_q(next, sQ + ((it + 1) & 1) * BM * D);
            cp_async_commit();
        } else {
            // One Q buffer: Q(it) was issued last (end of iteration it - 1), so wait for dO(it) alone and
            // start with dP = dO V^T while Q(it) lands.
            cp_async_wait<1>();
            __syncthreads();  // dO(it) (and K, V) landed; every warp is done with iteration it - 1
        }

        float lse2[SCORE_TM][2], delta[SCORE_TM][2];
        load_row_stats<Tr>(lse2, delta, p, lse_of(tile), m0 + score_m0, seq.seqlen_q, lane);

        // S = Q K^T and dP = dO V^T: K and V stored [key][dim] = [n][k].
        float s[SCORE_TM][SCORE_TN][4], dp[SCORE_TM][SCORE_TN][4];
        zero_acc(s);
        zero_acc(dp);
        const T *sdO_base = smem + do_shift;
        if constexpr (Tr::Q_STAGES == 2) {
            warp_gemm_offsets<T, SCORE_TM, SCORE_TN, D / 16, false, D>(s, SmemOffsetsOperandA<D, T>{smem, q_a, 0},
                                                                         smem, kv_b, lane);
            warp_gemm_offsets<T, SCORE_TM, SCORE_TN, D / 16, false, D>(
                dp, SmemOffsetsOperandA<D, T>{sdO_base, do_a, 0}, sV_from_K, kv_b, lane);
        } else {
            warp_gemm_offsets<T, SCORE_TM, SCORE_TN, D / 16, false, D>(
                dp, SmemOffsetsOperandA<D, T>{sdO_base, do_a, 0}, sV_from_K, kv_b, lane);
            cp_async_wait<0>();
            __syncthreads();  // Q(it) landed
            warp_gemm_offsets<T, SCORE_TM, SCORE_TN, D / 16, false, D>(s, SmemOffsetsOperandA<D, T>{smem, q_a, 0},
                                                                         smem, kv_b, lane);
        }
        const bool mask = tile_needs_mask<BN>(n0, m0, seq, causal);
        softmax_grad_tile<Tr>(s, dp, lse2, delta, p.scale_log2, mask, seq, causal, m0 + score_m0, n0 + score_n0, lane);
        store_scores(s, dp);
        __syncthreads();  // P, dS complete

        // dV += P^T dO: A = P^T from the [query][key] tile, B = dO stored [query][dim] = [k][n].
        warp_gemm_offsets<T, DKDV_TN, DKDV_TD, BM / 16, true, D>(
            acc_dv, SmemOffsetsOperandA<PC, T, true>{smem, p_at, 0}, sdO_base, do_b, lane);
        __syncthreads();  // every warp is done with dO(it): refill it
        if (it + 1 < iters) load_do(next);
        cp_async_commit();

        // dK += dS^T Q (scaled at the end).
        warp_gemm_offsets<T, DKDV_TN, DKDV_TD, BM / 16, true, D>(
            acc_dk, SmemOffsetsOperandA<PC, T, true>{sdS_from_P, p_at, 0}, smem, q_b, lane);
        // One Q buffer (LARGE_1STAGE): dK += dS^T Q is Q(it)'s last reader (the fast mode's dQ below reads
        // dS and K only), so Q(it + 1) may stream in once every warp is past that GEMM: the barrier. In
        // the deterministic mode that is right here; in the fast mode after its dQ GEMM, before the
        // atomics (issued before that GEMM, the copy's addresses beside the dQ accumulators spill 8 bytes
        // on sm_100). The next iteration starts with dP = dO V^T while it lands.
        auto refill_q = [&] {
            if constexpr (Tr::Q_STAGES == 1) {
                if (it + 1 < iters) {
                    __syncthreads();  // every warp is done with Q(it): refill it
                    load_q(next, sQ);
                }
                cp_async_commit();
            }
        };

        if (p.deterministic == 0) {
            // dQ(rows of this tile) += scale * dS K: A = dS [query][key], B = K stored [key][dim] = [k][n].
            float dq[DQ_TM][DQ_TD][4];
            zero_acc(dq);
            // Built here rather than kept live across the loop (the fast mode alone reads them).
            const LdsmLaneOffsets<PC> ds_a = ldsm_a_offsets<PC>(Tr::SMEM_DS + dq_m0 * PC, lane);
            const LdsmLaneOffsets<D> k_b = ldsm_b_operand_offsets<DQ_TD, true, D>(Tr::SMEM_K, dq_d0, lane);
            warp_gemm_offsets<T, DQ_TM, DQ_TD, BN / 16, true, D>(dq, SmemOffsetsOperandA<PC, T>{smem, ds_a, 0}, smem,
                                                                  k_b, lane);
            refill_q();
#pragma unroll
            for (int mi = 0; mi < DQ_TM; ++mi) {
#pragma unroll
                for (int row_half = 0; row_half < 2; ++row_half) {
                    const int row = m0 + dq_m0 + mi * 16 + (lane >> 2) + 8 * row_half;
                    if (row < seq.seqlen_q) {
                        float *dst = p.dq_accum + seq.q_offset(p.ws_stride, row, h) + dq_d0 + 2 * (lane & 3);
#pragma unroll
                        for (int ni = 0; ni < DQ_TD; ++ni) {
                            atomicAdd(dst + ni * 8, p.scale * dq[mi][ni][2 * row_half]);
                            atomicAdd(dst + ni * 8 + 1, p.scale * dq[mi][ni][2 * row_half + 1]);
                        }
                    }
                }
            }
        } else {
            refill_q();
        }
        if constexpr (Tr::Q_STAGES == 2) {
            q_a.flip(Tr::Q_STAGE_FLIP);  // on to the next iteration's Q buffer
            q_b.flip(Tr::Q_STAGE_FLIP);
        }
        if constexpr (Tr::SHARE_Q_DO_OFFSETS) {
            // dO's base follows Q's buffer (a constant with one buffer).
            if constexpr (Tr::Q_STAGES == 2) do_shift = 2 * (Tr::SMEM_DO - Tr::SMEM_Q) - Tr::Q_TILE - do_shift;
        } else {
            kv_b.keep_in_registers(opaque_zero);
            p_at.keep_in_registers(opaque_zero);
            do_own_a.keep_in_registers(opaque_zero);
            do_own_b.keep_in_registers(opaque_zero);
            if constexpr (Tr::KEEP_SCORE_STORES) score_store.keep_in_registers(opaque_zero);
        }
    }

    // Epilogue: stage dK (scaled) in the K region and dV in the V region, then 16-byte coalesced stores.
    cp_async_wait<0>();
    __syncthreads();  // every warp is done reading K (dQ) and Q
    store_acc<D>(sK, acc_dk, dkdv_n0, dkdv_d0, p.scale, lane);
    store_acc<D>(sV, acc_dv, dkdv_n0, dkdv_d0, 1.0f, lane);
    __syncthreads();
    store_tile<BN, D, THREADS>(static_cast<T *>(p.dk) + seq.k_offset(p.dk_stride, n0, hkv), p.dk_stride.row, sK,
                               keys, tid);
    store_tile<BN, D, THREADS>(static_cast<T *>(p.dv) + seq.k_offset(p.dv_stride, n0, hkv), p.dv_stride.row, sV,
                               keys, tid);
}

}  // namespace bwd
}  // namespace gsdpa
