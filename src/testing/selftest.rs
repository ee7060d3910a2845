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
    /// Lanes hand values to their neighbour through `st_shared` / `ld_shared` with a `__syncwarp`
    /// between: always right, and no race.
    WarpHandoff,
    /// The same without the `__syncwarp`: a race within one warp, caught by the race detector.
    WarpRace,
    /// `st_shared`, `__syncwarp`, `ld_shared` of the other warp's value: a race across warps (the
    /// `__syncwarp` does not order two warps), caught by the race detector.
    BlockRace,
    /// One warp reads a tile with `ldmatrix` while the other refills it with `cp.async`, no
    /// `__syncthreads` between: a race caught by the race detector.
    RefillRace,
}

impl SelfTest {
    /// Every self-test.
    pub const ALL: [SelfTest; 12] = [
        SelfTest::Correct,
        SelfTest::MissingBarrier,
        SelfTest::MissingWait,
        SelfTest::DivergentShuffle,
        SelfTest::ExitedLanes,
        SelfTest::BarrierMismatch,
        SelfTest::MisalignedLdmatrix,
        SelfTest::OutOfBounds,
        SelfTest::WarpHandoff,
        SelfTest::WarpRace,
        SelfTest::BlockRace,
        SelfTest::RefillRace,
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
            SelfTest::WarpHandoff => "gsdpa_selftest_warp_handoff",
            SelfTest::WarpRace => "gsdpa_selftest_warp_race",
            SelfTest::BlockRace => "gsdpa_selftest_block_race",
            SelfTest::RefillRace => "gsdpa_selftest_refill_race",
        }
    }

    /// The launch every self-test is written for: one block of `GSDPA_SELFTEST_THREADS` threads with
    /// `GSDPA_SELFTEST_SMEM` bytes of dynamic shared memory.
    pub fn launch_config(self) -> LaunchConfig {
        LaunchConfig {
            kernel: self.kernel().into(),
            grid: [1, 1, 1],
            block: [ffi::GSDPA_SELFTEST_THREADS, 1, 1],
            shared_bytes: ffi::GSDPA_SELFTEST_SMEM,
        }
    }
}

/// Runs a self-test kernel on `input` (`GSDPA_SELFTEST_THREADS` values) and returns its output, or the
/// error the emulator reported.
pub fn run_selftest(emulator: &Emulator, test: SelfTest, input: &[f32]) -> Result<Vec<f32>> {
    run_selftest_with(emulator, test, input, &test.launch_config())
}

/// [`run_selftest`] with another launch geometry (`config.kernel` is replaced by the test's), to check
/// that launches beyond the target's limits are refused. Threads beyond `GSDPA_SELFTEST_THREADS` would
/// index past the guarded input and output, which fails the launch rather than corrupting memory.
pub fn run_selftest_with(
    emulator: &Emulator,
    test: SelfTest,
    input: &[f32],
    config: &LaunchConfig,
) -> Result<Vec<f32>> {
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
        ..config.clone()
    };
    // SAFETY: both buffers hold GSDPA_SELFTEST_THREADS floats, as the self-test kernels index (except the
    // out-of-bounds one, and larger blocks, whose faults the guard pages turn into errors).
    unsafe { emulator.launch(&config, &params)? };
    out.copy_to(&mut output);
    Ok(output)
}
