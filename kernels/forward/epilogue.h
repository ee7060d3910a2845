// epilogue.h: the forward kernel's output stage.
//
// O = acc / l; Y = O * act(G) (elementwise G read from the shared tile fetched during the last key tile,
// headwise G one register per row); both rounded to the output type and staged through swizzled shared
// memory (Y in the K+V region, O in the Q region once G has been consumed) so that global stores are
// whole 16-byte chunks, consecutive threads on consecutive chunks of a row. Only rows < seqlen_q are
// written. LSE is written by lane t = 0 of each quad, one f32 per row.
#pragma once

#include "gate.h"
#include "online_softmax.h"

namespace gsdpa {
namespace fwd {

// Where this block writes: row 0 of the block (query row m0 of its sequence) in y, o and lse (o, lse
// null: not requested), and how many rows are real.
template <class T>
struct FwdOutputs {
    T *y;
    T *o;
    float *lse;
    int64_t y_row_stride;
    int64_t o_row_stride;
    int rows;
};

// Precondition: every warp is past its last read of K and V, the elementwise gate tile (if any) is
// visible in the Q region (cp_async_wait<0>() then __syncthreads()). gate_mode is the block's effective
// mode; for HEADWISE, gate_logit[row_half] holds the logit of the thread's row g (0) or g + 8 (1).
template <class Tr>
GSDPA_DEVICE void write_outputs(const FwdOutputs<typename Tr::T> &out, float (&acc_o)[Tr::N_TILES_O][4],
                                OnlineSoftmax &softmax, float scale_log2, int gate_mode, int activation,
                                const float (&gate_logit)[2], typename Tr::T *smem, int tid) {
    using T = typename Tr::T;
    constexpr int D = Tr::D;
    const int lane = tid & 31;
    const int warp_row0 = (tid >> 5) * 16;

    float inv_sum[2], lse[2];
    softmax.finish(scale_log2, inv_sum, lse);
#pragma unroll
    for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc_o[nt][i] *= inv_sum[i >> 1];
    }

    // Y into the K+V region.
    T *s_y = smem + Tr::SMEM_Y;
    if (gate_mode == GSDPA_GATE_ELEMENTWISE) {
        const T *s_g = smem + Tr::SMEM_Q;
#pragma unroll
        for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
#pragma unroll
            for (int row_half = 0; row_half < 2; ++row_half) {
                const float2 g = load_c_pair<D>(s_g, warp_row0, nt * 8, row_half, lane);
                const float2 o = make_float2(acc_o[nt][2 * row_half], acc_o[nt][2 * row_half + 1]);
                const float2 y = apply_gate(o, g, activation);
                st_shared(reinterpret_cast<uint32_t *>(s_y + c_frag_offset<D>(warp_row0, nt * 8, row_half, lane)),
                          pack_float2<T>(y.x, y.y));
            }
        }
    } else {
        float factor[2] = {1.0f, 1.0f};
        if (gate_mode == GSDPA_GATE_HEADWISE) {
            factor[0] = gate_activation(gate_logit[0], activation);
            factor[1] = gate_activation(gate_logit[1], activation);
        }
#pragma unroll
        for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
#pragma unroll
            for (int row_half = 0; row_half < 2; ++row_half) {
                const float2 o = make_float2(acc_o[nt][2 * row_half], acc_o[nt][2 * row_half + 1]);
                const float2 y = apply_gate(o, factor[row_half]);
                st_shared(reinterpret_cast<uint32_t *>(s_y + c_frag_offset<D>(warp_row0, nt * 8, row_half, lane)),
                          pack_float2<T>(y.x, y.y));
            }
        }
    }

    // LSE, one lane per row.
    if (out.lse != nullptr && (lane & 3) == 0) {
#pragma unroll
        for (int row_half = 0; row_half < 2; ++row_half) {
            const int row = warp_row0 + (lane >> 2) + 8 * row_half;
            if (row < out.rows) out.lse[row] = lse[row_half];
        }
    }

    __syncthreads();  // Y staged; every warp is done reading G from the Q region
    if (out.o != nullptr) {
        T *s_o = smem + Tr::SMEM_O;
#pragma unroll
        for (int nt = 0; nt < Tr::N_TILES_O; ++nt) store_c_frag<D>(s_o, warp_row0, nt * 8, acc_o[nt], lane);
    }
    store_tile<Tr::BLOCK_M, D, Tr::THREADS>(out.y, out.y_row_stride, s_y, out.rows, tid);
    if (out.o != nullptr) {
        __syncthreads();  // O staged
        store_tile<Tr::BLOCK_M, D, Tr::THREADS>(out.o, out.o_row_stride, smem + Tr::SMEM_O, out.rows, tid);
    }
}

}  // namespace fwd
}  // namespace gsdpa
