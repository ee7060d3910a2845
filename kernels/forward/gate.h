// gate.h: the output gate applied in the forward epilogue, Y = O * act(G) (docs/gate-math.md).
// Elementwise: one logit per output element; headwise: one per (token, head), broadcast over D.
// act: sigmoid or silu (common/activation.h).
#pragma once

#include "../common/activation.h"
#include "kernel_traits.h"

namespace gsdpa {
namespace fwd {

// Y for one pair of adjacent output elements: o * act(g) elementwise.
GSDPA_DEVICE float2 apply_gate(float2 o, float2 g, int activation) {
    return make_float2(o.x * gate_activation(g.x, activation), o.y * gate_activation(g.y, activation));
}

// Y for one pair of adjacent output elements of a row whose (headwise) gate factor act(g) is `factor`.
GSDPA_DEVICE float2 apply_gate(float2 o, float factor) { return make_float2(o.x * factor, o.y * factor); }

}  // namespace fwd
}  // namespace gsdpa
