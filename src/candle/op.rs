//! The candle custom ops: the attention forward over `(q or q_proj, k, v)` with its backward, and the
//! paged decode. Each op sees candle storages and layouts; [`super::host`] runs them on the emulator,
//! `super::device` on the GPU.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout as CandleLayout, Storage, Tensor};

use super::{host, to_candle};
use crate::error::GsdpaError;
use crate::paged::DecodeProblem;
use crate::problem::{AttentionProblem, GateMode};
use crate::tensor::Layout;
use crate::validate::backward_needs_ungated_output;

/// The separate gate's storage on one device (`$variant`: `Storage::Cpu` or `Storage::Cuda`) and its
/// layout, borrowed from `$guard`, the `Option` of [`Tensor::storage_and_layout`]'s read guard, which
/// must outlive what is borrowed (hence a macro, not a function returning the borrow). A gate on
/// another device returns the device-mismatch error from the enclosing function.
macro_rules! gate_on_device {
    ($guard:expr, $variant:path) => {
        match &$guard {
            Some((storage, layout)) => match &**storage {
                $variant(s) => Some((s, *layout)),
                _ => return Err(device_mismatch()),
            },
            None => None,
        }
    };
}

/// The name candle reports for the attention op (in errors and graph dumps).
pub const PACKED_OP_NAME: &str = "gated-sdpa";

/// One tensor as the kernels see it: candle's storage, the element offset of the view's element 0 in
/// it, and the view's shape and strides in elements.
pub(super) struct View<'a, S> {
    pub storage: &'a S,
    pub offset: usize,
    pub layout: Layout,
}

impl<'a, S> View<'a, S> {
    /// The whole candle tensor.
    pub fn of(storage: &'a S, layout: &CandleLayout) -> candle_core::Result<Self> {
        Ok(View {
            storage,
            offset: layout.start_offset(),
            layout: Layout::strided(layout.dims(), layout.stride()).map_err(to_candle)?,
        })
    }

    /// q (`half == 0`) or g (`half == 1`) inside a `q_proj` view `[.., H, 2 D]`.
    fn q_proj_half(
        storage: &'a S,
        layout: &CandleLayout,
        half: usize,
    ) -> candle_core::Result<Self> {
        let dims = packed_q_dims(layout.dims())?;
        let d = dims.last().copied().unwrap_or(0);
        Ok(View {
            storage,
            offset: layout.start_offset() + half * d,
            layout: Layout::strided(&dims, layout.stride()).map_err(to_candle)?,
        })
    }
}

/// The tensors of one forward: q, k, v and the gate.
pub(super) struct ForwardViews<'a, S> {
    pub q: View<'a, S>,
    pub k: View<'a, S>,
    pub v: View<'a, S>,
    pub g: Option<View<'a, S>>,
}

/// What a forward returns: Y, and (when a backward will need them) LSE and the ungated O.
pub(super) struct ForwardOut<S> {
    pub y: S,
    pub lse: Option<Tensor>,
    pub o: Option<Tensor>,
}

/// The tensors of one backward, all candle tensors of the forward's device.
pub(super) struct BackwardInputs<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    /// The packed form: q and g are the two halves of `q` (`q_proj`).
    pub packed: bool,
    pub y: &'a Tensor,
    pub dy: &'a Tensor,
    pub lse: &'a Tensor,
    pub o: Option<&'a Tensor>,
}

/// Gradients of one backward: dq, dk, dv and (packed form) dg, contiguous.
pub(super) struct Gradients {
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
    pub dg: Option<Tensor>,
}

/// q's dims inside a `q_proj` of dims `[.., H, 2 D]`.
pub(crate) fn packed_q_dims(dims: &[usize]) -> candle_core::Result<Vec<usize>> {
    match dims.split_last() {
        Some((&two_d, rest)) if !rest.is_empty() && two_d % 2 == 0 => {
            let mut q = rest.to_vec();
            q.push(two_d / 2);
            Ok(q)
        }
        _ => Err(to_candle(GsdpaError::InvalidArgument(format!(
            "q_proj must be [.., H, 2 D] (each head [q_h | g_h]), got {dims:?}"
        )))),
    }
}

/// How q and g reach the op.
enum Form {
    /// q is the op's first argument; the gate, if any, is held here.
    Separate(Option<Tensor>),
    /// The first argument is `q_proj`, q and g its two halves.
    Packed,
}

/// The attention forward as a candle custom op over `(q or q_proj, k, v)`.
struct AttentionOp {
    problem: AttentionProblem,
    form: Form,
    /// Keep LSE (and the ungated O for silu) for the backward.
    save: bool,
    saved: Mutex<Option<(Tensor, Option<Tensor>)>>,
}

impl AttentionOp {
    #[allow(clippy::too_many_arguments)] // candle's three (storage, layout) pairs and the gate
    fn views<'a, S>(
        &self,
        s1: &'a S,
        l1: &CandleLayout,
        s2: &'a S,
        l2: &CandleLayout,
        s3: &'a S,
        l3: &CandleLayout,
        g: Option<(&'a S, &CandleLayout)>,
    ) -> candle_core::Result<ForwardViews<'a, S>> {
        let (q, g) = match self.form {
            Form::Packed => (
                View::q_proj_half(s1, l1, 0)?,
                Some(View::q_proj_half(s1, l1, 1)?),
            ),
            Form::Separate(_) => (
                View::of(s1, l1)?,
                g.map(|(s, l)| View::of(s, l)).transpose()?,
            ),
        };
        Ok(ForwardViews {
            q,
            k: View::of(s2, l2)?,
            v: View::of(s3, l3)?,
            g,
        })
    }

    fn keep<S>(&self, out: ForwardOut<S>) -> S {
        if self.save {
            if let (Ok(mut saved), Some(lse)) = (self.saved.lock(), out.lse) {
                *saved = Some((lse, out.o));
            }
        }
        out.y
    }

    fn q_shape(&self) -> candle_core::Shape {
        self.problem.q_shape().into()
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        PACKED_OP_NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &CandleLayout,
        s2: &CpuStorage,
        l2: &CandleLayout,
        s3: &CpuStorage,
        l3: &CandleLayout,
    ) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
        let gate = match &self.form {
            Form::Separate(Some(g)) => Some(g.storage_and_layout()),
            _ => None,
        };
        let g = gate_on_device!(gate, Storage::Cpu);
        let views = self.views(s1, l1, s2, l2, s3, l3, g)?;
        let out = host::forward(&self.problem, &views, self.save)?;
        Ok((self.keep(out), self.q_shape()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &CandleLayout,
        s2: &candle_core::CudaStorage,
        l2: &CandleLayout,
        s3: &candle_core::CudaStorage,
        l3: &CandleLayout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        let gate = match &self.form {
            Form::Separate(Some(g)) => Some(g.storage_and_layout()),
            _ => None,
        };
        let g = gate_on_device!(gate, Storage::Cuda);
        let views = self.views(s1, l1, s2, l2, s3, l3, g)?;
        let out = super::device::forward(&self.problem, &views, self.save)?;
        Ok((self.keep(out), self.q_shape()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = matches!(self.form, Form::Packed);
        if self.problem.gate != GateMode::None && !packed {
            return Err(to_candle(GsdpaError::InvalidArgument(format!(
                "no backward for the {} gate through candle: only the elementwise gate (taken as \
                 q_proj, or q and g concatenated) and gate mode none have one",
                self.problem.gate.name()
            ))));
        }
        let (lse, o) = self
            .saved
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .ok_or_else(|| {
                to_candle(GsdpaError::InvalidArgument(
                    "the forward kept no LSE for this backward (a second backward through the \
                     same op?)"
                        .into(),
                ))
            })?;
        let dy = dy.contiguous()?;
        let inputs = BackwardInputs {
            q,
            k,
            v,
            packed,
            y,
            dy: &dy,
            lse: &lse,
            o: o.as_ref(),
        };
        let grads = match q.device() {
            candle_core::Device::Cpu => host::backward(&self.problem, &inputs)?,
            #[cfg(feature = "candle-cuda")]
            candle_core::Device::Cuda(_) => super::device::backward(&self.problem, &inputs)?,
            _ => return Err(device_mismatch()),
        };
        let dq = match grads.dg {
            // dq and dg interleaved per head, as q_proj produced q and g.
            Some(dg) => Tensor::cat(&[&grads.dq, &dg], grads.dq.rank() - 1)?,
            None => grads.dq,
        };
        Ok((Some(dq), Some(grads.dk), Some(grads.dv)))
    }
}

fn device_mismatch() -> candle_core::Error {
    to_candle(GsdpaError::InvalidArgument(
        "gated attention runs on CPU tensors (the emulator) or, with the candle-cuda feature, on \
         CUDA tensors; all of them on the same device"
            .into(),
    ))
}

fn tracked(tensors: &[Option<&Tensor>]) -> bool {
    tensors.iter().flatten().any(|t| t.track_op())
}

fn apply(op: AttentionOp, first: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    if op.save {
        first.apply_op3_arc(k, v, Arc::new(Box::new(op)))
    } else {
        first.apply_op3_no_bwd(k, v, &op)
    }
}

/// The forward of q, k, v and an optional separate gate. With a gradient to track and an elementwise
/// gate, q and g are concatenated into the packed form, whose op has the backward.
pub(super) fn forward(
    problem: AttentionProblem,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let save = tracked(&[Some(q), Some(k), Some(v), g]);
    if let (true, GateMode::Elementwise, Some(g)) = (save, problem.gate, g) {
        if q.dims() == g.dims() {
            let q_proj = Tensor::cat(&[q, g], q.rank() - 1)?;
            return forward_packed(problem, &q_proj, k, v);
        }
    }
    let op = AttentionOp {
        problem,
        form: Form::Separate(g.cloned()),
        save,
        saved: Mutex::new(None),
    };
    apply(op, q, k, v)
}

/// The forward of a `q_proj` (q and g interleaved per head), k and v.
pub(super) fn forward_packed(
    problem: AttentionProblem,
    q_proj: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> candle_core::Result<Tensor> {
    let op = AttentionOp {
        problem,
        form: Form::Packed,
        save: tracked(&[Some(q_proj), Some(k), Some(v)]),
        saved: Mutex::new(None),
    };
    apply(op, q_proj, k, v)
}

/// The tensors of one paged decode.
pub(super) struct PagedViews<'a, S> {
    pub q: View<'a, S>,
    pub k_cache: View<'a, S>,
    pub v_cache: View<'a, S>,
    pub g: Option<View<'a, S>>,
}

/// The paged decode as a candle custom op over `(q, k_cache, v_cache)`, forward only.
struct PagedOp {
    problem: DecodeProblem,
    g: Option<Tensor>,
    block_table: Tensor,
    cache_seqlens: Tensor,
}

impl PagedOp {
    fn q_shape(&self) -> candle_core::Shape {
        self.problem.q_shape().into()
    }
}

impl CustomOp3 for PagedOp {
    fn name(&self) -> &'static str {
        "gated-sdpa-paged"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &CandleLayout,
        s2: &CpuStorage,
        l2: &CandleLayout,
        s3: &CpuStorage,
        l3: &CandleLayout,
    ) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
        let gate = self.g.as_ref().map(|g| g.storage_and_layout());
        let g = match gate_on_device!(gate, Storage::Cpu) {
            Some((s, layout)) => Some(View::of(s, layout)?),
            None => None,
        };
        let views = PagedViews {
            q: View::of(s1, l1)?,
            k_cache: View::of(s2, l2)?,
            v_cache: View::of(s3, l3)?,
            g,
        };
        let table = super::host_i32(&self.block_table, "block_table")?;
        let seqlens = super::host_i32(&self.cache_seqlens, "cache_seqlens")?;
        let y = host::forward_paged(&self.problem, &views, &table, &seqlens)?;
        Ok((y, self.q_shape()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &CandleLayout,
        s2: &candle_core::CudaStorage,
        l2: &CandleLayout,
        s3: &candle_core::CudaStorage,
        l3: &CandleLayout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        let gate = self.g.as_ref().map(|g| g.storage_and_layout());
        let g = match gate_on_device!(gate, Storage::Cuda) {
            Some((s, layout)) => Some(View::of(s, layout)?),
            None => None,
        };
        let views = PagedViews {
            q: View::of(s1, l1)?,
            k_cache: View::of(s2, l2)?,
            v_cache: View::of(s3, l3)?,
            g,
        };
        let y = super::device::forward_paged(
            &self.problem,
            &views,
            &self.block_table,
            &self.cache_seqlens,
        )?;
        Ok((y, self.q_shape()))
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Err(to_candle(GsdpaError::InvalidArgument(
            "the paged decode is inference only: it has no backward".into(),
        )))
    }
}

/// The paged decode (no backward: a tracked input makes the backward fail with a message).
pub(super) fn forward_paged(
    problem: DecodeProblem,
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    g: Option<&Tensor>,
    block_table: &Tensor,
    cache_seqlens: &Tensor,
) -> candle_core::Result<Tensor> {
    let track = tracked(&[Some(q), Some(k_cache), Some(v_cache), g]);
    let op = PagedOp {
        problem,
        g: g.cloned(),
        block_table: block_table.clone(),
        cache_seqlens: cache_seqlens.clone(),
    };
    if track {
        q.apply_op3_arc(k_cache, v_cache, Arc::new(Box::new(op)))
    } else {
        q.apply_op3_no_bwd(k_cache, v_cache, &op)
    }
}

/// Whether a backward of `problem` needs the forward's ungated O.
pub(super) fn needs_o(problem: &AttentionProblem) -> bool {
    backward_needs_ungated_output(problem)
}
