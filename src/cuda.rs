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
use crate::problem::{AttentionProblem, DType, GateMode};
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
    fn launch<P: DeviceRepr>(
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
        let (y_ptr, _y_guard) = y.data.device_ptr_mut(stream);
        let params = gate_params(
            gate,
            activation,
            (o_ptr, &o.layout),
            (g_ptr, &g.layout),
            (y_ptr, &y.layout),
        )?;
        let shape = o.layout.shape();
        self.launch(
            stream,
            &launch::gate(T::DTYPE, shape[0], shape[1], shape[2])?,
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

/// Params of the standalone gate over `[rows, heads, D]` views given as (device address, layout).
fn gate_params(
    gate: GateMode,
    activation: crate::problem::Activation,
    o: (u64, &Layout),
    g: (u64, &Layout),
    y: (u64, &Layout),
) -> Result<ffi::GsdpaGateParams> {
    let shape = o.1.shape().to_vec();
    if shape.len() != 3 || y.1.shape() != shape.as_slice() {
        return Err(GsdpaError::InvalidArgument(
            "gate: o and y must be [rows, heads, D] views of one shape".into(),
        ));
    }
    let expected_g: Vec<usize> = match gate {
        GateMode::Elementwise => shape.clone(),
        GateMode::Headwise => shape[..2].to_vec(),
        GateMode::None => {
            return Err(GsdpaError::InvalidArgument(
                "gate: gate mode none has nothing to apply".into(),
            ))
        }
    };
    if g.1.shape() != expected_g.as_slice() {
        return Err(GsdpaError::InvalidArgument(format!(
            "gate: g must have shape {expected_g:?}"
        )));
    }
    if shape[2] % 8 != 0 {
        return Err(GsdpaError::UnsupportedHeadDim { head_dim: shape[2] });
    }
    for (name, (addr, layout)) in [("o", o), ("y", y)] {
        if addr % 16 != 0 || layout.strides()[..2].iter().any(|s| s % 8 != 0) {
            return Err(GsdpaError::Misaligned {
                tensor: name_static(name),
                reason: "rows must start 16-byte aligned".into(),
            });
        }
    }
    let strides = |l: &Layout| ffi::GsdpaStrides {
        batch: 0,
        row: l.strides()[0] as i64,
        head: l.strides()[1] as i64,
    };
    Ok(ffi::GsdpaGateParams {
        o: o.0 as *const _,
        g: g.0 as *const _,
        y: y.0 as *mut _,
        o_stride: strides(o.1),
        g_stride: strides(g.1),
        y_stride: strides(y.1),
        batch: 1,
        seqlen: i32::try_from(shape[0])
            .map_err(|_| GsdpaError::SizeOverflow("gate rows".into()))?,
        heads: i32::try_from(shape[1])
            .map_err(|_| GsdpaError::SizeOverflow("gate heads".into()))?,
        head_dim: shape[2] as i32,
        gate_mode: gate.to_ffi(),
        activation: activation.to_ffi(),
    })
}

fn name_static(name: &str) -> &'static str {
    match name {
        "o" => "o",
        _ => "y",
    }
}

/// The dtype's name in kernel names.
pub fn dtype_suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
    }
}
