//! Running a forward or backward on any backend from host data.
//!
//! The CLI holds its tensors on the host ([`HostInputs`]); host backends (reference, emulator) run on
//! them directly, the CUDA backend uploads them, runs, and downloads the results. Adding a backend is a
//! variant of [`Backend`] plus its arm in `open`, `forward` and `backward`.

use std::time::Instant;

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use gated_sdpa::cuda::{CudaBackend, CudaSeqlens};
use gated_sdpa::{
    gate_stats_workspace_len, split_q_proj, AttentionProblem, BackwardArgs, BackwardOptions,
    Element, ForwardArgs, ForwardDiagnostics, ForwardKernel, GsdpaError, HostBackend, HostBuffer,
    Layout, Reference, Result, TargetArch, Tensor,
};

/// Element types every backend can run: bf16 and f16.
pub trait AnyElement: Element + DeviceRepr + ValidAsZeroBits {}
impl<T: Element + DeviceRepr + ValidAsZeroBits> AnyElement for T {}

/// Names accepted by `--backend`, best first.
pub const BACKEND_NAMES: [&str; 3] = ["cuda", "emulator", "reference"];

/// An opened backend.
pub enum Backend {
    Reference(Reference),
    #[cfg(feature = "emulator")]
    Emulator(gated_sdpa::emulator::Emulator),
    Cuda(Box<CudaBackend>),
}

impl Backend {
    /// Opens a backend by name; `Err` says why it cannot run here.
    pub fn open(name: &str) -> Result<Backend> {
        match name {
            "reference" => Ok(Backend::Reference(Reference)),
            "emulator" => open_emulator(),
            "cuda" => Ok(Backend::Cuda(Box::new(CudaBackend::new(0)?))),
            other => Err(GsdpaError::InvalidArgument(format!(
                "unknown backend '{other}' (expected one of {})",
                BACKEND_NAMES.join(", ")
            ))),
        }
    }

    /// Applies `--arch` (the emulator's target: `sm90` runs the Hopper forward) and `--kernel` (the
    /// forward kernel selection of the emulator and CUDA backends); the reference takes neither.
    pub fn configure(
        self,
        arch: Option<TargetArch>,
        kernel: Option<ForwardKernel>,
    ) -> Result<Backend> {
        match self {
            #[cfg(feature = "emulator")]
            Backend::Emulator(mut e) => {
                if let Some(arch) = arch {
                    e = e.with_arch(arch);
                }
                if let Some(kernel) = kernel {
                    e = e.with_forward_kernel(kernel);
                }
                Ok(Backend::Emulator(e))
            }
            Backend::Cuda(c) if arch.is_none() => Ok(match kernel {
                Some(kernel) => Backend::Cuda(Box::new(c.with_forward_kernel(kernel))),
                None => Backend::Cuda(c),
            }),
            Backend::Cuda(_) => Err(GsdpaError::InvalidArgument(
                "--arch sets the emulator's target; the CUDA backend runs on its device's".into(),
            )),
            Backend::Reference(r) if arch.is_none() && kernel.is_none() => {
                Ok(Backend::Reference(r))
            }
            Backend::Reference(_) => Err(GsdpaError::InvalidArgument(
                "--arch and --kernel apply to the emulator and CUDA backends, not the reference"
                    .into(),
            )),
        }
    }

    /// The forward kernel the latest forward ran (emulator and CUDA backends).
    pub fn last_forward_kernel(&self) -> Option<String> {
        match self {
            Backend::Reference(_) => None,
            #[cfg(feature = "emulator")]
            Backend::Emulator(e) => e.last_forward_kernel(),
            Backend::Cuda(c) => c.last_forward_kernel(),
        }
    }

    /// The best backend usable here: cuda, else the emulator, else the reference.
    pub fn best() -> Backend {
        BACKEND_NAMES
            .iter()
            .find_map(|name| Backend::open(name).ok())
            .unwrap_or(Backend::Reference(Reference))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Reference(_) => "reference",
            #[cfg(feature = "emulator")]
            Backend::Emulator(_) => "emulator",
            Backend::Cuda(_) => "cuda",
        }
    }

    /// A longer description (device name for CUDA).
    pub fn describe(&self) -> String {
        match self {
            Backend::Cuda(cuda) => match cuda.device_name() {
                Ok(device) => format!("cuda ({device})"),
                Err(_) => "cuda".into(),
            },
            other => other.name().into(),
        }
    }

    /// Runs the forward; `want_o` also returns the ungated output.
    pub fn forward<T: AnyElement>(
        &self,
        inputs: &HostInputs<T>,
        want_o: bool,
    ) -> Result<ForwardOut<T>> {
        self.forward_diagnosed(inputs, want_o, Diagnose::default())
    }

    /// The forward with the diagnostics `diagnose` asks for.
    pub fn forward_diagnosed<T: AnyElement>(
        &self,
        inputs: &HostInputs<T>,
        want_o: bool,
        diagnose: Diagnose,
    ) -> Result<ForwardOut<T>> {
        match self {
            Backend::Reference(r) => host_forward(r, inputs, want_o, diagnose),
            #[cfg(feature = "emulator")]
            Backend::Emulator(e) => host_forward(e, inputs, want_o, diagnose),
            Backend::Cuda(c) => cuda_forward(c, inputs, want_o, diagnose),
        }
    }

    /// Runs the backward given the forward's outputs and the upstream gradient `dy`.
    pub fn backward<T: AnyElement>(
        &self,
        inputs: &HostInputs<T>,
        forward: &ForwardOut<T>,
        dy: &HostBuffer<T>,
        options: BackwardOptions,
    ) -> Result<BackwardOut<T>> {
        match self {
            Backend::Reference(r) => host_backward(r, inputs, forward, dy, options),
            #[cfg(feature = "emulator")]
            Backend::Emulator(e) => host_backward(e, inputs, forward, dy, options),
            Backend::Cuda(c) => cuda_backward(c, inputs, forward, dy, options),
        }
    }
}

#[cfg(feature = "emulator")]
fn open_emulator() -> Result<Backend> {
    if !gated_sdpa::build_info::emulator_built() {
        return Err(GsdpaError::KernelsNotBuilt(
            "the emulator kernels were not compiled into this build".into(),
        ));
    }
    Ok(Backend::Emulator(gated_sdpa::emulator::Emulator::new()))
}

#[cfg(not(feature = "emulator"))]
fn open_emulator() -> Result<Backend> {
    Err(GsdpaError::KernelsNotBuilt(
        "backend emulator not available in this build (feature `emulator` is off)".into(),
    ))
}

/// Why each backend can or cannot run here: `(name, None)` when usable, `(name, Some(reason))` otherwise.
pub fn availability() -> Vec<(&'static str, Option<String>)> {
    BACKEND_NAMES
        .iter()
        .rev()
        .map(|&name| (name, Backend::open(name).err().map(|e| e.to_string())))
        .collect()
}

/// The inputs of a problem on the host, rounded to `T` and 16-byte aligned.
pub struct HostInputs<T: Copy + Default> {
    pub problem: AttentionProblem,
    /// q, or with `qg` the whole Qwen3-Next q_proj buffer `[.., Hq, 2D]` holding q and g.
    pub q: HostBuffer<T>,
    /// True when `q` is a q_proj buffer and q, g are strided views of it.
    pub qg: bool,
    /// The separate gate logits (None without a gate or with `qg`).
    pub g: Option<HostBuffer<T>>,
    pub k: HostBuffer<T>,
    pub v: HostBuffer<T>,
}

/// Elements of `shape`, saturating: an overflowing count then fails to allocate as a typed error.
fn numel(shape: &[usize]) -> usize {
    shape
        .iter()
        .try_fold(1usize, |acc, &e| acc.checked_mul(e))
        .unwrap_or(usize::MAX)
}

impl<T: Copy + Default> HostInputs<T> {
    /// Layouts of q and g (g's data starts `g_offset` elements into its buffer).
    fn q_g_layouts(&self) -> (Layout, Option<Layout>, usize) {
        let p = &self.problem;
        let q_shape = p.q_shape();
        if self.qg {
            let layout = Layout::q_proj_view(&q_shape);
            let g = p.gate_shape().map(|_| layout.clone());
            (layout, g, p.head_dim)
        } else {
            (
                Layout::contiguous(&q_shape),
                p.gate_shape().map(|s| Layout::contiguous(&s)),
                0,
            )
        }
    }

    fn q_tensor(&self) -> Result<Tensor<&[T]>> {
        if self.qg {
            Ok(split_q_proj(self.q.as_slice(), &self.problem.q_shape())?.q)
        } else {
            Ok(Tensor::contiguous(
                self.q.as_slice(),
                &self.problem.q_shape(),
            ))
        }
    }

    fn g_tensor(&self) -> Result<Option<Tensor<&[T]>>> {
        let Some(shape) = self.problem.gate_shape() else {
            return Ok(None);
        };
        if self.qg {
            return Ok(Some(
                split_q_proj(self.q.as_slice(), &self.problem.q_shape())?.g,
            ));
        }
        Ok(self
            .g
            .as_ref()
            .map(|g| Tensor::contiguous(g.as_slice(), &shape)))
    }
}

/// Which diagnostics a forward computes (docs/diagnostics.md).
#[derive(Debug, Clone, Copy, Default)]
pub struct Diagnose {
    /// The sink mass of the first `n` keys.
    pub n_sink: Option<usize>,
    /// The mean gate score per (batch, head).
    pub gate_stats: bool,
}

impl Diagnose {
    /// Whether any diagnostic is asked for (the forward then gets `Some(ForwardDiagnostics)`).
    pub fn requested(&self) -> bool {
        self.n_sink.is_some() || self.gate_stats
    }

    /// Floats of gate-statistics workspace the forward needs (0 without gate statistics).
    pub fn workspace_len(&self, p: &AttentionProblem) -> Result<usize> {
        Ok(match self.gate_stats {
            true => gate_stats_workspace_len(p)?,
            false => 0,
        })
    }
}

/// Forward outputs, dense in the problem's shapes.
pub struct ForwardOut<T: Copy + Default> {
    pub y: HostBuffer<T>,
    pub o: Option<HostBuffer<T>>,
    pub lse: HostBuffer<f32>,
    /// Like lse, when asked for.
    pub sink_mass: Option<HostBuffer<f32>>,
    /// `[B, Hq]`, when asked for.
    pub gate_stats: Option<HostBuffer<f32>>,
    /// Seconds the backend call took (excluding host-device transfers).
    pub seconds: f64,
}

/// Gradients, dense in the problem's shapes.
pub struct BackwardOut<T: Copy + Default> {
    pub dq: HostBuffer<T>,
    pub dk: HostBuffer<T>,
    pub dv: HostBuffer<T>,
    pub dg: Option<HostBuffer<T>>,
    pub seconds: f64,
}

fn host_forward<B: HostBackend, T: AnyElement>(
    backend: &B,
    inputs: &HostInputs<T>,
    want_o: bool,
    diagnose: Diagnose,
) -> Result<ForwardOut<T>> {
    let p = &inputs.problem;
    let (qs, kvs, ls) = (p.q_shape(), p.kv_shape(), p.lse_shape());
    let stats_shape = [p.batch, p.heads_q];
    let mut y = HostBuffer::<T>::try_new(numel(&qs))?;
    let mut o = want_o
        .then(|| HostBuffer::<T>::try_new(numel(&qs)))
        .transpose()?;
    let mut lse = HostBuffer::<f32>::try_new(numel(&ls))?;
    let mut sink_mass = diagnose
        .n_sink
        .map(|_| HostBuffer::<f32>::try_new(numel(&ls)))
        .transpose()?;
    let workspace_len = diagnose.workspace_len(p)?;
    let mut gate_stats = diagnose
        .gate_stats
        .then(|| HostBuffer::<f32>::try_new(numel(&stats_shape)))
        .transpose()?;
    let mut workspace = HostBuffer::<f32>::try_new(workspace_len)?;
    let diagnostics = diagnose.requested().then(|| ForwardDiagnostics {
        sink_mass: sink_mass
            .as_mut()
            .map(|b| Tensor::contiguous(b.as_mut_slice(), &ls)),
        n_sink: diagnose.n_sink.unwrap_or(1),
        gate_stats: gate_stats
            .as_mut()
            .map(|b| Tensor::contiguous(b.as_mut_slice(), &stats_shape)),
        gate_workspace: diagnose
            .gate_stats
            .then(|| Tensor::contiguous(workspace.as_mut_slice(), &[workspace_len])),
    });
    let mut args = ForwardArgs {
        q: inputs.q_tensor()?,
        k: Tensor::contiguous(inputs.k.as_slice(), &kvs),
        v: Tensor::contiguous(inputs.v.as_slice(), &kvs),
        g: inputs.g_tensor()?,
        y: Tensor::contiguous(y.as_mut_slice(), &qs),
        o: o.as_mut()
            .map(|o| Tensor::contiguous(o.as_mut_slice(), &qs)),
        lse: Some(Tensor::contiguous(lse.as_mut_slice(), &ls)),
        diagnostics,
    };
    let start = Instant::now();
    backend.forward(p, &mut args)?;
    let seconds = start.elapsed().as_secs_f64();
    drop(args);
    Ok(ForwardOut {
        y,
        o,
        lse,
        sink_mass,
        gate_stats,
        seconds,
    })
}

fn host_backward<B: HostBackend, T: AnyElement>(
    backend: &B,
    inputs: &HostInputs<T>,
    forward: &ForwardOut<T>,
    dy: &HostBuffer<T>,
    options: BackwardOptions,
) -> Result<BackwardOut<T>> {
    let p = &inputs.problem;
    let (qs, kvs, ls) = (p.q_shape(), p.kv_shape(), p.lse_shape());
    let gate_shape = p.gate_shape();
    let mut dq = HostBuffer::<T>::try_new(numel(&qs))?;
    let mut dk = HostBuffer::<T>::try_new(numel(&kvs))?;
    let mut dv = HostBuffer::<T>::try_new(numel(&kvs))?;
    let mut dg = gate_shape
        .as_ref()
        .map(|s| HostBuffer::<T>::try_new(numel(s)))
        .transpose()?;
    let mut args = BackwardArgs {
        q: inputs.q_tensor()?,
        k: Tensor::contiguous(inputs.k.as_slice(), &kvs),
        v: Tensor::contiguous(inputs.v.as_slice(), &kvs),
        g: inputs.g_tensor()?,
        y: Tensor::contiguous(forward.y.as_slice(), &qs),
        o: forward
            .o
            .as_ref()
            .map(|o| Tensor::contiguous(o.as_slice(), &qs)),
        dy: Tensor::contiguous(dy.as_slice(), &qs),
        lse: Tensor::contiguous(forward.lse.as_slice(), &ls),
        dq: Tensor::contiguous(dq.as_mut_slice(), &qs),
        dk: Tensor::contiguous(dk.as_mut_slice(), &kvs),
        dv: Tensor::contiguous(dv.as_mut_slice(), &kvs),
        dg: dg
            .as_mut()
            .zip(gate_shape.as_ref())
            .map(|(dg, s)| Tensor::contiguous(dg.as_mut_slice(), s)),
    };
    let start = Instant::now();
    backend.backward(p, &mut args, options)?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(BackwardOut {
        dq,
        dk,
        dv,
        dg,
        seconds,
    })
}

fn driver(what: &str) -> impl Fn(cudarc::driver::DriverError) -> GsdpaError + '_ {
    move |e| GsdpaError::Cuda(format!("{what}: {e:?}"))
}

/// A device copy of `data` (at least one element long: the driver refuses empty allocations).
pub fn upload<T: DeviceRepr + ValidAsZeroBits>(
    stream: &std::sync::Arc<CudaStream>,
    data: &[T],
) -> Result<CudaSlice<T>> {
    let mut slice = stream
        .alloc_zeros::<T>(data.len().max(1))
        .map_err(driver("cuMemAlloc"))?;
    if !data.is_empty() {
        stream
            .memcpy_htod(data, &mut slice.slice_mut(0..data.len()))
            .map_err(driver("copy to the device"))?;
    }
    Ok(slice)
}

/// A zeroed device buffer of `len` elements (allocated with at least one).
fn zeros<T: DeviceRepr + ValidAsZeroBits>(
    stream: &std::sync::Arc<CudaStream>,
    len: usize,
) -> Result<CudaSlice<T>> {
    stream
        .alloc_zeros::<T>(len.max(1))
        .map_err(driver("cuMemAlloc"))
}

/// Copies the first `len` elements of a device buffer into an aligned host buffer.
pub fn download<T: DeviceRepr + Copy + Default>(
    stream: &std::sync::Arc<CudaStream>,
    slice: &CudaSlice<T>,
    len: usize,
) -> Result<HostBuffer<T>> {
    let mut host = HostBuffer::<T>::try_new(len)?;
    if len > 0 {
        stream
            .memcpy_dtoh(&slice.slice(0..len), host.as_mut_slice())
            .map_err(driver("copy from the device"))?;
    }
    Ok(host)
}

/// Device copies of the inputs.
struct DeviceInputs<T> {
    q: CudaSlice<T>,
    g: Option<CudaSlice<T>>,
    k: CudaSlice<T>,
    v: CudaSlice<T>,
    cu_seqlens: Option<(CudaSlice<i32>, CudaSlice<i32>)>,
}

impl<T: AnyElement> DeviceInputs<T> {
    fn new(stream: &std::sync::Arc<CudaStream>, inputs: &HostInputs<T>) -> Result<Self> {
        let cu_seqlens = match &inputs.problem.varlen {
            Some(v) => Some((
                stream
                    .clone_htod(&v.cu_seqlens_q)
                    .map_err(driver("copy to the device"))?,
                stream
                    .clone_htod(&v.cu_seqlens_k)
                    .map_err(driver("copy to the device"))?,
            )),
            None => None,
        };
        Ok(DeviceInputs {
            q: upload(stream, inputs.q.as_slice())?,
            g: inputs
                .g
                .as_ref()
                .map(|g| upload(stream, g.as_slice()))
                .transpose()?,
            k: upload(stream, inputs.k.as_slice())?,
            v: upload(stream, inputs.v.as_slice())?,
            cu_seqlens,
        })
    }

    fn seqlens(&self) -> Option<CudaSeqlens<'_>> {
        self.cu_seqlens.as_ref().map(|(q, k)| CudaSeqlens {
            q: q.as_view(),
            k: k.as_view(),
        })
    }

    /// q and g views with their layouts (g is a view into q's buffer with `qg`).
    #[allow(clippy::type_complexity)]
    fn q_g(
        &self,
        inputs: &HostInputs<T>,
    ) -> (
        Tensor<cudarc::driver::CudaView<'_, T>>,
        Option<Tensor<cudarc::driver::CudaView<'_, T>>>,
    ) {
        let (q_layout, g_layout, g_offset) = inputs.q_g_layouts();
        let q = Tensor::new(self.q.slice(0..inputs.q.len().max(1)), q_layout);
        let g = g_layout.map(|layout| match &self.g {
            Some(g) => Tensor::new(g.slice(0..g.len()), layout),
            // qg: g starts D elements into the q_proj buffer.
            None => Tensor::new(self.q.slice(g_offset.min(self.q.len())..), layout),
        });
        (q, g)
    }
}

fn cuda_forward<T: AnyElement>(
    backend: &CudaBackend,
    inputs: &HostInputs<T>,
    want_o: bool,
    diagnose: Diagnose,
) -> Result<ForwardOut<T>> {
    let p = &inputs.problem;
    let (qs, kvs, ls) = (p.q_shape(), p.kv_shape(), p.lse_shape());
    let stats_shape = [p.batch, p.heads_q];
    let stream = backend.context().default_stream();
    let dev = DeviceInputs::new(&stream, inputs)?;
    let mut y = zeros::<T>(&stream, numel(&qs))?;
    let mut o = want_o
        .then(|| zeros::<T>(&stream, numel(&qs)))
        .transpose()?;
    let mut lse = zeros::<f32>(&stream, numel(&ls))?;
    let mut sink_mass = diagnose
        .n_sink
        .map(|_| zeros::<f32>(&stream, numel(&ls)))
        .transpose()?;
    let workspace_len = diagnose.workspace_len(p)?;
    let mut gate_stats = diagnose
        .gate_stats
        .then(|| zeros::<f32>(&stream, numel(&stats_shape)))
        .transpose()?;
    let mut workspace = zeros::<f32>(&stream, workspace_len)?;
    let (q, g) = dev.q_g(inputs);
    let seqlens = dev.seqlens();
    let mut args = ForwardArgs {
        q,
        k: Tensor::new(dev.k.as_view(), Layout::contiguous(&kvs)),
        v: Tensor::new(dev.v.as_view(), Layout::contiguous(&kvs)),
        g,
        y: Tensor::new(y.slice_mut(0..numel(&qs).max(1)), Layout::contiguous(&qs)),
        o: o.as_mut()
            .map(|o| Tensor::new(o.slice_mut(0..numel(&qs).max(1)), Layout::contiguous(&qs))),
        lse: Some(Tensor::new(
            lse.slice_mut(0..numel(&ls).max(1)),
            Layout::contiguous(&ls),
        )),
        diagnostics: diagnose.requested().then(|| ForwardDiagnostics {
            sink_mass: sink_mass
                .as_mut()
                .map(|b| Tensor::new(b.slice_mut(0..numel(&ls).max(1)), Layout::contiguous(&ls))),
            n_sink: diagnose.n_sink.unwrap_or(1),
            gate_stats: gate_stats.as_mut().map(|b| {
                Tensor::new(
                    b.slice_mut(0..numel(&stats_shape).max(1)),
                    Layout::contiguous(&stats_shape),
                )
            }),
            gate_workspace: diagnose.gate_stats.then(|| {
                Tensor::new(
                    workspace.slice_mut(0..workspace_len.max(1)),
                    Layout::contiguous(&[workspace_len]),
                )
            }),
        }),
    };
    stream.synchronize().map_err(driver("synchronize"))?;
    let start = Instant::now();
    backend.forward(&stream, p, &mut args, seqlens.as_ref())?;
    stream.synchronize().map_err(driver("synchronize"))?;
    let seconds = start.elapsed().as_secs_f64();
    drop(args);
    Ok(ForwardOut {
        y: download(&stream, &y, numel(&qs))?,
        o: o.as_ref()
            .map(|o| download(&stream, o, numel(&qs)))
            .transpose()?,
        lse: download(&stream, &lse, numel(&ls))?,
        sink_mass: sink_mass
            .as_ref()
            .map(|b| download(&stream, b, numel(&ls)))
            .transpose()?,
        gate_stats: gate_stats
            .as_ref()
            .map(|b| download(&stream, b, numel(&stats_shape)))
            .transpose()?,
        seconds,
    })
}

/// A dense view of a device buffer (allocated with at least one element).
fn view<'a, T>(
    slice: &'a CudaSlice<T>,
    shape: &[usize],
) -> Tensor<cudarc::driver::CudaView<'a, T>> {
    Tensor::new(
        slice.slice(0..numel(shape).max(1)),
        Layout::contiguous(shape),
    )
}

fn cuda_backward<T: AnyElement>(
    backend: &CudaBackend,
    inputs: &HostInputs<T>,
    forward: &ForwardOut<T>,
    dy: &HostBuffer<T>,
    options: BackwardOptions,
) -> Result<BackwardOut<T>> {
    let p = &inputs.problem;
    let (qs, kvs, ls) = (p.q_shape(), p.kv_shape(), p.lse_shape());
    let gate_shape = p.gate_shape();
    let stream = backend.context().default_stream();
    let dev = DeviceInputs::new(&stream, inputs)?;
    let y = upload(&stream, forward.y.as_slice())?;
    let o = forward
        .o
        .as_ref()
        .map(|o| upload(&stream, o.as_slice()))
        .transpose()?;
    let lse = upload(&stream, forward.lse.as_slice())?;
    let d_y = upload(&stream, dy.as_slice())?;
    let mut dq = zeros::<T>(&stream, numel(&qs))?;
    let mut dk = zeros::<T>(&stream, numel(&kvs))?;
    let mut dv = zeros::<T>(&stream, numel(&kvs))?;
    let mut dg = gate_shape
        .as_ref()
        .map(|s| zeros::<T>(&stream, numel(s)))
        .transpose()?;
    let mut workspace = zeros::<u8>(&stream, gated_sdpa::backward_workspace_bytes(p)?)?;
    let (q, g) = dev.q_g(inputs);
    let seqlens = dev.seqlens();
    let mut args = BackwardArgs {
        q,
        k: view(&dev.k, &kvs),
        v: view(&dev.v, &kvs),
        g,
        y: view(&y, &qs),
        o: o.as_ref().map(|o| view(o, &qs)),
        dy: view(&d_y, &qs),
        lse: Tensor::new(lse.slice(0..numel(&ls).max(1)), Layout::contiguous(&ls)),
        dq: Tensor::new(dq.slice_mut(0..numel(&qs).max(1)), Layout::contiguous(&qs)),
        dk: Tensor::new(
            dk.slice_mut(0..numel(&kvs).max(1)),
            Layout::contiguous(&kvs),
        ),
        dv: Tensor::new(
            dv.slice_mut(0..numel(&kvs).max(1)),
            Layout::contiguous(&kvs),
        ),
        dg: dg
            .as_mut()
            .zip(gate_shape.as_ref())
            .map(|(dg, s)| Tensor::new(dg.slice_mut(0..numel(s).max(1)), Layout::contiguous(s))),
    };
    let mut ws = workspace.slice_mut(0..workspace.len());
    stream.synchronize().map_err(driver("synchronize"))?;
    let start = Instant::now();
    backend.backward(&stream, p, &mut args, &mut ws, seqlens.as_ref(), options)?;
    stream.synchronize().map_err(driver("synchronize"))?;
    let seconds = start.elapsed().as_secs_f64();
    drop(args);
    Ok(BackwardOut {
        dq: download(&stream, &dq, numel(&qs))?,
        dk: download(&stream, &dk, numel(&kvs))?,
        dv: download(&stream, &dv, numel(&kvs))?,
        dg: dg
            .as_ref()
            .zip(gate_shape.as_ref())
            .map(|(dg, s)| download(&stream, dg, numel(s)))
            .transpose()?,
        seconds,
    })
}
