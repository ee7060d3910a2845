// common.h: what every backward kernel includes, and the one decision they all share: where dO is read.
//
// Launch order (docs/backward.md; entry points: kernels/backward.cu):
//   fast mode:          preprocess -> dkdv (dQ by f32 atomics into dq_accum) -> convert
//   deterministic mode: preprocess -> dkdv (no dQ)                          -> dq
// Maths (docs/gate-math.md), with a = act(G), Y = O * a:
//   preprocess  Delta = rowsum(dY * Y) (= rowsum(dO * O)), dO = dY * a, dG, dq_accum = 0 (preprocess.h)
//   dkdv        per key tile: P = exp(scale S - LSE), dV = sum P^T dO, dS = P * (dP - Delta) with
//               dP = dO V^T, dK = scale * sum dS^T Q over every query head of the kv head's GQA group
//               (in-block, so deterministic); fast mode also dq_accum += scale * dS K (atomics) (dkdv.h)
//   dq          per query tile: dQ = scale * sum over key tiles of dS K, in a fixed order (dq.h)
//   convert     dq = dq_accum rounded to the element type (preprocess.h)
// With gate NONE, dO is dY itself: the main kernels read dy directly and the preprocess writes neither dO
// nor dG.
// Rows whose LSE is -inf (a query that sees no key) get P = 0, hence zero dS and no contribution.
#pragma once

#include "../common/activation.h"
#include "../common/mask.h"
#include "../common/seqlen_info.h"
#include "../common/vec16.h"
#include "../common/warp_gemm.h"
#include "traits.h"

namespace gsdpa {
namespace bwd {

// The tensor dO is read from: the preprocess's d_o workspace, or dY itself when there is no gate.
template <class T>
GSDPA_DEVICE const T *grad_out_base(const GsdpaBwdParams &p) {
    return static_cast<const T *>(p.gate_mode == GSDPA_GATE_NONE ? p.dy : p.d_o);
}
GSDPA_DEVICE const GsdpaStrides &grad_out_stride(const GsdpaBwdParams &p) {
    return p.gate_mode == GSDPA_GATE_NONE ? p.dy_stride : p.ws_stride;
}

}  // namespace bwd
}  // namespace gsdpa
