// gate.cu: the standalone output gate, Y = O * act(G): the unfused baseline.
//
// Every engine today runs attention first and then this elementwise pass: it reads O and G and writes Y,
// two extra trips over a [B, S, H, D] tensor that the fused forward kernel avoids. The benches time it
// against the fused epilogue, so it is written to run at memory bandwidth, not as a strawman:
// 16-byte loads and stores (8 elements per thread), no shared memory, nothing but streaming.
//
// Layout (gsdpa_params.h): o, g and y are addressed as b * batch + s * row + h * head + d, in elements,
// with d contiguous. The headwise gate G [B, S, H] has no last dimension: one logit per (b, s, h) row,
// broadcast over D. gate_mode NONE copies O to Y (act = 1) and never touches g.
//
// Launch contract (the host launcher checks these; the kernel does not re-check them):
//  - head_dim is a positive multiple of 8 and every row of o, g (elementwise) and y starts 16-byte aligned;
//  - batch * seqlen * heads < 2^32 (the row index is 32-bit; beyond that the kernel writes nothing);
//  - any blockDim.x from 32 up to GSDPA_GATE_THREADS and any gridDim.x >= 1: the kernel walks the
//    rows with a grid-stride loop, so the host can cap the grid at a few waves of blocks.
#include "common/activation.h"


namespace gsdpa {
namespace gate {

// 8 elements of a 16-bit type travel as one uint4: a single 16-byte load or store (ld/st.global.v4.u32).
// Rows are addressed as uint4 arrays (row_base + vec) rather than as element pointers cast per access:
// with `reinterpret_cast<uint4 *>(y + offset)` nvcc 13 split the stores into four 4-byte ones.
template <class T>
GSDPA_DEVICE void unpack8(const uint4 v, float (&f)[8]) {
    const float2 p0 = unpack_float2<T>(v.x), p1 = unpack_float2<T>(v.y);
    const float2 p2 = unpack_float2<T>(v.z), p3 = unpack_float2<T>(v.w);
    f[0] = p0.x, f[1] = p0.y, f[2] = p1.x, f[3] = p1.y;
    f[4] = p2.x, f[5] = p2.y, f[6] = p3.x, f[7] = p3.y;
}

template <class T>
GSDPA_DEVICE uint4 pack8(const float (&f)[8]) {
    uint4 v;
    v.x = pack_float2<T>(f[0], f[1]);
    v.y = pack_float2<T>(f[2], f[3]);
    v.z = pack_float2<T>(f[4], f[5]);
    v.w = pack_float2<T>(f[6], f[7]);
    return v;
}

// Element offset of row (b, s, h), in 64 bits.
GSDPA_DEVICE int64_t row_offset(const GsdpaStrides &stride, uint32_t b, uint32_t s, uint32_t h) {
    return int64_t(b) * stride.batch + int64_t(s) * stride.row + int64_t(h) * stride.head;
}

// Rows (b, s, h) are numbered row = (b * seqlen + s) * heads + h, in 32 bits: the two divisions per row
// stay cheap, and a 64-bit division would be a subroutine call with a stack frame in the SASS.
template <class T>
GSDPA_DEVICE void gate_rows(const GsdpaGateParams &p, uint32_t num_rows) {
    const int vecs_per_row = p.head_dim / 8;
    // A row is covered by up to blockDim.x threads; a block handles rows_per_block rows at once (e.g.
    // D = 128: 16 threads per row, 16 rows per block of 256). Threads beyond the last full row idle.
    const int threads_per_row = tmin<int>(vecs_per_row, int(blockDim.x));
    const int rows_per_block = int(blockDim.x) / threads_per_row;
    const int row_in_block = int(threadIdx.x) / threads_per_row;
    const int vec_in_row = int(threadIdx.x) % threads_per_row;
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
        const int64_t o_row = row_offset(p.o_stride, b, s, h);
        const int64_t g_row = row_offset(p.g_stride, b, s, h);
        const int64_t y_row = row_offset(p.y_stride, b, s, h);

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

}  // namespace gate
}  // namespace gsdpa

extern "C" __global__ void __launch_bounds__(GSDPA_GATE_THREADS) gsdpa_gate_bf16(const GsdpaGateParams p) {
    gsdpa::gate::gate_kernel<gsdpa::bf16>(p);
}
GSDPA_REGISTER_KERNEL(gsdpa_gate_bf16, GsdpaGateParams)

extern "C" __global__ void __launch_bounds__(GSDPA_GATE_THREADS) gsdpa_gate_f16(const GsdpaGateParams p) {
    gsdpa::gate::gate_kernel<gsdpa::f16>(p);
}
GSDPA_REGISTER_KERNEL(gsdpa_gate_f16, GsdpaGateParams)
