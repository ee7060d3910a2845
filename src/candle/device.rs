//! CUDA tensors (feature `candle-cuda`): the kernels on the device's candle stream.
//!
//! candle-core 0.11 is built on cudarc 0.19, the cudarc of this crate, so candle's `CudaSlice` and
//! `CudaStream` are the buffers and the stream [`CudaBackend`] takes: the views are read in place (the
//! packed `q_proj` included), the outputs are fresh allocations on candle's stream (which candle
//! would make for any op), and nothing synchronizes. One backend (the kernels' module) is loaded per
//! CUDA context, on first use, and kept for the program's life.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType as CandleDType, Storage, Tensor, WithDType};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, DeviceRepr};
use half::{bf16, f16};

use super::op::{needs_o, BackwardInputs, ForwardOut, ForwardViews, Gradients, PagedViews, View};
use super::to_candle;
use crate::backend::{BackwardArgs, BackwardOptions, ForwardArgs};
use crate::cuda::{cuda_error, CudaBackend, CudaSeqlens};
use crate::error::GsdpaError;
use crate::paged::{self, CudaDecodeArgs, DecodeProblem, NumSplits, PagedKv};
use crate::problem::AttentionProblem;
use crate::tensor::{Element, Layout, Tensor as GTensor};
use crate::validate::backward_workspace_bytes;

/// The backend of `stream`'s context, loaded once per context.
fn backend(stream: &CudaStream) -> candle_core::Result<Arc<CudaBackend>> {
    static BACKENDS: OnceLock<Mutex<Vec<Arc<CudaBackend>>>> = OnceLock::new();
    let mut backends = BACKENDS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| to_candle(GsdpaError::Cuda("backend cache poisoned".into())))?;
    let ctx = stream.context();
    if let Some(b) = backends.iter().find(|b| Arc::ptr_eq(b.context(), ctx)) {
        return Ok(b.clone());
    }
    let b = Arc::new(CudaBackend::from_context(ctx.clone()).map_err(to_candle)?);
    backends.push(b.clone());
    Ok(b)
}

fn dtype_error(dtype: CandleDType) -> candle_core::Error {
    to_candle(GsdpaError::InvalidArgument(format!(
        "gated attention takes bf16 or f16 tensors, got {dtype:?}"
    )))
}

fn driver(what: &str) -> impl Fn(cudarc::driver::DriverError) -> candle_core::Error + '_ {
    move |e| to_candle(cuda_error(what, e))
}

fn len(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// A view of a candle CUDA storage as the backend takes it.
fn device_view<'a, T: CudaDType>(
    view: &'a View<'_, CudaStorage>,
    name: &'static str,
) -> candle_core::Result<GTensor<CudaView<'a, T>>> {
    let slice = view.storage.as_cuda_slice::<T>()?;
    let data = slice.try_slice(view.offset..).ok_or_else(|| {
        to_candle(GsdpaError::BadStrides {
            tensor: name,
            reason: format!(
                "the view starts at element {} of a storage of {}",
                view.offset,
                slice.len()
            ),
        })
    })?;
    Ok(GTensor::new(data, view.layout.clone()))
}

/// A fresh device buffer of `n` elements on `stream`; every element is written by the kernels that
/// take it as an output (validation checks their shapes cover it).
fn alloc<T: DeviceRepr>(stream: &Arc<CudaStream>, n: usize) -> candle_core::Result<CudaSlice<T>> {
    // SAFETY: the buffer is only read after a kernel wrote all of it (it is an output of exactly
    // its size).
    unsafe { stream.alloc::<T>(n) }.map_err(driver("allocating an output"))
}

/// A candle tensor owning `slice`.
fn wrap<T: CudaDType>(slice: CudaSlice<T>, storage: &CudaStorage, shape: Vec<usize>) -> Tensor {
    let storage = CudaStorage::wrap_cuda_slice(slice, storage.device().clone());
    Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false)
}

/// Device copies of a varlen problem's prefix sums (host copies: the problem's).
fn seqlens(
    problem: &AttentionProblem,
    stream: &Arc<CudaStream>,
) -> candle_core::Result<Option<(CudaSlice<i32>, CudaSlice<i32>)>> {
    problem
        .varlen
        .as_ref()
        .map(|v| {
            let upload = driver("uploading cu_seqlens");
            Ok((
                stream.clone_htod(&v.cu_seqlens_q).map_err(&upload)?,
                stream.clone_htod(&v.cu_seqlens_k).map_err(&upload)?,
            ))
        })
        .transpose()
}

pub(super) fn forward(
    problem: &AttentionProblem,
    views: &ForwardViews<'_, CudaStorage>,
    save: bool,
) -> candle_core::Result<ForwardOut<CudaStorage>> {
    match views.q.storage.dtype() {
        CandleDType::BF16 => forward_t::<bf16>(problem, views, save),
        CandleDType::F16 => forward_t::<f16>(problem, views, save),
        other => Err(dtype_error(other)),
    }
}

fn forward_t<T: Element + DeviceRepr + CudaDType + WithDType>(
    problem: &AttentionProblem,
    views: &ForwardViews<'_, CudaStorage>,
    save: bool,
) -> candle_core::Result<ForwardOut<CudaStorage>> {
    let storage = views.q.storage;
    let stream = storage.device().cuda_stream();
    let backend = backend(&stream)?;
    let (q_shape, lse_shape) = (problem.q_shape(), problem.lse_shape());
    let keep_o = save && needs_o(problem);
    let mut y = alloc::<T>(&stream, len(&q_shape))?;
    let mut lse = save
        .then(|| alloc::<f32>(&stream, len(&lse_shape)))
        .transpose()?;
    let mut o = keep_o
        .then(|| alloc::<T>(&stream, len(&q_shape)))
        .transpose()?;
    let cu = seqlens(problem, &stream)?;
    let cu_views = cu.as_ref().map(|(q, k)| CudaSeqlens {
        q: q.as_view(),
        k: k.as_view(),
    });
    let mut args = ForwardArgs {
        q: device_view::<T>(&views.q, "q")?,
        k: device_view::<T>(&views.k, "k")?,
        v: device_view::<T>(&views.v, "v")?,
        g: views
            .g
            .as_ref()
            .map(|g| device_view::<T>(g, "g"))
            .transpose()?,
        y: GTensor::contiguous(y.as_view_mut(), &q_shape),
        o: o.as_mut()
            .map(|o| GTensor::contiguous(o.as_view_mut(), &q_shape)),
        lse: lse
            .as_mut()
            .map(|l| GTensor::contiguous(l.as_view_mut(), &lse_shape)),
        diagnostics: None,
    };
    backend
        .forward(&stream, problem, &mut args, cu_views.as_ref())
        .map_err(to_candle)?;
    drop(args);
    Ok(ForwardOut {
        y: CudaStorage::wrap_cuda_slice(y, storage.device().clone()),
        lse: lse.map(|l| wrap(l, storage, lse_shape)),
        o: o.map(|o| wrap(o, storage, q_shape)),
    })
}

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

/// A contiguous copy of a CUDA tensor (the tensor itself when it already is one).
fn dense(t: &Tensor) -> candle_core::Result<Tensor> {
    if !t.device().is_cuda() {
        return Err(to_candle(GsdpaError::InvalidArgument(
            "the backward's tensors must all be on the forward's CUDA device".into(),
        )));
    }
    t.contiguous()
}

fn backward_t<T: Element + DeviceRepr + CudaDType + WithDType>(
    problem: &AttentionProblem,
    inputs: &BackwardInputs<'_>,
) -> candle_core::Result<Gradients> {
    let (q_shape, kv_shape, lse_shape) =
        (problem.q_shape(), problem.kv_shape(), problem.lse_shape());
    let d = problem.head_dim;
    let tensors = [
        inputs.q, inputs.k, inputs.v, inputs.y, inputs.dy, inputs.lse,
    ]
    .into_iter()
    .chain(inputs.o)
    .map(dense)
    .collect::<candle_core::Result<Vec<_>>>()?;
    let locked: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut cuda = Vec::with_capacity(locked.len());
    for (storage, layout) in &locked {
        match &**storage {
            Storage::Cuda(s) => cuda.push((s, layout.start_offset())),
            _ => {
                return Err(to_candle(GsdpaError::InvalidArgument(
                    "the backward's tensors must all be on the forward's CUDA device".into(),
                )))
            }
        }
    }
    let first = cuda[0].0;
    let stream = first.device().cuda_stream();
    let backend = backend(&stream)?;
    // The tensors are contiguous: their views are their storage from the start offset on.
    let at = |i: usize, layout: Layout, name: &'static str| {
        let (storage, offset) = cuda[i];
        let slice = storage.as_cuda_slice::<T>()?;
        let data = slice.try_slice(offset..).ok_or_else(|| {
            to_candle(GsdpaError::BadStrides {
                tensor: name,
                reason: format!("the view starts past its storage of {}", slice.len()),
            })
        })?;
        Ok::<_, candle_core::Error>(GTensor::new(data, layout))
    };
    let q_layout = if inputs.packed {
        Layout::q_proj_view(&q_shape)
    } else {
        Layout::contiguous(&q_shape)
    };
    let lse_slice = cuda[5].0.as_cuda_slice::<f32>()?;
    let lse = lse_slice
        .try_slice(cuda[5].1..)
        .ok_or_else(|| to_candle(GsdpaError::InvalidArgument("lse storage".into())))?;
    let mut dq = alloc::<T>(&stream, len(&q_shape))?;
    let mut dk = alloc::<T>(&stream, len(&kv_shape))?;
    let mut dv = alloc::<T>(&stream, len(&kv_shape))?;
    let mut dg = inputs
        .packed
        .then(|| alloc::<T>(&stream, len(&q_shape)))
        .transpose()?;
    let mut workspace = alloc::<u8>(
        &stream,
        backward_workspace_bytes(problem).map_err(to_candle)?,
    )?;
    let cu = seqlens(problem, &stream)?;
    let cu_views = cu.as_ref().map(|(q, k)| CudaSeqlens {
        q: q.as_view(),
        k: k.as_view(),
    });
    let q = at(0, q_layout.clone(), "q")?;
    let g = if inputs.packed {
        let (storage, offset) = cuda[0];
        let slice = storage.as_cuda_slice::<T>()?;
        Some(GTensor::new(
            slice
                .try_slice(offset + d..)
                .ok_or_else(|| to_candle(GsdpaError::InvalidArgument("q_proj storage".into())))?,
            q_layout,
        ))
    } else {
        None
    };
    let mut args = BackwardArgs {
        q,
        k: at(1, Layout::contiguous(&kv_shape), "k")?,
        v: at(2, Layout::contiguous(&kv_shape), "v")?,
        g,
        y: at(3, Layout::contiguous(&q_shape), "y")?,
        o: if inputs.o.is_some() {
            Some(at(6, Layout::contiguous(&q_shape), "o")?)
        } else {
            None
        },
        dy: at(4, Layout::contiguous(&q_shape), "dy")?,
        lse: GTensor::contiguous(lse, &lse_shape),
        dq: GTensor::contiguous(dq.as_view_mut(), &q_shape),
        dk: GTensor::contiguous(dk.as_view_mut(), &kv_shape),
        dv: GTensor::contiguous(dv.as_view_mut(), &kv_shape),
        dg: dg
            .as_mut()
            .map(|dg| GTensor::contiguous(dg.as_view_mut(), &q_shape)),
    };
    let mut ws = workspace.as_view_mut();
    backend
        .backward(
            &stream,
            problem,
            &mut args,
            &mut ws,
            cu_views.as_ref(),
            BackwardOptions::default(),
        )
        .map_err(to_candle)?;
    drop(args);
    Ok(Gradients {
        dq: wrap(dq, first, q_shape.clone()),
        dk: wrap(dk, first, kv_shape.clone()),
        dv: wrap(dv, first, kv_shape),
        dg: dg.map(|dg| wrap(dg, first, q_shape)),
    })
}

/// The device view of a contiguous i32 index tensor.
fn index_view<'a>(
    storage: &'a CudaStorage,
    layout: &candle_core::Layout,
    dims: &[usize],
) -> candle_core::Result<GTensor<CudaView<'a, i32>>> {
    let slice = storage.as_cuda_slice::<i32>()?;
    let data = slice
        .try_slice(layout.start_offset()..)
        .ok_or_else(|| to_candle(GsdpaError::InvalidArgument("index storage".into())))?;
    Ok(GTensor::contiguous(data, dims))
}

/// An i32 device copy of an index tensor: the tensor itself when it is i32 on the device already,
/// otherwise converted on the host (u32 indices, as candle-flash-attn takes them, cost one
/// device-to-host copy, which waits for the stream).
fn device_i32(t: &Tensor, device: &candle_core::Device, name: &str) -> candle_core::Result<Tensor> {
    if t.dtype() == CandleDType::I32 && t.device().same_device(device) {
        return t.contiguous();
    }
    let host = super::host_i32(t, name)?;
    Tensor::new(host.as_slice(), device)?.reshape(t.dims())
}

pub(super) fn forward_paged(
    problem: &DecodeProblem,
    views: &PagedViews<'_, CudaStorage>,
    block_table: &Tensor,
    cache_seqlens: &Tensor,
) -> candle_core::Result<CudaStorage> {
    match views.q.storage.dtype() {
        CandleDType::BF16 => forward_paged_t::<bf16>(problem, views, block_table, cache_seqlens),
        CandleDType::F16 => forward_paged_t::<f16>(problem, views, block_table, cache_seqlens),
        other => Err(dtype_error(other)),
    }
}

fn forward_paged_t<T: Element + DeviceRepr + CudaDType + WithDType>(
    problem: &DecodeProblem,
    views: &PagedViews<'_, CudaStorage>,
    block_table: &Tensor,
    cache_seqlens: &Tensor,
) -> candle_core::Result<CudaStorage> {
    let storage = views.q.storage;
    let device = candle_core::Device::Cuda(storage.device().clone());
    let stream = storage.device().cuda_stream();
    let backend = backend(&stream)?;
    let table = device_i32(block_table, &device, "block_table")?;
    let lens = device_i32(cache_seqlens, &device, "cache_seqlens")?;
    let (table_storage, table_layout) = table.storage_and_layout();
    let (lens_storage, lens_layout) = lens.storage_and_layout();
    let (Storage::Cuda(table_cuda), Storage::Cuda(lens_cuda)) = (&*table_storage, &*lens_storage)
    else {
        return Err(dtype_error(CandleDType::I32));
    };
    let sm_count = backend
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(driver("querying the SM count"))?;
    let num_splits = paged::resolve_num_splits(problem, NumSplits::Auto, sm_count.max(1) as usize)
        .map_err(to_candle)?;
    let ws_bytes = paged::decode_workspace_bytes(problem, num_splits).map_err(to_candle)?;
    let mut workspace = alloc::<u8>(&stream, ws_bytes.max(1))?;
    let q_shape = problem.q_shape();
    let mut y = alloc::<T>(&stream, len(&q_shape))?;
    let mut args: CudaDecodeArgs<'_, T> = paged::DecodeArgs {
        q: device_view::<T>(&views.q, "q")?,
        kv: PagedKv {
            k_cache: device_view::<T>(&views.k_cache, "k_cache")?,
            v_cache: device_view::<T>(&views.v_cache, "v_cache")?,
            block_table: index_view(table_cuda, table_layout, table.dims())?,
            cache_seqlens: index_view(lens_cuda, lens_layout, lens.dims())?,
        },
        cu_seqlens_q: None,
        g: views
            .g
            .as_ref()
            .map(|g| device_view::<T>(g, "g"))
            .transpose()?,
        y: GTensor::contiguous(y.as_view_mut(), &q_shape),
        lse: None,
    };
    let mut ws = workspace.as_view_mut();
    backend
        .forward_paged(&stream, problem, &mut args, num_splits, Some(&mut ws), None)
        .map_err(to_candle)?;
    drop(args);
    Ok(CudaStorage::wrap_cuda_slice(y, storage.device().clone()))
}
