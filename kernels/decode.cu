// decode.cu: gated attention over a paged KV cache, for decode (Sq = 1 .. 16) and chunked prefill.
//
//   Y = softmax(scale Q K^T + causal mask) V * act(G),   K, V gathered through a block table.
//
// Two kernels (design, safety argument and split heuristic: docs/decode.md):
//  - gsdpa_decode_*: one block per (row block, split) x kv head x batch. GQA packing: the block's rows
//    are (query position, query head of the kv head's group) pairs, so every K/V byte of a split is read
//    once per kv head (decode/traits.h). Per key tile of the split: K gathered from its at most two
//    pages, located once per tile (decode/paged_tile.h, unloaded keys zero-filled), S = Q K^T
//    (mma.sync), mask, online softmax, P rounded to 16 bit and reused in registers for O += P V. With
//    one split the epilogue writes the gated Y and the LSE; with several, a partial O and LSE per split
//    into the caller's workspace.
//  - gsdpa_decode_combine_*: merges the splits by LSE and applies the gate (decode/combine.h).
// Device-side lengths, block ids and cu_seqlens_q are checked before use (decode/split.h): hostile
// values give NaN rows and a status word, never an access outside the cache or the table.
#include "common/mask.h"
#include "common/warp_gemm.h"
#include "decode/combine.h"
#include "decode/epilogue.h"
#include "decode/split.h"

namespace gsdpa {
namespace decode {

template <class Tr>
GSDPA_DEVICE void decode(const GsdpaDecodeParams &p) {
    using T = typename Tr::T;
    constexpr int D = Tr::D;
    constexpr int BLOCK_M = Tr::BLOCK_M;
    constexpr int BLOCK_N = Tr::BLOCK_N;
    constexpr int THREADS = Tr::THREADS;
    static_assert(BLOCK_N == 32, "PagePosition::advance_one_tile steps 32 keys; PagedTile spans two pages");

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp_row0 = (tid >> 5) * 16;
    const int split = int(blockIdx.x) % p.num_splits;
    const int m_block = int(blockIdx.x) / p.num_splits;
    const int kv_head = blockIdx.y;
    const int b = blockIdx.z;
    const int group = p.heads_q / p.heads_kv;
    const bool varlen = p.cu_seqlens_q != nullptr;
    const bool causal = p.causal != 0;

    // The query side. A bad cu_seqlens_q leaves no rows to place: report it once and write nothing.
    const QuerySpan span = query_span(p, b);
    if (!span.valid) {
        if (tid == 0 && blockIdx.x == 0 && kv_head == 0) report_invalid(p);
        return;
    }
    BlockRows rows{b, kv_head, group, span.token0, m_block * BLOCK_M, group * span.seqlen_q, varlen};
    if (rows.m0 >= rows.rows_total) return;  // the grid is sized for the longest sequence
    const int block_rows = tmin(BLOCK_M, rows.rows_total - rows.m0);

    // The key side: a length the table cannot hold is not followed (no keys, NaN rows).
    const int device_seqlen_k = p.cache_seqlens[b];
    bool invalid = !seqlen_k_valid(p, device_seqlen_k);
    const PagedSequence seq{p.block_table + int64_t(b) * p.table_batch_stride, invalid ? 0 : device_seqlen_k,
                            p.block_size, p.num_blocks};
    const TileRange range = split_tiles(ceil_div(seq.seqlen_k, BLOCK_N), p.num_splits, split);
    int *flag = reinterpret_cast<int *>(dynamic_smem() + Tr::SMEM_FLAG_BYTES);
    invalid |= any_bad_block<THREADS>(seq, range.begin * BLOCK_N, tmin(range.end * BLOCK_N, seq.seqlen_k), flag, tid);
    if (invalid && tid == 0) report_invalid(p);

    // Causal: tiles past the last row's key limit are skipped; a tile past the first row's needs masking.
    const int limit_last =
        key_limit((rows.m0 + block_rows - 1) / group, span.seqlen_q, seq.seqlen_k, causal);
    const int limit_first = key_limit(rows.m0 / group, span.seqlen_q, seq.seqlen_k, causal);
    const int visit_end = invalid ? range.begin : tmin(range.end, limit_last < 0 ? 0 : limit_last / BLOCK_N + 1);

    const bool warp_active = rows.m0 + warp_row0 < rows.rows_total;  // uniform over the warp

    T *smem = reinterpret_cast<T *>(dynamic_smem());
    T *s_q = smem + Tr::SMEM_Q;
    T *s_k = smem + Tr::SMEM_K;
    T *s_v = smem + Tr::SMEM_V;

    // One warp is one m-tile of 16 rows: the [1][...] arrays of common/warp_gemm.h.
    float acc_o[1][Tr::N_TILES_O][4];
    zero_acc(acc_o);
    fwd::OnlineSoftmax softmax;
    softmax.init();

    if (range.begin < visit_end) {
        const T *q = static_cast<const T *>(p.q);
        const T *k_cache = static_cast<const T *>(p.k_cache) + int64_t(kv_head) * p.k_stride.head;
        const T *v_cache = static_cast<const T *>(p.v_cache) + int64_t(kv_head) * p.v_stride.head;
        const auto q_row = [&](int r) -> int64_t {
            const int rr = rows.m0 + r;
            if (rr >= rows.rows_total) return -1;
            const RowQuery rq = rows.query(rr);
            return token_offset(p.q_stride, varlen, b, rq.i, rq.t, rq.h);
        };
        // Page and slot of the next tile's first key: K(n) and V(n) use it, then it moves to tile n + 1.
        PagePosition at = PagePosition::of_key(range.begin * BLOCK_N, seq.block_size);
        const auto load_k = [&](int n) {
            const PagedTile tile(seq, n * BLOCK_N, at, p.k_stride);
            const auto key_row = [&](int r) { return tile.row_offset(r); };
            cp_async_gather<BLOCK_N, D, THREADS>(s_k, k_cache, key_row, tid);
        };
        const auto load_v = [&](int n) {
            const PagedTile tile(seq, n * BLOCK_N, at, p.v_stride);
            const auto key_row = [&](int r) { return tile.row_offset(r); };
            cp_async_gather<BLOCK_N, D, THREADS>(s_v, v_cache, key_row, tid);
        };

        // Prologue: Q and the first K tile in one group.
        cp_async_gather<BLOCK_M, D, THREADS>(s_q, q, q_row, tid);
        load_k(range.begin);
        cp_async_commit();

        for (int n = range.begin; n < visit_end; ++n) {
            cp_async_wait<0>();
            __syncthreads();  // K(n) (and Q) visible to all; every warp is done with V(n - 1)
            load_v(n);
            cp_async_commit();

            // A warp whose 16 rows are all padding (decode: group * Sq < 64) skips the math; it still
            // issues its share of the copies and meets every barrier.
            float s[1][Tr::N_TILES_S][4];
            if (warp_active) {
                // S = Q K^T: Q rows from warp_row0 of the Q tile, K stored [key][dim] = [n][k].
                zero_acc(s);
                warp_gemm<T, 1, Tr::N_TILES_S, Tr::K_STEPS_QK, false, false, D, D>(s, s_q, warp_row0, 0, s_k, 0, 0,
                                                                                    lane);
                if ((n + 1) * BLOCK_N - 1 > limit_first) {
                    // Limits of this thread's two rows (padding rows take the last real row's).
                    int limit[2];
#pragma unroll
                    for (int half = 0; half < 2; ++half) {
                        const int rr = tmin(rows.m0 + warp_row0 + (lane >> 2) + 8 * half, rows.rows_total - 1);
                        limit[half] = key_limit(rr / group, span.seqlen_q, seq.seqlen_k, causal);
                    }
                    // -inf keeps a zero-filled (unloaded) key out of the softmax; the zero fill keeps a
                    // NaN in an unused slot out of O += P V (0 * NaN would be NaN).
                    mask_scores(s[0], n * BLOCK_N, limit, lane);
                }
            }

            cp_async_wait<0>();
            __syncthreads();  // V(n) visible to all; every warp is done with K(n)
            at.advance_one_tile(seq.block_size);
            if (n + 1 < visit_end) load_k(n + 1);
            cp_async_commit();

            if (warp_active) {
                softmax.update(s[0], acc_o[0], p.scale_log2);
                // O += P V: P (the softmax numerators in s) reused in registers as the A operand; V stored
                // [key][dim] = [k][n].
                warp_gemm_rs<T, 1, Tr::N_TILES_O, Tr::K_STEPS_PV, true, D>(acc_o, s, s_v, 0, 0, lane);
            }
        }
        cp_async_wait<0>();
    }

    write_decode_outputs<Tr>(p, rows, acc_o[0], softmax, invalid, split, tid);
}

}  // namespace decode
}  // namespace gsdpa

// Entry points: one per (dtype, head dim); geometry from gsdpa_params.h (GsdpaDecodeGeometry).
#define GSDPA_DECODE_KERNELS(TYPE, TYPE_NAME, HEAD_DIM)                                                    \
    extern "C" __global__ void __launch_bounds__(GSDPA_DECODE_THREADS)                                    \
        gsdpa_decode_##TYPE_NAME##_d##HEAD_DIM(const GsdpaDecodeParams p) {                               \
        gsdpa::decode::decode<gsdpa::decode::DecodeTraits<TYPE, HEAD_DIM>>(p);                            \
    }                                                                                                      \
    GSDPA_REGISTER_KERNEL(gsdpa_decode_##TYPE_NAME##_d##HEAD_DIM, GsdpaDecodeParams, GSDPA_DECODE_THREADS) \
    extern "C" __global__ void __launch_bounds__(GSDPA_DECODE_COMBINE_THREADS)                            \
        gsdpa_decode_combine_##TYPE_NAME##_d##HEAD_DIM(const GsdpaDecodeParams p) {                       \
        gsdpa::decode::combine<TYPE, HEAD_DIM>(p);                                                        \
    }                                                                                                      \
    GSDPA_REGISTER_KERNEL(gsdpa_decode_combine_##TYPE_NAME##_d##HEAD_DIM, GsdpaDecodeParams, GSDPA_DECODE_COMBINE_THREADS)

GSDPA_DECODE_KERNELS(gsdpa::bf16, bf16, 64)
GSDPA_DECODE_KERNELS(gsdpa::bf16, bf16, 128)
GSDPA_DECODE_KERNELS(gsdpa::bf16, bf16, 256)
GSDPA_DECODE_KERNELS(gsdpa::f16, f16, 64)
GSDPA_DECODE_KERNELS(gsdpa::f16, f16, 128)
GSDPA_DECODE_KERNELS(gsdpa::f16, f16, 256)
