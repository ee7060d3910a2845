//! Runners for the Hopper conformance kernels (`kernels/conformance_hopper.cu`) and self-tests
//! (`kernels/emu_selftest.cu`, the `gsdpa_selftest_hopper_*` kernels). The tests
//! (`tests/conformance_hopper.rs`) build the cases and compute what the PTX ISA says they must produce.

use cudarc::driver::{DevicePtr, DevicePtrMut};

use crate::cuda::{cuda_error, CudaBackend};
#[cfg(feature = "emulator")]
use crate::emulator::{Emulator, GuardedBuffer};
use crate::error::{GsdpaError, Result};
use crate::ffi;
use crate::launch::LaunchConfig;
use crate::tma::TensorMapParams;

// SAFETY (all four): #[repr(C)] mirrors of the C structs, Copy, no references; bitwise copies are the
// kernel arguments.
unsafe impl cudarc::driver::DeviceRepr for ffi::GsdpaWgmmaConformanceParams {}
unsafe impl cudarc::driver::DeviceRepr for ffi::GsdpaTmaConformanceParams {}
unsafe impl cudarc::driver::DeviceRepr for ffi::GsdpaMbarrierConformanceParams {}
unsafe impl cudarc::driver::DeviceRepr for ffi::GsdpaStmatrixConformanceParams {}

const THREADS: u32 = ffi::GSDPA_HOPPER_CONF_THREADS;

/// The wgmma conformance inputs: one [`ffi::GsdpaWgmmaCase`] per block, with offsets into the three
/// arrays, and the length of the output (floats).
pub struct WgmmaBatch {
    /// The cases.
    pub cases: Vec<ffi::GsdpaWgmmaCase>,
    /// Shared-memory images, each case's at its `image_offset` (16-byte aligned).
    pub images: Vec<u8>,
    /// Row-major A matrices for the register-A cases.
    pub a_rows: Vec<u16>,
    /// Initial accumulators, `[128 threads][n / 2]` per case.
    pub c_init: Vec<f32>,
    /// Floats of output: `[128 threads][n / 2]` per case.
    pub out_len: usize,
}

#[cfg(feature = "emulator")]
/// Runs the wgmma cases on the emulator; returns the output, poisoned (NaN) before the launch.
pub fn run_wgmma_on_emulator(emulator: &Emulator, batch: &WgmmaBatch) -> Result<Vec<f32>> {
    let cases = GuardedBuffer::copy_of(&batch.cases)?;
    let images = GuardedBuffer::copy_of(&batch.images)?;
    let a_rows = GuardedBuffer::copy_of(&batch.a_rows)?;
    let c_init = GuardedBuffer::copy_of(&batch.c_init)?;
    let mut out = vec![f32::NAN; batch.out_len];
    let out_buffer = GuardedBuffer::copy_of(&out)?;
    let params = ffi::GsdpaWgmmaConformanceParams {
        cases: cases.ptr().cast(),
        images: images.ptr().cast(),
        a_rows: a_rows.ptr().cast(),
        c_init: c_init.ptr().cast(),
        out: out_buffer.ptr().cast(),
    };
    let config = LaunchConfig {
        kernel: "gsdpa_conformance_wgmma".into(),
        grid: [batch.cases.len() as u32, 1, 1],
        block: [THREADS, 1, 1],
        shared_bytes: ffi::GSDPA_WGMMA_CONF_SMEM,
    };
    // SAFETY: every offset in the cases was built by the test to lie inside these buffers, which outlive
    // the launch; a wrong one faults on a guard page and fails the launch.
    unsafe { emulator.launch(&config, &params)? };
    out_buffer.copy_to(&mut out);
    Ok(out)
}

/// One TMA conformance case.
#[derive(Debug, Clone)]
pub struct TmaCase {
    /// The tensor map's parameters; `global_address` is filled in by the runner.
    pub map: TensorMapParams,
    /// The box's coordinates (element indices, innermost first; may be negative).
    pub coords: Vec<i32>,
    /// `Some(box image)` for a store (the bytes as they lie in shared memory), `None` for a load.
    pub store: Option<Vec<u8>>,
    /// With a store: add instead of overwriting.
    pub reduce_add: bool,
}

/// The results of [`run_tma_on_emulator`]: per case, a load's box bytes as they lay in shared memory,
/// or the tensor after a store.
pub type TmaResults = Vec<Vec<u8>>;

#[cfg(feature = "emulator")]
/// Runs TMA cases on the emulator over `tensor` (the global tensor's bytes; each store case gets its
/// own copy).
pub fn run_tma_on_emulator(
    emulator: &Emulator,
    tensor: &[u8],
    cases: &[TmaCase],
) -> Result<TmaResults> {
    let source = GuardedBuffer::copy_of(tensor)?;
    let mut targets = Vec::new();
    let mut ffi_cases = Vec::new();
    let mut image = Vec::new();
    let mut out_len = 0usize;
    for case in cases {
        let box_bytes = case.map.box_bytes();
        let mut map = case.map.clone();
        let offset;
        if let Some(bytes) = &case.store {
            if bytes.len() != box_bytes as usize {
                return Err(GsdpaError::InvalidArgument(
                    "store image is not the box's size".into(),
                ));
            }
            let target = GuardedBuffer::copy_of(tensor)?;
            map.global_address = target.ptr() as u64;
            targets.push(Some(target));
            offset = image.len();
            image.extend_from_slice(bytes);
            image.resize(image.len().next_multiple_of(16), 0);
        } else {
            map.global_address = source.ptr() as u64;
            targets.push(None);
            offset = out_len;
            out_len = (out_len + box_bytes as usize).next_multiple_of(16);
        }
        let mut coords = [0i32; 5];
        coords[..case.coords.len()].copy_from_slice(&case.coords);
        ffi_cases.push(ffi::GsdpaTmaCase {
            map: map.encode_emulator()?,
            coords,
            rank: map.rank() as u32,
            box_bytes,
            is_store: case.store.is_some() as u32,
            reduce_add: case.reduce_add as u32,
            pad: 0,
            out_offset: offset as u64,
        });
    }
    let cases_buffer = GuardedBuffer::copy_of(&ffi_cases)?;
    image.resize(image.len().max(16), 0);
    let image_buffer = GuardedBuffer::copy_of(&image)?;
    let mut out = vec![0xa5u8; out_len.max(16)];
    let out_buffer = GuardedBuffer::copy_of(&out)?;
    let params = ffi::GsdpaTmaConformanceParams {
        cases: cases_buffer.ptr().cast(),
        image: image_buffer.ptr().cast(),
        out: out_buffer.ptr().cast(),
    };
    let config = LaunchConfig {
        kernel: "gsdpa_conformance_tma".into(),
        grid: [ffi_cases.len() as u32, 1, 1],
        block: [THREADS, 1, 1],
        shared_bytes: ffi::GSDPA_TMA_CONF_SMEM,
    };
    // SAFETY: the maps point at guarded copies of `tensor`, which outlive the launch; the dump offsets
    // were laid out above.
    unsafe { emulator.launch(&config, &params)? };
    out_buffer.copy_to(&mut out);
    Ok(ffi_cases
        .iter()
        .zip(targets)
        .map(|(c, target)| match target {
            Some(t) => {
                let mut bytes = vec![0u8; tensor.len()];
                t.copy_to(&mut bytes);
                bytes
            }
            None => {
                out[c.out_offset as usize..(c.out_offset + c.box_bytes as u64) as usize].to_vec()
            }
        })
        .collect())
}

#[cfg(feature = "emulator")]
/// Runs the mbarrier phase kernel: `[rounds][GSDPA_MBARRIER_CONF_WORDS]` words, poisoned with
/// `0xffffffff` where the kernel writes nothing.
pub fn run_mbarrier_on_emulator(emulator: &Emulator, rounds: u32) -> Result<Vec<u32>> {
    let words = ffi::GSDPA_MBARRIER_CONF_WORDS as usize;
    let mut out = vec![u32::MAX; rounds as usize * words];
    let out_buffer = GuardedBuffer::copy_of(&out)?;
    let params = ffi::GsdpaMbarrierConformanceParams {
        rounds,
        out: out_buffer.ptr().cast(),
    };
    let config = LaunchConfig {
        kernel: "gsdpa_conformance_mbarrier".into(),
        grid: [1, 1, 1],
        block: [THREADS, 1, 1],
        shared_bytes: 8 * ffi::GSDPA_MBARRIER_CONF_ROUNDS,
    };
    // SAFETY: the output holds `rounds` rows of GSDPA_MBARRIER_CONF_WORDS words.
    unsafe { emulator.launch(&config, &params)? };
    out_buffer.copy_to(&mut out);
    Ok(out)
}

/// The Hopper self-test kernels (`gsdpa_selftest_hopper_*` in `kernels/emu_selftest.cu`): a TMA load of a
/// 64 x 64 bf16 tensor onto an mbarrier, then `T T^T` with wgmma; one correct, the others with one bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopperSelfTest {
    /// Everything in order: outputs `T T^T` in the accumulator layout.
    Correct,
    /// Correct too: the product in two wgmma groups, retired by `wait_group 1`, then `0`.
    Pipelined,
    /// Accumulators read without `wgmma.wait_group`.
    MissingWgmmaWait,
    /// No `wgmma.fence` before the first wgmma.
    MissingWgmmaFence,
    /// `expect_tx` 128 bytes short of the box.
    ShortExpectTx,
    /// `expect_tx` 128 bytes beyond the box: the phase never completes.
    LongExpectTx,
    /// The TMA destination read before the barrier wait.
    ReadBeforeBarrier,
    /// A wgmma's shared-memory operand overwritten before the wait.
    OperandOverwritten,
    /// An accumulator written while its wgmma is in flight.
    AccumulatorWritten,
    /// A store into the TMA box while the load is still writing it.
    WriteInFlight,
    /// Another warp reuses the box after the wgmma reading it was issued, but before it was retired (the
    /// correct order, after the retirement, is part of [`HopperSelfTest::Correct`]).
    ReuseAfterIssue,
    /// Correct: shared-memory hand-offs through named barriers (`run_hopper_selftest`'s output is the
    /// values read: `out[32 t]` from thread `(t + 32) % 128`, `out[32 t + 1]` from producer lane `t % 32`).
    NamedHandoff,
    /// The warpgroup's hand-off without its named barrier.
    NamedNoBarrier,
    /// The hand-off's named barrier does not include the writing warp.
    NamedOutsider,
    /// The producer rewrites its values after its `bar.arrive`.
    NamedWriteAfterArrive,
}

impl HopperSelfTest {
    /// Every Hopper self-test.
    pub const ALL: [HopperSelfTest; 15] = [
        HopperSelfTest::Correct,
        HopperSelfTest::Pipelined,
        HopperSelfTest::MissingWgmmaWait,
        HopperSelfTest::MissingWgmmaFence,
        HopperSelfTest::ShortExpectTx,
        HopperSelfTest::LongExpectTx,
        HopperSelfTest::ReadBeforeBarrier,
        HopperSelfTest::OperandOverwritten,
        HopperSelfTest::AccumulatorWritten,
        HopperSelfTest::WriteInFlight,
        HopperSelfTest::ReuseAfterIssue,
        HopperSelfTest::NamedHandoff,
        HopperSelfTest::NamedNoBarrier,
        HopperSelfTest::NamedOutsider,
        HopperSelfTest::NamedWriteAfterArrive,
    ];

    /// The kernel's name.
    pub fn kernel(self) -> &'static str {
        match self {
            HopperSelfTest::Correct => "gsdpa_selftest_hopper_correct",
            HopperSelfTest::Pipelined => "gsdpa_selftest_hopper_pipelined",
            HopperSelfTest::MissingWgmmaWait => "gsdpa_selftest_hopper_missing_wgmma_wait",
            HopperSelfTest::MissingWgmmaFence => "gsdpa_selftest_hopper_missing_wgmma_fence",
            HopperSelfTest::ShortExpectTx => "gsdpa_selftest_hopper_short_expect_tx",
            HopperSelfTest::LongExpectTx => "gsdpa_selftest_hopper_long_expect_tx",
            HopperSelfTest::ReadBeforeBarrier => "gsdpa_selftest_hopper_read_before_barrier",
            HopperSelfTest::OperandOverwritten => "gsdpa_selftest_hopper_operand_overwritten",
            HopperSelfTest::AccumulatorWritten => "gsdpa_selftest_hopper_accumulator_written",
            HopperSelfTest::WriteInFlight => "gsdpa_selftest_hopper_write_in_flight",
            HopperSelfTest::ReuseAfterIssue => "gsdpa_selftest_hopper_reuse_after_issue",
            HopperSelfTest::NamedHandoff => "gsdpa_selftest_hopper_named_handoff",
            HopperSelfTest::NamedNoBarrier => "gsdpa_selftest_hopper_named_no_barrier",
            HopperSelfTest::NamedOutsider => "gsdpa_selftest_hopper_named_outsider",
            HopperSelfTest::NamedWriteAfterArrive => {
                "gsdpa_selftest_hopper_named_write_after_arrive"
            }
        }
    }
}

#[cfg(feature = "emulator")]
/// Runs a Hopper self-test on `tensor` (64 x 64 bf16 bits, row-major); returns the
/// `[GSDPA_HOPPER_SELFTEST_THREADS][32]` output or the emulator's error.
pub fn run_hopper_selftest(
    emulator: &Emulator,
    test: HopperSelfTest,
    tensor: &[u16],
) -> Result<Vec<f32>> {
    let rows = ffi::GSDPA_HOPPER_SELFTEST_ROWS as usize;
    if tensor.len() != rows * 64 {
        return Err(GsdpaError::InvalidArgument(format!(
            "the Hopper self-tests take {} values",
            rows * 64
        )));
    }
    let input = GuardedBuffer::copy_of(tensor)?;
    let map = TensorMapParams::tiled(
        crate::tma::TmaElement::Bf16,
        input.ptr() as u64,
        &[64, rows as u64],
        &[128],
        &[64, rows as u32],
    )
    .with_swizzle(crate::tma::TmaSwizzle::B128)
    .encode_emulator()?;
    let threads = ffi::GSDPA_HOPPER_SELFTEST_THREADS as usize;
    let mut out = vec![f32::NAN; threads * 32];
    let out_buffer = GuardedBuffer::copy_of(&out)?;
    let params = ffi::GsdpaHopperSelftestParams {
        map,
        input: input.ptr().cast(),
        output: out_buffer.ptr().cast(),
    };
    let config = LaunchConfig {
        kernel: test.kernel().into(),
        grid: [1, 1, 1],
        block: [threads as u32, 1, 1],
        shared_bytes: ffi::GSDPA_HOPPER_SELFTEST_SMEM,
    };
    // SAFETY: the map points at the guarded input, the output holds threads x 32 floats; both outlive the
    // launch.
    unsafe { emulator.launch(&config, &params)? };
    out_buffer.copy_to(&mut out);
    Ok(out)
}

#[cfg(feature = "emulator")]
/// Runs the stmatrix / elect.sync kernel: `GSDPA_STMATRIX_CONF_WORDS` words.
pub fn run_stmatrix_on_emulator(emulator: &Emulator) -> Result<Vec<u32>> {
    let mut out = vec![0u32; ffi::GSDPA_STMATRIX_CONF_WORDS as usize];
    let out_buffer = GuardedBuffer::copy_of(&out)?;
    let params = ffi::GsdpaStmatrixConformanceParams {
        out: out_buffer.ptr().cast(),
    };
    let config = LaunchConfig {
        kernel: "gsdpa_conformance_stmatrix".into(),
        grid: [1, 1, 1],
        block: [32, 1, 1],
        shared_bytes: 2048,
    };
    // SAFETY: the output holds GSDPA_STMATRIX_CONF_WORDS words.
    unsafe { emulator.launch(&config, &params)? };
    out_buffer.copy_to(&mut out);
    Ok(out)
}

// ----- The same kernels on a Hopper GPU (sm_90a SASS), to compare the emulator with hardware. They
// allocate and synchronize: test helpers. -----

fn wgmma_config(cases: usize) -> LaunchConfig {
    LaunchConfig {
        kernel: "gsdpa_conformance_wgmma".into(),
        grid: [cases as u32, 1, 1],
        block: [THREADS, 1, 1],
        shared_bytes: ffi::GSDPA_WGMMA_CONF_SMEM,
    }
}

/// [`run_wgmma_on_emulator`] on the GPU.
pub fn run_wgmma_on_gpu(gpu: &CudaBackend, batch: &WgmmaBatch) -> Result<Vec<f32>> {
    let stream = gpu.context().default_stream();
    let up = |e| cuda_error("upload", e);
    // The cases travel as raw bytes (the struct is plain data).
    // SAFETY: GsdpaWgmmaCase is #[repr(C)] plain data; viewing it as bytes reads initialised memory.
    let case_bytes = unsafe {
        std::slice::from_raw_parts(
            batch.cases.as_ptr().cast::<u8>(),
            std::mem::size_of_val(batch.cases.as_slice()),
        )
    };
    let cases = stream.clone_htod(case_bytes).map_err(up)?;
    let images = stream.clone_htod(&batch.images).map_err(up)?;
    let a_rows = stream.clone_htod(&batch.a_rows).map_err(up)?;
    let c_init = stream.clone_htod(&batch.c_init).map_err(up)?;
    let mut out = stream
        .clone_htod(&vec![f32::NAN; batch.out_len])
        .map_err(up)?;
    {
        let (cases_ptr, _g1) = cases.device_ptr(&stream);
        let (images_ptr, _g2) = images.device_ptr(&stream);
        let (a_ptr, _g3) = a_rows.device_ptr(&stream);
        let (c_ptr, _g4) = c_init.device_ptr(&stream);
        let (out_ptr, _g5) = out.device_ptr_mut(&stream);
        let params = ffi::GsdpaWgmmaConformanceParams {
            cases: cases_ptr as *const ffi::GsdpaWgmmaCase,
            images: images_ptr as *const u8,
            a_rows: a_ptr as *const u16,
            c_init: c_ptr as *const f32,
            out: out_ptr as *mut f32,
        };
        gpu.launch(&stream, &wgmma_config(batch.cases.len()), &params)?;
    }
    let result = super::download(&stream, &out)?;
    Ok(result)
}

/// [`run_tma_on_emulator`] on the GPU, for load cases only (store cases are refused): each case's map is
/// encoded by the driver over a device copy of `tensor`.
pub fn run_tma_loads_on_gpu(
    gpu: &CudaBackend,
    tensor: &[u8],
    cases: &[TmaCase],
) -> Result<TmaResults> {
    if cases.iter().any(|c| c.store.is_some()) {
        return Err(GsdpaError::InvalidArgument(
            "run_tma_loads_on_gpu runs load cases only".into(),
        ));
    }
    let stream = gpu.context().default_stream();
    let up = |e| cuda_error("upload", e);
    let source = stream.clone_htod(tensor).map_err(up)?;
    let (source_ptr, _g0) = source.device_ptr(&stream);
    let mut ffi_cases = Vec::new();
    let mut out_len = 0usize;
    for case in cases {
        let mut map = case.map.clone();
        map.global_address = source_ptr;
        let mut coords = [0i32; 5];
        coords[..case.coords.len()].copy_from_slice(&case.coords);
        ffi_cases.push(ffi::GsdpaTmaCase {
            map: map.encode_cuda(gpu)?,
            coords,
            rank: map.rank() as u32,
            box_bytes: map.box_bytes(),
            is_store: 0,
            reduce_add: 0,
            pad: 0,
            out_offset: out_len as u64,
        });
        out_len = (out_len + map.box_bytes() as usize).next_multiple_of(16);
    }
    // SAFETY: GsdpaTmaCase is #[repr(C)] plain data (its map 64-byte aligned, as the device copy is).
    let case_bytes = unsafe {
        std::slice::from_raw_parts(
            ffi_cases.as_ptr().cast::<u8>(),
            std::mem::size_of_val(ffi_cases.as_slice()),
        )
    };
    let cases_buffer = stream.clone_htod(case_bytes).map_err(up)?;
    let image = stream.alloc_zeros::<u8>(16).map_err(up)?;
    let mut out = stream
        .clone_htod(&vec![0xa5u8; out_len.max(16)])
        .map_err(up)?;
    {
        let (cases_ptr, _g1) = cases_buffer.device_ptr(&stream);
        let (image_ptr, _g2) = image.device_ptr(&stream);
        let (out_ptr, _g3) = out.device_ptr_mut(&stream);
        let params = ffi::GsdpaTmaConformanceParams {
            cases: cases_ptr as *const ffi::GsdpaTmaCase,
            image: image_ptr as *const u8,
            out: out_ptr as *mut u8,
        };
        let config = LaunchConfig {
            kernel: "gsdpa_conformance_tma".into(),
            grid: [ffi_cases.len() as u32, 1, 1],
            block: [THREADS, 1, 1],
            shared_bytes: ffi::GSDPA_TMA_CONF_SMEM,
        };
        gpu.launch(&stream, &config, &params)?;
    }
    let dump = super::download(&stream, &out)?;
    Ok(ffi_cases
        .iter()
        .map(|c| dump[c.out_offset as usize..(c.out_offset + c.box_bytes as u64) as usize].to_vec())
        .collect())
}

/// [`run_mbarrier_on_emulator`] on the GPU.
pub fn run_mbarrier_on_gpu(gpu: &CudaBackend, rounds: u32) -> Result<Vec<u32>> {
    let stream = gpu.context().default_stream();
    let words = ffi::GSDPA_MBARRIER_CONF_WORDS as usize;
    let mut out = stream
        .clone_htod(&vec![u32::MAX; rounds as usize * words])
        .map_err(|e| cuda_error("upload", e))?;
    {
        let (out_ptr, _g) = out.device_ptr_mut(&stream);
        let params = ffi::GsdpaMbarrierConformanceParams {
            rounds,
            out: out_ptr as *mut u32,
        };
        let config = LaunchConfig {
            kernel: "gsdpa_conformance_mbarrier".into(),
            grid: [1, 1, 1],
            block: [THREADS, 1, 1],
            shared_bytes: 8 * ffi::GSDPA_MBARRIER_CONF_ROUNDS,
        };
        gpu.launch(&stream, &config, &params)?;
    }
    let result = super::download(&stream, &out)?;
    Ok(result)
}

/// [`run_stmatrix_on_emulator`] on the GPU.
pub fn run_stmatrix_on_gpu(gpu: &CudaBackend) -> Result<Vec<u32>> {
    let stream = gpu.context().default_stream();
    let mut out = stream
        .alloc_zeros::<u32>(ffi::GSDPA_STMATRIX_CONF_WORDS as usize)
        .map_err(|e| cuda_error("alloc", e))?;
    {
        let (out_ptr, _g) = out.device_ptr_mut(&stream);
        let params = ffi::GsdpaStmatrixConformanceParams {
            out: out_ptr as *mut u32,
        };
        let config = LaunchConfig {
            kernel: "gsdpa_conformance_stmatrix".into(),
            grid: [1, 1, 1],
            block: [32, 1, 1],
            shared_bytes: 2048,
        };
        gpu.launch(&stream, &config, &params)?;
    }
    let result = super::download(&stream, &out)?;
    Ok(result)
}
