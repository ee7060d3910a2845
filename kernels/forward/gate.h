// gate.h: the output gate applied in the forward epilogue, Y = O * act(G) (docs/gate-math.md).
// Elementwise: one logit per output element; headwise: one per (token, head), broadcast over D.
// act: sigmoid or silu (common/activation.h).
#pragma once

#include "../common/activation.h"
#include "kernel_traits.h"

namespace gsdpa {
namespace fwd {

// act(g) for one pair of adjacent logits.
GSDPA_DEVICE float2 gate_activations(float2 g, int activation) {
    return make_float2(gate_activation(g.x, activation), gate_activation(g.y, activation));
}

// Y for one pair of adjacent output elements, elementwise: o * a with a = act(g).
GSDPA_DEVICE float2 apply_gate(float2 o, float2 a) { return make_float2(o.x * a.x, o.y * a.y); }

// Y for one pair of adjacent output elements of a row whose (headwise) gate factor act(g) is `factor`.
GSDPA_DEVICE float2 apply_gate(float2 o, float factor) { return make_float2(o.x * factor, o.y * factor); }

}  // namespace fwd
}  // namespace gsdpa
