// forward.cu: the fused gated attention forward kernel (FlashAttention-2 design, mma.sync, sm_80+).
//
//   Y = softmax(scale Q K^T + causal mask) V * act(G),   LSE = log(sum exp(scale Q K^T)) per row,
//   optionally also the ungated O = softmax(...) V.
//
// One block computes BLOCK_M query rows of one (batch, query head): grid (ceil(seqlen_q / BLOCK_M),
// heads_q, batch). Each warp owns 16 rows. Per key tile (visited last to first):
//   S = Q K^T (mma.sync m16n8k16, f32 accumulators; ldmatrix for Q and K), mask if the tile needs it,
//   online softmax in registers (scale folded into exp2), P rounded to 16 bit and reused in registers as
//   the A operand of O += P V (ldmatrix.trans for V).
// Epilogue (epilogue.h): O = acc / l, the gate, staged 16-byte stores, LSE.
// Tiles, shared-memory layout and the K/V pipeline: forward/kernel_traits.h. Masking: forward/mask.h.
//
// Run-time options: causal, gate mode (none / elementwise / headwise), activation (sigmoid / silu),
// varlen (cu_seqlens_q non-null), ungated O (p.o non-null). Template: dtype x head dim.
#include "forward/epilogue.h"
#include "forward/mask.h"

namespace gsdpa {
namespace fwd {

// Pointer to element (batch b, packed row `row`, head `head`, dim 0) of a [B, S, H, D] tensor (or of a
// headwise gate [B, S, H]); for varlen problems the batch stride is not used (rows are packed).
template <class T, class Base>
GSDPA_DEVICE T *tensor_at(Base *base, const GsdpaStrides &stride, int b, bool varlen, int64_t row, int head) {
    return static_cast<T *>(base) + (varlen ? int64_t(0) : int64_t(b) * stride.batch) + row * stride.row +
           int64_t(head) * stride.head;
}

// S = Q K^T for this warp's 16 rows x BLOCK_N keys of the K tile s_k. Q comes from registers
// (Q_IN_REGS) or, one k-step at a time, from the Q tile.
template <class Tr>
GSDPA_DEVICE void gemm_qk(float (&s)[Tr::N_TILES_S][4], const uint32_t (&q_frag)[Tr::Q_IN_REGS ? Tr::K_STEPS_QK : 1][4],
                          const typename Tr::T *s_q, const typename Tr::T *s_k, int warp_row0, int lane) {
    using T = typename Tr::T;
#pragma unroll
    for (int nt = 0; nt < Tr::N_TILES_S; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) s[nt][i] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < Tr::K_STEPS_QK; ++kk) {
        uint32_t a[4];
        if constexpr (Tr::Q_IN_REGS) {
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = q_frag[kk][i];
        } else {
            ldsm_a<Tr::D>(a, s_q, warp_row0, kk * 16, lane);
        }
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

// O += P V for the V tile s_v: P (the softmax numerators in s) is rounded to T and reused in registers as
// the A operand (C fragments -> A fragments); V through ldmatrix.trans.
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

template <class Tr>
GSDPA_DEVICE void forward(const GsdpaFwdParams &p) {
    using T = typename Tr::T;
    constexpr int D = Tr::D;
    constexpr int BLOCK_M = Tr::BLOCK_M;
    constexpr int BLOCK_N = Tr::BLOCK_N;
    constexpr int THREADS = Tr::THREADS;

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp_row0 = (tid >> 5) * 16;  // first of this warp's 16 rows within the block
    const int m_block = blockIdx.x;
    const int h = blockIdx.y;
    const int b = blockIdx.z;

    // The current sequence: its first packed row and its lengths.
    const bool varlen = p.cu_seqlens_q != nullptr;
    int64_t q_start = 0, k_start = 0;
    int seqlen_q = p.seqlen_q, seqlen_k = p.seqlen_k;
    if (varlen) {
        q_start = p.cu_seqlens_q[b];
        k_start = p.cu_seqlens_k[b];
        seqlen_q = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
        seqlen_k = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    }
    const int m0 = m_block * BLOCK_M;
    if (m0 >= seqlen_q) return;  // varlen: the grid is sized for the longest sequence
    const int rows = tmin(BLOCK_M, seqlen_q - m0);
    const bool causal = p.causal != 0;
    const int kv_head = h / (p.heads_q / p.heads_kv);

    const int n_tiles = key_tile_count<BLOCK_M, BLOCK_N>(m0, seqlen_q, seqlen_k, causal);
    // A block none of whose rows sees a key writes Y = O = 0 and LSE = -inf without reading G.
    const int gate_mode = n_tiles > 0 ? p.gate_mode : int(GSDPA_GATE_NONE);

    T *smem = reinterpret_cast<T *>(dynamic_smem());
    T *s_q = smem + Tr::SMEM_Q;

    // This thread's two rows (g and g + 8 of its warp), relative to the block.
    const int my_row[2] = {warp_row0 + (lane >> 2), warp_row0 + (lane >> 2) + 8};

    float acc_o[Tr::N_TILES_O][4];
#pragma unroll
    for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc_o[nt][i] = 0.0f;
    }
    OnlineSoftmax softmax;
    softmax.init();

    if (n_tiles > 0) {
        const T *k = tensor_at<const T>(p.k, p.k_stride, b, varlen, k_start, kv_head);
        const T *v = tensor_at<const T>(p.v, p.v_stride, b, varlen, k_start, kv_head);
        const int64_t k_row = p.k_stride.row, v_row = p.v_stride.row;
        // Issue the copy of key tile n of K or V (rows past seqlen_k zero-filled) into a stage's buffer.
        auto load_k = [&](int n) {
            cp_async_tile<BLOCK_N, D, THREADS>(smem + Tr::smem_k(n), k + int64_t(n) * BLOCK_N * k_row, k_row,
                                               seqlen_k - n * BLOCK_N, tid);
        };
        auto load_v = [&](int n) {
            cp_async_tile<BLOCK_N, D, THREADS>(smem + Tr::smem_v(n), v + int64_t(n) * BLOCK_N * v_row, v_row,
                                               seqlen_k - n * BLOCK_N, tid);
        };
        // The elementwise gate tile replaces Q once Q is no longer needed in shared memory.
        auto load_gate = [&]() {
            cp_async_tile<BLOCK_M, D, THREADS>(s_q, tensor_at<const T>(p.g, p.g_stride, b, varlen, q_start + m0, h),
                                               p.g_stride.row, rows, tid);
        };

        // Prologue: Q, the last K tile and (double-buffered) the last V tile in one group.
        int n = n_tiles - 1;
        cp_async_tile<BLOCK_M, D, THREADS>(s_q, tensor_at<const T>(p.q, p.q_stride, b, varlen, q_start + m0, h),
                                           p.q_stride.row, rows, tid);
        load_k(n);
        if constexpr (Tr::KV_STAGES == 2) load_v(n);
        cp_async_commit();

        uint32_t q_frag[Tr::Q_IN_REGS ? Tr::K_STEPS_QK : 1][4];
        if constexpr (Tr::Q_IN_REGS) {
            cp_async_wait<0>();
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < Tr::K_STEPS_QK; ++kk) ldsm_a<D>(q_frag[kk], s_q, warp_row0, kk * 16, lane);
        }

        for (; n >= 0; --n) {
            cp_async_wait<0>();
            if constexpr (Tr::KV_STAGES == 2) {
                __syncthreads();  // K(n), V(n) visible to all; every warp is done with tile n + 1's stage
                if (n > 0) {
                    load_k(n - 1);
                    load_v(n - 1);
                } else if (gate_mode == GSDPA_GATE_ELEMENTWISE) {
                    load_gate();  // Q is in registers: its tile is free; the load hides under the last tile
                }
                cp_async_commit();
            } else {
                __syncthreads();  // K(n) visible to all; every warp is done with V(n + 1)
                load_v(n);
                cp_async_commit();
            }

            float s[Tr::N_TILES_S][4];
            gemm_qk<Tr>(s, q_frag, s_q, smem + Tr::smem_k(n), warp_row0, lane);
            if (tile_needs_mask<BLOCK_N>(n, m0, seqlen_q, seqlen_k, causal)) {
                // Key limits of this thread's rows; recomputed here (rarely) rather than kept live.
                const int limit[2] = {key_limit(m0 + my_row[0], seqlen_q, seqlen_k, causal),
                                      key_limit(m0 + my_row[1], seqlen_q, seqlen_k, causal)};
                mask_scores(s, n * BLOCK_N, limit, lane);
            }

            if constexpr (Tr::KV_STAGES == 1) {
                cp_async_wait<0>();
                __syncthreads();  // V(n) visible to all; every warp is done with K(n) and (last tile) Q
                if (n > 0) {
                    load_k(n - 1);
                } else if (gate_mode == GSDPA_GATE_ELEMENTWISE) {
                    load_gate();  // hides under the last O += P V
                }
                cp_async_commit();
            }

            softmax.update(s, acc_o, p.scale_log2);
            gemm_pv<Tr>(acc_o, s, smem + Tr::smem_v(n), lane);
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // the gate tile is visible; every warp is done with K, V and Q

    // Headwise gate logits (one per row; read late, so nothing is kept live across the key loop).
    float gate_logit[2] = {0.0f, 0.0f};
    if (gate_mode == GSDPA_GATE_HEADWISE) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            if (my_row[half] < rows) {
                gate_logit[half] = to_float(
                    *tensor_at<const T>(p.g, p.g_stride, b, varlen, q_start + m0 + my_row[half], h));
            }
        }
    }

    FwdOutputs<T> out;
    out.y = tensor_at<T>(p.y, p.y_stride, b, varlen, q_start + m0, h);
    out.o = p.o != nullptr ? tensor_at<T>(p.o, p.o_stride, b, varlen, q_start + m0, h) : nullptr;
    out.lse = p.lse != nullptr ? p.lse + (varlen ? int64_t(0) : int64_t(b) * p.lse_batch_stride) +
                                     int64_t(h) * p.lse_head_stride + q_start + m0
                               : nullptr;
    out.y_row_stride = p.y_stride.row;
    out.o_row_stride = p.o_stride.row;
    out.rows = rows;
    write_outputs<Tr>(out, acc_o, softmax, p.scale_log2, gate_mode, p.activation, gate_logit, smem, tid);
}

}  // namespace fwd
}  // namespace gsdpa

// Entry points: one per (dtype, head dim); geometry from gsdpa_params.h (GsdpaFwdGeometry).
#define GSDPA_FWD_KERNEL(TYPE, TYPE_NAME, HEAD_DIM)                                                        \
    extern "C" __global__ void __launch_bounds__(GSDPA_FWD_THREADS_D##HEAD_DIM)                           \
        gsdpa_fwd_##TYPE_NAME##_d##HEAD_DIM(const GsdpaFwdParams p) {                                     \
        gsdpa::fwd::forward<gsdpa::fwd::FwdTraits<TYPE, HEAD_DIM>>(p);                                    \
    }                                                                                                      \
    GSDPA_REGISTER_KERNEL(gsdpa_fwd_##TYPE_NAME##_d##HEAD_DIM, GsdpaFwdParams, GSDPA_FWD_THREADS_D##HEAD_DIM)

GSDPA_FWD_KERNEL(gsdpa::bf16, bf16, 64)
GSDPA_FWD_KERNEL(gsdpa::bf16, bf16, 128)
GSDPA_FWD_KERNEL(gsdpa::bf16, bf16, 256)
GSDPA_FWD_KERNEL(gsdpa::f16, f16, 64)
GSDPA_FWD_KERNEL(gsdpa::f16, f16, 128)
GSDPA_FWD_KERNEL(gsdpa::f16, f16, 256)
