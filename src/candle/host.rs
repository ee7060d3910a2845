//! CPU tensors: the kernels on the emulator.
//!
//! candle's CPU storage is a `Vec` of 2-byte elements, whose start the kernels' 16-byte vector loads
//! cannot rely on, so each view is copied into an aligned [`HostBuffer`] with its strides kept (the
//! packed `q_proj` stays one buffer, q and g views of it). The emulator copies again into guarded
//! buffers; this path is for testing and CPU-only runs, not for speed.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType as CandleDType, Device, Tensor, WithDType};
use half::{bf16, f16};

use super::op::{needs_o, BackwardInputs, ForwardOut, ForwardViews, Gradients, PagedViews, View};
use super::to_candle;
use crate::backend::{BackwardArgs, BackwardOptions, ForwardArgs, HostBackend};
use crate::emulator::Emulator;
use crate::error::GsdpaError;
use crate::paged::{self, DecodeArgs, DecodeProblem, NumSplits, PagedKv};
use crate::problem::AttentionProblem;
use crate::tensor::{Element, HostBuffer, Layout, Tensor as GTensor};

/// An aligned copy of the storage a view addresses, and the view's layout inside it.
struct HostView<T> {
    buffer: HostBuffer<T>,
    layout: Layout,
}

impl<T: Element + WithDType> HostView<T> {
    fn copy(view: &View<'_, CpuStorage>, name: &'static str) -> candle_core::Result<Self> {
        Self::copy_spanning(view, span(view, name)?, name)
    }

    /// The copy of `span` elements from the view's element 0 (more than its own span when a second
    /// view of the same storage, the gate of a `q_proj`, lies further in).
    fn copy_spanning(
        view: &View<'_, CpuStorage>,
        span: usize,
        name: &'static str,
    ) -> candle_core::Result<Self> {
        let data = view.storage.as_slice::<T>()?;
        let Some(region) = data.get(view.offset..view.offset + span) else {
            return Err(to_candle(GsdpaError::BadStrides {
                tensor: name,
                reason: format!(
                    "the view reaches element {} of a storage of {}",
                    view.offset + span,
                    data.len()
                ),
            }));
        };
        Ok(HostView {
            buffer: HostBuffer::try_from_slice(region).map_err(to_candle)?,
            layout: view.layout.clone(),
        })
    }

    fn tensor(&self) -> GTensor<&[T]> {
        GTensor::new(self.buffer.as_slice(), self.layout.clone())
    }
}

/// Elements from a view's element 0 to its last one, inclusive.
fn span<S>(view: &View<'_, S>, name: &'static str) -> candle_core::Result<usize> {
    match view.layout.max_offset() {
        Ok(Some(max)) => Ok(max + 1),
        Ok(None) => Ok(0),
        Err(_) => Err(to_candle(GsdpaError::SizeOverflow(format!(
            "{name}: the largest offset of its layout"
        )))),
    }
}

/// The element type of a storage, as the kernels know it.
fn dtype_error(dtype: CandleDType) -> candle_core::Error {
    to_candle(GsdpaError::InvalidArgument(format!(
        "gated attention takes bf16 or f16 tensors, got {dtype:?}"
    )))
}

fn len(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The forward on the emulator; LSE (and O for silu) too when `save`.
pub(super) fn forward(
    problem: &AttentionProblem,
    views: &ForwardViews<'_, CpuStorage>,
    save: bool,
) -> candle_core::Result<ForwardOut<CpuStorage>> {
    match views.q.storage.dtype() {
        CandleDType::BF16 => forward_t::<bf16>(problem, views, save),
        CandleDType::F16 => forward_t::<f16>(problem, views, save),
        other => Err(dtype_error(other)),
    }
}

fn forward_t<T: Element + WithDType>(
    problem: &AttentionProblem,
    views: &ForwardViews<'_, CpuStorage>,
    save: bool,
) -> candle_core::Result<ForwardOut<CpuStorage>> {
    // q and g of a q_proj share a storage: one copy serves both, with g's view D elements in.
    let g_offset = views.g.as_ref().and_then(|g| {
        (std::ptr::eq(g.storage, views.q.storage) && g.offset >= views.q.offset)
            .then(|| g.offset - views.q.offset)
    });
    let q_span = match (&views.g, g_offset) {
        (Some(g), Some(offset)) => span(&views.q, "q")?.max(offset + span(g, "g")?),
        _ => span(&views.q, "q")?,
    };
    let q = HostView::<T>::copy_spanning(&views.q, q_span, "q")?;
    let g_copy = match (&views.g, g_offset) {
        (Some(g), None) => Some(HostView::<T>::copy(g, "g")?),
        _ => None,
    };
    let k = HostView::<T>::copy(&views.k, "k")?;
    let v = HostView::<T>::copy(&views.v, "v")?;
    let g = match (&views.g, g_offset, &g_copy) {
        (Some(g), Some(offset), _) => Some(GTensor::new(
            q.buffer.as_slice().get(offset..).unwrap_or(&[]),
            g.layout.clone(),
        )),
        (_, _, Some(copy)) => Some(copy.tensor()),
        _ => None,
    };
    let (q_shape, lse_shape) = (problem.q_shape(), problem.lse_shape());
    let mut y = HostBuffer::<T>::try_new(len(&q_shape)).map_err(to_candle)?;
    let mut lse =
        HostBuffer::<f32>::try_new(if save { len(&lse_shape) } else { 0 }).map_err(to_candle)?;
    let keep_o = save && needs_o(problem);
    let mut o =
        HostBuffer::<T>::try_new(if keep_o { len(&q_shape) } else { 0 }).map_err(to_candle)?;
    let mut args = ForwardArgs {
        q: q.tensor(),
        k: k.tensor(),
        v: v.tensor(),
        g,
        y: GTensor::contiguous(y.as_mut_slice(), &q_shape),
        o: keep_o.then(|| GTensor::contiguous(o.as_mut_slice(), &q_shape)),
        lse: save.then(|| GTensor::contiguous(lse.as_mut_slice(), &lse_shape)),
        diagnostics: None,
    };
    Emulator::new()
        .forward(problem, &mut args)
        .map_err(to_candle)?;
    drop(args);
    let lse = save
        .then(|| Tensor::from_vec(lse.to_vec(), lse_shape, &Device::Cpu))
        .transpose()?;
    let o = keep_o
        .then(|| Tensor::from_vec(o.to_vec(), q_shape, &Device::Cpu))
        .transpose()?;
    Ok(ForwardOut {
        y: T::to_cpu_storage_owned(y.to_vec()),
        lse,
        o,
    })
}

/// The backward on the emulator.
pub(super) fn backward(
    problem: &AttentionProblem,
    inputs: &BackwardInputs<'_>,
) -> candle_core::Result<Gradients> {
    match inputs.q.dtype() {
        CandleDType::BF16 => backward_t::<bf16>(problem, inputs),
        CandleDType::F16 => backward_t::<f16>(problem, inputs),
        other => Err(dtype_error(other)),
    }
}

/// An aligned copy of a whole candle tensor (any device-side layout becomes C order).
fn dense<T: WithDType + Default>(t: &Tensor) -> candle_core::Result<HostBuffer<T>> {
    let data = t.flatten_all()?.to_vec1::<T>()?;
    HostBuffer::try_from_slice(&data).map_err(to_candle)
}

fn backward_t<T: Element + WithDType>(
    problem: &AttentionProblem,
    inputs: &BackwardInputs<'_>,
) -> candle_core::Result<Gradients> {
    let (q_shape, kv_shape, lse_shape) =
        (problem.q_shape(), problem.kv_shape(), problem.lse_shape());
    let d = problem.head_dim;
    // The packed q_proj is copied dense once; q and g are its two halves.
    let q = dense::<T>(inputs.q)?;
    let q_layout = if inputs.packed {
        Layout::q_proj_view(&q_shape)
    } else {
        Layout::contiguous(&q_shape)
    };
    let k = dense::<T>(inputs.k)?;
    let v = dense::<T>(inputs.v)?;
    let y = dense::<T>(inputs.y)?;
    let dy = dense::<T>(inputs.dy)?;
    let lse = dense::<f32>(inputs.lse)?;
    let o = inputs.o.map(dense::<T>).transpose()?;
    let mut dq = HostBuffer::<T>::try_new(len(&q_shape)).map_err(to_candle)?;
    let mut dk = HostBuffer::<T>::try_new(len(&kv_shape)).map_err(to_candle)?;
    let mut dv = HostBuffer::<T>::try_new(len(&kv_shape)).map_err(to_candle)?;
    let mut dg = HostBuffer::<T>::try_new(if inputs.packed { len(&q_shape) } else { 0 })
        .map_err(to_candle)?;
    let mut args = BackwardArgs {
        q: GTensor::new(q.as_slice(), q_layout.clone()),
        k: GTensor::contiguous(k.as_slice(), &kv_shape),
        v: GTensor::contiguous(v.as_slice(), &kv_shape),
        g: inputs
            .packed
            .then(|| GTensor::new(q.as_slice().get(d..).unwrap_or(&[]), q_layout.clone())),
        y: GTensor::contiguous(y.as_slice(), &q_shape),
        o: o.as_ref()
            .map(|o| GTensor::contiguous(o.as_slice(), &q_shape)),
        dy: GTensor::contiguous(dy.as_slice(), &q_shape),
        lse: GTensor::contiguous(lse.as_slice(), &lse_shape),
        dq: GTensor::contiguous(dq.as_mut_slice(), &q_shape),
        dk: GTensor::contiguous(dk.as_mut_slice(), &kv_shape),
        dv: GTensor::contiguous(dv.as_mut_slice(), &kv_shape),
        dg: inputs
            .packed
            .then(|| GTensor::contiguous(dg.as_mut_slice(), &q_shape)),
    };
    Emulator::new()
        .backward(problem, &mut args, BackwardOptions::default())
        .map_err(to_candle)?;
    drop(args);
    let cpu = |buffer: &HostBuffer<T>, shape: &[usize]| {
        Tensor::from_vec(buffer.to_vec(), shape, &Device::Cpu)
    };
    Ok(Gradients {
        dq: cpu(&dq, &q_shape)?,
        dk: cpu(&dk, &kv_shape)?,
        dv: cpu(&dv, &kv_shape)?,
        dg: inputs.packed.then(|| cpu(&dg, &q_shape)).transpose()?,
    })
}

/// The paged decode on the emulator, after the host check of the table and lengths.
pub(super) fn forward_paged(
    problem: &DecodeProblem,
    views: &PagedViews<'_, CpuStorage>,
    block_table: &[i32],
    cache_seqlens: &[i32],
) -> candle_core::Result<CpuStorage> {
    match views.q.storage.dtype() {
        CandleDType::BF16 => forward_paged_t::<bf16>(problem, views, block_table, cache_seqlens),
        CandleDType::F16 => forward_paged_t::<f16>(problem, views, block_table, cache_seqlens),
        other => Err(dtype_error(other)),
    }
}

fn forward_paged_t<T: Element + WithDType>(
    problem: &DecodeProblem,
    views: &PagedViews<'_, CpuStorage>,
    block_table: &[i32],
    cache_seqlens: &[i32],
) -> candle_core::Result<CpuStorage> {
    let q = HostView::<T>::copy(&views.q, "q")?;
    let k = HostView::<T>::copy(&views.k_cache, "k_cache")?;
    let v = HostView::<T>::copy(&views.v_cache, "v_cache")?;
    let g = views
        .g
        .as_ref()
        .map(|g| HostView::<T>::copy(g, "g"))
        .transpose()?;
    let table = GTensor::contiguous(block_table, &problem.table_shape());
    paged::check_paged_values(problem, &table, cache_seqlens, None).map_err(to_candle)?;
    let q_shape = problem.q_shape();
    let mut y = HostBuffer::<T>::try_new(len(&q_shape)).map_err(to_candle)?;
    let mut args = DecodeArgs {
        q: q.tensor(),
        kv: PagedKv {
            k_cache: k.tensor(),
            v_cache: v.tensor(),
            block_table: table,
            cache_seqlens: GTensor::contiguous(cache_seqlens, &[cache_seqlens.len()]),
        },
        cu_seqlens_q: None,
        g: g.as_ref().map(HostView::tensor),
        y: GTensor::contiguous(y.as_mut_slice(), &q_shape),
        lse: None,
    };
    let status = Emulator::new()
        .forward_paged(problem, &mut args, NumSplits::Auto)
        .map_err(to_candle)?;
    drop(args);
    if status != crate::ffi::GSDPA_DECODE_STATUS_OK as i32 {
        return Err(to_candle(GsdpaError::InvalidPagedKv {
            tensor: "block_table",
            reason: format!("the decode kernels reported invalid device values (status {status})"),
        }));
    }
    Ok(T::to_cpu_storage_owned(y.to_vec()))
}
