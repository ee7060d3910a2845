// preprocess.h: the two row-wise backward kernels that run before and after the tiled ones (as in
// FlashAttention-2, where dQ's conversion sits with the preprocess).
//
// Both walk rows (b, i, h) of D elements: a row is handled by D / 8 consecutive lanes (8, 16 or 32:
// always within one warp), 8 elements (one 16-byte access, common/vec16.h) each; a block covers ROWS rows
// of one head in ROWS * D / (8 THREADS) passes.
//
// dG (docs/gate-math.md): sigmoid elementwise dY * Y * (1 - s); sigmoid headwise (1 - s) * Delta; silu
// elementwise dY * O * act'(g); silu headwise act'(g) * rowsum(dY * O).
#pragma once

#include "common.h"

namespace gsdpa {
namespace bwd {

// Preprocess: Delta, dO, dG, and (fast mode) dq_accum = 0. Grid (ceil(seqlen_q / PRE_ROWS), heads_q,
// batch), PRE_THREADS threads.
template <class T>
GSDPA_DEVICE void preprocess(const GsdpaBwdParams &p) {
    constexpr int ROWS = GSDPA_BWD_PRE_ROWS;
    constexpr int THREADS = GSDPA_BWD_PRE_THREADS;
    const int tid = int(threadIdx.x);
    const int h = int(blockIdx.y), b = int(blockIdx.z);
    const SeqlenInfo seq(p, b);
    const int row0 = int(blockIdx.x) * ROWS;
    if (row0 >= seq.seqlen_q) return;  // varlen: a shorter sequence (uniform over the block)

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
    const int64_t lse0 = seq.lse_offset(p.lse_batch_stride, p.lse_head_stride, h);

    const T *dy_base = static_cast<const T *>(p.dy);
    const T *y_base = static_cast<const T *>(p.y);
    const T *o_base = static_cast<const T *>(p.o);
    const T *g_base = static_cast<const T *>(p.g);
    T *do_base = static_cast<T *>(p.d_o);
    T *dg_base = static_cast<T *>(p.dg);

    // Every lane runs the same number of passes (the shuffles below need the whole warp).
    for (int r = row0 + tid / lanes_per_row; r < row0 + ROWS; r += rows_per_pass) {
        const bool valid = r < seq.seqlen_q;
        float dy[8], y[8], o[8];
        float sum_dy_y = 0.0f, sum_dy_o = 0.0f;
        if (valid) {
            load8(dy, dy_base + seq.q_offset(p.dy_stride, r, h) + col);
            load8(y, y_base + seq.q_offset(p.y_stride, r, h) + col);
#pragma unroll
            for (int e = 0; e < 8; ++e) sum_dy_y += dy[e] * y[e];
            if (need_o) {
                load8(o, o_base + seq.q_offset(p.o_stride, r, h) + col);
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
            load8(g, g_base + seq.q_offset(p.g_stride, r, h) + col);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                d_o[e] = dy[e] * gate_activation(g[e], act);
                // sigmoid: dY * O * s (1 - s) = dY * Y * (1 - s), no O needed.
                dg[e] = silu ? dy[e] * o[e] * gate_activation_grad(g[e], act)
                             : dy[e] * y[e] * (1.0f - sigmoid(g[e]));
            }
            store8(do_base + seq.q_offset(p.ws_stride, r, h) + col, d_o);
            store8(dg_base + seq.q_offset(p.dg_stride, r, h) + col, dg);
        } else if (gate == GSDPA_GATE_HEADWISE) {
            const float g = to_float<T>(g_base[seq.q_offset(p.g_stride, r, h)]);
            const float a = gate_activation(g, act);
            float d_o[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) d_o[e] = dy[e] * a;
            store8(do_base + seq.q_offset(p.ws_stride, r, h) + col, d_o);
            if (row_leader) {
                // sigmoid: sum_d dY * Y * (1 - s) = (1 - s) * Delta.
                const float dg = silu ? gate_activation_grad(g, act) * sum_dy_o : (1.0f - sigmoid(g)) * sum_dy_y;
                dg_base[seq.q_offset(p.dg_stride, r, h)] = from_float<T>(dg);
            }
        }
        if (zero_accum) {
            float *acc = p.dq_accum + seq.q_offset(p.ws_stride, r, h) + col;  // 8 f32: two 16-byte stores
            const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            store_vec16(acc, zero);
            store_vec16(acc + 4, zero);
        }
    }
}

// Convert (fast mode): dq = dq_accum rounded to T. Same grid and row mapping as the preprocess.
template <class T>
GSDPA_DEVICE void convert_dq(const GsdpaBwdParams &p) {
    constexpr int ROWS = GSDPA_BWD_CONVERT_ROWS;
    constexpr int THREADS = GSDPA_BWD_CONVERT_THREADS;
    const int tid = int(threadIdx.x);
    const int h = int(blockIdx.y), b = int(blockIdx.z);
    const SeqlenInfo seq(p, b);
    const int row0 = int(blockIdx.x) * ROWS;
    const int lanes_per_row = p.head_dim / 8;
    const int rows_per_pass = THREADS / lanes_per_row;
    const int col = (tid % lanes_per_row) * 8;
    T *dq_base = static_cast<T *>(p.dq);
    const int row_end = tmin(row0 + ROWS, seq.seqlen_q);
    for (int r = row0 + tid / lanes_per_row; r < row_end; r += rows_per_pass) {
        const float *acc = p.dq_accum + seq.q_offset(p.ws_stride, r, h) + col;  // 8 f32: two 16-byte loads
        const float4 lo = load_vec16<float4>(acc), hi = load_vec16<float4>(acc + 4);
        const float v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
        store8(dq_base + seq.q_offset(p.dq_stride, r, h) + col, v);
    }
}


}  // namespace bwd
}  // namespace gsdpa
