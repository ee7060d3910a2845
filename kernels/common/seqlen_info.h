// seqlen_info.h: where one batch entry's query and key sequences live, for every kernel that walks the
// [B, S, H, D] tensors (forward, backward, standalone gate).
//
// Addressing (docs/conventions.md): element (b, row, h, d) of a tensor sits at
//   b * stride.batch + row * stride.row + h * stride.head + d            (elements; d is contiguous)
// and the headwise gate [B, S, H] is the same with no d. Two batch layouts:
//  - padded: batch entry b owns rows [0, seqlen) at b * stride.batch;
//  - varlen (cu_seqlens_q / cu_seqlens_k non-null): all sequences are packed along one row dimension,
//    entry b owns rows [cu_seqlens[b], cu_seqlens[b + 1]) and the batch stride is not used.
// Both are "batch index b' = (varlen ? 0 : b), first row r0 = (varlen ? cu_seqlens[b] : 0)", which is
// all SeqlenInfo keeps: no kernel branches on varlen after construction.
// LSE and the backward's Delta are f32 [B, Hq, Sq] (varlen [Hq, Tq]) at
//   b' * lse_batch_stride + h * lse_head_stride + r0 + i.
// Causal masking is bottom-right aligned: query i sees key j iff j <= i + causal_diagonal()
// (common/mask.h turns that into per-row key limits and per-tile decisions).
#pragma once

#include "platform.h"

namespace gsdpa {

// Element offset of (batch `batch`, row `row`, head `head`, dim 0), 64-bit: the products overflow 32 bits
// for large tensors. The (batch, head) part is grouped on purpose: it is invariant over a kernel's row
// loop, and written this way ptxas keeps the preprocess at its register count (62 on sm_80 rather than 74
// with the sum in index order).
GSDPA_DEVICE int64_t element_offset(const GsdpaStrides &stride, int64_t batch, int64_t row, int64_t head) {
    return row * stride.row + (batch * stride.batch + head * stride.head);
}

// The sequences of batch entry b (in the spirit of FlashAttention-3's SeqlenInfoQK). 32-bit members:
// cu_seqlens are int32, and the kernels keep this live across their main loops.
struct SeqlenInfo {
    int batch;    // b for padded batches, 0 for varlen (the batch stride does not apply)
    int q_start;  // first row of the query sequence along the row dimension (varlen), else 0
    int k_start;  // same for the key sequence
    int seqlen_q;
    int seqlen_k;

    // Params: GsdpaFwdParams or GsdpaBwdParams (both carry seqlen_q / seqlen_k, the padded lengths or,
    // for varlen, the maxima that size the grid, and cu_seqlens_q / cu_seqlens_k, both or neither).
    template <class Params>
    GSDPA_DEVICE SeqlenInfo(const Params &p, int b) {
        if (p.cu_seqlens_q != nullptr) {
            batch = 0;
            q_start = p.cu_seqlens_q[b];
            k_start = p.cu_seqlens_k[b];
            seqlen_q = p.cu_seqlens_q[b + 1] - q_start;
            seqlen_k = p.cu_seqlens_k[b + 1] - k_start;
        } else {
            batch = b;
            q_start = 0;
            k_start = 0;
            seqlen_q = p.seqlen_q;
            seqlen_k = p.seqlen_k;
        }
    }

    // Element offset of query row i of this sequence, head h, in a tensor laid out like Q (Q, G, Y, O, dY,
    // dQ, the workspaces). The row index q_start + i is exact in 32 bits: it is below cu_seqlens_q[B]
    // (int32) or seqlen_q.
    GSDPA_DEVICE int64_t q_offset(const GsdpaStrides &stride, int i, int h) const {
        return element_offset(stride, batch, q_start + i, h);
    }
    // Element offset of key row j of this sequence, head h, in a tensor laid out like K (K, V, dK, dV).
    GSDPA_DEVICE int64_t k_offset(const GsdpaStrides &stride, int j, int h) const {
        return element_offset(stride, batch, k_start + j, h);
    }
    // Offset of (this entry, head h, query row 0) in lse / delta.
    GSDPA_DEVICE int64_t lse_offset(int64_t lse_batch_stride, int64_t lse_head_stride, int h) const {
        return int64_t(batch) * lse_batch_stride + int64_t(h) * lse_head_stride + q_start;
    }

    // Query i sees key j (causal) iff j <= i + causal_diagonal(): the diagonal ends at the last query and
    // the last key.
    GSDPA_DEVICE int causal_diagonal() const { return seqlen_k - seqlen_q; }
};

}  // namespace gsdpa
