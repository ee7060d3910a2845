// forward_sm90.cu: the fused gated attention forward for Hopper (sm_90a): warp-specialized, TMA + wgmma
// (FlashAttention-3's structure; what is and is not done yet: docs/hopper-forward.md).
//
//   Y = softmax(scale Q K^T + causal mask) V * act(G),   LSE per row,   optionally the ungated O;
// the same results as forward.cu (same online softmax, masking, gate arithmetic and fast activations).
//
// One block computes BLOCK_M = 128 query rows of one (batch, query head): grid (ceil(seqlen_q / 128),
// heads_q, batch), 384 threads (forward_sm90/kernel_traits.h):
//  - warpgroup 0, the producer: one elected thread issues the TMA loads of Q (once) and of each key
//    tile's K and V into a 2-stage ring. Per stage a "full" mbarrier for K and one for V (armed with the
//    tile's bytes; TMA zero-fills rows past the tensor's end), and an "empty" mbarrier the 8 consumer warps
//    arrive on when they are done with the stage;
//  - warpgroups 1 and 2, the consumers, 64 query rows each: per key tile (last to first, so the masked
//    tiles come first and the causal bound skips tiles above the diagonal)
//      S = Q K^T      wgmma m64 n=BLOCK_N k16, A (Q) and B (K) through 128B-swizzled K-major descriptors
//      mask, online softmax in registers (forward/online_softmax.h: the wgmma accumulator layout is the
//      mma.sync C layout of each warp's 16 rows)
//      O += P V       wgmma m64 n=D k16, A = P from registers (rounded to T), B = V through an MN-major
//                     (transposed) descriptor: V is stored [key][dim] as TMA delivers it
//    then the epilogue (forward_sm90/epilogue.h): Y (and O) staged in the warpgroup's rows of the Q region
//    and TMA-stored.
// The consumer warpgroups take turns to issue their GEMMs (ping-pong on two named barriers, so one's
// softmax overlaps the other's GEMMs), and within a warpgroup the softmax of tile i overlaps the PV wgmma
// of tile i - 1 (issued together with S_i).
#include "common/mask.h"
#include "common/seqlen_info.h"
#include "forward_sm90/epilogue.h"

#if GSDPA_HOPPER
namespace gsdpa {
namespace fwd90 {

template <class Tr>
GSDPA_DEVICE void forward(const GsdpaFwdSm90Params &params) {
    using T = typename Tr::T;
    constexpr int BLOCK_M = Tr::BLOCK_M;
    constexpr int BLOCK_N = Tr::BLOCK_N;
    const GsdpaFwdParams &p = params.fwd;

    const int tid = threadIdx.x;
    const int m_block = blockIdx.x;
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    const SeqlenInfo seq(p, b);
    const int m0 = m_block * BLOCK_M;
    // This block's gate partial sums, one per consumer warp (16 rows each, warp 4 cwg + w of the
    // warpgroup's 64 rows): the mma.sync layout at D = 128 and D = 256, twice its count at D = 64
    // (launch::gate_partials_per_head_sm90).
    auto gate_partials = [&]() -> float * {
        return p.gate_partials + (int64_t(b) * p.heads_q + h) * p.gate_partials_per_head +
               m_block * Tr::CONSUMER_WARPS;
    };
    // Varlen: the grid is sized for the longest sequence. Every thread leaves before any barrier exists,
    // so no arrive or wait is left unmatched; the statistics kernel sums every partial of a head, so
    // this block's count as zero.
    if (m0 >= seq.seqlen_q) {
        if (p.gate_partials != nullptr && tid < Tr::CONSUMER_WARPS) gate_partials()[tid] = 0.0f;
        return;
    }
    const bool causal = p.causal != 0;
    const int kv_head = h / (p.heads_q / p.heads_kv);
    const int n_tiles = key_tile_count<BLOCK_M, BLOCK_N>(m0, seq, causal);

    char *smem = dynamic_smem();
    uint64_t *bars = reinterpret_cast<uint64_t *>(smem + Tr::SMEM_BARRIERS);
    uint64_t *q_full = bars;
    uint64_t *k_full = bars + 1;      // [STAGES]
    uint64_t *v_full = bars + 3;      // [STAGES]
    uint64_t *kv_empty = bars + 5;    // [STAGES]
    uint64_t *q_free = bars + 7;      // the consumer warps are past their last read of Q
    uint64_t *g_full = bars + 8;      // the elementwise gate tile has landed in Q's place
    // The elementwise gate tile is TMA-loaded into the Q region during the last key tile (or at once when
    // there is none: a block none of whose rows sees a key reads G only for the gate statistics).
    const bool gate_stats = p.gate_partials != nullptr;
    const bool gate_tile = (n_tiles > 0 || gate_stats) && p.gate_mode == GSDPA_GATE_ELEMENTWISE;
    if (tid == 0) {
        mbarrier_init(q_full, 1);
        mbarrier_init(q_free, Tr::CONSUMER_WARPS);
        mbarrier_init(g_full, 1);
        for (int s = 0; s < Tr::STAGES; ++s) {
            mbarrier_init(&k_full[s], 1);
            mbarrier_init(&v_full[s], 1);
            mbarrier_init(&kv_empty[s], Tr::CONSUMER_WARPS);
        }
        fence_barrier_init();
    }
    __syncthreads();  // the barriers are initialised before anyone waits on them or TMA completes on them

    const int wg = tid / 128;
    if (wg == 0) {
        // ---------------- producer ----------------
        setmaxnreg_dec<Tr::PRODUCER_REGS>();
        if (tid / 32 == 0 && elect_one_sync() && (n_tiles > 0 || gate_tile)) {
            if (n_tiles > 0) {
                tma_prefetch_map(params.q_map);
                tma_prefetch_map(params.k_map);
                tma_prefetch_map(params.v_map);
                mbarrier_arrive_expect_tx(q_full, Tr::Q_BYTES);
#pragma unroll
                for (int c = 0; c < Tr::COL_BLOCKS; ++c) {
                    const int32_t coords[4] = {c * Tr::BOX_COLS, seq.q_start + m0, h, seq.batch};
                    tma_load<4>(smem + Tr::SMEM_Q + c * Tr::Q_BLOCK_BYTES, params.q_map, q_full, coords);
                }
            }
            for (int i = 0; i < n_tiles; ++i) {
                const int n = n_tiles - 1 - i, stage = i % Tr::STAGES;
                // The stage's previous tile (i - 2) must be released; the first wait on each stage (parity 1)
                // returns at once.
                mbarrier_wait(&kv_empty[stage], ((i / Tr::STAGES) & 1) ^ 1);
                mbarrier_arrive_expect_tx(&k_full[stage], Tr::KV_BYTES);
#pragma unroll
                for (int c = 0; c < Tr::COL_BLOCKS; ++c) {
                    const int32_t coords[4] = {c * Tr::BOX_COLS, seq.k_start + n * BLOCK_N, kv_head, seq.batch};
                    tma_load<4>(smem + Tr::smem_k(stage) + c * Tr::KV_BLOCK_BYTES, params.k_map, &k_full[stage],
                                coords);
                }
                mbarrier_arrive_expect_tx(&v_full[stage], Tr::KV_BYTES);
#pragma unroll
                for (int c = 0; c < Tr::COL_BLOCKS; ++c) {
                    const int32_t coords[4] = {c * Tr::BOX_COLS, seq.k_start + n * BLOCK_N, kv_head, seq.batch};
                    tma_load<4>(smem + Tr::smem_v(stage) + c * Tr::KV_BLOCK_BYTES, params.v_map, &v_full[stage],
                                coords);
                }
            }
            if (gate_tile) {
                // Without key tiles nothing reads Q, and no consumer arrives on q_free.
                if (n_tiles > 0) mbarrier_wait(q_free, 0);
                mbarrier_arrive_expect_tx(g_full, Tr::Q_BYTES);
#pragma unroll
                for (int c = 0; c < Tr::COL_BLOCKS; ++c) {
                    const int32_t coords[4] = {c * Tr::BOX_COLS, seq.q_start + m0, h, seq.batch};
                    tma_load<4>(smem + Tr::SMEM_Q + c * Tr::Q_BLOCK_BYTES, params.g_map, g_full, coords);
                }
            }
        }
        return;
    }

    // ---------------- consumers ----------------
    setmaxnreg_inc<Tr::CONSUMER_REGS>();
    const int cwg = wg - 1;          // consumer warpgroup 0 or 1
    const int wtid = tid % 128;      // thread within the warpgroup
    const int lane = tid & 31;
    const int warp_row0 = (wtid >> 5) * 16;  // this warp's first row within the warpgroup's 64
    const int wg_m0 = m0 + cwg * Tr::WG_ROWS;  // the warpgroup's first query row
    const int rows = tmax(0, tmin(Tr::WG_ROWS, seq.seqlen_q - wg_m0));
    // A block none of whose rows sees a key writes Y = O = 0 and LSE = -inf without reading G, unless the
    // gate statistics need G's activations (Y is then 0 * act(G), as in the mma.sync kernel).
    const int gate_mode = n_tiles > 0 || gate_stats ? p.gate_mode : int(GSDPA_GATE_NONE);

    float acc_o[Tr::N_TILES_O][4];
#pragma unroll
    for (int nt = 0; nt < Tr::N_TILES_O; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc_o[nt][i] = 0.0f;
    }
    fwd::OnlineSoftmax softmax;
    softmax.init();
    // The sink mass (docs/hopper-forward.md): this lane's sum of p over its sink columns, in the units of
    // the running row max, kept like OnlineSoftmax's row_sum: multiplied by each later tile's correction,
    // then divided by l in the epilogue. The sink tiles (keys below n_sink) are the last ones the loop
    // visits, so every tile from the first sink tile on is one. The sums live in this thread's slot of
    // shared memory, not in registers: at D = 256 neither two more registers across the key loop nor
    // forward/diagnostics.h's SinkMass on the masking path fit without spills.
    float2 *sink_slot = reinterpret_cast<float2 *>(smem + Tr::SMEM_SINK) + (tid - 128);
    if (p.sink_mass != nullptr) st_shared(sink_slot, make_float2(0.0f, 0.0f));

    if (n_tiles > 0) {
        // Q of this warpgroup: rows 64 cwg .. + 63 of each column block; k-step kk of the head dim is
        // column block kk / 4, 32 bytes per k-step within its 128-byte rows. Stride byte offset: 8 rows.
        const uint64_t q_desc0 = wgmma_descriptor(smem + Tr::SMEM_Q + cwg * Tr::WG_ROWS * Tr::ROW_BYTES, 16, 1024,
                                                  WgmmaSwizzle::B128);
        auto q_desc = [&](int kk) {
            return wgmma_descriptor_advance(q_desc0, (kk / 4) * Tr::Q_BLOCK_BYTES + (kk % 4) * 32);
        };
        mbarrier_wait(q_full, 0);

        // S = Q K^T of key tile i (issued, not waited for): K stored [key][dim] is the K-major B operand.
        auto issue_s = [&](int i, float (&s_flat)[Tr::BLOCK_N / 2]) {
            const int stage = i % Tr::STAGES;
            const uint64_t k_desc0 = wgmma_descriptor(smem + Tr::smem_k(stage), 16, 1024, WgmmaSwizzle::B128);
#pragma unroll
            for (int kk = 0; kk < Tr::K_STEPS_QK; ++kk) {
                const uint64_t k_desc =
                    wgmma_descriptor_advance(k_desc0, (kk / 4) * Tr::KV_BLOCK_BYTES + (kk % 4) * 32);
                wgmma_ss<T, BLOCK_N>(s_flat, q_desc(kk), k_desc, kk > 0);
            }
            wgmma_commit();
        };
        // O += P V of key tile i (issued): V stored [key][dim] is the MN-major B operand (N = dims):
        // leading byte offset from one 64-column block to the next, stride byte offset from 8 keys to the
        // next 8, 16 keys (2048 bytes) per k-step. P comes from registers (rounded to T, the A fragments).
        // The caller has waited for the tile's V.
        float(&o_flat)[Tr::D / 2] = reinterpret_cast<float(&)[Tr::D / 2]>(acc_o);
        uint32_t p_frag[Tr::K_STEPS_PV][4];
        auto issue_pv = [&](int i) {
            const int stage = i % Tr::STAGES;
            const uint64_t v_desc0 =
                wgmma_descriptor(smem + Tr::smem_v(stage), Tr::KV_BLOCK_BYTES, 1024, WgmmaSwizzle::B128);
#pragma unroll
            for (int kk = 0; kk < Tr::K_STEPS_PV; ++kk) {
                wgmma_rs<T, Tr::D, true>(o_flat, p_frag[kk],
                                         wgmma_descriptor_advance(v_desc0, kk * 16 * Tr::ROW_BYTES), true);
            }
            wgmma_commit();
        };
        // This warp is done with tile i's stage (its wgmmas reading K and V have retired).
        auto wait_v = [&](int i) { mbarrier_wait(&v_full[i % Tr::STAGES], (i / Tr::STAGES) & 1); };
        auto release = [&](int i) {
            __syncwarp();
            if (lane == 0) mbarrier_arrive(&kv_empty[i % Tr::STAGES]);
        };
        // Masking (the rare path: tiles reaching past the warpgroup's first row's key limit: the partial
        // last tile, whose keys past seqlen_k are TMA's zero fill or, in varlen, the next sequence's; the
        // causal diagonal). Masked scores give p = 0.
        auto mask = [&](int i, float (&s)[Tr::N_TILES_S][4]) {
            const int n = n_tiles - 1 - i;
            if (tile_needs_mask<BLOCK_N>(n * BLOCK_N, wg_m0, seq, causal)) {
                const int limit[2] = {key_limit(wg_m0 + warp_row0 + (lane >> 2), seq, causal),
                                      key_limit(wg_m0 + warp_row0 + (lane >> 2) + 8, seq, causal)};
                mask_scores(s, n * BLOCK_N, limit, lane);
            }
        };
        // The sink mass of tile i, whose scores s are now p (after the softmax's update, with the
        // correction it returned; masked keys have p = 0): tiles [0, sink_tiles) hold keys below n_sink
        // (none when the sink mass is not requested). Called once the previous tile's PV has retired, so
        // that its P fragments are free registers.
        const int sink_tiles = (p.n_sink + BLOCK_N - 1) / BLOCK_N;
        auto sink_add = [&](int i, const float (&s)[Tr::N_TILES_S][4], const float (&correction)[2]) {
            const int n = n_tiles - 1 - i;
            if (n < sink_tiles) {
                // The lane's column c = nt * 8 + 2 (lane % 4) + j of the tile counts iff n BLOCK_N + c < n_sink.
                const int limit = p.n_sink - n * BLOCK_N - 2 * (lane & 3);
                float sum[2] = {0.0f, 0.0f};
#pragma unroll
                for (int nt = 0; nt < Tr::N_TILES_S; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        if (nt * 8 + (e & 1) < limit) sum[e >> 1] += s[nt][e];
                    }
                }
                const float2 acc = ld_shared(sink_slot);
                st_shared(sink_slot, make_float2(fmaf(acc.x, correction[0], sum[0]), fmaf(acc.y, correction[1], sum[1])));
            }
        };
        // After the last S = Q K^T has retired: the producer may load the gate tile over Q.
        auto last_s_done = [&](int i) {
            if (gate_tile && i == n_tiles - 1) {
                __syncwarp();
                if (lane == 0) mbarrier_arrive(q_free);
            }
        };
        // Ping-pong: each warpgroup issues its GEMMs only in its turn (it waits at its scheduler barrier,
        // then lets the other go): warpgroup 0's softmax runs while warpgroup 1's GEMMs do, and back.
        // Warpgroup 1 gives warpgroup 0 the first turn and takes no turn after its last.
        const int my_turn = Tr::SCHEDULER_BARRIER + cwg, other_turn = Tr::SCHEDULER_BARRIER + (1 - cwg);
        auto take_turn = [&] { named_barrier_sync(my_turn, 256); };
        auto pass_turn = [&](bool last) {
            if (!(last && cwg == 1)) named_barrier_arrive(other_turn, 256);
        };
        if (cwg == 1) named_barrier_arrive(other_turn, 256);

        // Key tile 0 (the last one of the sequence): S, then its softmax.
        {
            float s[Tr::N_TILES_S][4];
            float(&s_flat)[Tr::BLOCK_N / 2] = reinterpret_cast<float(&)[Tr::BLOCK_N / 2]>(s);
            mbarrier_wait(&k_full[0], 0);
            take_turn();
            wgmma_fence();
            issue_s(0, s_flat);
            pass_turn(false);
            wgmma_wait<0>();
            last_s_done(0);
            mask(0, s);
            softmax.update(s, acc_o, p.scale_log2);
            const float no_correction[2] = {0.0f, 0.0f};  // the sums start at 0
            sink_add(0, s, no_correction);
#pragma unroll
            for (int kk = 0; kk < Tr::K_STEPS_PV; ++kk) pack_c_to_a<T>(p_frag[kk], s[2 * kk], s[2 * kk + 1]);
        }
        // Tile i: S_i and then O += P_(i-1) V_(i-1) issued in one turn; the softmax of S_i overlaps the
        // PV wgmma (wait_group 1 retires S_i only), whose accumulators are rescaled once it has retired.
        // The same operations on O in the same order as S, softmax, PV per tile: the same results.
        for (int i = 1; i < n_tiles; ++i) {
            float s[Tr::N_TILES_S][4];
            float(&s_flat)[Tr::BLOCK_N / 2] = reinterpret_cast<float(&)[Tr::BLOCK_N / 2]>(s);
            mbarrier_wait(&k_full[i % Tr::STAGES], (i / Tr::STAGES) & 1);
            wait_v(i - 1);
            take_turn();
            wgmma_fence();
            issue_s(i, s_flat);
            issue_pv(i - 1);
            pass_turn(false);
            wgmma_wait<1>();
            last_s_done(i);
            mask(i, s);
            float correction[2];  // 1 where the max stays (OnlineSoftmax::update_scores_lazy)
            const bool rescale_o = softmax.update_scores_lazy(s, p.scale_log2, correction);
            wgmma_wait<0>();
            release(i - 1);
            if (rescale_o) fwd::OnlineSoftmax::rescale(acc_o, correction);
            sink_add(i, s, correction);
#pragma unroll
            for (int kk = 0; kk < Tr::K_STEPS_PV; ++kk) pack_c_to_a<T>(p_frag[kk], s[2 * kk], s[2 * kk + 1]);
        }
        // The last PV.
        wait_v(n_tiles - 1);
        take_turn();
        wgmma_fence();
        issue_pv(n_tiles - 1);
        pass_turn(true);
        wgmma_wait<0>();
        release(n_tiles - 1);
    }

    Sm90Outputs<T> out;
    out.y = static_cast<T *>(p.y) + seq.q_offset(p.y_stride, wg_m0, h);
    out.o = p.o != nullptr ? static_cast<T *>(p.o) + seq.q_offset(p.o_stride, wg_m0, h) : nullptr;
    out.g = gate_mode == GSDPA_GATE_HEADWISE ? static_cast<const T *>(p.g) + seq.q_offset(p.g_stride, wg_m0, h)
                                             : nullptr;
    // The elementwise gate tile: this warpgroup's 64 rows of it, once it has landed.
    out.g_tile = nullptr;
    if (gate_mode == GSDPA_GATE_ELEMENTWISE) {
        mbarrier_wait(g_full, 0);
        out.g_tile = smem + Tr::SMEM_Q;
    }
    out.g_tile_row0 = cwg * Tr::WG_ROWS;
    out.lse = p.lse != nullptr ? p.lse + seq.lse_offset(p.lse_batch_stride, p.lse_head_stride, h) + wg_m0 : nullptr;
    out.sink_slot = sink_slot;
    out.sink_mass = p.sink_mass != nullptr
                        ? p.sink_mass + seq.lse_offset(p.sink_batch_stride, p.sink_head_stride, h) + wg_m0
                        : nullptr;
    out.gate_partials = gate_stats ? gate_partials() + cwg * (Tr::CONSUMER_WARPS / 2) : nullptr;
    out.y_row_stride = p.y_stride.row;
    out.o_row_stride = p.o_stride.row;
    out.g_row_stride = p.g_stride.row;
    out.rows = rows;
    // The TMA store clips rows at the map's row extent: seqlen_q for padded batches, but the packed total
    // for varlen, where the rows past this sequence's end are the next sequence's (another block's
    // outputs). A varlen warpgroup tile that reaches past its sequence's end is therefore stored from
    // registers (rows < rows only); full tiles keep the TMA store.
    const bool tma_rows = p.cu_seqlens_q == nullptr || rows == Tr::WG_ROWS;
    out.y_map = tma_rows && (params.tma_store & GSDPA_FWD_SM90_STORE_Y) != 0 ? &params.y_map : nullptr;
    out.o_map = tma_rows && p.o != nullptr && (params.tma_store & GSDPA_FWD_SM90_STORE_O) != 0 ? &params.o_map
                                                                                              : nullptr;
    out.stage = smem + Tr::SMEM_Q + cwg * Tr::WG_ROWS * Tr::ROW_BYTES;
    // O with the elementwise gate is staged over the K stages (Q's rows hold the gate tile). Both
    // warpgroups read every K stage, so neither may write there before the other's last wgmma reading K
    // has retired: they meet first (every consumer thread, whether or not its own tile then goes through
    // TMA: the condition is uniform over the block). No TMA load is in flight into K by then: the
    // consumers have waited for every key tile.
    out.o_stage = nullptr;
    if (p.o != nullptr && gate_mode == GSDPA_GATE_ELEMENTWISE && (params.tma_store & GSDPA_FWD_SM90_STORE_O) != 0) {
        named_barrier_sync(Tr::KEYS_DONE_BARRIER, 2 * 128);
        out.o_stage = smem + Tr::SMEM_K + cwg * Tr::WG_ROWS * Tr::ROW_BYTES;
    }
    out.store_row = seq.q_start + wg_m0;
    out.store_h = h;
    out.store_b = seq.batch;
    out.store_bar = Tr::EPILOGUE_BARRIER + cwg;
    write_outputs<Tr>(out, acc_o, softmax, p.scale_log2, gate_mode, p.activation, wtid);
}

}  // namespace fwd90
}  // namespace gsdpa
#endif

// Entry points: one per (dtype, head dim); empty on every arch but sm_90a (and never launched there).
#define GSDPA_FWD_SM90_KERNEL(TYPE, TYPE_NAME, HEAD_DIM)                                                   \
    extern "C" __global__ void __launch_bounds__(GSDPA_FWD_SM90_THREADS, 1)                               \
        gsdpa_fwd90_##TYPE_NAME##_d##HEAD_DIM(const __grid_constant__ GsdpaFwdSm90Params p) {          \
        GSDPA_FWD_SM90_BODY(TYPE, HEAD_DIM)                                                                \
    }                                                                                                      \
    GSDPA_REGISTER_KERNEL(gsdpa_fwd90_##TYPE_NAME##_d##HEAD_DIM, GsdpaFwdSm90Params, GSDPA_FWD_SM90_THREADS)

#if GSDPA_HOPPER
#define GSDPA_FWD_SM90_BODY(TYPE, HEAD_DIM) gsdpa::fwd90::forward<gsdpa::fwd90::Sm90Traits<TYPE, HEAD_DIM>>(p);
#else
#define GSDPA_FWD_SM90_BODY(TYPE, HEAD_DIM) (void)p;
#endif

GSDPA_FWD_SM90_KERNEL(gsdpa::bf16, bf16, 64)
GSDPA_FWD_SM90_KERNEL(gsdpa::bf16, bf16, 128)
GSDPA_FWD_SM90_KERNEL(gsdpa::bf16, bf16, 256)
GSDPA_FWD_SM90_KERNEL(gsdpa::f16, f16, 64)
GSDPA_FWD_SM90_KERNEL(gsdpa::f16, f16, 128)
GSDPA_FWD_SM90_KERNEL(gsdpa::f16, f16, 256)
