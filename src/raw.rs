//! The raw entry point: the forward and backward on a driver stream over device addresses, for engines
//! on another cudarc version or a fork, with their own allocators, or behind a C ABI.
//!
//! The tensors are [`RawMemory`] (a device address and a length in elements) with the usual
//! [`Layout`](crate::Layout) (shape and strides in elements), in the same [`ForwardArgs`] /
//! [`BackwardArgs`] structs as every backend, and they go through the same validation
//! ([`crate::validate_forward`], [`crate::validate_backward`]): shapes, strides, alignment, overlaps,
//! sizes and the problem itself are checked and every failure is a typed [`GsdpaError`]. What cannot be
//! checked from an address is the caller's promise, the safety contract of [`forward`] and [`backward`].
//! [`check_forward`] and [`check_backward`] run that validation alone (on any host, no GPU needed).
//!
//! The kernels come from a [`CudaBackend`] (its module is loaded into one context, the one the stream
//! and the buffers must belong to): `CudaBackend::new(ordinal)` uses the device's primary context, the
//! one the runtime API and most engines use; `CudaBackend::from_context` takes a cudarc context.

use std::marker::PhantomData;

use cudarc::driver::sys::CUstream;

use crate::backend::{BackwardArgs, BackwardOptions, ForwardArgs};
use crate::cuda::CudaBackend;
use crate::error::{GsdpaError, Result};
use crate::problem::AttentionProblem;
use crate::tensor::{Element, Memory};
use crate::validate;

/// Device memory given by its address and its length in elements of `T`, as an engine's allocator
/// hands it out. Building one promises nothing; the functions that launch kernels on it are `unsafe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawMemory<T> {
    addr: u64,
    len: usize,
    _elem: PhantomData<fn() -> T>,
}

impl<T> RawMemory<T> {
    /// `len` elements of `T` at device address `addr`.
    pub fn new(addr: u64, len: usize) -> Self {
        RawMemory {
            addr,
            len,
            _elem: PhantomData,
        }
    }

    /// The device address of element 0.
    pub fn device_addr(&self) -> u64 {
        self.addr
    }
}

impl<T> Memory for RawMemory<T> {
    type Elem = T;
    fn addr(&self) -> usize {
        self.addr as usize
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// Forward arguments over raw device memory.
pub type RawForwardArgs<T> = ForwardArgs<RawMemory<T>, RawMemory<T>, RawMemory<f32>>;
/// Backward arguments over raw device memory.
pub type RawBackwardArgs<T> = BackwardArgs<RawMemory<T>, RawMemory<f32>, RawMemory<T>>;

/// Device addresses of a varlen problem's `[batch + 1]` i32 prefix sums, equal to the host copies in
/// the problem (which are what gets validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawSeqlens {
    pub q: u64,
    pub k: u64,
}

/// The device prefix sums a launch takes: required exactly for varlen problems (the messages of the
/// cudarc path).
fn seqlens(problem: &AttentionProblem, seqlens: Option<RawSeqlens>) -> Result<(u64, u64)> {
    match (&problem.varlen, seqlens) {
        (None, None) => Ok((0, 0)),
        (None, Some(_)) => Err(GsdpaError::InvalidArgument(
            "device cu_seqlens were given for a problem that is not varlen".into(),
        )),
        (Some(_), None) => Err(GsdpaError::InvalidArgument(
            "a varlen problem needs the device cu_seqlens (RawSeqlens)".into(),
        )),
        (Some(_), Some(s)) if s.q == 0 || s.k == 0 => Err(GsdpaError::InvalidArgument(
            "the device cu_seqlens addresses must not be null".into(),
        )),
        (Some(_), Some(s)) => Ok((s.q, s.k)),
    }
}

/// The validation [`forward`] runs, alone: `Ok` when the shapes, strides, alignment, overlaps and sizes
/// are what the kernels need, the typed error [`CudaBackend::forward`] would return otherwise.
pub fn check_forward<T: Element>(
    problem: &AttentionProblem,
    args: &RawForwardArgs<T>,
    cu_seqlens: Option<RawSeqlens>,
) -> Result<()> {
    validate::validate_forward(problem, args)?;
    seqlens(problem, cu_seqlens).map(drop)
}

/// The validation [`backward`] runs, alone (see [`check_forward`]); `workspace` is the address and
/// length in bytes of the caller's workspace.
pub fn check_backward<T: Element>(
    problem: &AttentionProblem,
    args: &RawBackwardArgs<T>,
    workspace: RawMemory<u8>,
    cu_seqlens: Option<RawSeqlens>,
    options: BackwardOptions,
) -> Result<()> {
    let mut params = validate::validate_backward(problem, args, options.deterministic)?;
    validate::set_backward_workspace(&mut params, problem, workspace.addr(), workspace.len())?;
    seqlens(problem, cu_seqlens).map(drop)
}

/// The fused forward ([`CudaBackend::forward`]) on a raw stream over raw device memory: validated
/// like every call, then enqueued on `stream`; no allocation, no synchronization.
///
/// # Safety
/// The caller promises what an address cannot show:
/// - `stream` is a live CUDA stream (or null, the legacy default stream) of the context `backend`
///   was created in, and stays alive until the kernels have run;
/// - every tensor's `RawMemory` is device memory of that context, at least `len` elements of its type
///   from its address, allocated and alive until the kernels have run (so not freed, nor reused by an
///   allocator, before the stream reaches them);
/// - no other work reads the outputs (`y`, `o`, `lse`, the diagnostics) or writes any of the tensors
///   while the kernels run, unless ordered with `stream` (events or the same stream);
/// - `cu_seqlens`, for a varlen problem, addresses `[batch + 1]` i32 values on the device equal to
///   the problem's host copies.
///
/// Everything else (shapes, strides, 16-byte alignment, overlaps between outputs and inputs, sizes,
/// the problem) is checked, and a violation is a typed error with nothing launched.
pub unsafe fn forward<T: Element>(
    backend: &CudaBackend,
    stream: CUstream,
    problem: &AttentionProblem,
    args: &RawForwardArgs<T>,
    cu_seqlens: Option<RawSeqlens>,
) -> Result<()> {
    // SAFETY: the caller's contract above is the one forward_on needs.
    unsafe { backend.forward_on(stream, problem, args, || seqlens(problem, cu_seqlens)) }
}

/// The backward ([`CudaBackend::backward`]) on a raw stream over raw device memory: validated like
/// every call, then enqueued on `stream`. `workspace` holds [`crate::backward_workspace_bytes`] bytes,
/// 256-byte aligned (checked).
///
/// # Safety
/// As [`forward`], for the backward's tensors (inputs `q`, `k`, `v`, `g`, `y`, `o`, `dy`, `lse`;
/// outputs `dq`, `dk`, `dv`, `dg`), and the workspace is device memory of the same context, of its
/// stated length, that nothing else uses until the kernels have run.
pub unsafe fn backward<T: Element>(
    backend: &CudaBackend,
    stream: CUstream,
    problem: &AttentionProblem,
    args: &RawBackwardArgs<T>,
    workspace: RawMemory<u8>,
    cu_seqlens: Option<RawSeqlens>,
    options: BackwardOptions,
) -> Result<()> {
    // SAFETY: the caller's contract above is the one backward_on needs.
    unsafe {
        backend.backward_on(
            stream,
            problem,
            args,
            (workspace.device_addr(), workspace.len()),
            || seqlens(problem, cu_seqlens),
            options,
        )
    }
}
