// forward.cu: the fused gated attention forward kernel (FlashAttention-2 design, mma.sync, sm_80+).
//
//   Y = softmax(scale Q K^T + causal mask) V * act(G),   LSE = log(sum exp(scale Q K^T)) per row,
//   optionally also the ungated O = softmax(...) V.
//
// One block computes BLOCK_M query rows of one (batch, query head): grid (ceil(seqlen_q / BLOCK_M),
// heads_q, batch). Each warp owns WARP_ROWS = 16 M_TILES rows (M_TILES m16 tiles, kernel_traits.h), so that
// every K and V fragment loaded with ldmatrix feeds M_TILES mmas. Per key tile (visited last to first):
//   S = Q K^T (mma.sync m16n8k16, f32 accumulators; ldmatrix for Q and K), mask if the tile needs it,
//   online softmax in registers (scale folded into exp2; O rescaled only when a row max rises by more
//   than 2^8 in p, OnlineSoftmax::update_lazy), P rounded to 16 bit and reused in registers as the A
//   operand of O += P V (ldmatrix.trans for V).
// Epilogue (epilogue.h): O = acc / l, the gate, staged 16-byte stores, LSE. Optional diagnostics (sink
// mass, gate partial sums): forward/diagnostics.h.
// Tiles, shared-memory layout and the K/V pipeline: forward/kernel_traits.h. Masking: common/mask.h. Both
// GEMMs: common/warp_gemm.h (one warp = M_TILES m-tiles of 16 rows: the [M_TILES][...] accumulator arrays).
// The online softmax, the sink mass and the mask work per m-tile (one OnlineSoftmax per m-tile).
// Sequence offsets (padded or varlen): common/seqlen_info.h.
//
// Run-time options: causal, gate mode (none / elementwise / headwise), activation (sigmoid / silu),
// varlen (cu_seqlens_q non-null), ungated O (p.o non-null). Template: dtype x head dim.
#include "common/mask.h"
#include "common/seqlen_info.h"
#include "common/warp_gemm.h"
#include "forward/epilogue.h"

namespace gsdpa {
namespace fwd {

template <class Tr>
GSDPA_DEVICE void forward(const GsdpaFwdParams &p) {
    using T = typename Tr::T;
    constexpr int D = Tr::D;
    constexpr int BLOCK_M = Tr::BLOCK_M;
    constexpr int BLOCK_N = Tr::BLOCK_N;
    constexpr int THREADS = Tr::THREADS;
    constexpr int TM = Tr::M_TILES;

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp_row0 = (tid >> 5) * Tr::WARP_ROWS;  // first of this warp's rows within the block
    const int m_block = blockIdx.x;
    const int h = blockIdx.y;
    const int b = blockIdx.z;

    const SeqlenInfo seq(p, b);
    const int m0 = m_block * BLOCK_M;
    // This block's gate partial sums (one per warp), when the gate statistics are requested; computed
    // where used, so that nothing is kept live across the key loop.
    auto gate_partials = [&]() -> float * {
        return p.gate_partials + (int64_t(b) * p.heads_q + h) * p.gate_partials_per_head + m_block * Tr::WARPS;
    };
    if (m0 >= seq.seqlen_q) {  // varlen: the grid is sized for the longest sequence
        // The statistics kernel sums every partial of a head: this block's count as zero.
        if (p.gate_partials != nullptr && (tid & 31) == 0) gate_partials()[tid >> 5] = 0.0f;
        return;
    }
    const int rows = tmin(BLOCK_M, seq.seqlen_q - m0);
    const bool causal = p.causal != 0;
    const int kv_head = h / (p.heads_q / p.heads_kv);

    const int n_tiles = key_tile_count<BLOCK_M, BLOCK_N>(m0, seq, causal);
    // A block none of whose rows sees a key writes Y = O = 0 and LSE = -inf without reading G, unless the
    // gate statistics need G's activations (Y is then 0 * act(G), as for such rows in other blocks).
    const int gate_mode = n_tiles > 0 || p.gate_partials != nullptr ? p.gate_mode : int(GSDPA_GATE_NONE);

    T *smem = reinterpret_cast<T *>(dynamic_smem());
    T *s_q = smem + Tr::SMEM_Q;

    // This thread's first row relative to the block: of m-tile mi, it holds rows my_row0 + 16 mi (row_half 0)
    // and my_row0 + 16 mi + 8 (row_half 1).
    const int my_row0 = warp_row0 + (lane >> 2);

    float acc_o[TM][Tr::N_TILES_O][4];
    zero_acc(acc_o);
    OnlineSoftmax softmax[TM];
    SinkMass sink[TM];
#pragma unroll
    for (int mi = 0; mi < TM; ++mi) {
        softmax[mi].init();
        sink[mi].init();
    }

    // The elementwise gate tile replaces Q once Q is no longer needed in shared memory.
    auto load_gate = [&]() {
        cp_async_tile<BLOCK_M, D, THREADS>(s_q, static_cast<const T *>(p.g) + seq.q_offset(p.g_stride, m0, h),
                                           p.g_stride.row, rows, tid);
    };

    if (n_tiles > 0) {
        // This thread's first chunk of key tile 0 of K and V (cp_async_lane_offset): one 64-bit pointer per
        // tensor stays live across the loop, tile n's being n BLOCK_N rows further.
        const int64_t k_row = p.k_stride.row, v_row = p.v_stride.row;
        const T *k = static_cast<const T *>(p.k) + seq.k_offset(p.k_stride, 0, kv_head) +
                     cp_async_lane_offset<D, THREADS>(k_row, tid);
        const T *v = static_cast<const T *>(p.v) + seq.k_offset(p.v_stride, 0, kv_head) +
                     cp_async_lane_offset<D, THREADS>(v_row, tid);
        // Issue the copy of key tile n of K or V (rows past seqlen_k zero-filled) into a stage's buffer.
        auto load_k = [&](int n) {
            cp_async_tile_from<BLOCK_N, D, THREADS>(smem + Tr::smem_k(n), k + int64_t(n) * BLOCK_N * k_row, k_row,
                                                    seq.seqlen_k - n * BLOCK_N, tid);
        };
        auto load_v = [&](int n) {
            cp_async_tile_from<BLOCK_N, D, THREADS>(smem + Tr::smem_v(n), v + int64_t(n) * BLOCK_N * v_row, v_row,
                                                    seq.seqlen_k - n * BLOCK_N, tid);
        };
        // The same for a tile the loop prefetches (n < n_tiles - 1): it is full (its keys end at
        // (n + 1) * BLOCK_N <= (n_tiles - 1) * BLOCK_N < seqlen_k), so no row test per chunk.
        auto prefetch_k = [&](int n) {
            cp_async_full_tile_from<BLOCK_N, D, THREADS>(smem + Tr::smem_k(n), k + int64_t(n) * BLOCK_N * k_row, k_row,
                                                         tid);
        };
        auto prefetch_v = [&](int n) {
            cp_async_full_tile_from<BLOCK_N, D, THREADS>(smem + Tr::smem_v(n), v + int64_t(n) * BLOCK_N * v_row, v_row,
                                                         tid);
        };
        // Prologue: Q and the last K and V tiles in one group.
        int n = n_tiles - 1;
        cp_async_tile<BLOCK_M, D, THREADS>(s_q, static_cast<const T *>(p.q) + seq.q_offset(p.q_stride, m0, h),
                                           p.q_stride.row, rows, tid);
        load_k(n);
        load_v(n);
        cp_async_commit();

        // Q as mma A fragments of this warp's rows, for every k-step over the head dim.
        uint32_t q_frag[Tr::Q_IN_REGS ? TM : 1][Tr::Q_IN_REGS ? Tr::K_STEPS_QK : 1][4];
        if constexpr (Tr::Q_IN_REGS) {
            cp_async_wait<0>();
            __syncthreads();
#pragma unroll
            for (int mi = 0; mi < TM; ++mi) {
#pragma unroll
                for (int kk = 0; kk < Tr::K_STEPS_QK; ++kk) {
                    ldsm_a<D>(q_frag[mi][kk], s_q, warp_row0 + 16 * mi, kk * 16, lane);
                }
            }
        }

        // This lane's ldmatrix addresses into tile n's K and V stages (and into Q, where Q is re-read per
        // tile), computed once: inside the loop every fragment address is a base register plus an immediate,
        // and the next tile's stage is one XOR away (common/fragments.h, LdsmLaneOffsets).
        LdsmLaneOffsets<D> k_offsets = ldsm_b_offsets<D>(Tr::smem_k(n), lane);
        LdsmLaneOffsets<D> v_offsets = ldsm_b_trans_offsets<D>(Tr::smem_v(n), lane);
        LdsmLaneOffsets<D> q_offsets = ldsm_a_offsets<D>(Tr::SMEM_Q + warp_row0 * D, lane);
        // Single-buffered, these bases do not change across the loop; on sm_80 (D = 64, 256) ptxas would
        // rebuild them inside it, unless they are loop-carried (LdsmLaneOffsets::keep_in_registers).
        const int opaque_zero = seq.seqlen_k >> 31;  // seqlen_k >= 0

        // Tiles [0, sink_tiles) hold keys below n_sink (none when the sink mass is not requested).
        const int sink_tiles = (p.n_sink + BLOCK_N - 1) / BLOCK_N;
        const CommonKeyTiles common_tiles = common_key_tiles<BLOCK_N>(m0, seq, causal, sink_tiles);

        // S = Q K(n)^T for this warp's rows x BLOCK_N keys (K stored [key][dim] = [n][k]), masked and its
        // sink keys summed where tile n needs it.
        float s[TM][Tr::N_TILES_S][4];
        auto scores = [&](int n) {
            zero_acc(s);
            if constexpr (Tr::Q_IN_REGS) {
                const FragmentOperandA<TM, Tr::K_STEPS_QK> q_src{q_frag};
                warp_gemm_offsets<T, TM, Tr::N_TILES_S, Tr::K_STEPS_QK, false, D>(s, q_src, smem, k_offsets, lane);
            } else {
                const SmemOffsetsOperandA<D, T> q_src{smem, q_offsets, 0};
                warp_gemm_offsets<T, TM, Tr::N_TILES_S, Tr::K_STEPS_QK, false, D>(s, q_src, smem, k_offsets, lane);
            }
            // The rare path: tiles that need masking, and tiles holding sink keys (the last ones visited).
            if (!common_tiles.contains(n)) {
#pragma unroll
                for (int mi = 0; mi < TM; ++mi) {
                    // Key limits of this thread's rows; recomputed here (rarely) rather than kept live.
                    const int row = m0 + my_row0 + 16 * mi;
                    const int limit[2] = {key_limit(row, seq, causal), key_limit(row + 8, seq, causal)};
                    mask_scores(s[mi], n * BLOCK_N, limit, lane);
                    if (n < sink_tiles) sink[mi].add(s[mi], n * BLOCK_N, p.n_sink, p.scale_log2, lane);
                }
            }
        };
        // The online softmax of S, then O += P V(n): P (the numerators now in s) rounded to T and reused in
        // registers as the A operand; V stored [key][dim] = [k][n].
        auto softmax_and_pv = [&]() {
#pragma unroll
            for (int mi = 0; mi < TM; ++mi) softmax[mi].update_lazy(s[mi], acc_o[mi], p.scale_log2);
            const AccumulatorOperandA<T, TM, Tr::K_STEPS_PV> p_src{s};
            warp_gemm_offsets<T, TM, Tr::N_TILES_O, Tr::K_STEPS_PV, true, D>(acc_o, p_src, smem, v_offsets, lane);
        };

        // The loop runs every key tile but the last one visited (tile 0), each of which prefetches the
        // next; tile 0 leaves it at its barrier and runs after it, fetching the gate tile instead. So the
        // loop body holds no test for the last tile, and its one path is the steady state (docs/sass.md).
        for (;; --n) {
            cp_async_wait<0>();
            if constexpr (Tr::KV_STAGES == 2) {
                __syncthreads();  // K(n), V(n) visible to all; every warp is done with tile n + 1's stage
                if (n == 0) break;
                prefetch_k(n - 1);
                prefetch_v(n - 1);
                cp_async_commit();
                scores(n);
                softmax_and_pv();
                k_offsets.flip(Tr::K_STAGE_FLIP);  // on to tile n - 1's stage
                v_offsets.flip(Tr::V_STAGE_FLIP);
            } else {
                __syncthreads();  // K(n) visible to all; every warp is done with V(n + 1)
                // The first tile's V (the only one that may be partial) came with the prologue.
                if (n < n_tiles - 1) prefetch_v(n);
                cp_async_commit();
                scores(n);
                cp_async_wait<0>();
                __syncthreads();  // V(n) visible to all; every warp is done with K(n) and (last tile) Q
                if (n == 0) break;
                prefetch_k(n - 1);
                cp_async_commit();
                softmax_and_pv();
                q_offsets.keep_in_registers(opaque_zero);
                k_offsets.keep_in_registers(opaque_zero);
                v_offsets.keep_in_registers(opaque_zero);
            }
        }
        // Tile 0. Q is no longer read from shared memory (double-buffered: it is in registers;
        // single-buffered: S is computed), so the gate tile can take its place; its load hides under
        // O += P V.
        if (gate_mode == GSDPA_GATE_ELEMENTWISE) load_gate();
        cp_async_commit();
        if constexpr (Tr::KV_STAGES == 2) scores(0);
        softmax_and_pv();
    } else if (gate_mode == GSDPA_GATE_ELEMENTWISE) {
        load_gate();  // no key tile (gate statistics only): G is read for its activations
        cp_async_commit();
    }
    cp_async_wait<0>();
    __syncthreads();  // the gate tile is visible; every warp is done with K, V and Q

    // Headwise gate logits (one per row; read late, so nothing is kept live across the key loop).
    float gate_logit[TM][2];
#pragma unroll
    for (int mi = 0; mi < TM; ++mi) gate_logit[mi][0] = gate_logit[mi][1] = 0.0f;
    if (gate_mode == GSDPA_GATE_HEADWISE) {
#pragma unroll
        for (int mi = 0; mi < TM; ++mi) {
#pragma unroll
            for (int row_half = 0; row_half < 2; ++row_half) {
                const int row = my_row0 + 16 * mi + 8 * row_half;
                if (row < rows) {
                    gate_logit[mi][row_half] =
                        to_float(static_cast<const T *>(p.g)[seq.q_offset(p.g_stride, m0 + row, h)]);
                }
            }
        }
    }

    FwdOutputs<T> out;
    out.y = static_cast<T *>(p.y) + seq.q_offset(p.y_stride, m0, h);
    out.o = p.o != nullptr ? static_cast<T *>(p.o) + seq.q_offset(p.o_stride, m0, h) : nullptr;
    // LSE is optional (null: not requested).
    out.lse = p.lse != nullptr ? p.lse + seq.lse_offset(p.lse_batch_stride, p.lse_head_stride, h) + m0 : nullptr;
    out.sink_mass = p.sink_mass != nullptr
                        ? p.sink_mass + seq.lse_offset(p.sink_batch_stride, p.sink_head_stride, h) + m0
                        : nullptr;
    out.gate_partials = p.gate_partials != nullptr ? gate_partials() : nullptr;
    out.y_row_stride = p.y_stride.row;
    out.o_row_stride = p.o_stride.row;
    out.rows = rows;
    write_outputs<Tr>(out, acc_o, softmax, sink, p.scale_log2, gate_mode, p.activation, gate_logit, smem, tid);
}

}  // namespace fwd
}  // namespace gsdpa

// Entry points: one per (dtype, head dim); geometry from gsdpa_params.h (GsdpaFwdGeometry). A 4-warp block
// (D = 64, 256) fits twice in an SM's 64K registers at any count ptxas may use (<= 255 per thread), so the
// launch bounds need no minimum-blocks hint; kernel_traits.h has the figures.
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
