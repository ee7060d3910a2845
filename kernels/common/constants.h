// constants.h: the numerical constants every kernel shares, defined once.
//
// The kernels evaluate exponentials as exp2 (ex2.approx is one MUFU instruction, e^x is not), so natural
// logs and exponents are converted with these two factors:
//   e^x     = 2^(x * kLog2e)        (softmax, sigmoid, P = exp(scale S - LSE) in the backward)
//   ln(x)   = log2(x) * kLn2        (the natural-log LSE from the base-2 running sum)
// The softmax scale arrives pre-multiplied: the host fills the params' `scale_log2` with
// scale * log2(e) in f32 (src/validate.rs, the same f32 constant as kLog2e), so the kernels read it from
// the constant bank instead of spending a register on the product.
#pragma once

namespace gsdpa {

constexpr float kLog2e = 1.4426950408889634f;  // log2(e) = 1 / ln(2)
constexpr float kLn2 = 0.69314718055994531f;   // ln(2) = 1 / log2(e)

}  // namespace gsdpa
