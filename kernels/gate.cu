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
//  - any blockDim.x from 32 up to GSDPA_GATE_MAX_THREADS and any gridDim.x >= 1: the kernel walks the
//    rows with a grid-stride loop, so the host can cap the grid at a few waves of blocks.
#include "common/activation.h"

// The block size the kernel is compiled for (__launch_bounds__): the launcher uses it as the block size.
#define GSDPA_GATE_MAX_THREADS 256

namespace gsdpa {
namespace gate {

// 8 elements of a 16-bit type, moved as one 16-byte load or store.
struct alignas(16) Vec8 {
    uint32_t w[4];
};

template <class T>
GSDPA_DEVICE void unpack8(const Vec8 &v, float (&f)[8]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 p = unpack_float2<T>(v.w[i]);
        f[2 * i] = p.x;
        f[2 * i + 1] = p.y;
    }
}

template <class T>
GSDPA_DEVICE Vec8 pack8(const float (&f)[8]) {
    Vec8 v;
#pragma unroll
    for (int i = 0; i < 4; ++i) v.w[i] = pack_float2<T>(f[2 * i], f[2 * i + 1]);
    return v;
}

// Rows (b, s, h) are numbered row = (b * seqlen + s) * heads + h. Index is uint32_t when the row count
// fits, which keeps the two divisions per row cheap; uint64_t otherwise.
template <class T, class Index>
GSDPA_DEVICE void gate_rows(const GsdpaGateParams &p, Index num_rows) {
    const int vecs_per_row = p.head_dim / 8;
    // A row is covered by up to blockDim.x threads; a block handles rows_per_block rows at once (e.g.
    // D = 128: 16 threads per row, 16 rows per block of 256). Threads beyond the last full row idle.
    const int threads_per_row = tmin<int>(vecs_per_row, int(blockDim.x));
    const int rows_per_block = int(blockDim.x) / threads_per_row;
    const int row_in_block = int(threadIdx.x) / threads_per_row;
    const int vec_in_row = int(threadIdx.x) % threads_per_row;
    if (row_in_block >= rows_per_block) return;

    const bool headwise = p.gate_mode == GSDPA_GATE_HEADWISE;
    const bool no_gate = p.gate_mode == GSDPA_GATE_NONE;
    const T *o = static_cast<const T *>(p.o);
    const T *g = static_cast<const T *>(p.g);
    T *y = static_cast<T *>(p.y);
    const Index heads = Index(p.heads);
    const Index seqlen = Index(p.seqlen);

    const Index row_step = Index(gridDim.x) * Index(rows_per_block);
    for (Index row = Index(blockIdx.x) * Index(rows_per_block) + Index(row_in_block); row < num_rows;
         row += row_step) {
        const Index h = row % heads;
        const Index bs = row / heads;
        const Index s = bs % seqlen;
        const Index b = bs / seqlen;
        const int64_t o_row = int64_t(b) * p.o_stride.batch + int64_t(s) * p.o_stride.row + int64_t(h) * p.o_stride.head;
        const int64_t g_row = int64_t(b) * p.g_stride.batch + int64_t(s) * p.g_stride.row + int64_t(h) * p.g_stride.head;
        const int64_t y_row = int64_t(b) * p.y_stride.batch + int64_t(s) * p.y_stride.row + int64_t(h) * p.y_stride.head;

        // Headwise: one activation per row, computed once and broadcast over D.
        float row_gate = 1.0f;
        if (headwise) row_gate = gate_activation(to_float<T>(g[g_row]), p.activation);

        for (int vec = vec_in_row; vec < vecs_per_row; vec += threads_per_row) {
            const int64_t d = int64_t(vec) * 8;
            float out[8];
            unpack8<T>(*reinterpret_cast<const Vec8 *>(o + o_row + d), out);
            if (headwise || no_gate) {
#pragma unroll
                for (int i = 0; i < 8; ++i) out[i] *= row_gate;
            } else {
                float logits[8];
                unpack8<T>(*reinterpret_cast<const Vec8 *>(g + g_row + d), logits);
#pragma unroll
                for (int i = 0; i < 8; ++i) out[i] *= gate_activation(logits[i], p.activation);
            }
            *reinterpret_cast<Vec8 *>(y + y_row + d) = pack8<T>(out);
        }
    }
}

template <class T>
GSDPA_DEVICE void gate_kernel(const GsdpaGateParams &p) {
    const int64_t num_rows = int64_t(p.batch) * p.seqlen * p.heads;
    if (num_rows <= 0 || p.head_dim < 8) return;
    if (num_rows <= int64_t(0xffffffffu)) {
        gate_rows<T, uint32_t>(p, uint32_t(num_rows));
    } else {
        gate_rows<T, uint64_t>(p, uint64_t(num_rows));
    }
}

}  // namespace gate
}  // namespace gsdpa

extern "C" __global__ void __launch_bounds__(GSDPA_GATE_MAX_THREADS) gsdpa_gate_bf16(const GsdpaGateParams p) {
    gsdpa::gate::gate_kernel<gsdpa::bf16>(p);
}
GSDPA_REGISTER_KERNEL(gsdpa_gate_bf16, GsdpaGateParams)

extern "C" __global__ void __launch_bounds__(GSDPA_GATE_MAX_THREADS) gsdpa_gate_f16(const GsdpaGateParams p) {
    gsdpa::gate::gate_kernel<gsdpa::f16>(p);
}
GSDPA_REGISTER_KERNEL(gsdpa_gate_f16, GsdpaGateParams)
