// gate.cu: the standalone output gate, Y = O * act(G), and its backward: the unfused baseline.
//
// Every engine today runs attention first and then this elementwise pass: it reads O and G and writes Y,
// two extra trips over a [B, S, H, D] tensor that the fused forward kernel avoids. In training the
// engine's backward mirrors it: a gate backward pass (dO = dY * act(G), dG = dY * O * act'(G)) and then a
// gate = none attention backward fed with dO, where the fused backward forms dO and dG in its own
// preprocessing. The benches time both against the fused kernels, so these are written to run at memory
// bandwidth, not as strawmen: 16-byte loads and stores (8 elements per thread), no shared memory,
// nothing but streaming.
//
// Layout (gsdpa_params.h): o, g and y are addressed as b * batch + s * row + h * head + d, in elements,
// with d contiguous (element_offset, common/seqlen_info.h; no varlen here: rows are (b, s, h) of padded
// tensors). The headwise gate G [B, S, H] has no last dimension: one logit per (b, s, h) row,
// broadcast over D. gate_mode NONE copies O to Y (act = 1) and never touches g.
//
// Launch contract (the host launcher checks these; the kernel does not re-check them):
//  - head_dim is a positive multiple of 8 and every row of o, g (elementwise) and y starts 16-byte aligned;
//  - batch * seqlen * heads < 2^32 (the row index is 32-bit; beyond that the kernel writes nothing);
//  - any blockDim.x from 32 up to GSDPA_GATE_THREADS and any gridDim.x >= 1: the kernel walks the
//    rows with a grid-stride loop, so the host can cap the grid at a few waves of blocks. The backward
//    kernel also needs blockDim.x to be a multiple of 32 (its headwise reduction shuffles across whole
//    warps); with any other block size it writes nothing.
#include "common/activation.h"
#include "common/seqlen_info.h"
#include "common/vec16.h"

namespace gsdpa {
namespace gate {

// Rows are addressed as uint4 arrays (row base + vec), 8 elements per vector, packed and unpacked with
// common/vec16.h: each access is one 16-byte ld/st.global.v4.u32.

// Rows (b, s, h) are numbered row = (b * seqlen + s) * heads + h, in 32 bits: the two divisions per row
// stay cheap, and a 64-bit division would be a subroutine call with a stack frame in the SASS.
template <class T>
GSDPA_DEVICE void gate_rows(const GsdpaGateParams &p, uint32_t num_rows) {
    const int vecs_per_row = p.head_dim / 8;
    // A row is covered by up to blockDim.x threads; a block handles rows_per_block rows at once (e.g.
    // D = 128: 16 threads per row, 16 rows per block of 256). Threads beyond the last full row idle.
    const int threads_per_row = tmin<int>(vecs_per_row, int(blockDim.x));
    uint32_t rows_per_block_u, unused, row_in_block_u, vec_in_row_u;
    small_divmod(blockDim.x, uint32_t(threads_per_row), rows_per_block_u, unused);
    small_divmod(threadIdx.x, uint32_t(threads_per_row), row_in_block_u, vec_in_row_u);
    const int rows_per_block = int(rows_per_block_u);
    const int row_in_block = int(row_in_block_u);
    const int vec_in_row = int(vec_in_row_u);
    if (row_in_block >= rows_per_block) return;

    const bool headwise = p.gate_mode == GSDPA_GATE_HEADWISE;
    const bool elementwise = p.gate_mode != GSDPA_GATE_HEADWISE && p.gate_mode != GSDPA_GATE_NONE;
    const T *o = static_cast<const T *>(p.o);
    const T *g = static_cast<const T *>(p.g);
    T *y = static_cast<T *>(p.y);
    const uint32_t heads = uint32_t(p.heads);
    const uint32_t seqlen = uint32_t(p.seqlen);

    // The loop counter is 64-bit so that it cannot wrap around for huge grids; inside, row < num_rows fits
    // in 32 bits.
    const uint64_t row_step = uint64_t(gridDim.x) * uint64_t(rows_per_block);
    for (uint64_t row64 = uint64_t(blockIdx.x) * rows_per_block + row_in_block; row64 < num_rows;
         row64 += row_step) {
        const uint32_t row = uint32_t(row64);
        const uint32_t h = row % heads;
        const uint32_t bs = row / heads;
        const uint32_t s = bs % seqlen;
        const uint32_t b = bs / seqlen;
        const int64_t o_row = element_offset(p.o_stride, b, s, h);
        const int64_t g_row = element_offset(p.g_stride, b, s, h);
        const int64_t y_row = element_offset(p.y_stride, b, s, h);

        // Headwise: one activation per row, computed once and broadcast over D.
        float row_gate = 1.0f;
        if (headwise) row_gate = gate_activation(to_float<T>(g[g_row]), p.activation);

        // Row starts are 16-byte aligned (launch contract), so each row is an array of uint4.
        const uint4 *o_vecs = reinterpret_cast<const uint4 *>(o + o_row);
        // g is null without a gate: no pointer arithmetic on it then.
        const uint4 *g_vecs = elementwise ? reinterpret_cast<const uint4 *>(g + g_row) : nullptr;
        uint4 *y_vecs = reinterpret_cast<uint4 *>(y + y_row);
        for (int vec = vec_in_row; vec < vecs_per_row; vec += threads_per_row) {
            float out[8];
            unpack8<T>(o_vecs[vec], out);
            if (!elementwise) {
#pragma unroll
                for (int i = 0; i < 8; ++i) out[i] *= row_gate;
            } else {
                float logits[8];
                unpack8<T>(g_vecs[vec], logits);
#pragma unroll
                for (int i = 0; i < 8; ++i) out[i] *= gate_activation(logits[i], p.activation);
            }
            y_vecs[vec] = pack8<T>(out);
        }
    }
}

template <class T>
GSDPA_DEVICE void gate_kernel(const GsdpaGateParams &p) {
    const int64_t num_rows = int64_t(p.batch) * p.seqlen * p.heads;
    // Over 2^32 - 1 rows (tensors of more than 34G elements) is outside the launch contract.
    if (num_rows <= 0 || num_rows > int64_t(0xffffffffu) || p.head_dim < 8) return;
    gate_rows<T>(p, uint32_t(num_rows));
}


// ---------------------------------------------------------------------------------------------------
// Backward: dO = dY * act(G), dG = dY * O * act'(G) (headwise: dG = act'(G) * sum_d dY * O).
//
// Rows are spread over warps rather than blocks: a row is covered by an aligned group of lanes_per_row
// lanes of one warp (its vectors rounded up to a power of two, at most 32), so the headwise row sum is
// an xor-shuffle butterfly that stays inside the group. Each warp takes 32 / lanes_per_row consecutive
// rows per step of the grid-stride loop. The loop bound is the warp's first row, the same for its 32
// lanes, so every lane runs every shuffle; lanes whose row is past the end contribute zero.
// ---------------------------------------------------------------------------------------------------

// Lanes per row: the row's 16-byte vectors rounded up to a power of two, capped at a warp (rows of more
// than 32 vectors are walked by each lane in steps of 32). The Rust launcher mirrors this to size the grid.
GSDPA_DEVICE int backward_lanes_per_row(int vecs_per_row) {
    int lanes = 1;
    while (lanes < vecs_per_row && lanes < 32) lanes *= 2;
    return lanes;
}

template <class T>
GSDPA_DEVICE void gate_backward_rows(const GsdpaGateBackwardParams &p, uint32_t num_rows) {
    const int vecs_per_row = p.head_dim / 8;
    const int lanes_per_row = backward_lanes_per_row(vecs_per_row);
    const int rows_per_warp = 32 / lanes_per_row;
    const int lane = int(threadIdx.x) % 32;
    const int row_in_warp = lane / lanes_per_row;
    const int vec_in_row = lane % lanes_per_row;

    const bool headwise = p.gate_mode == GSDPA_GATE_HEADWISE;
    const bool elementwise = p.gate_mode != GSDPA_GATE_HEADWISE && p.gate_mode != GSDPA_GATE_NONE;
    const T *o = static_cast<const T *>(p.o);
    const T *g = static_cast<const T *>(p.g);
    const T *dy = static_cast<const T *>(p.dy);
    T *d_o = static_cast<T *>(p.d_o);
    T *dg = static_cast<T *>(p.dg);
    const uint32_t heads = uint32_t(p.heads);
    const uint32_t seqlen = uint32_t(p.seqlen);

    // 64-bit counters: huge grids cannot wrap them; inside, row < num_rows fits in 32 bits.
    const uint64_t warp = (uint64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const uint64_t row_step = uint64_t(gridDim.x) * (blockDim.x / 32) * uint64_t(rows_per_warp);
    for (uint64_t warp_row0 = warp * uint64_t(rows_per_warp); warp_row0 < num_rows; warp_row0 += row_step) {
        const uint64_t row64 = warp_row0 + uint64_t(row_in_warp);
        const bool valid = row64 < num_rows;
        // Rows past the end take row 0's offsets, which are computed but never dereferenced.
        const uint32_t row = valid ? uint32_t(row64) : 0u;
        const uint32_t h = row % heads;
        const uint32_t bs = row / heads;
        const uint32_t s = bs % seqlen;
        const uint32_t b = bs / seqlen;

        float row_act = 1.0f, row_act_grad = 0.0f;
        float dy_o_sum = 0.0f;  // headwise: this lane's part of sum_d dY * O
        if (valid) {
            if (headwise) {
                const float logit = to_float<T>(g[element_offset(p.g_stride, b, s, h)]);
                row_act = gate_activation(logit, p.activation);
                row_act_grad = gate_activation_grad(logit, p.activation);
            }
            // Row starts are 16-byte aligned (launch contract), so each row is an array of uint4.
            const uint4 *dy_vecs = reinterpret_cast<const uint4 *>(dy + element_offset(p.dy_stride, b, s, h));
            uint4 *d_o_vecs = reinterpret_cast<uint4 *>(d_o + element_offset(p.d_o_stride, b, s, h));
            // Without a gate, O, G and dG are not touched (and may be null): no pointer arithmetic on them.
            const uint4 *o_vecs = (headwise || elementwise)
                                      ? reinterpret_cast<const uint4 *>(o + element_offset(p.o_stride, b, s, h))
                                      : nullptr;
            const uint4 *g_vecs =
                elementwise ? reinterpret_cast<const uint4 *>(g + element_offset(p.g_stride, b, s, h)) : nullptr;
            uint4 *dg_vecs =
                elementwise ? reinterpret_cast<uint4 *>(dg + element_offset(p.dg_stride, b, s, h)) : nullptr;
            for (int vec = vec_in_row; vec < vecs_per_row; vec += lanes_per_row) {
                float grad_y[8], grad_o[8];
                unpack8<T>(dy_vecs[vec], grad_y);
                if (elementwise) {
                    float out[8], logits[8], grad_g[8];
                    unpack8<T>(o_vecs[vec], out);
                    unpack8<T>(g_vecs[vec], logits);
#pragma unroll
                    for (int i = 0; i < 8; ++i) {
                        grad_o[i] = grad_y[i] * gate_activation(logits[i], p.activation);
                        grad_g[i] = grad_y[i] * out[i] * gate_activation_grad(logits[i], p.activation);
                    }
                    dg_vecs[vec] = pack8<T>(grad_g);
                } else {
                    if (headwise) {
                        float out[8];
                        unpack8<T>(o_vecs[vec], out);
#pragma unroll
                        for (int i = 0; i < 8; ++i) dy_o_sum += grad_y[i] * out[i];
                    }
#pragma unroll
                    for (int i = 0; i < 8; ++i) grad_o[i] = grad_y[i] * row_act;
                }
                d_o_vecs[vec] = pack8<T>(grad_o);
            }
        }
        if (headwise) {  // uniform over the block: all 32 lanes of each warp run the shuffles
            for (int m = lanes_per_row / 2; m > 0; m >>= 1) dy_o_sum += __shfl_xor_sync(0xffffffffu, dy_o_sum, m);
            if (valid && vec_in_row == 0) {
                dg[element_offset(p.dg_stride, b, s, h)] = from_float<T>(row_act_grad * dy_o_sum);
            }
        }
    }
}

template <class T>
GSDPA_DEVICE void gate_backward_kernel(const GsdpaGateBackwardParams &p) {
    const int64_t num_rows = int64_t(p.batch) * p.seqlen * p.heads;
    // All three exits are uniform over the block (launch contract: no partial warps).
    if (num_rows <= 0 || num_rows > int64_t(0xffffffffu) || p.head_dim < 8) return;
    if (blockDim.x % 32 != 0) return;
    gate_backward_rows<T>(p, uint32_t(num_rows));
}

}  // namespace gate
}  // namespace gsdpa

extern "C" __global__ void __launch_bounds__(GSDPA_GATE_THREADS) gsdpa_gate_bf16(const GsdpaGateParams p) {
    gsdpa::gate::gate_kernel<gsdpa::bf16>(p);
}
GSDPA_REGISTER_KERNEL(gsdpa_gate_bf16, GsdpaGateParams, GSDPA_GATE_THREADS)

extern "C" __global__ void __launch_bounds__(GSDPA_GATE_THREADS) gsdpa_gate_f16(const GsdpaGateParams p) {
    gsdpa::gate::gate_kernel<gsdpa::f16>(p);
}
GSDPA_REGISTER_KERNEL(gsdpa_gate_f16, GsdpaGateParams, GSDPA_GATE_THREADS)

extern "C" __global__ void __launch_bounds__(GSDPA_GATE_THREADS)
    gsdpa_gate_backward_bf16(const GsdpaGateBackwardParams p) {
    gsdpa::gate::gate_backward_kernel<gsdpa::bf16>(p);
}
GSDPA_REGISTER_KERNEL(gsdpa_gate_backward_bf16, GsdpaGateBackwardParams, GSDPA_GATE_THREADS)

extern "C" __global__ void __launch_bounds__(GSDPA_GATE_THREADS)
    gsdpa_gate_backward_f16(const GsdpaGateBackwardParams p) {
    gsdpa::gate::gate_backward_kernel<gsdpa::f16>(p);
}
GSDPA_REGISTER_KERNEL(gsdpa_gate_backward_f16, GsdpaGateBackwardParams, GSDPA_GATE_THREADS)
