// combine.h: merges the splits' partial outputs by their LSE and applies the gate.
//
// For one output row with partials (O_s, L_s), O_s normalised by its own row sum and L_s its natural-log
// LSE (-inf for a split that saw no key):
//   M = max_s L_s,  w_s = e^(L_s - M),  O = sum_s w_s O_s / sum_s w_s,  LSE = M + ln(sum_s w_s).
// Subtracting M keeps every w_s in (0, 1] (no overflow, at least one w_s = 1). All L_s = -inf: the row
// saw no key, Y = 0 and LSE = -inf (the gate is not read), as in the forward. Any L_s NaN: a split
// found invalid device values (split.h), so Y and LSE are NaN.
// Then Y = O * act(G) in dtype. One thread per 8-element (16-byte) chunk of a row, a grid-stride loop.
#pragma once

#include "../common/activation.h"
#include "epilogue.h"

namespace gsdpa {
namespace decode {

template <class T, int D>
GSDPA_DEVICE void combine(const GsdpaDecodeParams &p) {
    constexpr int CHUNKS = D / 8;
    const bool varlen = p.cu_seqlens_q != nullptr;
    const int64_t total = int64_t(p.total_q) * p.heads_q * CHUNKS;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        // Rows (token, head) are numbered in 32 bits (validation: total_q * heads_q < 2^32), so these
        // divisions are inline 32-bit ones, not a 64-bit division subroutine.
        const uint32_t row = uint32_t(idx / CHUNKS);
        const int c = int(idx % CHUNKS);
        const int t = int(row / uint32_t(p.heads_q));
        const int h = int(row % uint32_t(p.heads_q));
        // Not varlen: token t is query i of sequence b. Varlen: rows are addressed by t alone.
        const int b = varlen ? 0 : t / p.seqlen_q;
        const int i = varlen ? t : t % p.seqlen_q;

        float max_lse = -INFINITY;
        bool any_nan = false;
        for (int s = 0; s < p.num_splits; ++s) {
            const float l = p.lse_partial[partial_row(p, s, t, h)];
            any_nan |= l != l;
            max_lse = fmaxf(max_lse, l);
        }
        float o[8];
        float lse;
        bool gated = false;
        if (any_nan) {
            for (int e = 0; e < 8; ++e) o[e] = NAN;
            lse = NAN;
        } else if (max_lse == -INFINITY) {
            for (int e = 0; e < 8; ++e) o[e] = 0.0f;
            lse = -INFINITY;
        } else {
            for (int e = 0; e < 8; ++e) o[e] = 0.0f;
            float sum = 0.0f;
            for (int s = 0; s < p.num_splits; ++s) {
                const int64_t pr = partial_row(p, s, t, h);
                const float w = fast_exp2((p.lse_partial[pr] - max_lse) * kLog2e);
                sum += w;
                const float4 *src = reinterpret_cast<const float4 *>(p.o_partial + pr * D + c * 8);
                const float4 lo = src[0], hi = src[1];
                o[0] += w * lo.x;
                o[1] += w * lo.y;
                o[2] += w * lo.z;
                o[3] += w * lo.w;
                o[4] += w * hi.x;
                o[5] += w * hi.y;
                o[6] += w * hi.z;
                o[7] += w * hi.w;
            }
            const float inv = fast_rcp(sum);  // sum >= 1: the split holding the max adds e^0
            for (int e = 0; e < 8; ++e) o[e] *= inv;
            lse = max_lse + logf(sum);
            gated = true;
        }

        if (gated && p.gate_mode == GSDPA_GATE_HEADWISE) {
            const T *g = static_cast<const T *>(p.g) + token_offset(p.g_stride, varlen, b, i, t, h);
            const float factor = gate_activation(to_float(*g), p.activation);
            for (int e = 0; e < 8; ++e) o[e] *= factor;
        } else if (gated && p.gate_mode == GSDPA_GATE_ELEMENTWISE) {
            const T *g = static_cast<const T *>(p.g) + token_offset(p.g_stride, varlen, b, i, t, h) + c * 8;
            const uint4 packed = *reinterpret_cast<const uint4 *>(g);
            const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
            for (int e = 0; e < 4; ++e) {
                const float2 gv = unpack_float2<T>(words[e]);
                o[2 * e] *= gate_activation(gv.x, p.activation);
                o[2 * e + 1] *= gate_activation(gv.y, p.activation);
            }
        }

        T *y = static_cast<T *>(p.y) + token_offset(p.y_stride, varlen, b, i, t, h) + c * 8;
        *reinterpret_cast<uint4 *>(y) = make_uint4(pack_float2<T>(o[0], o[1]), pack_float2<T>(o[2], o[3]),
                                                   pack_float2<T>(o[4], o[5]), pack_float2<T>(o[6], o[7]));
        if (c == 0 && p.lse != nullptr) p.lse[lse_offset(p, varlen, b, i, t, h)] = lse;
    }
}

}  // namespace decode
}  // namespace gsdpa
