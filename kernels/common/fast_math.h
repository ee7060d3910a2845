// fast_math.h: the gate's special functions, branch-free on the GPU.
//
// sigmoid(x) = 1 / (1 + 2^(-x log2 e)) with both steps on the special-function unit: one MUFU.EX2 and
// one MUFU.RCP per element, no IEEE division. nvcc compiles `1.0f / y` to a range check on y's exponent,
// a branch, MUFU.RCP with a Newton step, and a CALL to a slow-path subroutine for out-of-range y, per
// element; this is the two MUFU plus the scaling multiply and the add. docs/sass.md shows how to check
// that in the machine code (`gsdpa sass`).
//
// Like primitives.h, each wrapper is a line of inline PTX on the GPU and the same formula in plain C++
// on the host (the emulator), so emulated kernels run the formula the GPU runs, with exactly rounded
// steps instead of approximate ones.
//
// Accuracy on the GPU (bounds from the PTX ISA: ex2.approx.ftz.f32 <= 2 ulp, rcp.approx.ftz.f32 <= 1 ulp):
// the relative error is below (2|x| + 8) * 2^-24: |x| 2^-24 twice for rounding log2 e and the product
// (an error in the exponent of 2^t is a relative error of 2^t), 8 * 2^-24 for ex2, the add and rcp.
// That is under 2^-16 for every |x| <= 88, where sigmoid is a normal float; bf16 and f16 round to 2^-9
// and 2^-12 relative, so the gate's error is far inside one rounding of its output. tests/activation.rs
// checks the bound against f64 with those worst-case errors injected. Below x = -87.3 the true value
// is under 2^-126 and the result is +0 (rcp of a huge number flushes to zero): an absolute error under
// 2^-126.
//
// Limits: sigmoid(+inf) = rcp(1) = 1 (to rcp's ulp), sigmoid(-inf) = 0 (2^+inf = +inf, rcp(+inf) = 0),
// sigmoid(NaN) = NaN.
#pragma once

#include "primitives.h"

namespace gsdpa {

// 1 / x. On the GPU rcp.approx (<= 1 ulp; +-0 -> +-inf, +-inf -> +-0, NaN -> NaN, subnormal inputs and
// results flushed to zero); on the host an exactly rounded division.
GSDPA_DEVICE float fast_rcp(float x) {
#if defined(GSDPA_EMULATOR)
    return 1.0f / x;
#else
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

// 1 / (1 + e^-x) = rcp(1 + 2^(-x log2 e)). Large negative x overflows 2^... to +inf and gives 0, large
// positive x gives rcp(1) = 1: no NaN from finite input, and no branch.
GSDPA_DEVICE float sigmoid(float x) { return fast_rcp(1.0f + fast_exp2(x * -kLog2e)); }

// Quotient and remainder of x / d for x, d < 2^20, d > 0, exact, without an integer division: the
// estimate trunc(x * rcp(d)) is within one of the quotient (the product's relative error is a few ulp of
// 2^-24, far below 1 / x), and one correction step each way makes it exact. nvcc turns a division whose
// operands it can bound to 16 bits (thread indices, block sizes) into a subroutine CALL on sm_100 and
// sm_120; this is four instructions and a MUFU.RCP instead, the same on every arch.
GSDPA_DEVICE void small_divmod(uint32_t x, uint32_t d, uint32_t &quotient, uint32_t &remainder) {
    int q = int(float(x) * fast_rcp(float(d)));
    int r = int(x) - q * int(d);
    if (r < 0) {
        --q;
        r += int(d);
    }
    if (r >= int(d)) {
        ++q;
        r -= int(d);
    }
    quotient = uint32_t(q);
    remainder = uint32_t(r);
}

}  // namespace gsdpa
