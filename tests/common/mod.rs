//! Helpers shared by the integration tests: the test grid's constants, random inputs, conversions
//! between 16-bit tensors and dense f64 arrays, and error norms. Each test crate uses a subset.
#![allow(dead_code)]

use std::io::Write;

#[cfg(feature = "emulator")]
pub mod forward_harness;

use gated_sdpa::{Activation, DType, Element, GateMode, HostBuffer, Layout};
use rand::{rngs::StdRng, RngExt};

/// Head dims the kernels are instantiated for.
pub const HEAD_DIMS: [usize; 3] = [64, 128, 256];

/// The five gate configurations the kernels distinguish.
pub const GATES: [(GateMode, Activation); 5] = [
    (GateMode::None, Activation::Sigmoid),
    (GateMode::Elementwise, Activation::Sigmoid),
    (GateMode::Elementwise, Activation::Silu),
    (GateMode::Headwise, Activation::Sigmoid),
    (GateMode::Headwise, Activation::Silu),
];

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Relative Frobenius error a forward output (Y, O) may have against the f64 reference on the same
/// rounded inputs: the rounding of P to 16 bits and of the output itself.
pub fn forward_tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 1e-2,
        DType::F16 => 2e-3,
    }
}

/// `n` values uniform in `(-amplitude, amplitude)`.
pub fn random_values(rng: &mut StdRng, n: usize, amplitude: f64) -> Vec<f64> {
    (0..n)
        .map(|_| rng.random_range(-amplitude..amplitude))
        .collect()
}

/// A 16-byte aligned buffer of `len` values uniform in `(-amplitude, amplitude)`, rounded to T.
pub fn random_buffer<T: Element>(rng: &mut StdRng, len: usize, amplitude: f32) -> HostBuffer<T> {
    let mut buffer = HostBuffer::new(len);
    for x in buffer.as_mut_slice() {
        *x = T::from_f32(rng.random_range(-amplitude..amplitude));
    }
    buffer
}

/// `x` rounded to `dtype` (to nearest even) and widened back.
pub fn round_to(dtype: DType, x: f64) -> f64 {
    match dtype {
        DType::BF16 => <half::bf16 as gated_sdpa::Element>::from_f64(x).to_f64(),
        DType::F16 => <half::f16 as gated_sdpa::Element>::from_f64(x).to_f64(),
    }
}

/// A 16-byte aligned copy of `x` rounded to T.
pub fn to_elements<T: Element>(x: &[f64]) -> HostBuffer<T> {
    let data: Vec<T> = x.iter().map(|&v| T::from_f64(v)).collect();
    HostBuffer::from_slice(&data)
}

/// The view `layout` of `data` as a dense f64 array (C order of the view's shape).
pub fn gather<T: Element>(data: &[T], layout: &Layout) -> Vec<f64> {
    let mut out = vec![0.0; layout.num_elements().expect("small test tensors")];
    layout.for_each_offset(|linear, offset| out[linear] = data[offset].to_f64());
    out
}

/// Euclidean norm.
pub fn norm(x: impl Iterator<Item = f64>) -> f64 {
    x.map(|v| v * v).sum::<f64>().sqrt()
}

/// `|got - want| / |want|` in Frobenius norm; infinite when `got` holds a NaN (an unwritten element
/// of a poisoned output), so that NaN never passes a tolerance.
pub fn rel_frobenius(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    if got.iter().any(|g| g.is_nan()) {
        return f64::INFINITY;
    }
    let err = norm(got.iter().zip(want).map(|(g, w)| g - w));
    err / norm(want.iter().copied()).max(f64::MIN_POSITIVE)
}

/// The backend on device 0, or `None` (the test then returns early) after saying so where the user sees
/// it: libtest captures what the print macros write, and a test that returns early reads "ok" in the
/// summary, so the reason goes straight to the process's stderr, one line per skipped test.
pub fn gpu() -> Option<gated_sdpa::CudaBackend> {
    match gated_sdpa::CudaBackend::new(0) {
        Ok(backend) => Some(backend),
        Err(e) => {
            if std::env::var("GSDPA_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("GSDPA_REQUIRE_GPU=1 but the CUDA backend is unavailable: {e}");
            }
            report_skip(&format!(
                "no usable GPU ({e}); GSDPA_REQUIRE_GPU=1 makes this a failure"
            ));
            None
        }
    }
}

/// Says that the current test is skipped, and why, where the user sees it: a write on the stderr handle
/// itself bypasses libtest's capture (only the print macros are redirected). One write, starting on a
/// line of its own: libtest may be midway through "test name ... ".
pub fn report_skip(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a GPU test");
    let _ = std::io::stderr().write_all(format!("\nSKIPPED {test}: {reason}\n").as_bytes());
}
