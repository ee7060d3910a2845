//! The emulator's self-test kernels (`kernels/emu_selftest.cu`): one correct kernel and one for each
//! kind of bug the emulator is there to catch. `tests/emulator.rs` checks that each bug is caught.

use crate::emulator::{Emulator, GuardedBuffer};
use crate::error::{GsdpaError, Result};
use crate::ffi;
use crate::launch::LaunchConfig;

/// The emulator's self-test kernels (`kernels/emu_selftest.cu`): one correct kernel and one for each kind
/// of bug the emulator is there to catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfTest {
    /// Store to shared memory, `__syncthreads`, read another warp's value: always right.
    Correct,
    /// The same without the barrier: the result depends on the thread order (the seed).
    MissingBarrier,
    /// Shared memory read before `cp.async.wait_group`: poisoned values.
    MissingWait,
    /// Half a warp at a shuffle, the other half at `__syncwarp`.
    DivergentShuffle,
    /// Lanes that exited while the rest of the warp waits at a shuffle.
    ExitedLanes,
    /// The two warps at different `__syncthreads`.
    BarrierMismatch,
    /// An `ldmatrix` row that is not 16-byte aligned.
    MisalignedLdmatrix,
    /// A store one element past the end of the output.
    OutOfBounds,
}

impl SelfTest {
    /// Every self-test.
    pub const ALL: [SelfTest; 8] = [
        SelfTest::Correct,
        SelfTest::MissingBarrier,
        SelfTest::MissingWait,
        SelfTest::DivergentShuffle,
        SelfTest::ExitedLanes,
        SelfTest::BarrierMismatch,
        SelfTest::MisalignedLdmatrix,
        SelfTest::OutOfBounds,
    ];

    /// The kernel's name.
    pub fn kernel(self) -> &'static str {
        match self {
            SelfTest::Correct => "gsdpa_selftest_correct",
            SelfTest::MissingBarrier => "gsdpa_selftest_missing_barrier",
            SelfTest::MissingWait => "gsdpa_selftest_missing_wait",
            SelfTest::DivergentShuffle => "gsdpa_selftest_divergent_shuffle",
            SelfTest::ExitedLanes => "gsdpa_selftest_exited_lanes",
            SelfTest::BarrierMismatch => "gsdpa_selftest_barrier_mismatch",
            SelfTest::MisalignedLdmatrix => "gsdpa_selftest_misaligned_ldmatrix",
            SelfTest::OutOfBounds => "gsdpa_selftest_out_of_bounds",
        }
    }
}

/// Runs a self-test kernel on `input` (`GSDPA_SELFTEST_THREADS` values) and returns its output, or the
/// error the emulator reported.
pub fn run_selftest(emulator: &Emulator, test: SelfTest, input: &[f32]) -> Result<Vec<f32>> {
    let threads = ffi::GSDPA_SELFTEST_THREADS as usize;
    if input.len() != threads {
        return Err(GsdpaError::InvalidArgument(format!(
            "self-tests take {threads} inputs, got {}",
            input.len()
        )));
    }
    let input = GuardedBuffer::copy_of(input)?;
    let mut output = vec![f32::NAN; threads];
    let out = GuardedBuffer::copy_of(&output)?;
    let params = ffi::GsdpaSelftestParams {
        input: input.ptr().cast(),
        output: out.ptr().cast(),
    };
    let config = LaunchConfig {
        kernel: test.kernel().into(),
        grid: [1, 1, 1],
        block: [ffi::GSDPA_SELFTEST_THREADS, 1, 1],
        shared_bytes: ffi::GSDPA_SELFTEST_SMEM,
    };
    // SAFETY: both buffers hold GSDPA_SELFTEST_THREADS floats, as the self-test kernels index (except the
    // out-of-bounds one, whose fault the guard page turns into an error).
    unsafe { emulator.launch(&config, &params)? };
    out.copy_to(&mut output);
    Ok(output)
}
