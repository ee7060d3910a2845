// activation.h: the gate activations and their derivatives, shared by the forward epilogue, the
// standalone gate kernel and the backward preprocessing. Maths: shared/notes/gate-math.md.
#pragma once

#include "primitives.h"

namespace gsdpa {

// act(g): sigmoid(g), or silu(g) = g * sigmoid(g).
GSDPA_DEVICE float gate_activation(float g, int activation) {
    const float s = sigmoid(g);
    return activation == GSDPA_ACT_SILU ? g * s : s;
}

// d act / d g: s (1 - s) for sigmoid, s (1 + g (1 - s)) for silu.
GSDPA_DEVICE float gate_activation_grad(float g, int activation) {
    const float s = sigmoid(g);
    return activation == GSDPA_ACT_SILU ? s * (1.0f + g * (1.0f - s)) : s * (1.0f - s);
}

}  // namespace gsdpa
