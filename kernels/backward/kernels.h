// kernels.h: the bodies of the fused gated backward kernels (entry points: kernels/backward.cu).
//
// Launch order (fast mode):          preprocess -> dkdv (dQ by f32 atomics into dq_accum) -> convert
//               (deterministic mode): preprocess -> dkdv (no dQ)                          -> dq
// Maths (shared/notes/gate-math.md), with a = act(G), Y = O * a:
//   preprocess  Delta = rowsum(dY * Y) (= rowsum(dO * O)), dO = dY * a, dG (below), dq_accum = 0
//   dkdv        per key tile: P = exp(scale S - LSE), dV = sum P^T dO, dS = P * (dO V^T - Delta),
//               dK = scale * sum dS^T Q over every query head of the kv head's GQA group (in-block, so
//               deterministic); fast mode also dq_accum += scale * dS K (atomics)
//   dq          per query tile: dQ = scale * sum over key tiles of dS K, in a fixed order (deterministic)
//   convert     dq = dq_accum rounded to the element type
// dG: sigmoid elementwise dY * Y * (1 - s); sigmoid headwise (1 - s) * Delta; silu elementwise
// dY * O * act'(g); silu headwise act'(g) * rowsum(dY * O). With gate NONE, dO is dY itself: the main
// kernels read dy directly and the preprocess writes neither dO nor dG.
//
// Rows whose LSE is -inf (a query that sees no key) get P = 0, hence zero dS and no contribution.
#pragma once

#include "../common/activation.h"
#include "traits.h"
#include "warp_gemm.h"

namespace gsdpa {
namespace bwd {

constexpr float kLog2e = 1.4426950408889634f;

// The current sequence of a (possibly varlen) batch entry.
struct Seq {
    bool varlen;
    int64_t q_tok0, k_tok0;  // first packed token (varlen), else 0
    int len_q, len_k;
};

GSDPA_DEVICE Seq sequence(const GsdpaBwdParams &p, int b) {
    Seq s;
    s.varlen = p.cu_seqlens_q != nullptr;
    if (s.varlen) {
        const int q0 = p.cu_seqlens_q[b], k0 = p.cu_seqlens_k[b];
        s.q_tok0 = q0;
        s.k_tok0 = k0;
        s.len_q = p.cu_seqlens_q[b + 1] - q0;
        s.len_k = p.cu_seqlens_k[b + 1] - k0;
    } else {
        s.q_tok0 = 0;
        s.k_tok0 = 0;
        s.len_q = p.seqlen_q;
        s.len_k = p.seqlen_k;
    }
    return s;
}

// Element offset of (batch b, token i of its sequence, head h, dim 0) in a tensor with strides st.
GSDPA_DEVICE int64_t tok_offset(const GsdpaStrides &st, const Seq &s, bool is_q, int b, int i, int h) {
    const int64_t tok0 = is_q ? s.q_tok0 : s.k_tok0;
    const int64_t row = s.varlen ? (tok0 + i) * st.row : int64_t(b) * st.batch + int64_t(i) * st.row;
    return row + int64_t(h) * st.head;
}

// Offset of (batch b, head h, token 0 of the sequence) in lse and delta ([B, Hq, Sq]; varlen [Hq, Tq]).
GSDPA_DEVICE int64_t lse_offset(const GsdpaBwdParams &p, const Seq &s, int b, int h) {
    return (s.varlen ? s.q_tok0 : int64_t(b) * p.lse_batch_stride) + int64_t(h) * p.lse_head_stride;
}

// 8 16-bit elements moved as one 16-byte access.
struct alignas(16) Vec8 {
    uint32_t w[4];
};

template <class T>
GSDPA_DEVICE void load8(float (&f)[8], const T *src) {
    const Vec8 v = *reinterpret_cast<const Vec8 *>(src);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 x = unpack_float2<T>(v.w[i]);
        f[2 * i] = x.x;
        f[2 * i + 1] = x.y;
    }
}

template <class T>
GSDPA_DEVICE void store8(T *dst, const float (&f)[8]) {
    Vec8 v;
#pragma unroll
    for (int i = 0; i < 4; ++i) v.w[i] = pack_float2<T>(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<Vec8 *>(dst) = v;
}

// ---------------------------------------------------------------------------------------------------
// Preprocess. Grid (ceil(seqlen_q / PRE_ROWS), heads_q, batch), PRE_THREADS threads. A row (b, i, h) of
// D elements is handled by D / 8 consecutive lanes (8, 16 or 32: always within one warp), 8 elements
// (16 bytes) each; the block covers PRE_ROWS rows of one head in PRE_ROWS * D / 2048 passes.
// ---------------------------------------------------------------------------------------------------
template <class T>
GSDPA_DEVICE void preprocess(const GsdpaBwdParams &p) {
    constexpr int ROWS = GSDPA_BWD_PRE_ROWS;
    constexpr int THREADS = GSDPA_BWD_PRE_THREADS;
    const int tid = int(threadIdx.x);
    const int h = int(blockIdx.y), b = int(blockIdx.z);
    const Seq seq = sequence(p, b);
    const int row0 = int(blockIdx.x) * ROWS;
    if (row0 >= seq.len_q) return;  // varlen: a shorter sequence (uniform over the block)

    const int lanes_per_row = p.head_dim / 8;
    const int rows_per_pass = THREADS / lanes_per_row;  // divides ROWS for D in {64, 128, 256}
    const int col = (tid % lanes_per_row) * 8;
    const bool row_leader = tid % lanes_per_row == 0;
    const int gate = p.gate_mode;
    const int act = p.activation;
    const bool silu = act == GSDPA_ACT_SILU;
    const bool need_o = gate != GSDPA_GATE_NONE && silu;
    const bool headwise_silu = gate == GSDPA_GATE_HEADWISE && silu;
    const bool zero_accum = p.deterministic == 0 && p.dq_accum != nullptr;
    const int64_t lse0 = lse_offset(p, seq, b, h);

    const T *dy_base = static_cast<const T *>(p.dy);
    const T *y_base = static_cast<const T *>(p.y);
    const T *o_base = static_cast<const T *>(p.o);
    const T *g_base = static_cast<const T *>(p.g);
    T *do_base = static_cast<T *>(p.d_o);
    T *dg_base = static_cast<T *>(p.dg);

    // Every lane runs the same number of passes (the shuffles below need the whole warp).
    for (int r = row0 + tid / lanes_per_row; r < row0 + ROWS; r += rows_per_pass) {
        const bool valid = r < seq.len_q;
        float dy[8], y[8], o[8];
        float sum_dy_y = 0.0f, sum_dy_o = 0.0f;
        if (valid) {
            load8(dy, dy_base + tok_offset(p.dy_stride, seq, true, b, r, h) + col);
            load8(y, y_base + tok_offset(p.y_stride, seq, true, b, r, h) + col);
#pragma unroll
            for (int e = 0; e < 8; ++e) sum_dy_y += dy[e] * y[e];
            if (need_o) {
                load8(o, o_base + tok_offset(p.o_stride, seq, true, b, r, h) + col);
#pragma unroll
                for (int e = 0; e < 8; ++e) sum_dy_o += dy[e] * o[e];
            }
        }
        // Row sums over the row's lanes (an aligned power-of-two group: xor stays inside it).
        for (int m = lanes_per_row / 2; m > 0; m >>= 1) {
            sum_dy_y += __shfl_xor_sync(0xffffffffu, sum_dy_y, m);
            if (headwise_silu) sum_dy_o += __shfl_xor_sync(0xffffffffu, sum_dy_o, m);
        }
        if (!valid) continue;

        if (row_leader) p.delta[lse0 + r] = sum_dy_y;
        if (gate == GSDPA_GATE_ELEMENTWISE) {
            float g[8], d_o[8], dg[8];
            load8(g, g_base + tok_offset(p.g_stride, seq, true, b, r, h) + col);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                d_o[e] = dy[e] * gate_activation(g[e], act);
                // sigmoid: dY * O * s (1 - s) = dY * Y * (1 - s), no O needed.
                dg[e] = silu ? dy[e] * o[e] * gate_activation_grad(g[e], act) : dy[e] * y[e] * (1.0f - sigmoid(g[e]));
            }
            store8(do_base + tok_offset(p.ws_stride, seq, true, b, r, h) + col, d_o);
            store8(dg_base + tok_offset(p.dg_stride, seq, true, b, r, h) + col, dg);
        } else if (gate == GSDPA_GATE_HEADWISE) {
            const float g = to_float<T>(g_base[tok_offset(p.g_stride, seq, true, b, r, h)]);
            const float a = gate_activation(g, act);
            float d_o[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) d_o[e] = dy[e] * a;
            store8(do_base + tok_offset(p.ws_stride, seq, true, b, r, h) + col, d_o);
            if (row_leader) {
                // sigmoid: sum_d dY * Y * (1 - s) = (1 - s) * Delta.
                const float dg = silu ? gate_activation_grad(g, act) * sum_dy_o : (1.0f - sigmoid(g)) * sum_dy_y;
                dg_base[tok_offset(p.dg_stride, seq, true, b, r, h)] = from_float<T>(dg);
            }
        }
        if (zero_accum) {
            float4 *acc = reinterpret_cast<float4 *>(p.dq_accum + tok_offset(p.ws_stride, seq, true, b, r, h) + col);
            acc[0] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            acc[1] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Convert (fast mode): dq = dq_accum rounded to T. Same grid and row mapping as the preprocess.
// ---------------------------------------------------------------------------------------------------
template <class T>
GSDPA_DEVICE void convert_dq(const GsdpaBwdParams &p) {
    constexpr int ROWS = GSDPA_BWD_CONVERT_ROWS;
    constexpr int THREADS = GSDPA_BWD_CONVERT_THREADS;
    const int tid = int(threadIdx.x);
    const int h = int(blockIdx.y), b = int(blockIdx.z);
    const Seq seq = sequence(p, b);
    const int row0 = int(blockIdx.x) * ROWS;
    const int lanes_per_row = p.head_dim / 8;
    const int rows_per_pass = THREADS / lanes_per_row;
    const int col = (tid % lanes_per_row) * 8;
    T *dq_base = static_cast<T *>(p.dq);
    const int row_end = tmin(row0 + ROWS, seq.len_q);
    for (int r = row0 + tid / lanes_per_row; r < row_end; r += rows_per_pass) {
        const float4 *acc =
            reinterpret_cast<const float4 *>(p.dq_accum + tok_offset(p.ws_stride, seq, true, b, r, h) + col);
        const float4 lo = acc[0], hi = acc[1];
        const float v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
        store8(dq_base + tok_offset(p.dq_stride, seq, true, b, r, h) + col, v);
    }
}

// ---------------------------------------------------------------------------------------------------
// Pieces shared by the dK/dV and dQ kernels (Tr: a BwdTileShape).
// ---------------------------------------------------------------------------------------------------

// The LSE (times log2 e, the kernels use exp2) and Delta of the rows this lane holds in the S layout:
// row m0 + sdp_m + 16 mi + g + 8 half. Rows past the sequence and rows that see no key (LSE = -inf)
// get +inf, so that P = exp2(S * scale_log2 - inf) = 0 exactly.
template <class Tr>
GSDPA_DEVICE void load_row_stats(float (&lse2)[Tr::SDP_TM][2], float (&delta)[Tr::SDP_TM][2],
                                 const GsdpaBwdParams &p, int64_t lse0, int first_row, int len_q, int lane) {
#pragma unroll
    for (int mi = 0; mi < Tr::SDP_TM; ++mi) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int row = first_row + mi * 16 + (lane >> 2) + 8 * half;
            float l = INFINITY, d = 0.0f;
            if (row < len_q) {
                const float lse = p.lse[lse0 + row];
                l = lse == -INFINITY ? INFINITY : lse * kLog2e;
                d = p.delta[lse0 + row];
            }
            lse2[mi][half] = l;
            delta[mi][half] = d;
        }
    }
}

// Turns the S accumulators into P and the dP accumulators into dS = P * (dP - Delta), in place.
// (row0, col0): the warp's first row / key in the sequence. With `mask`, keys past len_k and (causal)
// keys past a row's limit i + diag get P = 0.
template <class Tr>
GSDPA_DEVICE void softmax_grad(float (&s)[Tr::SDP_TM][Tr::SDP_TN][4], float (&dp)[Tr::SDP_TM][Tr::SDP_TN][4],
                               const float (&lse2)[Tr::SDP_TM][2], const float (&delta)[Tr::SDP_TM][2],
                               float scale_log2, bool mask, bool causal, int row0, int col0, int len_k, int diag,
                               int lane) {
#pragma unroll
    for (int mi = 0; mi < Tr::SDP_TM; ++mi) {
#pragma unroll
        for (int ni = 0; ni < Tr::SDP_TN; ++ni) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int half = e >> 1;
                float pv = fast_exp2(s[mi][ni][e] * scale_log2 - lse2[mi][half]);
                if (mask) {
                    const int i = row0 + mi * 16 + (lane >> 2) + 8 * half;
                    const int j = col0 + ni * 8 + 2 * (lane & 3) + (e & 1);
                    if (j >= len_k || (causal && j > i + diag)) pv = 0.0f;
                }
                s[mi][ni][e] = pv;
                dp[mi][ni][e] = pv * (dp[mi][ni][e] - delta[mi][half]);
            }
        }
    }
}

// The tensor dO is read from: the preprocess's d_o workspace, or dY itself when there is no gate.
template <class T>
GSDPA_DEVICE const T *grad_out_base(const GsdpaBwdParams &p) {
    return static_cast<const T *>(p.gate_mode == GSDPA_GATE_NONE ? p.dy : p.d_o);
}
GSDPA_DEVICE const GsdpaStrides &grad_out_stride(const GsdpaBwdParams &p) {
    return p.gate_mode == GSDPA_GATE_NONE ? p.dy_stride : p.ws_stride;
}

// ---------------------------------------------------------------------------------------------------
// dK, dV (and, fast mode, dQ atomics). Grid (ceil(seqlen_k / BLOCK_N), heads_kv, batch).
// One block owns BLOCK_N keys of one kv head and loops over (query head of the group, query tile);
// dK and dV stay in registers for the whole loop.
// ---------------------------------------------------------------------------------------------------
template <class T, int D>
GSDPA_DEVICE void dkdv(const GsdpaBwdParams &p) {
    using Tr = DkdvTraits<T, D>;
    constexpr int BM = Tr::BLOCK_M, BN = Tr::BLOCK_N, THREADS = Tr::THREADS, PDS = Tr::PDS_COLS;
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    const int hkv = int(blockIdx.y), b = int(blockIdx.z);
    const Seq seq = sequence(p, b);
    const int n0 = int(blockIdx.x) * BN;
    if (n0 >= seq.len_k) return;  // varlen: a shorter sequence (uniform over the block)
    const int keys = tmin(BN, seq.len_k - n0);
    const int group = p.heads_q / p.heads_kv;
    const bool causal = p.causal != 0;
    const int diag = seq.len_k - seq.len_q;  // query i sees key j iff j <= i + diag

    // Query tiles to visit: with causal masking, rows before n0 - diag see none of these keys.
    const int m_first = causal ? tmax(0, n0 - diag) / BM : 0;
    const int per_head = tmax(0, ceil_div(seq.len_q, BM) - m_first);
    const int iters = group * per_head;

    T *smem = reinterpret_cast<T *>(dynamic_smem());
    T *sK = smem + Tr::SMEM_K;
    T *sV = smem + Tr::SMEM_V;
    T *sQ = smem + Tr::SMEM_Q;
    T *sdO = smem + Tr::SMEM_DO;
    T *sP = smem + Tr::SMEM_P;
    T *sdS = smem + Tr::SMEM_DS;

    const T *q_base = static_cast<const T *>(p.q);
    const T *do_base = grad_out_base<T>(p);
    const GsdpaStrides do_stride = grad_out_stride(p);

    // Iteration it visits query head h = hkv * group + it / per_head, rows from m0.
    auto tile_head = [&](int it) { return hkv * group + it / per_head; };
    auto tile_m0 = [&](int it) { return (m_first + it % per_head) * BM; };
    auto load_q = [&](int it, T *dst) {
        const int h = tile_head(it), m0 = tile_m0(it);
        cp_async_tile<BM, D, THREADS>(dst, q_base + tok_offset(p.q_stride, seq, true, b, m0, h), p.q_stride.row,
                                      seq.len_q - m0, tid);
    };
    auto load_do = [&](int it) {
        const int h = tile_head(it), m0 = tile_m0(it);
        cp_async_tile<BM, D, THREADS>(sdO, do_base + tok_offset(do_stride, seq, true, b, m0, h), do_stride.row,
                                      seq.len_q - m0, tid);
    };

    cp_async_tile<BN, D, THREADS>(sK, static_cast<const T *>(p.k) + tok_offset(p.k_stride, seq, false, b, n0, hkv),
                                  p.k_stride.row, keys, tid);
    cp_async_tile<BN, D, THREADS>(sV, static_cast<const T *>(p.v) + tok_offset(p.v_stride, seq, false, b, n0, hkv),
                                  p.v_stride.row, keys, tid);
    if (iters > 0) {
        load_q(0, sQ);
        load_do(0);
    }
    cp_async_commit();

    // Warp tiles of the three output shapes (see traits.h).
    const int sdp_m = (warp / Tr::SDP_WARPS_N) * Tr::SDP_TM * 16, sdp_n = (warp % Tr::SDP_WARPS_N) * Tr::SDP_TN * 8;
    const int kv_n = (warp / Tr::KV_WARPS_D) * Tr::KV_TM * 16, kv_d = (warp % Tr::KV_WARPS_D) * Tr::KV_TN * 8;
    const int dq_m = (warp / Tr::DQ_WARPS_D) * Tr::DQ_TM * 16, dq_d = (warp % Tr::DQ_WARPS_D) * Tr::DQ_TN * 8;

    float acc_dk[Tr::KV_TM][Tr::KV_TN][4], acc_dv[Tr::KV_TM][Tr::KV_TN][4];
    zero_acc(acc_dk);
    zero_acc(acc_dv);

    for (int it = 0; it < iters; ++it) {
        const int h = tile_head(it), m0 = tile_m0(it);
        T *sQ_cur = sQ + (it & 1) * BM * D;
        cp_async_wait<0>();
        __syncthreads();  // Q(it), dO(it) (and K, V) landed; every warp is done with iteration it - 1
        if (it + 1 < iters) load_q(it + 1, sQ + ((it + 1) & 1) * BM * D);
        cp_async_commit();

        float lse2[Tr::SDP_TM][2], delta[Tr::SDP_TM][2];
        const int64_t lse0 = lse_offset(p, seq, b, h);
        load_row_stats<Tr>(lse2, delta, p, lse0, m0 + sdp_m, seq.len_q, lane);

        float s[Tr::SDP_TM][Tr::SDP_TN][4], dp[Tr::SDP_TM][Tr::SDP_TN][4];
        zero_acc(s);
        zero_acc(dp);
        warp_gemm<T, Tr::SDP_TM, Tr::SDP_TN, D / 16, false, false, D, D>(s, sQ_cur, sdp_m, 0, sK, sdp_n, 0, lane);
        warp_gemm<T, Tr::SDP_TM, Tr::SDP_TN, D / 16, false, false, D, D>(dp, sdO, sdp_m, 0, sV, sdp_n, 0, lane);
        const bool mask = n0 + BN > seq.len_k || (causal && n0 + BN - 1 > m0 + diag);
        softmax_grad<Tr>(s, dp, lse2, delta, p.scale_log2, mask, causal, m0 + sdp_m, n0 + sdp_n, seq.len_k, diag,
                         lane);
        store_acc<PDS>(sP, s, sdp_m, sdp_n, 1.0f, lane);
        store_acc<PDS>(sdS, dp, sdp_m, sdp_n, 1.0f, lane);
        __syncthreads();  // P, dS complete

        // dV += P^T dO: A = P^T from the [query][key] tile, B = dO stored [query][dim] = [k][n].
        warp_gemm<T, Tr::KV_TM, Tr::KV_TN, BM / 16, true, true, PDS, D>(acc_dv, sP, kv_n, 0, sdO, kv_d, 0, lane);
        __syncthreads();  // every warp is done with dO(it): refill it
        if (it + 1 < iters) load_do(it + 1);
        cp_async_commit();

        // dK += dS^T Q (scaled at the end).
        warp_gemm<T, Tr::KV_TM, Tr::KV_TN, BM / 16, true, true, PDS, D>(acc_dk, sdS, kv_n, 0, sQ_cur, kv_d, 0, lane);

        if (p.deterministic == 0) {
            // dQ(rows of this tile) += scale * dS K: A = dS [query][key], B = K stored [key][dim] = [k][n].
            float dq[Tr::DQ_TM][Tr::DQ_TN][4];
            zero_acc(dq);
            warp_gemm<T, Tr::DQ_TM, Tr::DQ_TN, BN / 16, false, true, PDS, D>(dq, sdS, dq_m, 0, sK, dq_d, 0, lane);
#pragma unroll
            for (int mi = 0; mi < Tr::DQ_TM; ++mi) {
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int row = m0 + dq_m + mi * 16 + (lane >> 2) + 8 * half;
                    if (row < seq.len_q) {
                        float *dst = p.dq_accum + tok_offset(p.ws_stride, seq, true, b, row, h) + dq_d + 2 * (lane & 3);
#pragma unroll
                        for (int ni = 0; ni < Tr::DQ_TN; ++ni) {
                            atomicAdd(dst + ni * 8, p.scale * dq[mi][ni][2 * half]);
                            atomicAdd(dst + ni * 8 + 1, p.scale * dq[mi][ni][2 * half + 1]);
                        }
                    }
                }
            }
        }
    }

    // Epilogue: stage dK (scaled) in the K region and dV in the V region, then 16-byte coalesced stores.
    cp_async_wait<0>();
    __syncthreads();  // every warp is done reading K (dQ) and Q
    store_acc<D>(sK, acc_dk, kv_n, kv_d, p.scale, lane);
    store_acc<D>(sV, acc_dv, kv_n, kv_d, 1.0f, lane);
    __syncthreads();
    store_tile<BN, D, THREADS>(static_cast<T *>(p.dk) + tok_offset(p.dk_stride, seq, false, b, n0, hkv),
                               p.dk_stride.row, sK, keys, tid);
    store_tile<BN, D, THREADS>(static_cast<T *>(p.dv) + tok_offset(p.dv_stride, seq, false, b, n0, hkv),
                               p.dv_stride.row, sV, keys, tid);
}

// ---------------------------------------------------------------------------------------------------
// dQ, deterministic mode. Grid (ceil(seqlen_q / BLOCK_M), heads_q, batch). One block owns BLOCK_M query
// rows of one head and loops over the key tiles in order, dQ in registers: no atomics, the same sums in
// the same order on every run.
// ---------------------------------------------------------------------------------------------------
template <class T, int D>
GSDPA_DEVICE void dq(const GsdpaBwdParams &p) {
    using Tr = DqTraits<T, D>;
    constexpr int BM = Tr::BLOCK_M, BN = Tr::BLOCK_N, THREADS = Tr::THREADS, PDS = Tr::PDS_COLS;
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    const int h = int(blockIdx.y), b = int(blockIdx.z);
    const Seq seq = sequence(p, b);
    const int m0 = int(blockIdx.x) * BM;
    if (m0 >= seq.len_q) return;  // varlen: a shorter sequence (uniform over the block)
    const int rows = tmin(BM, seq.len_q - m0);
    const int hkv = h / (p.heads_q / p.heads_kv);
    const bool causal = p.causal != 0;
    const int diag = seq.len_k - seq.len_q;
    // Keys [0, key_end) are visible to some row of the tile (the last row sees the most).
    const int key_end = causal ? tmin(seq.len_k, m0 + rows + diag) : seq.len_k;
    const int n_tiles = key_end > 0 ? ceil_div(key_end, BN) : 0;

    T *smem = reinterpret_cast<T *>(dynamic_smem());
    T *sQ = smem + Tr::SMEM_Q;
    T *sdO = smem + Tr::SMEM_DO;
    T *sK = smem + Tr::SMEM_K;
    T *sV = smem + Tr::SMEM_V;
    T *sdS = smem + Tr::SMEM_DS;

    const T *k_base = static_cast<const T *>(p.k);
    const T *v_base = static_cast<const T *>(p.v);
    auto load_k = [&](int n, T *dst) {
        cp_async_tile<BN, D, THREADS>(dst, k_base + tok_offset(p.k_stride, seq, false, b, n * BN, hkv),
                                      p.k_stride.row, seq.len_k - n * BN, tid);
    };
    auto load_v = [&](int n) {
        cp_async_tile<BN, D, THREADS>(sV, v_base + tok_offset(p.v_stride, seq, false, b, n * BN, hkv),
                                      p.v_stride.row, seq.len_k - n * BN, tid);
    };

    const GsdpaStrides do_stride = grad_out_stride(p);
    cp_async_tile<BM, D, THREADS>(sQ, static_cast<const T *>(p.q) + tok_offset(p.q_stride, seq, true, b, m0, h),
                                  p.q_stride.row, rows, tid);
    cp_async_tile<BM, D, THREADS>(sdO, grad_out_base<T>(p) + tok_offset(do_stride, seq, true, b, m0, h),
                                  do_stride.row, rows, tid);
    if (n_tiles > 0) {
        load_k(0, sK);
        load_v(0);
    }
    cp_async_commit();

    const int sdp_m = (warp / Tr::SDP_WARPS_N) * Tr::SDP_TM * 16, sdp_n = (warp % Tr::SDP_WARPS_N) * Tr::SDP_TN * 8;
    const int dq_m = (warp / Tr::DQ_WARPS_D) * Tr::DQ_TM * 16, dq_d = (warp % Tr::DQ_WARPS_D) * Tr::DQ_TN * 8;

    float lse2[Tr::SDP_TM][2], delta[Tr::SDP_TM][2];
    load_row_stats<Tr>(lse2, delta, p, lse_offset(p, seq, b, h), m0 + sdp_m, seq.len_q, lane);

    float acc_dq[Tr::DQ_TM][Tr::DQ_TN][4];
    zero_acc(acc_dq);

    for (int n = 0; n < n_tiles; ++n) {
        const int n0 = n * BN;
        T *sK_cur = sK + (n & 1) * BN * D;
        cp_async_wait<0>();
        __syncthreads();  // K(n), V(n) (and Q, dO) landed; every warp is done with iteration n - 1
        if (n + 1 < n_tiles) load_k(n + 1, sK + ((n + 1) & 1) * BN * D);
        cp_async_commit();

        float s[Tr::SDP_TM][Tr::SDP_TN][4], dp[Tr::SDP_TM][Tr::SDP_TN][4];
        zero_acc(s);
        zero_acc(dp);
        warp_gemm<T, Tr::SDP_TM, Tr::SDP_TN, D / 16, false, false, D, D>(s, sQ, sdp_m, 0, sK_cur, sdp_n, 0, lane);
        warp_gemm<T, Tr::SDP_TM, Tr::SDP_TN, D / 16, false, false, D, D>(dp, sdO, sdp_m, 0, sV, sdp_n, 0, lane);
        const bool mask = n0 + BN > seq.len_k || (causal && n0 + BN - 1 > m0 + diag);
        softmax_grad<Tr>(s, dp, lse2, delta, p.scale_log2, mask, causal, m0 + sdp_m, n0 + sdp_n, seq.len_k, diag,
                         lane);
        store_acc<PDS>(sdS, dp, sdp_m, sdp_n, 1.0f, lane);
        __syncthreads();  // dS complete; every warp is done with V(n): refill it
        if (n + 1 < n_tiles) load_v(n + 1);
        cp_async_commit();

        warp_gemm<T, Tr::DQ_TM, Tr::DQ_TN, BN / 16, false, true, PDS, D>(acc_dq, sdS, dq_m, 0, sK_cur, dq_d, 0, lane);
    }

    cp_async_wait<0>();
    __syncthreads();  // every warp is done reading Q's region (and K)
    store_acc<D>(sQ, acc_dq, dq_m, dq_d, p.scale, lane);
    __syncthreads();
    store_tile<BM, D, THREADS>(static_cast<T *>(p.dq) + tok_offset(p.dq_stride, seq, true, b, m0, h), p.dq_stride.row,
                               sQ, rows, tid);
}

}  // namespace bwd
}  // namespace gsdpa
