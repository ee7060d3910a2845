//! The emulator backend: the real CUDA kernels, compiled for the host, run on the CPU.
//!
//! `kernels/*.cu` are compiled a second time as C++ against `kernels/emu`, an emulation of the CUDA
//! primitives they use (threads as fibers, warp collectives as rendezvous of 32 lanes, `mma.sync`,
//! `ldmatrix` and `cp.async` with their exact PTX semantics). This backend is how the kernels are tested
//! on machines without a GPU, and users can run it on their CPU-only CI.
//!
//! It is built to find the bugs a GPU would hide:
//! - every buffer the kernel sees is a copy placed against an inaccessible guard page, so reading or
//!   writing past the end of a tensor fails the launch with an error instead of corrupting memory;
//! - every output element is poisoned (NaN) before the launch, so an element the kernel never writes
//!   shows up; shared memory and `cp.async` destinations are poisoned too;
//! - `GSDPA_EMU_SEED` (or [`Emulator::with_seed`]) permutes the order in which threads run between
//!   synchronisation points: a kernel with a race gives seed-dependent results;
//! - divergent warp collectives, deadlocks, misaligned `ldmatrix` rows and faults become
//!   [`GsdpaError::Emulator`] errors naming the kernel, block, thread and source line;
//! - a shared-memory race detector (on unless `GSDPA_EMU_RACECHECK=0`, or
//!   [`Emulator::with_racecheck`]) reports two threads' conflicting accesses to a shared byte that no
//!   `__syncthreads` or `__syncwarp` orders, naming both source lines;
//! - a launch that a GPU of the target architecture ([`Emulator::with_arch`], `GSDPA_EMU_ARCH`, default
//!   sm_80) would refuse fails with [`GsdpaError::LaunchResources`], as on the CUDA backend.
//!
//! docs/emulator.md describes what is emulated and checked, and what is not.

use std::ffi::{c_char, c_void, CString};

use crate::arch::{self, KernelLimits, TargetArch};
use crate::backend::{
    BackwardOptions, ForwardKernel, HostBackend, HostBackwardArgs, HostForwardArgs, HostGateArgs,
    HostGateBackwardArgs,
};
use crate::error::{GsdpaError, Result};
use crate::ffi;
use crate::launch::{self, LaunchConfig};
use crate::problem::{Activation, AttentionProblem, GateMode};
use crate::tensor::{Element, Layout, Tensor};
use crate::validate;

extern "C" {
    fn gsdpa_emu_launch_with_flags(
        kernel: *const c_char,
        grid: *const u32,
        block: *const u32,
        dynamic_smem_bytes: usize,
        params: *const c_void,
        params_size: usize,
        seed: u64,
        worker_threads: u32,
        flags: u32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn gsdpa_emu_alloc_guarded(bytes: usize, alignment: usize) -> *mut c_void;
    fn gsdpa_emu_free_guarded(ptr: *mut c_void);
    fn gsdpa_emu_has_kernel(kernel: *const c_char) -> i32;
    fn gsdpa_emu_kernel_max_threads(kernel: *const c_char) -> u32;
}

/// `gsdpa_emu_launch_with_flags` flag: run the shared-memory race detector (kernels/emu/emu.h).
const EMU_RACECHECK: u32 = 1;
/// `gsdpa_emu_launch_with_flags` flag: hand out the grid's blocks last to first.
const EMU_REVERSE_BLOCKS: u32 = 2;

/// Runs the crate's CUDA kernels on the CPU.
#[derive(Debug, Clone)]
pub struct Emulator {
    seed: u64,
    worker_threads: u32,
    arch: TargetArch,
    racecheck: bool,
    /// Blocks run last to first ([`Emulator::with_reverse_block_order`]).
    reverse_blocks: bool,
    forward_kernel: ForwardKernel,
    /// The Hopper forward stores Y and O from registers even where TMA could store them.
    sm90_register_store: bool,
    /// The kernel the latest forward launched (shared by clones).
    last_forward_kernel: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// An unusable `GSDPA_EMU_ARCH` or `GSDPA_EMU_RACECHECK`, reported by every launch.
    env_error: Option<GsdpaError>,
}

impl Default for Emulator {
    fn default() -> Self {
        Self::new()
    }
}

impl Emulator {
    /// An emulator using every core, with the thread order seed from `GSDPA_EMU_SEED` (0, the natural
    /// order, when unset or unparsable), the target architecture from `GSDPA_EMU_ARCH` (e.g. `sm_86`;
    /// default sm_80) and the race detector on unless `GSDPA_EMU_RACECHECK=0`. An unusable
    /// `GSDPA_EMU_ARCH` or `GSDPA_EMU_RACECHECK` makes every launch fail with
    /// [`GsdpaError::InvalidArgument`] rather than be silently ignored.
    pub fn new() -> Self {
        let seed = std::env::var("GSDPA_EMU_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let mut env_error = None;
        let arch = match std::env::var("GSDPA_EMU_ARCH") {
            Ok(text) if !text.trim().is_empty() => TargetArch::parse(&text).unwrap_or_else(|e| {
                env_error = Some(GsdpaError::InvalidArgument(format!("GSDPA_EMU_ARCH: {e}")));
                TargetArch::SM80
            }),
            _ => TargetArch::SM80,
        };
        let racecheck = match std::env::var("GSDPA_EMU_RACECHECK")
            .as_deref()
            .map(str::trim)
        {
            Err(_) | Ok("") | Ok("1") => true,
            Ok("0") => false,
            Ok(other) => {
                env_error = Some(GsdpaError::InvalidArgument(format!(
                    "GSDPA_EMU_RACECHECK must be 0 or 1, got `{other}`"
                )));
                true
            }
        };
        Emulator {
            seed,
            worker_threads: 0,
            arch,
            racecheck,
            reverse_blocks: false,
            forward_kernel: ForwardKernel::Auto,
            sm90_register_store: false,
            last_forward_kernel: Default::default(),
            env_error,
        }
    }

    /// Sets the GPU architecture whose launch limits the emulator enforces (dynamic shared memory,
    /// registers: see [`arch::check_resources`]) and whose shared memory per block the backward's tiles
    /// are chosen from ([`launch::backward_tiles`]).
    pub fn with_arch(mut self, arch: TargetArch) -> Self {
        self.arch = arch;
        self
    }

    /// Selects the forward kernel. Under [`ForwardKernel::Auto`] (the default) an sm_90 target
    /// ([`Emulator::with_arch`]`(TargetArch::SM90)`) runs the Hopper kernel (kernels/forward_sm90.cu)
    /// for the calls it supports, any other target the mma.sync kernel; [`ForwardKernel::Hopper`] needs an
    /// sm_90 target. docs/hopper-forward.md lists the fallbacks.
    pub fn with_forward_kernel(mut self, kernel: ForwardKernel) -> Self {
        self.forward_kernel = kernel;
        self
    }

    /// Makes the Hopper forward store Y and O from registers, as it does for outputs whose layout a TMA
    /// tensor map cannot express (docs/hopper-forward.md), instead of staging them in shared memory for a
    /// TMA store. For tests of that fallback: validated calls always have TMA-expressible outputs.
    pub fn with_sm90_register_store(mut self, on: bool) -> Self {
        self.sm90_register_store = on;
        self
    }

    /// The forward kernel selection.
    pub fn forward_kernel(&self) -> ForwardKernel {
        self.forward_kernel
    }

    /// The name of the kernel the latest forward of this emulator (or of a clone) launched, `None`
    /// before any forward launch.
    pub fn last_forward_kernel(&self) -> Option<String> {
        self.last_forward_kernel
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default()
    }

    /// Whether forwards run the Hopper kernel where it supports the call.
    fn wants_hopper(&self) -> Result<bool> {
        let sm90 = self.arch.major == 9;
        match self.forward_kernel {
            ForwardKernel::Auto => Ok(sm90),
            ForwardKernel::MmaSync => Ok(false),
            ForwardKernel::Hopper if sm90 => Ok(true),
            ForwardKernel::Hopper => Err(GsdpaError::InvalidArgument(format!(
                "the Hopper forward needs an sm_90 target, the emulator targets sm_{}{}",
                self.arch.major, self.arch.minor
            ))),
        }
    }

    fn record_forward_kernel(&self, config: &LaunchConfig) {
        if let Ok(mut last) = self.last_forward_kernel.lock() {
            *last = Some(config.kernel.clone());
        }
    }

    /// Turns the shared-memory race detector on or off (it costs time; the test suite runs with it on).
    pub fn with_racecheck(mut self, on: bool) -> Self {
        self.racecheck = on;
        self
    }

    /// Runs each grid's blocks last to first instead of first to last. A kernel whose blocks write only
    /// their own outputs gives the same results either way; one that writes into another block's rows
    /// (which that block overwrites when it runs later in the natural order) is caught by a test that
    /// compares both orders or checks against a reference in this one.
    pub fn with_reverse_block_order(mut self, on: bool) -> Self {
        self.reverse_blocks = on;
        self
    }

    /// The target architecture whose launch limits are enforced.
    pub fn arch(&self) -> TargetArch {
        self.arch
    }

    /// True when the shared-memory race detector runs.
    pub fn racecheck(&self) -> bool {
        self.racecheck
    }

    /// Sets the seed that permutes the order in which threads run between synchronisation points.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Limits the number of OS threads that run blocks (0: one per core).
    pub fn with_worker_threads(mut self, threads: u32) -> Self {
        self.worker_threads = threads;
        self
    }

    /// The thread order seed in use.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// True when `kernel` is compiled into this build's emulator.
    pub fn has_kernel(kernel: &str) -> bool {
        let Ok(name) = CString::new(kernel) else {
            return false;
        };
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        unsafe { gsdpa_emu_has_kernel(name.as_ptr()) != 0 }
    }

    /// The `__launch_bounds__` `kernel` was registered with (`GSDPA_REGISTER_KERNEL`), or `None` when it
    /// is not compiled into this build's emulator.
    pub fn kernel_max_threads(kernel: &str) -> Option<u32> {
        let name = CString::new(kernel).ok()?;
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let n = unsafe { gsdpa_emu_kernel_max_threads(name.as_ptr()) };
        (n != 0).then_some(n)
    }

    /// What the launch check knows of `kernel` on the emulator's target: its registered
    /// `__launch_bounds__`, and its registers from the build's ptxas table (unchecked without nvcc).
    pub fn kernel_limits(&self, kernel: &str) -> KernelLimits {
        KernelLimits {
            max_threads: Self::kernel_max_threads(kernel),
            registers: KernelLimits::registers_from_ptxas(kernel, self.arch),
        }
    }

    /// Launches `config.kernel` with `params` passed by value.
    ///
    /// # Safety
    /// Every pointer in `params` must point to memory that stays valid for the whole launch and is
    /// large enough for every access the kernel makes with these params.
    pub(crate) unsafe fn launch<P: Copy>(&self, config: &LaunchConfig, params: &P) -> Result<()> {
        if let Some(e) = &self.env_error {
            return Err(e.clone());
        }
        if config.is_empty() {
            return Ok(());
        }
        let name = CString::new(config.kernel.as_str())
            .map_err(|_| GsdpaError::InvalidArgument("kernel name contains a NUL byte".into()))?;
        arch::check_resources(config, self.arch, &self.kernel_limits(&config.kernel))?;
        let mut err = vec![0 as c_char; 2048];
        // SAFETY: the arrays and the params outlive the call; the caller vouches for the params' pointers.
        let rc = unsafe {
            gsdpa_emu_launch_with_flags(
                name.as_ptr(),
                config.grid.as_ptr(),
                config.block.as_ptr(),
                config.shared_bytes as usize,
                (params as *const P).cast(),
                std::mem::size_of::<P>(),
                self.seed,
                self.worker_threads,
                (if self.racecheck { EMU_RACECHECK } else { 0 })
                    | (if self.reverse_blocks {
                        EMU_REVERSE_BLOCKS
                    } else {
                        0
                    }),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let bytes: Vec<u8> = err
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        Err(GsdpaError::Emulator(
            String::from_utf8_lossy(&bytes).into_owned(),
        ))
    }

    /// The standalone gate `Y = O * act(G)` ([`crate::GateArgs`]), validated like every call, with
    /// guarded copies of the tensors and `y` poisoned before the launch.
    pub fn gate<T: Element>(
        &self,
        gate: GateMode,
        activation: Activation,
        args: &mut HostGateArgs<'_, T>,
    ) -> Result<()> {
        self.gate_on_grid(gate, activation, args, None)
    }

    /// The standalone gate backward (`d_o = dY * act(G)`, `dg = dY * O * act'(G)`,
    /// [`crate::GateBackwardArgs`]), validated like every call, with guarded copies of the tensors and the
    /// outputs poisoned before the launch.
    pub fn gate_backward<T: Element>(
        &self,
        gate: GateMode,
        activation: Activation,
        args: &mut HostGateBackwardArgs<'_, T>,
    ) -> Result<()> {
        self.gate_backward_on_grid(gate, activation, args, None)
    }

    /// Testing knob: [`Emulator::gate`] launched on `grid` instead of the launcher's grid, to exercise
    /// the kernel's grid-stride loop with fewer blocks than rows, and blocks of other sizes.
    #[doc(hidden)]
    pub fn gate_on_grid<T: Element>(
        &self,
        gate: GateMode,
        activation: Activation,
        args: &mut HostGateArgs<'_, T>,
        grid: Option<GateGrid>,
    ) -> Result<()> {
        let mut params = validate::validate_gate(gate, activation, args)?;
        let (rows, heads, head_dim) = (params.seqlen, params.heads, params.head_dim);
        if rows == 0 || heads == 0 || head_dim == 0 {
            return Ok(());
        }
        let config = launch::gate(T::DTYPE, rows as usize, heads as usize, head_dim as usize)?;
        let config = GateGrid::apply(grid, config)?;
        let o = input_copy(&args.o)?;
        let g = optional_input_copy(&args.g)?;
        let y = output_copy(&args.y)?;
        params.o = o.ptr();
        params.g = ptr_or_null(&g);
        params.y = y.ptr();
        // SAFETY: every pointer in params refers to a guarded buffer alive until the end of this function,
        // sized like the validated tensor it copies.
        unsafe { self.launch::<ffi::GsdpaGateParams>(&config, &params)? };
        y.copy_to(args.y.data);
        Ok(())
    }

    /// Testing knob: [`Emulator::gate_backward`] launched on `grid` instead of the launcher's grid (see
    /// [`Emulator::gate_on_grid`]). The kernel's contract asks for whole warps; with other block sizes it
    /// writes nothing, which the poisoned outputs then show.
    #[doc(hidden)]
    pub fn gate_backward_on_grid<T: Element>(
        &self,
        gate: GateMode,
        activation: Activation,
        args: &mut HostGateBackwardArgs<'_, T>,
        grid: Option<GateGrid>,
    ) -> Result<()> {
        let mut params = validate::validate_gate_backward(gate, activation, args)?;
        let (rows, heads, head_dim) = (params.seqlen, params.heads, params.head_dim);
        if rows == 0 || heads == 0 || head_dim == 0 {
            return Ok(());
        }
        let config =
            launch::gate_backward(T::DTYPE, rows as usize, heads as usize, head_dim as usize)?;
        let config = GateGrid::apply(grid, config)?;
        // Validation leaves o null when the kernel must not read it (no gate): keep it null.
        let o = if params.o.is_null() {
            None
        } else {
            Some(input_copy(&args.o)?)
        };
        let g = optional_input_copy(&args.g)?;
        let dy = input_copy(&args.dy)?;
        let d_o = output_copy(&args.d_o)?;
        let dg = optional_output_copy(&args.dg)?;
        params.o = ptr_or_null(&o);
        params.g = ptr_or_null(&g);
        params.dy = dy.ptr();
        params.d_o = d_o.ptr();
        params.dg = ptr_or_null(&dg);
        // SAFETY: every pointer in params is null (and unread by the kernel for this gate mode) or refers
        // to a guarded buffer alive until the end of this function, sized like the validated tensor it
        // copies.
        unsafe { self.launch::<ffi::GsdpaGateBackwardParams>(&config, &params)? };
        d_o.copy_to(args.d_o.data);
        if let (Some(buffer), Some(tensor)) = (&dg, &mut args.dg) {
            buffer.copy_to(tensor.data);
        }
        Ok(())
    }
}

/// Host memory whose last byte touches an inaccessible guard page.
pub(crate) struct GuardedBuffer {
    ptr: *mut u8,
    bytes: usize,
}

impl GuardedBuffer {
    fn new(bytes: usize, alignment: usize) -> Result<Self> {
        // SAFETY: plain allocation; a null result is handled.
        let ptr = unsafe { gsdpa_emu_alloc_guarded(bytes.max(1), alignment) }.cast::<u8>();
        if ptr.is_null() {
            return Err(GsdpaError::Emulator(format!(
                "could not map {bytes} bytes of guarded memory"
            )));
        }
        Ok(GuardedBuffer { ptr, bytes })
    }

    /// A guarded copy of `data`.
    pub(crate) fn copy_of<T: Copy>(data: &[T]) -> Result<Self> {
        let bytes = std::mem::size_of_val(data);
        let buffer = Self::new(bytes, 16)?;
        // SAFETY: the buffer holds at least `bytes` bytes and does not overlap `data`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr().cast::<u8>(), buffer.ptr, bytes) };
        Ok(buffer)
    }

    /// A guarded copy of an output's storage with every element of the tensor view set to all-ones
    /// bits (NaN in bf16, f16 and f32): anything the kernel does not write stays NaN. Elements of the
    /// storage outside the view keep their values, as they would on the GPU.
    pub(crate) fn poisoned_output<T: Copy>(data: &[T], layout: &Layout) -> Result<Self> {
        let buffer = Self::copy_of(data)?;
        let size = std::mem::size_of::<T>();
        layout.for_each_offset(|_, offset| {
            // SAFETY: validation checked that every offset of the view lies inside `data`.
            unsafe { std::ptr::write_bytes(buffer.ptr.add(offset * size), 0xff, size) };
        });
        Ok(buffer)
    }

    /// Backward workspace: 256-byte aligned (as the CUDA backend requires of callers) and poisoned, so a
    /// kernel that reads workspace its predecessor did not write sees NaN.
    pub(crate) fn workspace(bytes: usize) -> Result<Self> {
        let buffer = Self::new(bytes, crate::validate::WORKSPACE_ALIGN)?;
        // SAFETY: the buffer holds at least `bytes` bytes.
        unsafe { std::ptr::write_bytes(buffer.ptr, 0xff, bytes) };
        Ok(buffer)
    }

    pub(crate) fn ptr(&self) -> *mut c_void {
        self.ptr.cast()
    }

    /// Copies the buffer back into `out` (same length it was made from).
    pub(crate) fn copy_to<T: Copy>(&self, out: &mut [T]) {
        let bytes = std::mem::size_of_val(out).min(self.bytes);
        // SAFETY: both ranges hold `bytes` bytes and do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr, out.as_mut_ptr().cast::<u8>(), bytes) };
    }
}

impl Drop for GuardedBuffer {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from gsdpa_emu_alloc_guarded and is freed once.
        unsafe { gsdpa_emu_free_guarded(self.ptr.cast()) };
    }
}

fn input_copy<T: Copy>(tensor: &Tensor<&[T]>) -> Result<GuardedBuffer> {
    GuardedBuffer::copy_of(tensor.data)
}

fn optional_input_copy<T: Copy>(tensor: &Option<Tensor<&[T]>>) -> Result<Option<GuardedBuffer>> {
    tensor.as_ref().map(input_copy).transpose()
}

fn output_copy<T: Copy>(tensor: &Tensor<&mut [T]>) -> Result<GuardedBuffer> {
    GuardedBuffer::poisoned_output(tensor.data, &tensor.layout)
}

fn optional_output_copy<T: Copy>(
    tensor: &Option<Tensor<&mut [T]>>,
) -> Result<Option<GuardedBuffer>> {
    tensor.as_ref().map(output_copy).transpose()
}

fn diagnostics_output_copy(tensor: Option<&Tensor<&mut [f32]>>) -> Result<Option<GuardedBuffer>> {
    tensor.map(output_copy).transpose()
}

fn ptr_or_null(buffer: &Option<GuardedBuffer>) -> *mut c_void {
    buffer
        .as_ref()
        .map_or(std::ptr::null_mut(), GuardedBuffer::ptr)
}

/// Guarded copies of the problem's cu_seqlens (null pointers when not varlen).
fn cu_seqlens_copies(
    problem: &AttentionProblem,
) -> Result<(Option<GuardedBuffer>, Option<GuardedBuffer>)> {
    match &problem.varlen {
        None => Ok((None, None)),
        Some(v) => Ok((
            Some(GuardedBuffer::copy_of(&v.cu_seqlens_q)?),
            Some(GuardedBuffer::copy_of(&v.cu_seqlens_k)?),
        )),
    }
}

impl HostBackend for Emulator {
    fn name(&self) -> &'static str {
        "emulator"
    }

    fn forward<T: Element>(
        &self,
        problem: &AttentionProblem,
        args: &mut HostForwardArgs<'_, T>,
    ) -> Result<()> {
        let mut params = validate::validate_forward(problem, args)?;
        let gate_stats_requested = !params.gate_stats.is_null();
        if problem.is_empty() && !gate_stats_requested {
            return Ok(());
        }
        let config = launch::forward(problem, T::DTYPE)?;
        let hopper = self.wants_hopper()?;
        let q = input_copy(&args.q)?;
        let k = input_copy(&args.k)?;
        let v = input_copy(&args.v)?;
        let g = optional_input_copy(&args.g)?;
        let y = output_copy(&args.y)?;
        let o = optional_output_copy(&args.o)?;
        let lse = optional_output_copy(&args.lse)?;
        let diagnostics = args.diagnostics.as_ref();
        let sink_mass = diagnostics_output_copy(diagnostics.and_then(|d| d.sink_mass.as_ref()))?;
        let gate_stats = diagnostics_output_copy(diagnostics.and_then(|d| d.gate_stats.as_ref()))?;
        let gate_workspace =
            diagnostics_output_copy(diagnostics.and_then(|d| d.gate_workspace.as_ref()))?;
        let (cu_q, cu_k) = cu_seqlens_copies(problem)?;
        params.q = q.ptr();
        params.k = k.ptr();
        params.v = v.ptr();
        params.g = ptr_or_null(&g);
        params.y = y.ptr();
        params.o = ptr_or_null(&o);
        params.lse = ptr_or_null(&lse).cast();
        params.cu_seqlens_q = ptr_or_null(&cu_q).cast();
        params.cu_seqlens_k = ptr_or_null(&cu_k).cast();
        params.sink_mass = ptr_or_null(&sink_mass).cast();
        params.gate_stats = ptr_or_null(&gate_stats).cast();
        params.gate_partials = ptr_or_null(&gate_workspace).cast();
        // SAFETY: every pointer in params refers to a guarded buffer alive until the end of this function,
        // sized like the validated tensor it copies.
        if problem.is_empty() {
            // No query rows: no partials, and the statistics kernel writes 0 for every sequence.
            params.gate_partials_per_head = 0;
        } else if hopper && launch::hopper_forward_unsupported(problem, &params).is_none() {
            if !params.gate_partials.is_null() {
                // The Hopper kernel's partials layout (the workspace holds either kernel's).
                params.gate_partials_per_head = launch::gate_partials_per_head_sm90(problem)?
                    .try_into()
                    .map_err(|_| GsdpaError::SizeOverflow("gate partials per head".into()))?;
            }
            let mut maps = launch::forward_sm90_maps(problem, T::DTYPE, &params)?;
            if self.sm90_register_store {
                (maps.y, maps.o) = (None, None);
            }
            let [q_map, k_map, v_map] = &maps.qkv;
            let sm90 = ffi::GsdpaFwdSm90Params {
                fwd: params,
                q_map: q_map.encode_emulator()?,
                k_map: k_map.encode_emulator()?,
                v_map: v_map.encode_emulator()?,
                g_map: match &maps.g {
                    Some(g) => g.encode_emulator()?,
                    None => ffi::GsdpaTensorMap { opaque: [0; 16] },
                },
                y_map: match &maps.y {
                    Some(y) => y.encode_emulator()?,
                    None => ffi::GsdpaTensorMap { opaque: [0; 16] },
                },
                o_map: match &maps.o {
                    Some(o) => o.encode_emulator()?,
                    None => ffi::GsdpaTensorMap { opaque: [0; 16] },
                },
                tma_store: maps.tma_store(),
                ..Default::default()
            };
            let config = launch::forward_sm90(problem, T::DTYPE)?;
            self.record_forward_kernel(&config);
            // SAFETY: as above; the tensor maps address the same guarded buffers as params.
            unsafe { self.launch::<ffi::GsdpaFwdSm90Params>(&config, &sm90)? };
        } else {
            self.record_forward_kernel(&config);
            unsafe { self.launch::<ffi::GsdpaFwdParams>(&config, &params)? };
        }
        let stats_config = launch::gate_stats(problem)?;
        if gate_stats_requested && !stats_config.is_empty() {
            // SAFETY: as above; the statistics kernel reads the partials the forward just wrote.
            unsafe { self.launch::<ffi::GsdpaFwdParams>(&stats_config, &params)? };
        }
        y.copy_to(args.y.data);
        if let (Some(buffer), Some(tensor)) = (&o, &mut args.o) {
            buffer.copy_to(tensor.data);
        }
        if let (Some(buffer), Some(tensor)) = (&lse, &mut args.lse) {
            buffer.copy_to(tensor.data);
        }
        if let Some(diagnostics) = args.diagnostics.as_mut() {
            for (buffer, tensor) in [
                (&sink_mass, &mut diagnostics.sink_mass),
                (&gate_stats, &mut diagnostics.gate_stats),
                (&gate_workspace, &mut diagnostics.gate_workspace),
            ] {
                if let (Some(buffer), Some(tensor)) = (buffer, tensor) {
                    buffer.copy_to(tensor.data);
                }
            }
        }
        Ok(())
    }

    fn backward<T: Element>(
        &self,
        problem: &AttentionProblem,
        args: &mut HostBackwardArgs<'_, T>,
        options: BackwardOptions,
    ) -> Result<()> {
        let mut params = validate::validate_backward(problem, args, options.deterministic)?;
        let launches = launch::backward(
            problem,
            T::DTYPE,
            options,
            self.arch.max_dynamic_shared_bytes(),
        )?;
        let q = input_copy(&args.q)?;
        let k = input_copy(&args.k)?;
        let v = input_copy(&args.v)?;
        let g = optional_input_copy(&args.g)?;
        let y = input_copy(&args.y)?;
        let o = optional_input_copy(&args.o)?;
        let dy = input_copy(&args.dy)?;
        let lse = input_copy(&args.lse)?;
        let dq = output_copy(&args.dq)?;
        let dk = output_copy(&args.dk)?;
        let dv = output_copy(&args.dv)?;
        let dg = optional_output_copy(&args.dg)?;
        let (cu_q, cu_k) = cu_seqlens_copies(problem)?;
        let workspace_bytes = validate::backward_workspace_bytes(problem)?;
        let workspace = GuardedBuffer::workspace(workspace_bytes)?;
        params.q = q.ptr();
        params.k = k.ptr();
        params.v = v.ptr();
        params.g = ptr_or_null(&g);
        params.y = y.ptr();
        params.o = ptr_or_null(&o);
        params.dy = dy.ptr();
        params.lse = lse.ptr().cast();
        params.dq = dq.ptr();
        params.dk = dk.ptr();
        params.dv = dv.ptr();
        params.dg = ptr_or_null(&dg);
        params.cu_seqlens_q = ptr_or_null(&cu_q).cast();
        params.cu_seqlens_k = ptr_or_null(&cu_k).cast();
        validate::set_backward_workspace(
            &mut params,
            problem,
            workspace.ptr() as usize,
            workspace_bytes,
        )?;
        for config in &launches {
            // SAFETY: every pointer in params refers to a guarded buffer (or the workspace) alive until the
            // end of this function, sized like the validated tensor it copies.
            unsafe { self.launch::<ffi::GsdpaBwdParams>(config, &params)? };
        }
        dq.copy_to(args.dq.data);
        dk.copy_to(args.dk.data);
        dv.copy_to(args.dv.data);
        if let (Some(buffer), Some(tensor)) = (&dg, &mut args.dg) {
            buffer.copy_to(tensor.data);
        }
        Ok(())
    }
}
/// Testing knob of [`Emulator::gate_on_grid`] and [`Emulator::gate_backward_on_grid`]: a launch of
/// `blocks` blocks of `threads` threads in place of the launcher's grid.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateGrid {
    pub blocks: u32,
    /// Threads per block, 1 to `GSDPA_GATE_THREADS`.
    pub threads: u32,
}

impl GateGrid {
    /// `config` with the grid and block replaced by `grid`'s, when given.
    fn apply(grid: Option<GateGrid>, config: LaunchConfig) -> Result<LaunchConfig> {
        let Some(GateGrid { blocks, threads }) = grid else {
            return Ok(config);
        };
        if blocks == 0 || threads == 0 || threads > ffi::GSDPA_GATE_THREADS {
            return Err(GsdpaError::InvalidArgument(format!(
                "gate grid: {blocks} blocks of {threads} threads (need blocks >= 1 and 1 to {} threads)",
                ffi::GSDPA_GATE_THREADS
            )));
        }
        Ok(LaunchConfig {
            grid: [blocks, 1, 1],
            block: [threads, 1, 1],
            ..config
        })
    }
}
