// activation.h: the gate activations and their derivatives, shared by the forward epilogue, the
// standalone gate kernels and the backward preprocessing. Maths: docs/gate-math.md.
//
// Everything here is branch-free: sigmoid is one MUFU.EX2 and one MUFU.RCP (fast_math.h), the activation
// is chosen with a select, and no division is left for nvcc to expand into a slow-path CALL. The
// formulas are the f64 reference's (src/problem.rs, `Activation`), so non-finite gates behave the same
// way: sigmoid(+-inf) = 1 / 0, silu(-inf) = -inf * 0 = NaN, NaN stays NaN.
#pragma once

#include "fast_math.h"

namespace gsdpa {

// act(g): sigmoid(g), or silu(g) = g * sigmoid(g).
GSDPA_DEVICE float gate_activation(float g, int activation) {
    const float s = sigmoid(g);
    return activation == GSDPA_ACT_SILU ? g * s : s;
}

// d act / d g: s (1 - s) for sigmoid, s (1 + g (1 - s)) for silu.
GSDPA_DEVICE float gate_activation_grad(float g, int activation) {
    const float s = sigmoid(g);
    const float one_minus_s = 1.0f - s;
    return activation == GSDPA_ACT_SILU ? s * (1.0f + g * one_minus_s) : s * one_minus_s;
}

}  // namespace gsdpa
