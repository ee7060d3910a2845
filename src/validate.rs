//! The one validation path every backend goes through.
//!
//! [`validate_forward`] and [`validate_backward`] check a problem together with its tensors and return the
//! kernels' parameter struct with every stride, size, mode and pointer filled in. Pointers come from
//! [`Memory::addr`]; backends that copy data (the emulator, a device upload of `cu_seqlens`) re-point
//! them. `cu_seqlens_*` point at the problem's host vectors.
//!
//! Rules (the kernels rely on each of them):
//! - shapes exactly as [`AttentionProblem::q_shape`], [`AttentionProblem::kv_shape`],
//!   [`AttentionProblem::gate_shape`], [`AttentionProblem::lse_shape`];
//! - the last dimension contiguous (except the headwise gate, which has none), every addressed element
//!   inside the storage, outputs not overlapping themselves, each other or any input;
//! - 16-bit tensors with a D axis: base 16-byte aligned and batch/row/head strides multiples of 8
//!   elements (the kernels move 16-byte vectors); headwise gate 2-byte, f32 tensors 4-byte aligned;
//! - lengths, heads, batch and head dim fit i32, element offsets fit i64, `heads_q` and `batch` at most
//!   65535 (grid y and z);
//! - zero-sized problems ([`AttentionProblem::is_empty`]) pass; backends then do nothing.

use std::os::raw::c_void;

use crate::backend::{
    gate_stats_workspace_len, BackwardArgs, ForwardArgs, ForwardDiagnostics, GateArgs,
    GateBackwardArgs,
};
use crate::error::{GsdpaError, Result};
use crate::ffi::{
    GsdpaBwdParams, GsdpaFwdParams, GsdpaGateBackwardParams, GsdpaGateParams, GsdpaStrides,
};
use crate::problem::{
    Activation, AttentionProblem, GateMode, MAX_SOFTMAX_SCALE, SUPPORTED_HEAD_DIMS,
};
use crate::tensor::{Element, Memory, Tensor, ELEMENT_BYTES};

/// Largest grid y / z extent (heads_q and batch).
pub const MAX_GRID_YZ: usize = 65535;

/// Alignment of each region of the backward workspace, in bytes.
pub const WORKSPACE_ALIGN: usize = 256;

/// The softmax scales every kernel accepts (the forward, the backward and the paged decode share the
/// online softmax): finite, positive and at most [`MAX_SOFTMAX_SCALE`]. The kernels fold the scale into
/// the exponent after taking the row maximum of the unscaled scores (as FlashAttention does), which is
/// only right for a positive scale, and compute that exponent in f32, which bounds it.
pub(crate) fn check_softmax_scale(scale: f32) -> Result<()> {
    if !(scale.is_finite() && scale > 0.0 && scale <= MAX_SOFTMAX_SCALE) {
        return Err(GsdpaError::UnsupportedScale {
            scale,
            max: MAX_SOFTMAX_SCALE,
        });
    }
    Ok(())
}

/// Checks the problem alone (no tensors): head dim, head ratio, scale, varlen consistency, size limits.
pub fn validate_problem(problem: &AttentionProblem) -> Result<()> {
    if !SUPPORTED_HEAD_DIMS.contains(&problem.head_dim) {
        return Err(GsdpaError::UnsupportedHeadDim {
            head_dim: problem.head_dim,
        });
    }
    // heads_q == 0 is an empty problem; otherwise every kv head serves heads_q / heads_kv query heads.
    if problem.heads_q > 0 && (problem.heads_kv == 0 || problem.heads_q % problem.heads_kv != 0) {
        return Err(GsdpaError::HeadsNotDivisible {
            heads_q: problem.heads_q,
            heads_kv: problem.heads_kv,
        });
    }
    check_softmax_scale(problem.softmax_scale())?;
    if let Some(varlen) = &problem.varlen {
        varlen.validate()?;
        if varlen.batch() != problem.batch {
            return Err(GsdpaError::InvalidCuSeqlens {
                which: "cu_seqlens_q",
                reason: format!(
                    "has {} entries but the problem's batch is {} (needs batch + 1)",
                    varlen.cu_seqlens_q.len(),
                    problem.batch
                ),
            });
        }
        if varlen.max_seqlen_q != problem.seqlen_q || varlen.max_seqlen_k != problem.seqlen_k {
            return Err(GsdpaError::InvalidArgument(format!(
                "varlen problem: seqlen_q/seqlen_k ({}, {}) must equal max_seqlen_q/max_seqlen_k ({}, {})",
                problem.seqlen_q, problem.seqlen_k, varlen.max_seqlen_q, varlen.max_seqlen_k
            )));
        }
    }
    for (what, value) in [
        ("batch", problem.batch),
        ("seqlen_q", problem.seqlen_q),
        ("seqlen_k", problem.seqlen_k),
        ("heads_q", problem.heads_q),
        ("heads_kv", problem.heads_kv),
    ] {
        if value > i32::MAX as usize {
            return Err(GsdpaError::SizeOverflow(format!(
                "{what} = {value} does not fit in i32"
            )));
        }
    }
    for (what, value) in [("heads_q", problem.heads_q), ("batch", problem.batch)] {
        if value > MAX_GRID_YZ {
            return Err(GsdpaError::SizeOverflow(format!(
                "{what} = {value} exceeds the grid limit {MAX_GRID_YZ}"
            )));
        }
    }
    // seqlen_q fits i32, so ceil(seqlen_q / 64) query tiles (grid x) are below 2^31 - 1 too.
    Ok(())
}

/// How a tensor is addressed by the kernels, which decides its stride and alignment rules.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// 16-bit tensor with a contiguous D axis, read and written with 16-byte vectors.
    Vector16,
    /// Headwise gate (or its gradient): 16-bit scalars, any strides.
    Scalar16,
    /// 32-bit rows, the last axis contiguous: f32 (lse) or i32 (a paged cache's block table and lengths).
    Rows32,
}

/// A tensor that passed its checks: its byte span (for overlap tests) and its kernel strides.
pub(crate) struct Checked {
    pub(crate) name: &'static str,
    /// `[start, end)` in bytes, `None` for an empty tensor.
    pub(crate) span: Option<(usize, usize)>,
    pub(crate) addr: usize,
    pub(crate) strides: Vec<i64>,
}

pub(crate) fn check_tensor<S: Memory>(
    name: &'static str,
    tensor: &Tensor<S>,
    expected: &[usize],
    elem_bytes: usize,
    kind: Kind,
    output: bool,
) -> Result<Checked> {
    let layout = &tensor.layout;
    if layout.shape() != expected || layout.strides().len() != layout.rank() {
        return Err(GsdpaError::ShapeMismatch {
            tensor: name,
            expected: expected.to_vec(),
            actual: layout.shape().to_vec(),
        });
    }
    let bad_strides = |reason: String| GsdpaError::BadStrides {
        tensor: name,
        reason,
    };
    let (last_extent, last_stride) = (
        layout.shape().last().copied().unwrap_or(1),
        layout.strides().last().copied().unwrap_or(1),
    );
    if kind != Kind::Scalar16 && last_extent > 1 && last_stride != 1 {
        return Err(bad_strides(format!(
            "the last dimension must be contiguous (stride 1), got stride {last_stride}"
        )));
    }
    // Strides of extent-1 dimensions never multiply a non-zero index: pass 0 so they cannot overflow.
    let strides: Vec<i64> = layout
        .shape()
        .iter()
        .zip(layout.strides())
        .map(|(&extent, &stride)| {
            if extent <= 1 {
                Ok(0)
            } else {
                i64::try_from(stride).map_err(|_| {
                    GsdpaError::SizeOverflow(format!("{name}: stride {stride} does not fit in i64"))
                })
            }
        })
        .collect::<Result<_>>()?;
    let addr = tensor.data.addr();
    let max_offset = match layout.max_offset() {
        Err(_) => {
            return Err(GsdpaError::SizeOverflow(format!(
                "{name}: the largest element offset overflows"
            )))
        }
        Ok(None) => {
            return Ok(Checked {
                name,
                span: None,
                addr,
                strides,
            })
        }
        Ok(Some(m)) => m,
    };
    if i64::try_from(max_offset).is_err() {
        return Err(GsdpaError::SizeOverflow(format!(
            "{name}: the largest element offset {max_offset} does not fit in i64"
        )));
    }
    if max_offset >= tensor.data.len() {
        return Err(bad_strides(format!(
            "the largest element offset {max_offset} is beyond the buffer of {} elements",
            tensor.data.len()
        )));
    }
    if output && !layout.is_non_overlapping() {
        return Err(bad_strides(
            "the strides map different elements of this output to the same memory".into(),
        ));
    }
    let misaligned = |reason: String| GsdpaError::Misaligned {
        tensor: name,
        reason,
    };
    let base_align = match kind {
        Kind::Vector16 => 16,
        Kind::Scalar16 => 2,
        Kind::Rows32 => 4,
    }
    .max(elem_bytes);
    if addr % base_align != 0 {
        return Err(misaligned(format!(
            "base address {addr:#x} is not {base_align}-byte aligned"
        )));
    }
    if kind == Kind::Vector16 {
        let rank = layout.rank();
        for (dim, (&extent, &stride)) in layout.shape().iter().zip(layout.strides()).enumerate() {
            if dim + 1 < rank && extent > 1 && stride % 8 != 0 {
                return Err(misaligned(format!(
                    "stride {stride} of dimension {dim} is not a multiple of 8 elements (16 bytes)"
                )));
            }
        }
    }
    let end = (max_offset + 1)
        .checked_mul(elem_bytes)
        .and_then(|bytes| bytes.checked_add(addr))
        .ok_or_else(|| GsdpaError::SizeOverflow(format!("{name}: byte span overflows")))?;
    Ok(Checked {
        name,
        span: Some((addr, end)),
        addr,
        strides,
    })
}

/// Rejects any output that overlaps an input or an earlier output.
pub(crate) fn check_overlaps(inputs: &[&Checked], outputs: &[&Checked]) -> Result<()> {
    for (i, out) in outputs.iter().enumerate() {
        let Some((start, end)) = out.span else {
            continue;
        };
        for other in inputs.iter().chain(&outputs[..i]) {
            if let Some((other_start, other_end)) = other.span {
                if start < other_end && other_start < end {
                    return Err(GsdpaError::Overlap {
                        output: out.name,
                        other: other.name,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Kernel strides of a `[B, S, H(, D)]` / varlen `[T, H(, D)]` tensor.
fn token_strides(checked: &Checked, varlen: bool) -> GsdpaStrides {
    let s = &checked.strides;
    if varlen {
        GsdpaStrides {
            batch: 0,
            row: s[0],
            head: s[1],
        }
    } else {
        GsdpaStrides {
            batch: s[0],
            row: s[1],
            head: s[2],
        }
    }
}

/// `(batch, head)` strides of lse `[B, Hq, Sq]` / varlen `[Hq, Tq]`.
fn lse_strides(checked: &Checked, varlen: bool) -> (i64, i64) {
    let s = &checked.strides;
    if varlen {
        (0, s[0])
    } else {
        (s[0], s[1])
    }
}

/// Checks that the gate tensor is present exactly when the problem has a gate.
fn check_gate_presence<S>(
    problem: &AttentionProblem,
    name: &'static str,
    g: &Option<Tensor<S>>,
) -> Result<()> {
    match (problem.gate, g) {
        (GateMode::None, Some(_)) => Err(GsdpaError::GateUnexpected { tensor: name }),
        (GateMode::Elementwise | GateMode::Headwise, None) => Err(GsdpaError::GateMissing {
            tensor: name,
            gate: problem.gate.name(),
        }),
        _ => Ok(()),
    }
}

fn gate_kind(problem: &AttentionProblem) -> Kind {
    if problem.gate == GateMode::Headwise {
        Kind::Scalar16
    } else {
        Kind::Vector16
    }
}

/// Checks an optional tensor; an absent one yields `None`.
fn check_optional<S: Memory>(
    name: &'static str,
    tensor: &Option<Tensor<S>>,
    expected: &[usize],
    elem_bytes: usize,
    kind: Kind,
    output: bool,
) -> Result<Option<Checked>> {
    tensor
        .as_ref()
        .map(|t| check_tensor(name, t, expected, elem_bytes, kind, output))
        .transpose()
}

fn const_ptr(checked: &Option<Checked>) -> *const c_void {
    checked
        .as_ref()
        .map_or(std::ptr::null(), |c| c.addr as *const c_void)
}

fn mut_ptr(checked: &Option<Checked>) -> *mut c_void {
    checked
        .as_ref()
        .map_or(std::ptr::null_mut(), |c| c.addr as *mut c_void)
}

fn cu_seqlens_ptrs(problem: &AttentionProblem) -> (*const i32, *const i32) {
    match &problem.varlen {
        Some(v) => (v.cu_seqlens_q.as_ptr(), v.cu_seqlens_k.as_ptr()),
        None => (std::ptr::null(), std::ptr::null()),
    }
}

/// Validates a forward call and returns the kernels' parameters.
///
/// Inputs and 16-bit outputs share one element type, so mixing bf16 and f16 does not compile:
///
/// ```compile_fail
/// use gated_sdpa::{validate_forward, AttentionProblem, ForwardArgs, Tensor};
/// use half::{bf16, f16};
/// let p = AttentionProblem::new(1, 8, 8, 1, 1, 64);
/// let (q, mut y, mut lse) = (vec![bf16::ZERO; 512], vec![f16::ZERO; 512], vec![0f32; 8]);
/// let args = ForwardArgs {
///     q: Tensor::contiguous(&q[..], &p.q_shape()),
///     k: Tensor::contiguous(&q[..], &p.kv_shape()),
///     v: Tensor::contiguous(&q[..], &p.kv_shape()),
///     g: None,
///     y: Tensor::contiguous(&mut y[..], &p.q_shape()), // f16 output for bf16 inputs
///     o: None,
///     lse: Some(Tensor::contiguous(&mut lse[..], &p.lse_shape())),
///     diagnostics: None,
/// };
/// let _ = validate_forward(&p, &args);
/// ```
pub fn validate_forward<I, O, F>(
    problem: &AttentionProblem,
    args: &ForwardArgs<I, O, F>,
) -> Result<GsdpaFwdParams>
where
    I: Memory,
    I::Elem: Element,
    O: Memory<Elem = I::Elem>,
    F: Memory<Elem = f32>,
{
    validate_problem(problem)?;
    check_gate_presence(problem, "g", &args.g)?;

    let varlen = problem.varlen.is_some();
    let eb = std::mem::size_of::<I::Elem>();
    let q_shape = problem.q_shape();
    let kv_shape = problem.kv_shape();
    let gate_shape = problem.gate_shape().unwrap_or_default();
    let q = check_tensor("q", &args.q, &q_shape, eb, Kind::Vector16, false)?;
    let k = check_tensor("k", &args.k, &kv_shape, eb, Kind::Vector16, false)?;
    let v = check_tensor("v", &args.v, &kv_shape, eb, Kind::Vector16, false)?;
    let g = check_optional("g", &args.g, &gate_shape, eb, gate_kind(problem), false)?;
    let y = check_tensor("y", &args.y, &q_shape, eb, Kind::Vector16, true)?;
    let o = check_optional("o", &args.o, &q_shape, eb, Kind::Vector16, true)?;
    let lse = check_optional(
        "lse",
        &args.lse,
        &problem.lse_shape(),
        4,
        Kind::Rows32,
        true,
    )?;

    let diagnostics = check_diagnostics(problem, &args.diagnostics)?;

    let mut inputs = vec![&q, &k, &v];
    inputs.extend(g.as_ref());
    let mut outputs = vec![&y];
    outputs.extend(o.as_ref());
    outputs.extend(lse.as_ref());
    outputs.extend(diagnostics.sink_mass.as_ref());
    outputs.extend(diagnostics.gate_stats.as_ref());
    outputs.extend(diagnostics.gate_workspace.as_ref());
    check_overlaps(&inputs, &outputs)?;

    let (cu_q, cu_k) = cu_seqlens_ptrs(problem);
    let (lse_batch_stride, lse_head_stride) =
        lse.as_ref().map_or((0, 0), |lse| lse_strides(lse, varlen));
    let (sink_batch_stride, sink_head_stride) = diagnostics
        .sink_mass
        .as_ref()
        .map_or((0, 0), |sink| lse_strides(sink, varlen));
    let (gate_stats_batch_stride, gate_stats_head_stride) = diagnostics
        .gate_stats
        .as_ref()
        .map_or((0, 0), |stats| (stats.strides[0], stats.strides[1]));
    let zero = GsdpaStrides::default();
    let scale = problem.softmax_scale();
    Ok(GsdpaFwdParams {
        q: q.addr as *const c_void,
        k: k.addr as *const c_void,
        v: v.addr as *const c_void,
        g: const_ptr(&g),
        y: y.addr as *mut c_void,
        o: mut_ptr(&o),
        lse: mut_ptr(&lse).cast(),
        cu_seqlens_q: cu_q,
        cu_seqlens_k: cu_k,
        q_stride: token_strides(&q, varlen),
        k_stride: token_strides(&k, varlen),
        v_stride: token_strides(&v, varlen),
        g_stride: g.as_ref().map_or(zero, |g| token_strides(g, varlen)),
        y_stride: token_strides(&y, varlen),
        o_stride: o.as_ref().map_or(zero, |o| token_strides(o, varlen)),
        lse_batch_stride,
        lse_head_stride,
        batch: problem.batch as i32,
        seqlen_q: problem.seqlen_q as i32,
        seqlen_k: problem.seqlen_k as i32,
        heads_q: problem.heads_q as i32,
        heads_kv: problem.heads_kv as i32,
        head_dim: problem.head_dim as i32,
        causal: problem.causal as i32,
        gate_mode: problem.gate.to_ffi(),
        activation: problem.activation.to_ffi(),
        scale,
        scale_log2: scale * std::f32::consts::LOG2_E,
        sink_mass: mut_ptr(&diagnostics.sink_mass).cast(),
        sink_batch_stride,
        sink_head_stride,
        n_sink: diagnostics.n_sink,
        gate_partials_per_head: diagnostics.gate_partials_per_head,
        gate_partials: mut_ptr(&diagnostics.gate_workspace).cast(),
        gate_stats: mut_ptr(&diagnostics.gate_stats).cast(),
        gate_stats_batch_stride,
        gate_stats_head_stride,
    })
}

/// The checked diagnostics outputs of a forward, and what the kernel needs to know of them.
struct CheckedDiagnostics {
    sink_mass: Option<Checked>,
    gate_stats: Option<Checked>,
    gate_workspace: Option<Checked>,
    /// 0 when the sink mass is not requested (the kernel's loop then never takes the sink path).
    n_sink: i32,
    gate_partials_per_head: i32,
}

fn check_diagnostics<F: Memory<Elem = f32>>(
    problem: &AttentionProblem,
    diagnostics: &Option<ForwardDiagnostics<F>>,
) -> Result<CheckedDiagnostics> {
    let none = CheckedDiagnostics {
        sink_mass: None,
        gate_stats: None,
        gate_workspace: None,
        n_sink: 0,
        gate_partials_per_head: 0,
    };
    let Some(diagnostics) = diagnostics else {
        return Ok(none);
    };
    let sink_mass = check_optional(
        "sink_mass",
        &diagnostics.sink_mass,
        &problem.lse_shape(),
        4,
        Kind::Rows32,
        true,
    )?;
    let n_sink = if sink_mass.is_some() {
        if diagnostics.n_sink == 0 {
            return Err(GsdpaError::InvalidArgument(
                "n_sink must be at least 1".into(),
            ));
        }
        // Keys beyond the longest sequence change nothing: clamp so that the kernel's int is enough.
        diagnostics.n_sink.min(problem.seqlen_k.max(1)) as i32
    } else {
        0
    };

    let (gate_stats, gate_workspace, gate_partials_per_head) =
        match (&diagnostics.gate_stats, &diagnostics.gate_workspace) {
            (None, None) => (None, None, 0),
            (Some(_), None) | (None, Some(_)) => {
                return Err(GsdpaError::InvalidArgument(
                    "gate_stats and gate_workspace are given together".into(),
                ))
            }
            (Some(stats), Some(workspace)) => {
                if problem.gate == GateMode::None {
                    return Err(GsdpaError::InvalidArgument(
                        "gate_stats needs a gate (the problem's gate mode is none)".into(),
                    ));
                }
                let stats = check_tensor(
                    "gate_stats",
                    stats,
                    &[problem.batch, problem.heads_q],
                    4,
                    Kind::Rows32,
                    true,
                )?;
                let len = gate_stats_workspace_len(problem)?;
                let workspace_shape = workspace.shape().to_vec();
                if workspace_shape.len() != 1 {
                    return Err(GsdpaError::ShapeMismatch {
                        tensor: "gate_workspace",
                        expected: vec![len],
                        actual: workspace_shape,
                    });
                }
                if workspace_shape[0] < len {
                    return Err(GsdpaError::WorkspaceTooSmall {
                        needed: len * 4,
                        got: workspace_shape[0] * 4,
                    });
                }
                let workspace = check_tensor(
                    "gate_workspace",
                    workspace,
                    &workspace_shape,
                    4,
                    Kind::Rows32,
                    true,
                )?;
                let per_head = crate::launch::gate_partials_per_head(problem)?;
                let per_head = i32::try_from(per_head).map_err(|_| {
                    GsdpaError::SizeOverflow(format!("{per_head} gate partials per head"))
                })?;
                (Some(stats), Some(workspace), per_head)
            }
        };
    Ok(CheckedDiagnostics {
        sink_mass,
        gate_stats,
        gate_workspace,
        n_sink,
        gate_partials_per_head,
    })
}

/// True when the backward needs the ungated forward output O: a silu gate (O cannot be recovered
/// stably as Y / silu(G)).
pub fn backward_needs_ungated_output(problem: &AttentionProblem) -> bool {
    problem.gate != GateMode::None && problem.activation == Activation::Silu
}

/// Validates a backward call and returns the kernels' parameters, with the workspace pointers null
/// (fill them with [`set_backward_workspace`]).
///
/// The backward's `delta` workspace shares lse's strides, so `lse` must be dense here
/// (`[B, Hq, Sq]` / varlen `[Hq, Tq]` in C order).
pub fn validate_backward<I, L, O>(
    problem: &AttentionProblem,
    args: &BackwardArgs<I, L, O>,
    deterministic: bool,
) -> Result<GsdpaBwdParams>
where
    I: Memory,
    I::Elem: Element,
    L: Memory<Elem = f32>,
    O: Memory<Elem = I::Elem>,
{
    validate_problem(problem)?;
    check_gate_presence(problem, "g", &args.g)?;
    check_gate_presence(problem, "dg", &args.dg)?;
    if backward_needs_ungated_output(problem) && args.o.is_none() {
        return Err(GsdpaError::MissingUngatedOutput);
    }

    let varlen = problem.varlen.is_some();
    let eb = std::mem::size_of::<I::Elem>();
    let q_shape = problem.q_shape();
    let kv_shape = problem.kv_shape();
    let gate_shape = problem.gate_shape().unwrap_or_default();
    let gk = gate_kind(problem);
    let v16 = Kind::Vector16;
    let q = check_tensor("q", &args.q, &q_shape, eb, v16, false)?;
    let k = check_tensor("k", &args.k, &kv_shape, eb, v16, false)?;
    let v = check_tensor("v", &args.v, &kv_shape, eb, v16, false)?;
    let g = check_optional("g", &args.g, &gate_shape, eb, gk, false)?;
    let y = check_tensor("y", &args.y, &q_shape, eb, v16, false)?;
    let o = check_optional("o", &args.o, &q_shape, eb, v16, false)?;
    let dy = check_tensor("dy", &args.dy, &q_shape, eb, v16, false)?;
    let lse_shape = problem.lse_shape();
    let lse = check_tensor("lse", &args.lse, &lse_shape, 4, Kind::Rows32, false)?;
    if !args.lse.layout.is_contiguous() {
        return Err(GsdpaError::BadStrides {
            tensor: "lse",
            reason: format!(
                "the backward needs a dense lse {lse_shape:?} (its delta workspace shares lse's layout), got strides {:?}",
                args.lse.layout.strides()
            ),
        });
    }
    let dq = check_tensor("dq", &args.dq, &q_shape, eb, v16, true)?;
    let dk = check_tensor("dk", &args.dk, &kv_shape, eb, v16, true)?;
    let dv = check_tensor("dv", &args.dv, &kv_shape, eb, v16, true)?;
    let dg = check_optional("dg", &args.dg, &gate_shape, eb, gk, true)?;

    let mut inputs = vec![&q, &k, &v];
    inputs.extend(g.as_ref());
    inputs.push(&y);
    inputs.extend(o.as_ref());
    inputs.push(&dy);
    inputs.push(&lse);
    let mut outputs = vec![&dq, &dk, &dv];
    outputs.extend(dg.as_ref());
    check_overlaps(&inputs, &outputs)?;

    let (cu_q, cu_k) = cu_seqlens_ptrs(problem);
    let (lse_batch_stride, lse_head_stride) = dense_lse_strides(problem);
    let zero = GsdpaStrides::default();
    let scale = problem.softmax_scale();
    let ts = |c: &Checked| token_strides(c, varlen);
    Ok(GsdpaBwdParams {
        q: q.addr as *const c_void,
        k: k.addr as *const c_void,
        v: v.addr as *const c_void,
        g: const_ptr(&g),
        y: y.addr as *const c_void,
        o: const_ptr(&o),
        dy: dy.addr as *const c_void,
        lse: lse.addr as *const f32,
        dq: dq.addr as *mut c_void,
        dk: dk.addr as *mut c_void,
        dv: dv.addr as *mut c_void,
        dg: mut_ptr(&dg),
        cu_seqlens_q: cu_q,
        cu_seqlens_k: cu_k,
        delta: std::ptr::null_mut(),
        d_o: std::ptr::null_mut(),
        dq_accum: std::ptr::null_mut(),
        q_stride: ts(&q),
        k_stride: ts(&k),
        v_stride: ts(&v),
        g_stride: g.as_ref().map_or(zero, ts),
        y_stride: ts(&y),
        o_stride: o.as_ref().map_or(zero, ts),
        dy_stride: ts(&dy),
        dq_stride: ts(&dq),
        dk_stride: ts(&dk),
        dv_stride: ts(&dv),
        dg_stride: dg.as_ref().map_or(zero, ts),
        ws_stride: workspace_strides(problem),
        lse_batch_stride,
        lse_head_stride,
        batch: problem.batch as i32,
        seqlen_q: problem.seqlen_q as i32,
        seqlen_k: problem.seqlen_k as i32,
        heads_q: problem.heads_q as i32,
        heads_kv: problem.heads_kv as i32,
        head_dim: problem.head_dim as i32,
        causal: problem.causal as i32,
        gate_mode: problem.gate.to_ffi(),
        activation: problem.activation.to_ffi(),
        deterministic: deterministic as i32,
        scale,
        scale_log2: scale * std::f32::consts::LOG2_E,
    })
}

/// `(batch, head)` strides of a dense lse (and of the backward's delta).
fn dense_lse_strides(problem: &AttentionProblem) -> (i64, i64) {
    match &problem.varlen {
        Some(v) => (0, v.total_q() as i64),
        None => (
            (problem.heads_q * problem.seqlen_q) as i64,
            problem.seqlen_q as i64,
        ),
    }
}

/// Strides of the dense `d_o` and `dq_accum` workspace tensors: `[B, Sq, Hq, D]` / varlen `[Tq, Hq, D]`.
fn workspace_strides(problem: &AttentionProblem) -> GsdpaStrides {
    let head = problem.head_dim as i64;
    let row = (problem.heads_q * problem.head_dim) as i64;
    let batch = if problem.varlen.is_some() {
        0
    } else {
        row * problem.seqlen_q as i64
    };
    GsdpaStrides { batch, row, head }
}

/// Where the backward's scratch tensors live inside the workspace, as byte offsets from its base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackwardWorkspaceLayout {
    /// `delta = rowsum(dY * Y)`, f32, laid out like a dense lse.
    pub delta_offset: usize,
    /// `dO = dY * act(G)` in the tensors' element type, dense `[B, Sq, Hq, D]` / `[Tq, Hq, D]`.
    pub d_o_offset: usize,
    /// f32 dQ accumulator, same layout as `d_o`.
    pub dq_accum_offset: usize,
    /// Total bytes (a multiple of [`WORKSPACE_ALIGN`]).
    pub total_bytes: usize,
}

fn align_up(x: usize) -> Option<usize> {
    x.checked_add(WORKSPACE_ALIGN - 1)
        .map(|v| v / WORKSPACE_ALIGN * WORKSPACE_ALIGN)
}

/// The backward workspace's regions for `problem`, each [`WORKSPACE_ALIGN`]-byte aligned.
pub fn backward_workspace_layout(problem: &AttentionProblem) -> Result<BackwardWorkspaceLayout> {
    validate_problem(problem)?;
    let overflow = || GsdpaError::SizeOverflow("backward workspace size overflows".into());
    // Rows of lse / delta and elements of d_o / dq_accum.
    let rows = problem
        .heads_q
        .checked_mul(problem.total_q_checked().ok_or_else(overflow)?)
        .ok_or_else(overflow)?;
    let elems = rows.checked_mul(problem.head_dim).ok_or_else(overflow)?;
    let delta_bytes = rows.checked_mul(4).ok_or_else(overflow)?;
    let d_o_bytes = elems.checked_mul(ELEMENT_BYTES).ok_or_else(overflow)?;
    let dq_accum_bytes = elems.checked_mul(4).ok_or_else(overflow)?;
    let delta_offset = 0;
    let d_o_offset = align_up(delta_bytes).ok_or_else(overflow)?;
    let dq_accum_offset = d_o_offset
        .checked_add(d_o_bytes)
        .and_then(align_up)
        .ok_or_else(overflow)?;
    let total_bytes = dq_accum_offset
        .checked_add(dq_accum_bytes)
        .and_then(align_up)
        .ok_or_else(overflow)?;
    if i64::try_from(total_bytes).is_err() {
        return Err(overflow());
    }
    Ok(BackwardWorkspaceLayout {
        delta_offset,
        d_o_offset,
        dq_accum_offset,
        total_bytes,
    })
}

/// Bytes of workspace the backward needs for `problem`.
pub fn backward_workspace_bytes(problem: &AttentionProblem) -> Result<usize> {
    Ok(backward_workspace_layout(problem)?.total_bytes)
}

/// Points `params.delta`, `params.d_o` and `params.dq_accum` into a workspace of `len_bytes` bytes at
/// address `base` (which must be [`WORKSPACE_ALIGN`]-byte aligned) and sets `params.ws_stride`.
pub fn set_backward_workspace(
    params: &mut GsdpaBwdParams,
    problem: &AttentionProblem,
    base: usize,
    len_bytes: usize,
) -> Result<BackwardWorkspaceLayout> {
    let layout = backward_workspace_layout(problem)?;
    if len_bytes < layout.total_bytes {
        return Err(GsdpaError::WorkspaceTooSmall {
            needed: layout.total_bytes,
            got: len_bytes,
        });
    }
    if base % WORKSPACE_ALIGN != 0 {
        return Err(GsdpaError::Misaligned {
            tensor: "workspace",
            reason: format!("base address {base:#x} is not {WORKSPACE_ALIGN}-byte aligned"),
        });
    }
    params.delta = (base + layout.delta_offset) as *mut f32;
    params.d_o = (base + layout.d_o_offset) as *mut c_void;
    params.dq_accum = (base + layout.dq_accum_offset) as *mut f32;
    params.ws_stride = workspace_strides(problem);
    Ok(layout)
}

impl AttentionProblem {
    /// [`AttentionProblem::total_q`] without saturation: `None` when `batch * seqlen_q` overflows.
    fn total_q_checked(&self) -> Option<usize> {
        match &self.varlen {
            Some(v) => Some(v.total_q()),
            None => self.batch.checked_mul(self.seqlen_q),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The standalone gate kernels (kernels/gate.cu). Their tensors are `[rows, heads, D]` views (rows:
// batch and sequence flattened), and their params address them as one batch of `rows` rows; the rules
// are those of the attention kernels above, plus the gate kernels' own index limits.
// ---------------------------------------------------------------------------------------------------

/// Checks that a gate tensor (`g` or `dg`) is present exactly when there is a gate.
fn check_gate_tensor_presence<S>(
    gate: GateMode,
    name: &'static str,
    tensor: &Option<Tensor<S>>,
) -> Result<()> {
    match (gate, tensor) {
        (GateMode::None, Some(_)) => Err(GsdpaError::GateUnexpected { tensor: name }),
        (GateMode::Elementwise | GateMode::Headwise, None) => Err(GsdpaError::GateMissing {
            tensor: name,
            gate: gate.name(),
        }),
        _ => Ok(()),
    }
}

/// The `[rows, heads, D]` geometry a gate call's activation tensor (`o`) sets for all the others,
/// checked against the kernels' limits: D a multiple of 8 (rows move as 16-byte vectors), rows, heads
/// and D fitting i32, and `rows * heads` below 2^32 (the kernels number rows in 32 bits). Returns the
/// shape and the gate tensors' shape (`[rows, heads]` when headwise).
fn gate_shapes(gate: GateMode, o_shape: &[usize]) -> Result<(Vec<usize>, Vec<usize>)> {
    let &[rows, heads, head_dim] = o_shape else {
        return Err(GsdpaError::InvalidArgument(format!(
            "gate: o must be a [rows, heads, D] view, got shape {o_shape:?}"
        )));
    };
    if head_dim % 8 != 0 {
        return Err(GsdpaError::InvalidArgument(format!(
            "gate: the head dim {head_dim} is not a multiple of 8 (rows move as 16-byte vectors)"
        )));
    }
    for (what, value) in [("rows", rows), ("heads", heads), ("head dim", head_dim)] {
        if i32::try_from(value).is_err() {
            return Err(GsdpaError::SizeOverflow(format!(
                "gate: {what} = {value} does not fit in i32"
            )));
        }
    }
    if rows
        .checked_mul(heads)
        .is_none_or(|n| n > u32::MAX as usize)
    {
        return Err(GsdpaError::SizeOverflow(format!(
            "gate: rows * heads = {rows} * {heads} must be below 2^32 (the kernels' row index)"
        )));
    }
    let gate_shape = match gate {
        GateMode::Headwise => vec![rows, heads],
        GateMode::Elementwise | GateMode::None => vec![rows, heads, head_dim],
    };
    Ok((o_shape.to_vec(), gate_shape))
}

fn gate_tensor_kind(gate: GateMode) -> Kind {
    if gate == GateMode::Headwise {
        Kind::Scalar16
    } else {
        Kind::Vector16
    }
}

/// Kernel strides of a checked `[rows, heads(, D)]` gate-kernel tensor (one batch of `rows` rows).
fn gate_strides(checked: &Checked) -> GsdpaStrides {
    token_strides(checked, true)
}

/// Validates a standalone gate call `Y = O * act(G)` and returns the kernel's parameters. With gate
/// mode none, `g` must be `None` and the kernel copies O to Y.
pub fn validate_gate<I, O>(
    gate: GateMode,
    activation: Activation,
    args: &GateArgs<I, O>,
) -> Result<GsdpaGateParams>
where
    I: Memory,
    I::Elem: Element,
    O: Memory<Elem = I::Elem>,
{
    check_gate_tensor_presence(gate, "g", &args.g)?;
    let (shape, gate_shape) = gate_shapes(gate, args.o.layout.shape())?;
    let eb = ELEMENT_BYTES;
    let v16 = Kind::Vector16;
    let o = check_tensor("o", &args.o, &shape, eb, v16, false)?;
    let g = check_optional("g", &args.g, &gate_shape, eb, gate_tensor_kind(gate), false)?;
    let y = check_tensor("y", &args.y, &shape, eb, v16, true)?;
    let mut inputs = vec![&o];
    inputs.extend(g.as_ref());
    check_overlaps(&inputs, &[&y])?;

    let zero = GsdpaStrides::default();
    Ok(GsdpaGateParams {
        o: o.addr as *const c_void,
        g: const_ptr(&g),
        y: y.addr as *mut c_void,
        o_stride: gate_strides(&o),
        g_stride: g.as_ref().map_or(zero, gate_strides),
        y_stride: gate_strides(&y),
        batch: 1,
        seqlen: shape[0] as i32,
        heads: shape[1] as i32,
        head_dim: shape[2] as i32,
        gate_mode: gate.to_ffi(),
        activation: activation.to_ffi(),
    })
}

/// Validates a standalone gate backward call (`d_o = dY * act(G)`, `dg = dY * O * act'(G)`) and returns
/// the kernel's parameters. With gate mode none, `g` and `dg` must be `None`, the kernel copies dY to dO,
/// and `o` is passed as a null pointer: the kernel does not read it then, and a stray read faults.
pub fn validate_gate_backward<I, O>(
    gate: GateMode,
    activation: Activation,
    args: &GateBackwardArgs<I, O>,
) -> Result<GsdpaGateBackwardParams>
where
    I: Memory,
    I::Elem: Element,
    O: Memory<Elem = I::Elem>,
{
    check_gate_tensor_presence(gate, "g", &args.g)?;
    check_gate_tensor_presence(gate, "dg", &args.dg)?;
    let (shape, gate_shape) = gate_shapes(gate, args.o.layout.shape())?;
    let eb = ELEMENT_BYTES;
    let (v16, gk) = (Kind::Vector16, gate_tensor_kind(gate));
    let o = check_tensor("o", &args.o, &shape, eb, v16, false)?;
    let g = check_optional("g", &args.g, &gate_shape, eb, gk, false)?;
    let dy = check_tensor("dy", &args.dy, &shape, eb, v16, false)?;
    let d_o = check_tensor("d_o", &args.d_o, &shape, eb, v16, true)?;
    let dg = check_optional("dg", &args.dg, &gate_shape, eb, gk, true)?;
    let mut inputs = vec![&o];
    inputs.extend(g.as_ref());
    inputs.push(&dy);
    let mut outputs = vec![&d_o];
    outputs.extend(dg.as_ref());
    check_overlaps(&inputs, &outputs)?;

    let zero = GsdpaStrides::default();
    let o_ptr = if gate == GateMode::None {
        std::ptr::null()
    } else {
        o.addr as *const c_void
    };
    Ok(GsdpaGateBackwardParams {
        o: o_ptr,
        g: const_ptr(&g),
        dy: dy.addr as *const c_void,
        d_o: d_o.addr as *mut c_void,
        dg: mut_ptr(&dg),
        o_stride: gate_strides(&o),
        g_stride: g.as_ref().map_or(zero, gate_strides),
        dy_stride: gate_strides(&dy),
        d_o_stride: gate_strides(&d_o),
        dg_stride: dg.as_ref().map_or(zero, gate_strides),
        batch: 1,
        seqlen: shape[0] as i32,
        heads: shape[1] as i32,
        head_dim: shape[2] as i32,
        gate_mode: gate.to_ffi(),
        activation: activation.to_ffi(),
    })
}
