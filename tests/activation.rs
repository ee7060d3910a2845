//! The gate activations of kernels/common/fast_math.h and activation.h (sigmoid = rcp(1 + 2^(-x log2 e)),
//! silu = x sigmoid(x), and their derivatives) against f64.
//!
//! Two checks:
//! - the GPU's accuracy, from the PTX ISA's error bounds: a model of the formula in f32 with
//!   `ex2.approx` off by its worst case (2 ulp) and `rcp.approx` by its own (1 ulp), either way, checked
//!   against f64 over a dense range. The bound fast_math.h documents, (2|x| + 8) 2^-24 relative, must
//!   hold, and it is far inside bf16's and f16's rounding (2^-9, 2^-12).
//! - the kernels' own code on the emulator: every bf16 / f16 value in [-20, 20] and the non-finite ones
//!   through the standalone gate kernels (`Y = O act(G)` and `dO = dY act(G)`, `dG = dY O act'(G)` with
//!   O = dY = 1), each output within half an ulp of the f64 value rounded once, infinities mapped to their
//!   limits and NaN kept NaN.
#![cfg(feature = "emulator")]

use gated_sdpa::{
    Activation, Element, Emulator, GateArgs, GateBackwardArgs, GateMode, HostBuffer, Tensor,
};
use half::{bf16, f16};

// ---------------------------------------------------------------------------------------------------
// The GPU formula with worst-case approximation errors
// ---------------------------------------------------------------------------------------------------

/// An f32 within `ulps` units in the last place of `v` on the side of the sign of `ulps`, as far out as
/// that allows: the worst an instruction with that error bound may return.
fn nudge(v: f64, ulps: f64) -> f32 {
    // Outside the normal f32 range the result is 0 or inf whatever the error (and ftz flushes it).
    if !(f64::from(f32::MIN_POSITIVE)..=f64::from(f32::MAX)).contains(&v.abs()) {
        return v as f32;
    }
    let ulp = 2f64.powi(v.abs().log2().floor() as i32 - 23);
    let target = v + ulps * ulp;
    let mut r = target as f32;
    // Rounding to nearest may overshoot the bound by half an ulp: step back toward v.
    if ulps > 0.0 && f64::from(r) > target {
        r = f32::from_bits(if r > 0.0 {
            r.to_bits() - 1
        } else {
            r.to_bits() + 1
        });
    } else if ulps < 0.0 && f64::from(r) < target {
        r = f32::from_bits(if r > 0.0 {
            r.to_bits() + 1
        } else {
            r.to_bits() - 1
        });
    }
    r
}

/// Flush-to-zero of an f32 subnormal, as the `.ftz` instructions do.
fn ftz(v: f32) -> f32 {
    if v.abs() < f32::MIN_POSITIVE {
        0.0
    } else {
        v
    }
}

/// sigmoid as fast_math.h computes it on the GPU, with ex2 off by `ex2_ulps` and rcp by `rcp_ulps`.
fn gpu_sigmoid(x: f32, ex2_ulps: f64, rcp_ulps: f64) -> f32 {
    let t = x * -std::f32::consts::LOG2_E;
    let e = ftz(nudge(2f64.powf(f64::from(t)), ex2_ulps));
    let d = 1.0f32 + e;
    ftz(nudge(1.0 / f64::from(d), rcp_ulps))
}

fn sigmoid(x: f64) -> f64 {
    Activation::Sigmoid.apply(x)
}

#[test]
fn gpu_sigmoid_error_is_within_the_documented_bound() {
    let mut worst = 0f64;
    // Step 2^-8 over [-88, 88]: 45k points, each with the four worst-case error combinations.
    for i in -(88 * 256)..=(88 * 256) {
        let x = i as f32 / 256.0;
        let exact = sigmoid(f64::from(x));
        let bound = (2.0 * f64::from(x.abs()) + 8.0) * 2f64.powi(-24);
        for (ex2, rcp) in [(2.0, 1.0), (2.0, -1.0), (-2.0, 1.0), (-2.0, -1.0)] {
            let got = f64::from(gpu_sigmoid(x, ex2, rcp));
            if exact < 2.0 * f64::from(f32::MIN_POSITIVE) {
                // Past x = -87.3 the result flushes to zero: an absolute error below 2^-125.
                assert!(
                    got.abs() < 2.0 * f64::from(f32::MIN_POSITIVE),
                    "x {x}: {got}"
                );
                continue;
            }
            let relative = (got - exact).abs() / exact;
            assert!(
                relative <= bound,
                "x {x}: relative error {relative:e} above the bound {bound:e}"
            );
            worst = worst.max(relative);
        }
    }
    // Far inside one rounding of f16 (2^-11 relative, half an ulp) and bf16 (2^-8).
    assert!(worst < 2f64.powi(-16), "worst relative error {worst:e}");
    println!("worst relative error of the GPU sigmoid model: {worst:e}");
}

#[test]
fn gpu_sigmoid_limits() {
    // +inf and large x give rcp(1): 1 within rcp's ulp (1 in every 16-bit format); -inf and very
    // negative x give rcp(+inf) = 0 exactly; NaN stays NaN.
    for (ex2, rcp) in [(2.0, 1.0), (-2.0, -1.0)] {
        for x in [f32::INFINITY, 200.0] {
            let s = gpu_sigmoid(x, ex2, rcp);
            assert!((s - 1.0).abs() <= f32::EPSILON, "sigmoid({x}) = {s}");
            assert_eq!(half::bf16::from_f32(s), half::bf16::ONE);
            assert_eq!(half::f16::from_f32(s), half::f16::ONE);
        }
        assert_eq!(gpu_sigmoid(f32::NEG_INFINITY, ex2, rcp), 0.0);
        assert_eq!(gpu_sigmoid(-200.0, ex2, rcp), 0.0);
        assert!(gpu_sigmoid(f32::NAN, ex2, rcp).is_nan());
    }
}

// ---------------------------------------------------------------------------------------------------
// The kernels' code, on the emulator
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum DType {
    BF16,
    F16,
}

impl DType {
    fn to_f64(self, bits: u16) -> f64 {
        match self {
            DType::BF16 => half::bf16::from_bits(bits).to_f64(),
            DType::F16 => half::f16::from_bits(bits).to_f64(),
        }
    }
    fn bits(self, x: f64) -> u16 {
        match self {
            DType::BF16 => <half::bf16 as gated_sdpa::Element>::from_f64(x).to_bits(),
            DType::F16 => <half::f16 as gated_sdpa::Element>::from_f64(x).to_bits(),
        }
    }
    /// The spacing of representable values at `v` (mantissa bits, smallest normal exponent).
    fn spacing(self, v: f64) -> f64 {
        let (mantissa, min_exp) = match self {
            DType::BF16 => (7, -126),
            DType::F16 => (10, -14),
        };
        2f64.powi((v.abs().log2().floor() as i32).max(min_exp) - mantissa)
    }
    fn name(self) -> &'static str {
        match self {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }
}

/// Every value of `dtype` in [-20, 20], then +inf, -inf and NaN, padded to a multiple of `row` with 0.
fn gate_inputs(dtype: DType, row: usize) -> Vec<u16> {
    let mut bits: Vec<u16> = (0..=u16::MAX)
        .filter(|&b| {
            let v = dtype.to_f64(b);
            v.is_finite() && v.abs() <= 20.0
        })
        .collect();
    bits.extend([
        dtype.bits(f64::INFINITY),
        dtype.bits(f64::NEG_INFINITY),
        dtype.bits(f64::NAN),
    ]);
    while bits.len() % row != 0 {
        bits.push(0);
    }
    bits
}

/// Runs the standalone gate kernel and its backward on the emulator, through the public API, over
/// `[rows, 1, d]` tensors: o = dY = 1 and the logits `g` (bits of T), so that Y and dO are act(g) and
/// dG is act'(g). Returns the bits of (Y, dO, dG). Outputs start poisoned (all bits set: NaN).
fn run_gate_kernels<T: Element>(
    g_bits: &[u16],
    d: usize,
    act: Activation,
    from_bits: fn(u16) -> T,
    to_bits: fn(T) -> u16,
) -> (Vec<u16>, Vec<u16>, Vec<u16>) {
    let shape = [g_bits.len() / d, 1, d];
    let typed = |bits: &[u16]| {
        HostBuffer::from_slice(&bits.iter().map(|&b| from_bits(b)).collect::<Vec<T>>())
    };
    let ones = typed(&vec![to_bits(T::from_f32(1.0)); g_bits.len()]);
    let g = typed(g_bits);
    let poison = vec![0xffffu16; g_bits.len()];
    let (mut y, mut d_o, mut dg) = (typed(&poison), typed(&poison), typed(&poison));
    let emulator = Emulator::new().with_seed(1).with_worker_threads(2);
    emulator
        .gate(
            GateMode::Elementwise,
            act,
            &mut GateArgs {
                o: Tensor::contiguous(ones.as_slice(), &shape),
                g: Some(Tensor::contiguous(g.as_slice(), &shape)),
                y: Tensor::contiguous(y.as_mut_slice(), &shape),
            },
        )
        .expect("gate kernel");
    emulator
        .gate_backward(
            GateMode::Elementwise,
            act,
            &mut GateBackwardArgs {
                o: Tensor::contiguous(ones.as_slice(), &shape),
                g: Some(Tensor::contiguous(g.as_slice(), &shape)),
                dy: Tensor::contiguous(ones.as_slice(), &shape),
                d_o: Tensor::contiguous(d_o.as_mut_slice(), &shape),
                dg: Some(Tensor::contiguous(dg.as_mut_slice(), &shape)),
            },
        )
        .expect("gate backward kernel");
    let bits = |b: &HostBuffer<T>| b.as_slice().iter().map(|&x| to_bits(x)).collect();
    (bits(&y), bits(&d_o), bits(&dg))
}

/// `got` (bits of `dtype`) is `expected` rounded once: within half an ulp, plus 2^-20 relative for the
/// f32 arithmetic before the rounding, plus `absolute`. Infinite expected values must match exactly;
/// NaN stays NaN.
fn assert_rounded(dtype: DType, what: &str, g: f64, got_bits: u16, expected: f64, absolute: f64) {
    let got = dtype.to_f64(got_bits);
    if expected.is_nan() || expected.is_infinite() {
        assert!(
            (got.is_nan() && expected.is_nan()) || got == expected,
            "{} {what}({g}) = {got}, expected {expected}",
            dtype.name()
        );
        return;
    }
    let tolerance = 0.5 * dtype.spacing(expected) + expected.abs() * 2f64.powi(-20) + absolute;
    assert!(
        (got - expected).abs() <= tolerance,
        "{} {what}({g}) = {got}, expected {expected}",
        dtype.name()
    );
}

/// f64 act and act' with the f32 kernels' behaviour at infinities: the formulas are evaluated as written
/// (silu(-inf) = -inf * 0 = NaN, as the f64 reference in src/problem.rs does).
fn expected(act: Activation, g: f64) -> (f64, f64) {
    (act.apply(g), act.derivative(g))
}

fn check_gate_kernels(dtype: DType, act: Activation) {
    let d = 128;
    let g = gate_inputs(dtype, d);
    let (y, d_o, dg) = match dtype {
        DType::BF16 => run_gate_kernels::<bf16>(&g, d, act, bf16::from_bits, bf16::to_bits),
        DType::F16 => run_gate_kernels::<f16>(&g, d, act, f16::from_bits, f16::to_bits),
    };
    for (i, &bits) in g.iter().enumerate() {
        let gv = dtype.to_f64(bits);
        let (a, da) = expected(act, gv);
        assert_rounded(dtype, "act", gv, y[i], a, 0.0);
        assert_rounded(dtype, "act (gate backward dO)", gv, d_o[i], a, 0.0);
        // act' = s (1 - s) [...]: 1 - s cancels for large g (s rounds to f32 within 2^-25 of 1), an
        // absolute error of about |g| 2^-24 that no activation formula in f32 avoids.
        assert_rounded(dtype, "act'", gv, dg[i], da, 2f64.powi(-18));
    }
}

#[test]
fn sigmoid_kernels_match_f64_on_every_16_bit_input() {
    for dtype in [DType::BF16, DType::F16] {
        check_gate_kernels(dtype, Activation::Sigmoid);
    }
}

#[test]
fn silu_kernels_match_f64_on_every_16_bit_input() {
    for dtype in [DType::BF16, DType::F16] {
        check_gate_kernels(dtype, Activation::Silu);
    }
}
