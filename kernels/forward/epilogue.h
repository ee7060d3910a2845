// epilogue.h: the forward kernel's output stage.
//
// O = acc / l; Y = O * act(G) (elementwise G read from the shared tile fetched during the last key tile,
// headwise G one register per row); both rounded to the output type and staged through swizzled shared
// memory (Y in the K+V region, O in the Q region once G has been consumed) so that global stores are
// whole 16-byte chunks, consecutive threads on consecutive chunks of a row. Only rows < seqlen_q are
// written. LSE is written by lane t = 0 of each quad, one f32 per row; so is the sink mass, when asked
// for. The gate partial sums (diagnostics.h) are taken from the act(G) values the gate multiplies with.
#pragma once

#include "diagnostics.h"
#include "gate.h"

namespace gsdpa {
namespace fwd {

// Where this block writes: row 0 of the block (query row m0 of its sequence) in y, o, lse and sink_mass
// (o, lse, sink_mass null: not requested), this block's first gate partial (one per warp, over the warp's
// M_TILES m-tiles; null: not requested), and how many rows are real.
template <class T>
struct FwdOutputs {
    T *y;
    T *o;
    float *lse;
    float *sink_mass;
    float *gate_partials;
    int64_t y_row_stride;
    int64_t o_row_stride;
    int rows;
};

// Precondition: every warp is past its last read of K and V, the elementwise gate tile (if any) is
// visible in the Q region (cp_async_wait<0>() then __syncthreads()). gate_mode is the block's effective
// mode; for HEADWISE, gate_logit[mi][row_half] holds the logit of the thread's row g (0) or g + 8 (1) of
// its warp's m-tile mi.
template <class Tr>
GSDPA_DEVICE void write_outputs(const FwdOutputs<typename Tr::T> &out, float (&acc_o)[Tr::M_TILES][Tr::N_TILES_O][4],
                                OnlineSoftmax (&softmax)[Tr::M_TILES], const SinkMass (&sink)[Tr::M_TILES],
                                float scale_log2, int gate_mode, int activation,
                                const float (&gate_logit)[Tr::M_TILES][2], typename Tr::T *smem, int tid) {
    using T = typename Tr::T;
    constexpr int D = Tr::D;
    constexpr int TM = Tr::M_TILES;
    const int lane = tid & 31;
    const int warp_row0 = (tid >> 5) * Tr::WARP_ROWS;
    // The first row of each of the thread's m-tiles (row_half 0; row_half 1 is 8 further), and whether it
    // is real (its act(G) values count in the gate partials).
    auto tile_row = [&](int mi) { return warp_row0 + 16 * mi; };
    auto row_real = [&](int mi, int row_half) { return tile_row(mi) + (lane >> 2) + 8 * row_half < out.rows; };
    const bool gate_partials = out.gate_partials != nullptr;
    float gate_sum = 0.0f;

    float inv_sum[TM][2], lse[TM][2];
#pragma unroll
    for (int mi = 0; mi < TM; ++mi) {
        softmax[mi].finish(scale_log2, inv_sum[mi], lse[mi]);
#pragma unroll
        for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) acc_o[mi][nt][i] *= inv_sum[mi][i >> 1];
        }
    }

    // Y into the K+V region.
    T *s_y = smem + Tr::SMEM_Y;
    if (gate_mode == GSDPA_GATE_ELEMENTWISE) {
        const T *s_g = smem + Tr::SMEM_Q;
#pragma unroll
        for (int mi = 0; mi < TM; ++mi) {
#pragma unroll
            for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
#pragma unroll
                for (int row_half = 0; row_half < 2; ++row_half) {
                    const float2 g = load_c_pair<D>(s_g, tile_row(mi), nt * 8, row_half, lane);
                    const float2 o = make_float2(acc_o[mi][nt][2 * row_half], acc_o[mi][nt][2 * row_half + 1]);
                    const float2 a = gate_activations(g, activation);
                    if (gate_partials && row_real(mi, row_half)) gate_sum += a.x + a.y;
                    const float2 y = apply_gate(o, a);
                    st_shared(reinterpret_cast<uint32_t *>(s_y + c_frag_offset<D>(tile_row(mi), nt * 8, row_half, lane)),
                              pack_float2<T>(y.x, y.y));
                }
            }
        }
    } else {
#pragma unroll
        for (int mi = 0; mi < TM; ++mi) {
            float factor[2] = {1.0f, 1.0f};
            if (gate_mode == GSDPA_GATE_HEADWISE) {
                factor[0] = gate_activation(gate_logit[mi][0], activation);
                factor[1] = gate_activation(gate_logit[mi][1], activation);
                // One value per row: lane t = 0 of each quad counts it.
                if (gate_partials && (lane & 3) == 0) {
                    gate_sum += (row_real(mi, 0) ? factor[0] : 0.0f) + (row_real(mi, 1) ? factor[1] : 0.0f);
                }
            }
#pragma unroll
            for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
#pragma unroll
                for (int row_half = 0; row_half < 2; ++row_half) {
                    const float2 o = make_float2(acc_o[mi][nt][2 * row_half], acc_o[mi][nt][2 * row_half + 1]);
                    const float2 y = apply_gate(o, factor[row_half]);
                    st_shared(reinterpret_cast<uint32_t *>(s_y + c_frag_offset<D>(tile_row(mi), nt * 8, row_half, lane)),
                              pack_float2<T>(y.x, y.y));
                }
            }
        }
    }

    // LSE, one lane per row.
    if (out.lse != nullptr && (lane & 3) == 0) {
#pragma unroll
        for (int mi = 0; mi < TM; ++mi) {
#pragma unroll
            for (int row_half = 0; row_half < 2; ++row_half) {
                const int row = tile_row(mi) + (lane >> 2) + 8 * row_half;
                if (row < out.rows) out.lse[row] = lse[mi][row_half];
            }
        }
    }
    // Diagnostics (diagnostics.h): both branches are uniform over the block.
    if (out.sink_mass != nullptr) {
#pragma unroll
        for (int mi = 0; mi < TM; ++mi) {
            float mass[2];
            sink[mi].finish(softmax[mi], scale_log2, inv_sum[mi], mass);
            if ((lane & 3) == 0) {
#pragma unroll
                for (int row_half = 0; row_half < 2; ++row_half) {
                    const int row = tile_row(mi) + (lane >> 2) + 8 * row_half;
                    if (row < out.rows) out.sink_mass[row] = mass[row_half];
                }
            }
        }
    }
    if (gate_partials) {
        gate_sum = warp_sum(gate_sum);
        if (lane == 0) out.gate_partials[tid >> 5] = gate_sum;
    }

    __syncthreads();  // Y staged; every warp is done reading G from the Q region
    if (out.o != nullptr) {
        T *s_o = smem + Tr::SMEM_O;
#pragma unroll
        for (int mi = 0; mi < TM; ++mi) {
#pragma unroll
            for (int nt = 0; nt < Tr::N_TILES_O; ++nt) store_c_frag<D>(s_o, tile_row(mi), nt * 8, acc_o[mi][nt], lane);
        }
    }
    store_tile<Tr::BLOCK_M, D, Tr::THREADS>(out.y, out.y_row_stride, s_y, out.rows, tid);
    if (out.o != nullptr) {
        __syncthreads();  // O staged
        store_tile<Tr::BLOCK_M, D, Tr::THREADS>(out.o, out.o_row_stride, smem + Tr::SMEM_O, out.rows, tid);
    }
}

}  // namespace fwd
}  // namespace gsdpa
