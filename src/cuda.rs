//! The CUDA backend: the fused kernels on an NVIDIA GPU, through cudarc.
//!
//! Built for engines' hot loops:
//! - every launch goes on the stream you pass, allocates no device memory and never synchronizes;
//! - workspace (the backward's dQ accumulator and friends) is sized by
//!   [`crate::backward_workspace_bytes`] and passed in by you;
//! - launches can be captured in CUDA graphs. cudarc's event tracking records events around every
//!   buffer use; disable it on the context (`ctx.disable_event_tracking()`) before capturing, and order
//!   your streams yourself, as you would for any captured kernel.
//!
//! The kernels come from the fatbin `build.rs` embedded (SASS for sm_80, sm_86, sm_89, sm_90a and PTX for
//! compute_80). Creating a backend never panics: no libcuda, no device or no kernels in this build are
//! typed errors.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, CudaView, CudaViewMut, DevicePtr,
    DevicePtrMut, DeviceRepr, DriverError, LaunchConfig as CudarcLaunchConfig, PushKernelArg,
};

use crate::backend::{BackwardArgs, BackwardOptions, ForwardArgs};
use crate::build_info;
use crate::error::{GsdpaError, Result};
use crate::ffi;
use crate::launch::{self, LaunchConfig};
use crate::problem::{AttentionProblem, GateMode};
use crate::tensor::{Element, Layout, Memory, Tensor};
use crate::validate;

fn cuda_error(what: &str, e: DriverError) -> GsdpaError {
    GsdpaError::Cuda(format!("{what}: {e:?}"))
}

/// Device memory as the validation layer sees it: an address and a length, borrowed for `'a`.
#[derive(Debug, Clone, Copy)]
pub struct DeviceMemory<'a, T> {
    addr: u64,
    len: usize,
    _borrow: PhantomData<&'a T>,
}

impl<T> DeviceMemory<'_, T> {
    /// A device address and a length in elements, as the validation layer sees them.
    pub(crate) fn new(addr: u64, len: usize) -> Self {
        DeviceMemory {
            addr,
            len,
            _borrow: PhantomData,
        }
    }
}

impl<T> Memory for DeviceMemory<'_, T> {
    type Elem = T;
    fn addr(&self) -> usize {
        self.addr as usize
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// Device cu_seqlens for varlen problems: the same prefix sums as the problem's host copy, in device
/// memory (the kernels read them; checking them against the host copy would need a synchronization).
pub struct CudaSeqlens<'a> {
    /// `[batch + 1]` query prefix sums.
    pub q: CudaView<'a, i32>,
    /// `[batch + 1]` key prefix sums.
    pub k: CudaView<'a, i32>,
}

/// Forward arguments on the device.
pub type CudaForwardArgs<'a, T> =
    ForwardArgs<CudaView<'a, T>, CudaViewMut<'a, T>, CudaViewMut<'a, f32>>;
/// Backward arguments on the device.
pub type CudaBackwardArgs<'a, T> =
    BackwardArgs<CudaView<'a, T>, CudaView<'a, f32>, CudaViewMut<'a, T>>;

/// Why the CUDA backend cannot run here, or `None` when it can (checks libcuda, a device and the kernels;
/// creates a context on device 0 if they are present).
pub fn unavailable_reason() -> Option<String> {
    CudaBackend::new(0).err().map(|e| e.to_string())
}

/// The fused gated attention kernels on one CUDA device.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    module: Arc<CudaModule>,
    functions: Mutex<HashMap<String, CudaFunction>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("ordinal", &self.ctx.ordinal())
            .finish()
    }
}

impl CudaBackend {
    /// Opens device `ordinal` (its primary context) and loads the kernels.
    pub fn new(ordinal: usize) -> Result<Self> {
        // cudarc panics when libcuda is missing: check first.
        // SAFETY: only probes whether the driver library can be loaded.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(GsdpaError::NoDriver(
                "libcuda (the NVIDIA driver library) was not found".into(),
            ));
        }
        let count = CudaContext::device_count().map_err(|e| cuda_error("cuDeviceGetCount", e))?;
        if count <= 0 || ordinal >= count as usize {
            return Err(GsdpaError::NoDevice);
        }
        let ctx =
            CudaContext::new(ordinal).map_err(|e| cuda_error("creating the CUDA context", e))?;
        Self::from_context(ctx)
    }

    /// Uses an existing context (for engines that own theirs) and loads the kernels into it.
    pub fn from_context(ctx: Arc<CudaContext>) -> Result<Self> {
        let Some(fatbin) = build_info::fatbin() else {
            let why = build_info::kernels_not_built_reason()
                .unwrap_or("nvcc was not found at build time");
            return Err(GsdpaError::KernelsNotBuilt(why.to_string()));
        };
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(fatbin.to_vec()))
            .map_err(|e| cuda_error("loading the kernels (is the GPU older than sm_80?)", e))?;
        Ok(CudaBackend {
            ctx,
            module,
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// The context the kernels live in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The device's name, e.g. "NVIDIA H200".
    pub fn device_name(&self) -> Result<String> {
        self.ctx
            .name()
            .map_err(|e| cuda_error("cuDeviceGetName", e))
    }

    /// Looks a kernel up once and raises its dynamic shared memory limit to what it needs.
    fn function(&self, config: &LaunchConfig) -> Result<CudaFunction> {
        let mut functions = self
            .functions
            .lock()
            .map_err(|_| GsdpaError::Cuda("kernel cache poisoned".into()))?;
        if let Some(f) = functions.get(&config.kernel) {
            return Ok(f.clone());
        }
        let f = self.module.load_function(&config.kernel).map_err(|e| {
            cuda_error(&format!("kernel {} is not in the fatbin", config.kernel), e)
        })?;
        if config.shared_bytes > 48 * 1024 {
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                config.shared_bytes as i32,
            )
            .map_err(|e| {
                cuda_error(
                    &format!("raising {}'s shared memory limit", config.kernel),
                    e,
                )
            })?;
        }
        functions.insert(config.kernel.clone(), f.clone());
        Ok(f)
    }

    /// Launches one kernel with its params struct on `stream`.
    pub(crate) fn launch<P: DeviceRepr>(
        &self,
        stream: &CudaStream,
        config: &LaunchConfig,
        params: &P,
    ) -> Result<()> {
        if config.is_empty() {
            return Ok(());
        }
        let f = self.function(config)?;
        let cfg = CudarcLaunchConfig {
            grid_dim: (config.grid[0], config.grid[1], config.grid[2]),
            block_dim: (config.block[0], config.block[1], config.block[2]),
            shared_mem_bytes: config.shared_bytes,
        };
        let mut builder = stream.launch_builder(&f);
        builder.arg(params);
        // SAFETY: `params` was produced by validation from live device buffers of the sizes the kernel
        // indexes; the launch config is the one the kernel is written for.
        unsafe { builder.launch(cfg) }
            .map_err(|e| cuda_error(&format!("launching {}", config.kernel), e))?;
        Ok(())
    }

    /// Fused gated forward: `Y = softmax(scale Q K^T + mask) V * act(G)`, LSE and optionally the ungated O.
    /// Enqueued on `stream`; returns before the GPU finishes. `seqlens` is required for varlen problems.
    pub fn forward<T: Element + DeviceRepr>(
        &self,
        stream: &CudaStream,
        problem: &AttentionProblem,
        args: &mut CudaForwardArgs<'_, T>,
        seqlens: Option<&CudaSeqlens<'_>>,
    ) -> Result<()> {
        let mut guards = Vec::new();
        let dev = ForwardArgs {
            q: input(&args.q, stream, &mut guards),
            k: input(&args.k, stream, &mut guards),
            v: input(&args.v, stream, &mut guards),
            g: args.g.as_ref().map(|g| input(g, stream, &mut guards)),
            y: output(&mut args.y, stream, &mut guards),
            o: args.o.as_mut().map(|o| output(o, stream, &mut guards)),
            lse: output(&mut args.lse, stream, &mut guards),
        };
        let mut params = validate::validate_forward(problem, &dev)?;
        if problem.is_empty() {
            return Ok(());
        }
        let (cu_q, cu_k) = device_seqlens(problem, seqlens, stream, &mut guards)?;
        params.cu_seqlens_q = cu_q as *const i32;
        params.cu_seqlens_k = cu_k as *const i32;
        self.launch(stream, &launch::forward(problem)?, &params)
    }

    /// The backward: dQ, dK, dV and dG. `workspace` must hold [`crate::backward_workspace_bytes`] bytes
    /// and start 256-byte aligned.
    pub fn backward<T: Element + DeviceRepr>(
        &self,
        stream: &CudaStream,
        problem: &AttentionProblem,
        args: &mut CudaBackwardArgs<'_, T>,
        workspace: &mut CudaViewMut<'_, u8>,
        seqlens: Option<&CudaSeqlens<'_>>,
        options: BackwardOptions,
    ) -> Result<()> {
        let mut guards = Vec::new();
        let dev = BackwardArgs {
            q: input(&args.q, stream, &mut guards),
            k: input(&args.k, stream, &mut guards),
            v: input(&args.v, stream, &mut guards),
            g: args.g.as_ref().map(|g| input(g, stream, &mut guards)),
            y: input(&args.y, stream, &mut guards),
            o: args.o.as_ref().map(|o| input(o, stream, &mut guards)),
            dy: input(&args.dy, stream, &mut guards),
            lse: input(&args.lse, stream, &mut guards),
            dq: output(&mut args.dq, stream, &mut guards),
            dk: output(&mut args.dk, stream, &mut guards),
            dv: output(&mut args.dv, stream, &mut guards),
            dg: args.dg.as_mut().map(|dg| output(dg, stream, &mut guards)),
        };
        // No early return for empty problems: with queries absent but keys present, the dK/dV kernel
        // still runs and writes zeros (launch::backward leaves out only the empty grids).
        let mut params = validate::validate_backward(problem, &dev, options.deterministic)?;
        let workspace_len = workspace.len();
        let (ws_ptr, ws_guard) = workspace.device_ptr_mut(stream);
        validate::set_backward_workspace(&mut params, problem, ws_ptr as usize, workspace_len)?;
        let (cu_q, cu_k) = device_seqlens(problem, seqlens, stream, &mut guards)?;
        params.cu_seqlens_q = cu_q as *const i32;
        params.cu_seqlens_k = cu_k as *const i32;
        for config in launch::backward(problem, options.deterministic)? {
            self.launch(stream, &config, &params)?;
        }
        drop(ws_guard);
        Ok(())
    }

    /// The standalone gate `Y = O * act(G)` (the unfused path engines use today; the benches compare the
    /// fused forward against our gate = none forward followed by this). `o`, `g` and `y` are
    /// `[rows, heads, D]` views (row stride first); a headwise `g` is `[rows, heads]`.
    pub fn gate<T: Element + DeviceRepr>(
        &self,
        stream: &CudaStream,
        gate: GateMode,
        activation: crate::problem::Activation,
        o: &Tensor<CudaView<'_, T>>,
        g: &Tensor<CudaView<'_, T>>,
        y: &mut Tensor<CudaViewMut<'_, T>>,
    ) -> Result<()> {
        let (o_ptr, _o_guard) = o.data.device_ptr(stream);
        let (g_ptr, _g_guard) = g.data.device_ptr(stream);
        let y_len = y.data.len();
        let (y_ptr, _y_guard) = y.data.device_ptr_mut(stream);
        let params = gate_params(
            gate,
            activation,
            std::mem::size_of::<T>(),
            [
                GateView::input("o", o_ptr, o.data.len(), &o.layout),
                GateView::input("g", g_ptr, g.data.len(), &g.layout).gate_tensor(),
                GateView::output("y", y_ptr, y_len, &y.layout),
            ],
        )?;
        let shape = o.layout.shape();
        self.launch(
            stream,
            &launch::gate(T::DTYPE, shape[0], shape[1], shape[2])?,
            &params,
        )
    }

    /// The standalone gate backward, the unfused path's first backward step: from the upstream gradient
    /// `dy` of `Y = O * act(G)`, the ungated `o` and the logits `g`, writes `d_o = dY * act(G)` and
    /// `dg = dY * O * act'(G)` (headwise: `dg = act'(G) * sum_d dY * O`). Engines then run a gate = none
    /// backward fed with `d_o` (and with the ungated O as its forward output). `o`, `dy` and `d_o` are
    /// `[rows, heads, D]` views (row stride first); `g` and `dg` are `[rows, heads, D]`, or
    /// `[rows, heads]` for a headwise gate. The outputs must not overlap each other or any input.
    #[allow(clippy::too_many_arguments)]
    pub fn gate_backward<T: Element + DeviceRepr>(
        &self,
        stream: &CudaStream,
        gate: GateMode,
        activation: crate::problem::Activation,
        o: &Tensor<CudaView<'_, T>>,
        g: &Tensor<CudaView<'_, T>>,
        dy: &Tensor<CudaView<'_, T>>,
        d_o: &mut Tensor<CudaViewMut<'_, T>>,
        dg: &mut Tensor<CudaViewMut<'_, T>>,
    ) -> Result<()> {
        let (o_ptr, _o_guard) = o.data.device_ptr(stream);
        let (g_ptr, _g_guard) = g.data.device_ptr(stream);
        let (dy_ptr, _dy_guard) = dy.data.device_ptr(stream);
        let (d_o_len, dg_len) = (d_o.data.len(), dg.data.len());
        let (d_o_ptr, _d_o_guard) = d_o.data.device_ptr_mut(stream);
        let (dg_ptr, _dg_guard) = dg.data.device_ptr_mut(stream);
        let params = gate_backward_params(
            gate,
            activation,
            std::mem::size_of::<T>(),
            [
                GateView::input("o", o_ptr, o.data.len(), &o.layout),
                GateView::input("g", g_ptr, g.data.len(), &g.layout).gate_tensor(),
                GateView::input("dy", dy_ptr, dy.data.len(), &dy.layout),
                GateView::output("d_o", d_o_ptr, d_o_len, &d_o.layout),
                GateView::output("dg", dg_ptr, dg_len, &dg.layout).gate_tensor(),
            ],
        )?;
        let shape = o.layout.shape();
        self.launch(
            stream,
            &launch::gate_backward(T::DTYPE, shape[0], shape[1], shape[2])?,
            &params,
        )
    }

    /// Runs the conformance kernel and returns its dump (allocates and synchronizes: a test helper).
    pub fn run_conformance(&self) -> Result<Vec<u32>> {
        let stream = self.ctx.default_stream();
        let (input, specials) = crate::conformance::inputs();
        let input = stream
            .clone_htod(&input)
            .map_err(|e| cuda_error("upload", e))?;
        let specials = stream
            .clone_htod(&specials)
            .map_err(|e| cuda_error("upload", e))?;
        let mut out = stream
            .alloc_zeros::<u32>(crate::conformance::DUMP_WORDS)
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
            self.launch(&stream, &launch::conformance(), &params)?;
        }
        let dump = stream
            .clone_dtoh(&out)
            .map_err(|e| cuda_error("download", e))?;
        stream
            .synchronize()
            .map_err(|e| cuda_error("synchronize", e))?;
        Ok(dump)
    }
}

type Guard<'a> = cudarc::driver::SyncOnDrop<'a>;

fn input<'a, T>(
    tensor: &'a Tensor<CudaView<'_, T>>,
    stream: &'a CudaStream,
    guards: &mut Vec<Guard<'a>>,
) -> Tensor<DeviceMemory<'a, T>> {
    let (addr, guard) = tensor.data.device_ptr(stream);
    guards.push(guard);
    Tensor {
        data: DeviceMemory {
            addr,
            len: tensor.data.len(),
            _borrow: PhantomData,
        },
        layout: tensor.layout.clone(),
    }
}

fn output<'a, T>(
    tensor: &'a mut Tensor<CudaViewMut<'_, T>>,
    stream: &'a CudaStream,
    guards: &mut Vec<Guard<'a>>,
) -> Tensor<DeviceMemory<'a, T>> {
    let layout: Layout = tensor.layout.clone();
    let len = tensor.data.len();
    let (addr, guard) = tensor.data.device_ptr_mut(stream);
    guards.push(guard);
    Tensor {
        data: DeviceMemory {
            addr,
            len,
            _borrow: PhantomData,
        },
        layout,
    }
}

/// Device addresses of the cu_seqlens (0 when the problem is not varlen).
fn device_seqlens<'a>(
    problem: &AttentionProblem,
    seqlens: Option<&'a CudaSeqlens<'_>>,
    stream: &'a CudaStream,
    guards: &mut Vec<Guard<'a>>,
) -> Result<(u64, u64)> {
    match (&problem.varlen, seqlens) {
        (None, None) => Ok((0, 0)),
        (None, Some(_)) => Err(GsdpaError::InvalidArgument(
            "device cu_seqlens were given for a problem that is not varlen".into(),
        )),
        (Some(_), None) => Err(GsdpaError::InvalidArgument(
            "a varlen problem needs the device cu_seqlens (CudaSeqlens)".into(),
        )),
        (Some(v), Some(s)) => {
            for (name, view, host) in [
                ("cu_seqlens_q", &s.q, &v.cu_seqlens_q),
                ("cu_seqlens_k", &s.k, &v.cu_seqlens_k),
            ] {
                if view.len() != host.len() {
                    return Err(GsdpaError::InvalidCuSeqlens {
                        which: if name == "cu_seqlens_q" {
                            "cu_seqlens_q"
                        } else {
                            "cu_seqlens_k"
                        },
                        reason: format!(
                            "device copy has {} entries, the problem's has {}",
                            view.len(),
                            host.len()
                        ),
                    });
                }
            }
            let (q, gq) = s.q.device_ptr(stream);
            let (k, gk) = s.k.device_ptr(stream);
            guards.push(gq);
            guards.push(gk);
            Ok((q, k))
        }
    }
}

/// One device view handed to a standalone gate kernel (forward or backward), as its checks see it.
#[derive(Debug, Clone, Copy)]
struct GateView<'l> {
    name: &'static str,
    addr: u64,
    /// Elements in the view the layout indexes into.
    len: usize,
    layout: &'l Layout,
    output: bool,
    /// The gate logits or their gradient (g, dg): `[rows, heads, D]` for an elementwise gate and
    /// `[rows, heads]` for a headwise one. Every other view is a `[rows, heads, D]` activation.
    gate: bool,
}

impl<'l> GateView<'l> {
    fn input(name: &'static str, addr: u64, len: usize, layout: &'l Layout) -> Self {
        GateView {
            name,
            addr,
            len,
            layout,
            output: false,
            gate: false,
        }
    }

    fn output(name: &'static str, addr: u64, len: usize, layout: &'l Layout) -> Self {
        GateView {
            output: true,
            ..GateView::input(name, addr, len, layout)
        }
    }

    /// Marks the view as the gate logits or their gradient, shaped by the gate mode.
    fn gate_tensor(self) -> Self {
        GateView { gate: true, ..self }
    }
}

/// The gate kernels' view of a checked call: `[rows, heads, D]` as (seqlen, heads, head_dim) with
/// batch 1, and each view's kernel strides, in the order the views were given.
struct GateGeometry<const N: usize> {
    seqlen: i32,
    heads: i32,
    head_dim: i32,
    strides: [ffi::GsdpaStrides; N],
}

/// Checks the views of a standalone gate kernel and returns what its params need. `views[0]` (O) sets
/// the `[rows, heads, D]` shape that every activation view must have; `g` and `dg` are that shape for an
/// elementwise gate and `[rows, heads]` for a headwise one. The checks are the ones the kernels rely
/// on: every element inside its view, the last dimension contiguous, rows of the views read or written
/// in 16-byte vectors starting 16-byte aligned, and outputs that neither map two elements to one address
/// nor overlap any other view.
fn check_gate_views<const N: usize>(
    gate: GateMode,
    elem_bytes: usize,
    views: &[GateView<'_>; N],
) -> Result<GateGeometry<N>> {
    let shape = views[0].layout.shape();
    if shape.len() != 3 {
        return Err(GsdpaError::InvalidArgument(format!(
            "gate: {} must be a [rows, heads, D] view, got shape {shape:?}",
            views[0].name
        )));
    }
    let gate_shape = match gate {
        GateMode::Elementwise => shape,
        GateMode::Headwise => &shape[..2],
        GateMode::None => {
            return Err(GsdpaError::InvalidArgument(
                "gate: gate mode none has nothing to apply".into(),
            ))
        }
    };
    if shape[2] % 8 != 0 {
        return Err(GsdpaError::UnsupportedHeadDim { head_dim: shape[2] });
    }
    let mut strides = [ffi::GsdpaStrides::default(); N];
    let mut spans: [Option<(u64, u64)>; N] = [None; N];
    for (i, view) in views.iter().enumerate() {
        let (name, layout) = (view.name, view.layout);
        let expected = if view.gate { gate_shape } else { shape };
        if layout.shape() != expected {
            return Err(GsdpaError::ShapeMismatch {
                tensor: name,
                expected: expected.to_vec(),
                actual: layout.shape().to_vec(),
            });
        }
        // A headwise g or dg holds one scalar per (row, head); everything else moves in 16-byte vectors.
        let vectorised = !view.gate || gate == GateMode::Elementwise;
        let bad_strides = |reason: String| GsdpaError::BadStrides {
            tensor: name,
            reason,
        };
        let misaligned = |reason: String| GsdpaError::Misaligned {
            tensor: name,
            reason,
        };
        let extents = layout.shape();
        if vectorised && extents[2] > 1 && layout.strides()[2] != 1 {
            return Err(bad_strides(
                "the last dimension must be contiguous (stride 1)".into(),
            ));
        }
        // Strides of extent-1 dimensions never multiply a non-zero index.
        let kernel_stride = |dim: usize| -> Result<i64> {
            if extents[dim] <= 1 {
                return Ok(0);
            }
            i64::try_from(layout.strides()[dim]).map_err(|_| {
                GsdpaError::SizeOverflow(format!("{name}: stride does not fit in i64"))
            })
        };
        strides[i] = ffi::GsdpaStrides {
            batch: 0,
            row: kernel_stride(0)?,
            head: kernel_stride(1)?,
        };
        let max_offset = match layout.max_offset() {
            Err(_) => {
                return Err(GsdpaError::SizeOverflow(format!(
                    "{name}: the largest element offset overflows"
                )))
            }
            Ok(None) => continue, // empty: nothing is read or written
            Ok(Some(m)) => m,
        };
        if max_offset >= view.len {
            return Err(bad_strides(format!(
                "the largest element offset {max_offset} is beyond the buffer of {} elements",
                view.len
            )));
        }
        let alignment = if vectorised { 16 } else { elem_bytes as u64 };
        if view.addr % alignment != 0 {
            return Err(misaligned(format!(
                "base address {:#x} is not {alignment}-byte aligned",
                view.addr
            )));
        }
        if vectorised && [strides[i].row, strides[i].head].iter().any(|s| s % 8 != 0) {
            return Err(misaligned(
                "row and head strides must be multiples of 8 elements (16 bytes)".into(),
            ));
        }
        if view.output && !layout.is_non_overlapping() {
            return Err(bad_strides(
                "the strides map different elements of this output to the same memory".into(),
            ));
        }
        let end = (max_offset as u64 + 1)
            .checked_mul(elem_bytes as u64)
            .and_then(|bytes| bytes.checked_add(view.addr))
            .ok_or_else(|| GsdpaError::SizeOverflow(format!("{name}: byte span overflows")))?;
        spans[i] = Some((view.addr, end));
    }
    for (i, view) in views.iter().enumerate().filter(|(_, v)| v.output) {
        let Some((start, end)) = spans[i] else {
            continue;
        };
        for (j, other) in views.iter().enumerate() {
            if let (true, Some((other_start, other_end))) = (i != j, spans[j]) {
                if start < other_end && other_start < end {
                    return Err(GsdpaError::Overlap {
                        output: view.name,
                        other: other.name,
                    });
                }
            }
        }
    }
    let dim = |value: usize, what: &str| {
        i32::try_from(value).map_err(|_| GsdpaError::SizeOverflow(format!("gate {what}")))
    };
    Ok(GateGeometry {
        seqlen: dim(shape[0], "rows")?,
        heads: dim(shape[1], "heads")?,
        head_dim: dim(shape[2], "head dim")?,
        strides,
    })
}

/// Params of the standalone gate; `views` are o, g and y.
fn gate_params(
    gate: GateMode,
    activation: crate::problem::Activation,
    elem_bytes: usize,
    views: [GateView<'_>; 3],
) -> Result<ffi::GsdpaGateParams> {
    let geometry = check_gate_views(gate, elem_bytes, &views)?;
    let [o, g, y] = views;
    let [o_stride, g_stride, y_stride] = geometry.strides;
    Ok(ffi::GsdpaGateParams {
        o: o.addr as *const _,
        g: g.addr as *const _,
        y: y.addr as *mut _,
        o_stride,
        g_stride,
        y_stride,
        batch: 1,
        seqlen: geometry.seqlen,
        heads: geometry.heads,
        head_dim: geometry.head_dim,
        gate_mode: gate.to_ffi(),
        activation: activation.to_ffi(),
    })
}

/// Params of the standalone gate backward; `views` are o, g, dy, d_o and dg.
fn gate_backward_params(
    gate: GateMode,
    activation: crate::problem::Activation,
    elem_bytes: usize,
    views: [GateView<'_>; 5],
) -> Result<ffi::GsdpaGateBackwardParams> {
    let geometry = check_gate_views(gate, elem_bytes, &views)?;
    let [o, g, dy, d_o, dg] = views;
    let [o_stride, g_stride, dy_stride, d_o_stride, dg_stride] = geometry.strides;
    Ok(ffi::GsdpaGateBackwardParams {
        o: o.addr as *const _,
        g: g.addr as *const _,
        dy: dy.addr as *const _,
        d_o: d_o.addr as *mut _,
        dg: dg.addr as *mut _,
        o_stride,
        g_stride,
        dy_stride,
        d_o_stride,
        dg_stride,
        batch: 1,
        seqlen: geometry.seqlen,
        heads: geometry.heads,
        head_dim: geometry.head_dim,
        gate_mode: gate.to_ffi(),
        activation: activation.to_ffi(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::Activation;

    const ROWS: usize = 6;
    const HEADS: usize = 3;
    const D: usize = 64;
    const N: usize = ROWS * HEADS * D;

    /// Views of a gate backward at made-up, well-separated, 16-byte aligned device addresses:
    /// o, g, dy, d_o, dg, each `len` elements long.
    fn backward_views<'l>(layouts: &'l [Layout; 5], lens: [usize; 5]) -> [GateView<'l>; 5] {
        let addr = |i: u64| 0x10_0000 * (i + 1);
        [
            GateView::input("o", addr(0), lens[0], &layouts[0]),
            GateView::input("g", addr(1), lens[1], &layouts[1]).gate_tensor(),
            GateView::input("dy", addr(2), lens[2], &layouts[2]),
            GateView::output("d_o", addr(3), lens[3], &layouts[3]),
            GateView::output("dg", addr(4), lens[4], &layouts[4]).gate_tensor(),
        ]
    }

    fn dense() -> Layout {
        Layout::contiguous(&[ROWS, HEADS, D])
    }

    fn params(gate: GateMode, views: [GateView<'_>; 5]) -> Result<ffi::GsdpaGateBackwardParams> {
        gate_backward_params(gate, Activation::Silu, 2, views)
    }

    #[test]
    fn gate_backward_params_carry_the_views() {
        // g is the gate half of a q_proj buffer [rows, heads, 2D]: head stride 2D, row stride 2HD.
        let q_proj = Layout::q_proj_view(&[ROWS, HEADS, D]);
        let layouts = [dense(), q_proj, dense(), dense(), dense()];
        let mut views = backward_views(&layouts, [N, 2 * N, N, N, N]);
        views[1].addr += 2 * D as u64;
        let p = params(GateMode::Elementwise, views).unwrap();
        assert_eq!((p.batch, p.seqlen, p.heads, p.head_dim), (1, 6, 3, 64));
        assert_eq!(
            (p.g_stride.row, p.g_stride.head),
            (2 * (HEADS * D) as i64, 2 * D as i64)
        );
        assert_eq!(
            (p.dy_stride.row, p.dy_stride.head),
            ((HEADS * D) as i64, D as i64)
        );
        assert_eq!(p.g as u64, 0x20_0000 + 2 * D as u64);
        assert_eq!(p.dg as u64, 0x50_0000);
        assert_eq!(p.gate_mode, GateMode::Elementwise.to_ffi());
        assert_eq!(p.activation, Activation::Silu.to_ffi());

        // Headwise: g and dg are [rows, heads], any alignment of a 16-bit scalar.
        let scalar = Layout::contiguous(&[ROWS, HEADS]);
        let layouts = [dense(), scalar.clone(), dense(), dense(), scalar];
        let mut views = backward_views(&layouts, [N, ROWS * HEADS, N, N, ROWS * HEADS]);
        views[4].addr += 2;
        let p = params(GateMode::Headwise, views).unwrap();
        assert_eq!((p.dg_stride.row, p.dg_stride.head), (HEADS as i64, 1));
    }

    #[test]
    fn gate_backward_rejects_what_the_kernel_cannot_take() {
        let scalar = Layout::contiguous(&[ROWS, HEADS]);
        let ok = [dense(), dense(), dense(), dense(), dense()];
        let lens = [N; 5];
        let err = |gate, views| params(gate, views).unwrap_err();

        assert!(matches!(
            err(GateMode::None, backward_views(&ok, lens)),
            GsdpaError::InvalidArgument(_)
        ));
        // A headwise gradient for an elementwise gate.
        let layouts = [dense(), dense(), dense(), dense(), scalar.clone()];
        assert!(matches!(
            err(GateMode::Elementwise, backward_views(&layouts, lens)),
            GsdpaError::ShapeMismatch { tensor: "dg", .. }
        ));
        // An elementwise g is read in 16-byte vectors: it must be 16-byte aligned.
        let mut views = backward_views(&ok, lens);
        views[1].addr += 2;
        assert!(matches!(
            err(GateMode::Elementwise, views),
            GsdpaError::Misaligned { tensor: "g", .. }
        ));
        // dY's view is one element short.
        assert!(matches!(
            err(
                GateMode::Elementwise,
                backward_views(&ok, [N, N, N - 1, N, N])
            ),
            GsdpaError::BadStrides { tensor: "dy", .. }
        ));
        // d_o written over dY.
        let mut views = backward_views(&ok, lens);
        views[3].addr = views[2].addr + 16;
        assert!(matches!(
            err(GateMode::Elementwise, views),
            GsdpaError::Overlap {
                output: "d_o",
                other: "dy"
            }
        ));
        // A head dim that does not split into 16-byte vectors.
        let odd = Layout::contiguous(&[ROWS, HEADS, 12]);
        let layouts = [odd.clone(), scalar.clone(), odd.clone(), odd, scalar];
        assert!(matches!(
            err(GateMode::Headwise, backward_views(&layouts, lens)),
            GsdpaError::UnsupportedHeadDim { head_dim: 12 }
        ));
    }

    #[test]
    fn gate_forward_checks_g_alignment_too() {
        let layouts = [dense(), dense(), dense()];
        let views = [
            GateView::input("o", 0x10_0000, N, &layouts[0]),
            GateView::input("g", 0x20_0008, N, &layouts[1]).gate_tensor(),
            GateView::output("y", 0x30_0000, N, &layouts[2]),
        ];
        assert!(matches!(
            gate_params(GateMode::Elementwise, Activation::Sigmoid, 2, views),
            Err(GsdpaError::Misaligned { tensor: "g", .. })
        ));
    }
}
