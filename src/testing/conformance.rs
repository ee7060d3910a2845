//! Inputs of the conformance kernel (`kernels/conformance.cu`), which dumps what every primitive leaves in
//! each lane's registers. The expected dump is computed independently from the PTX formulas in
//! `tests/conformance.rs`; on a GPU the same kernel checks the emulator against the hardware.

use cudarc::driver::{DevicePtr, DevicePtrMut};

use crate::cuda::{cuda_error, CudaBackend};
#[cfg(feature = "emulator")]
use crate::emulator::{Emulator, GuardedBuffer};
use crate::error::Result;
use crate::ffi;
use crate::launch;

/// Words in a dump: 32 lanes times `GSDPA_CONFORMANCE_SLOTS`.
pub const DUMP_WORDS: usize = 32 * ffi::GSDPA_CONFORMANCE_SLOTS as usize;

/// The special values packed to 16 bits by slots 39 and 40: (lo, hi) per lane. Ties, overflow,
/// subnormals, infinities and NaN, where conversions differ if rounding is wrong.
pub fn special_pairs() -> Vec<(f32, f32)> {
    let values = [
        0.0f32,
        -0.0,
        1.0,
        -1.5,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        65504.0,
        65520.0,            // f16: rounds to infinity
        65519.996,          // f16: rounds to 65504
        1.0 + 1.0 / 256.0,  // bf16: tie, rounds to even (1.0)
        1.0 + 3.0 / 256.0,  // bf16: tie, rounds up
        1.0 + 1.0 / 2048.0, // f16: tie, rounds to even
        1.0 + 3.0 / 2048.0, // f16: tie, rounds up
        5.960_464_5e-8,     // 2^-24, the smallest f16 subnormal
        2.980_232_2e-8,     // 2^-25: f16 tie between 0 and 2^-24, rounds to 0
        8.940_697e-8,       // 1.5 * 2^-24: f16 tie, rounds to 2^-23
        6.103_515_6e-5,     // 2^-14, the smallest f16 normal
        3.0e38,             // bf16: finite
        3.4028235e38,       // f32::MAX: bf16 rounds to infinity
        1.0e-40,            // f32 subnormal
        -7.25,
        0.333_333_34,
        1234.5678,
    ];
    (0..32)
        .map(|lane| {
            (
                values[lane % values.len()],
                values[(lane * 7 + 3) % values.len()],
            )
        })
        .collect()
}

/// The conformance kernel's inputs: X[r][c] = r*16 + c as bf16 bits then f16 bits, and the special pairs
/// flattened.
pub fn inputs() -> (Vec<u16>, Vec<f32>) {
    let mut input = Vec::with_capacity(512);
    input.extend((0..256).map(|i| half::bf16::from_f32(i as f32).to_bits()));
    input.extend((0..256).map(|i| half::f16::from_f32(i as f32).to_bits()));
    let specials = special_pairs()
        .into_iter()
        .flat_map(|(lo, hi)| [lo, hi])
        .collect();
    (input, specials)
}

#[cfg(feature = "emulator")]
/// Runs the conformance kernel (kernels/conformance.cu) on the emulator and returns its dump,
/// `[32 lanes][GSDPA_CONFORMANCE_SLOTS]` words. Inputs: [`inputs`].
pub fn run_on_emulator(emulator: &Emulator) -> Result<Vec<u32>> {
    let (input, specials) = inputs();
    let input = GuardedBuffer::copy_of(&input)?;
    let specials = GuardedBuffer::copy_of(&specials)?;
    let mut dump = vec![0u32; DUMP_WORDS];
    let out = GuardedBuffer::copy_of(&dump)?;
    let params = ffi::GsdpaConformanceParams {
        input: input.ptr().cast(),
        specials: specials.ptr().cast(),
        out: out.ptr().cast(),
    };
    // SAFETY: the buffers are sized as the conformance kernel's layout requires and outlive the launch.
    unsafe { emulator.launch(&launch::conformance(), &params)? };
    out.copy_to(&mut dump);
    Ok(dump)
}

/// Runs the conformance kernel on the GPU and returns its dump (allocates and synchronizes: a test helper).
pub fn run_on_gpu(gpu: &CudaBackend) -> Result<Vec<u32>> {
    let stream = gpu.context().default_stream();
    let (input, specials) = inputs();
    let input = stream
        .clone_htod(&input)
        .map_err(|e| cuda_error("upload", e))?;
    let specials = stream
        .clone_htod(&specials)
        .map_err(|e| cuda_error("upload", e))?;
    let mut out = stream
        .alloc_zeros::<u32>(DUMP_WORDS)
        .map_err(|e| cuda_error("alloc", e))?;
    {
        let (input_ptr, _g1) = input.device_ptr(&stream);
        let (specials_ptr, _g2) = specials.device_ptr(&stream);
        let (out_ptr, _g3) = out.device_ptr_mut(&stream);
        let params = ffi::GsdpaConformanceParams {
            input: input_ptr as *const u16,
            specials: specials_ptr as *const f32,
            out: out_ptr as *mut u32,
        };
        gpu.launch(&stream, &launch::conformance(), &params)?;
    }
    let dump = super::download(&stream, &out)?;
    Ok(dump)
}
