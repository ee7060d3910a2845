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

use std::ffi::{c_char, c_void, CString};

use gated_sdpa::ffi::{
    GsdpaGateBackwardParams, GsdpaGateParams, GsdpaStrides, GSDPA_ACT_SIGMOID, GSDPA_ACT_SILU,
    GSDPA_GATE_ELEMENTWISE,
};
use gated_sdpa::{Activation, HostBuffer};

extern "C" {
    fn gsdpa_emu_launch(
        kernel: *const c_char,
        grid: *const u32,
        block: *const u32,
        dynamic_smem_bytes: usize,
        params: *const c_void,
        params_size: usize,
        seed: u64,
        worker_threads: u32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
}

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
            DType::BF16 => half::bf16::from_f64(x).to_bits(),
            DType::F16 => half::f16::from_f64(x).to_bits(),
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

/// Rows of one head of width `d`, dense: strides (batch, row, head) for [1, rows, 1, d].
fn dense(rows: usize, d: usize) -> GsdpaStrides {
    GsdpaStrides {
        batch: (rows * d) as i64,
        row: d as i64,
        head: d as i64,
    }
}

fn launch<P>(kernel: &str, grid: u32, params: &P) {
    let name = CString::new(kernel).unwrap();
    let mut err = vec![0 as c_char; 1024];
    // SAFETY: the params' pointers cover every element their strides address; buffers outlive the call.
    let rc = unsafe {
        gsdpa_emu_launch(
            name.as_ptr(),
            [grid, 1, 1].as_ptr(),
            [256u32, 1, 1].as_ptr(),
            0,
            (params as *const P).cast(),
            std::mem::size_of::<P>(),
            1,
            2,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    let message: Vec<u8> = err
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    assert_eq!(rc, 0, "{kernel}: {}", String::from_utf8_lossy(&message));
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

fn check_gate_kernels(dtype: DType, activation: u32) {
    let d = 128;
    let g = gate_inputs(dtype, d);
    let rows = g.len() / d;
    let ones = vec![dtype.bits(1.0); g.len()];
    let poison = vec![0xffffu16; g.len()];
    let (o_buf, g_buf, dy_buf) = (
        HostBuffer::from_slice(&ones),
        HostBuffer::from_slice(&g),
        HostBuffer::from_slice(&ones),
    );
    let (mut y_buf, mut d_o_buf, mut dg_buf) = (
        HostBuffer::from_slice(&poison),
        HostBuffer::from_slice(&poison),
        HostBuffer::from_slice(&poison),
    );
    let s = dense(rows, d);
    let act = if activation == GSDPA_ACT_SILU {
        Activation::Silu
    } else {
        Activation::Sigmoid
    };
    let forward = GsdpaGateParams {
        o: o_buf.as_slice().as_ptr().cast(),
        g: g_buf.as_slice().as_ptr().cast(),
        y: y_buf.as_mut_slice().as_mut_ptr().cast(),
        o_stride: s,
        g_stride: s,
        y_stride: s,
        batch: 1,
        seqlen: rows as i32,
        heads: 1,
        head_dim: d as i32,
        gate_mode: GSDPA_GATE_ELEMENTWISE as i32,
        activation: activation as i32,
    };
    let kernel = format!("gsdpa_gate_{}", dtype.name());
    launch(&kernel, (g.len() / 8).div_ceil(256) as u32, &forward);
    let backward = GsdpaGateBackwardParams {
        o: o_buf.as_slice().as_ptr().cast(),
        g: g_buf.as_slice().as_ptr().cast(),
        dy: dy_buf.as_slice().as_ptr().cast(),
        d_o: d_o_buf.as_mut_slice().as_mut_ptr().cast(),
        dg: dg_buf.as_mut_slice().as_mut_ptr().cast(),
        o_stride: s,
        g_stride: s,
        dy_stride: s,
        d_o_stride: s,
        dg_stride: s,
        batch: 1,
        seqlen: rows as i32,
        heads: 1,
        head_dim: d as i32,
        gate_mode: GSDPA_GATE_ELEMENTWISE as i32,
        activation: activation as i32,
    };
    // 16 lanes per 128-wide row: 16 rows per block of 256 threads.
    let kernel = format!("gsdpa_gate_backward_{}", dtype.name());
    launch(&kernel, rows.div_ceil(16) as u32, &backward);

    let (y, d_o, dg) = (y_buf.to_vec(), d_o_buf.to_vec(), dg_buf.to_vec());
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
        check_gate_kernels(dtype, GSDPA_ACT_SIGMOID);
    }
}

#[test]
fn silu_kernels_match_f64_on_every_16_bit_input() {
    for dtype in [DType::BF16, DType::F16] {
        check_gate_kernels(dtype, GSDPA_ACT_SILU);
    }
}
