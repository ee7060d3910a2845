//! Naive CPU reference: every option the kernels support, computed row by row with f64 accumulation.
//!
//! Two entry points:
//! - [`forward_f64`] / [`backward_f64`] on dense f64 arrays, unrounded, for tests that compare kernels
//!   against the exact maths of their (rounded) inputs;
//! - [`Reference`], a [`HostBackend`] over strided 16-bit host tensors, validated like every backend.
//!
//! Dense layouts of the f64 entry points: q, y, o, dy, dq (and an elementwise g, dg) `[B, Sq, Hq, D]`;
//! k, v, dk, dv `[B, Sk, Hkv, D]`; a headwise g, dg `[B, Sq, Hq]`; lse `[B, Hq, Sq]`. Varlen: the token
//! axis is packed (`[Tq, Hq, D]`, `[Tk, Hkv, D]`, `[Tq, Hq]`, lse `[Hq, Tq]`). Since `[B, S, ..]` in C
//! order is the packed layout with `cu_seqlens = [0, S, 2 S, ..]`, both are indexed by packed token.
//!
//! Maths (`docs/gate-math.md`): `S = scale q k^T` with bottom-right causal masking, `P = softmax(S)`,
//! `O = P v`, `Y = O * act(g)`, `lse = ln sum exp(S)`; a row that sees no key has `O = Y = 0`, `lse = -inf`
//! and contributes no gradient.

use crate::backend::{BackwardOptions, HostBackend, HostBackwardArgs, HostForwardArgs};
use crate::error::{GsdpaError, Result};
use crate::problem::{AttentionProblem, GateMode};
use crate::tensor::{Element, Layout, Tensor};
use crate::validate::{validate_backward, validate_forward, validate_problem};

/// Unrounded forward outputs, dense (see the module docs for the layouts).
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardResultF64 {
    /// Gated output `Y = O * act(g)`.
    pub y: Vec<f64>,
    /// Ungated output `O = P v`.
    pub o: Vec<f64>,
    /// Natural-log softmax denominator, `-inf` for rows that see no key.
    pub lse: Vec<f64>,
}

/// The forward's diagnostics, unrounded (docs/diagnostics.md).
#[derive(Debug, Clone, PartialEq)]
pub struct DiagnosticsF64 {
    /// Per query row, laid out like lse: the attention probability on the first `n_sink` keys of its
    /// sequence (0 for a row that sees no key).
    pub sink_mass: Vec<f64>,
    /// `[B, Hq]`: the mean act(g) over the sequence's rows (and D for the elementwise gate); 0 for an
    /// empty sequence; empty without a gate.
    pub gate_stats: Vec<f64>,
}

/// The diagnostics on dense f64 arrays, computed on their own (not from the forward's running sums):
/// each row's full probability vector is materialised and its first `n_sink` entries summed; the gate
/// statistics are plain means of act(g).
pub fn diagnostics_f64(
    problem: &AttentionProblem,
    q: &[f64],
    k: &[f64],
    g: Option<&[f64]>,
    n_sink: usize,
) -> Result<DiagnosticsF64> {
    validate_problem(problem)?;
    let d = problem.head_dim;
    let (hq, hkv) = (problem.heads_q, problem.heads_kv);
    let group = problem.group_size().max(1);
    let scale = f64::from(problem.softmax_scale());
    let tq = problem.total_q();
    check_len("q", &problem.q_shape(), q.len())?;
    check_len("k", &problem.kv_shape(), k.len())?;
    let mut sink_mass = vec![0.0; tq * hq];
    let gated = problem.gate != GateMode::None;
    let mut gate_stats = vec![0.0; if gated { problem.batch * hq } else { 0 }];
    let mut scores = Vec::new();
    for b in 0..problem.batch {
        let Some((q_tokens, k_tokens)) = problem.sequence(b) else {
            continue;
        };
        let (sq, sk) = (q_tokens.len(), k_tokens.len());
        for h in 0..hq {
            let hk = h / group;
            for i in 0..sq {
                let t = q_tokens.start + i;
                let q_row = &q[(t * hq + h) * d..(t * hq + h + 1) * d];
                let n = visible_keys(problem.causal, i, sq, sk);
                scores.clear();
                scores.extend((0..n).map(|j| {
                    let kr = ((k_tokens.start + j) * hkv + hk) * d;
                    scale * dot(q_row, &k[kr..kr + d])
                }));
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                let sink: f64 = scores.iter().take(n_sink).map(|s| (s - max).exp()).sum();
                let index = match problem.varlen {
                    Some(_) => h * tq + t,
                    None => (b * hq + h) * sq + i,
                };
                sink_mass[index] = if n == 0 { 0.0 } else { sink / total };
            }
            if let (true, Some(g)) = (gated, g) {
                let act = problem.activation;
                let values: Vec<f64> = match problem.gate {
                    GateMode::Elementwise => {
                        let start = (q_tokens.start * hq + h) * d;
                        (0..sq)
                            .flat_map(|i| {
                                let row = start + i * hq * d;
                                g[row..row + d].iter().map(|&x| act.apply(x))
                            })
                            .collect()
                    }
                    _ => q_tokens.clone().map(|t| act.apply(g[t * hq + h])).collect(),
                };
                gate_stats[b * hq + h] = if values.is_empty() {
                    0.0
                } else {
                    values.iter().sum::<f64>() / values.len() as f64
                };
            }
        }
    }
    Ok(DiagnosticsF64 {
        sink_mass,
        gate_stats,
    })
}

/// Unrounded gradients, dense.
#[derive(Debug, Clone, PartialEq)]
pub struct BackwardResultF64 {
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
    /// Gradient of the gate logits; `None` without a gate.
    pub dg: Option<Vec<f64>>,
}

/// Forward on dense f64 arrays.
pub fn forward_f64(
    problem: &AttentionProblem,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    g: Option<&[f64]>,
) -> Result<ForwardResultF64> {
    check_dense_inputs(problem, q, k, v, g)?;
    Ok(run(problem, &Inputs { q, k, v, g }, None).forward)
}

/// Backward on dense f64 arrays: the exact gradients of `sum(Y * dy)` with respect to q, k, v and g.
/// The forward is recomputed in f64 (no rounded Y, O or LSE is involved).
pub fn backward_f64(
    problem: &AttentionProblem,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    g: Option<&[f64]>,
    dy: &[f64],
) -> Result<BackwardResultF64> {
    check_dense_inputs(problem, q, k, v, g)?;
    check_len("dy", &problem.q_shape(), dy.len())?;
    let grads = run(problem, &Inputs { q, k, v, g }, Some(dy)).backward;
    // `run` returns gradients whenever `dy` is given.
    grads.ok_or_else(|| GsdpaError::InvalidArgument("backward produced no gradients".into()))
}

/// Cancellation-free magnitudes of the gradients: the same sums as [`backward_f64`] with every term
/// taken in absolute value, so that a gradient whose terms cancel (e.g. dQ and dK of a query that sees
/// a single key, where `dS = P (dP - Delta) = 0` exactly) still has a scale to measure errors against.
///
/// With `P`, `dP = dO v^T`, `Delta = rowsum(dO * O)` and `dO = dy * act(g)` of the exact forward:
/// - `dq[i] = scale sum_j P_ij (|dP_ij| + |Delta_i|) |k_j|`,
/// - `dk[j] = scale sum_i P_ij (|dP_ij| + |Delta_i|) |q_i|`,
/// - `dv[j] = sum_i P_ij |dO_i|`,
/// - `dg = |dy| |O| |act'(g)|` (headwise: summed over the head's elements).
///
/// Rounding errors of any implementation of the backward scale with these, so `||dq - dq_exact||`
/// divided by `||dq magnitude||` is a relative error that stays meaningful when `dq_exact` cancels to
/// zero. Layouts are those of [`backward_f64`].
pub fn backward_magnitudes_f64(
    problem: &AttentionProblem,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    g: Option<&[f64]>,
    dy: &[f64],
) -> Result<BackwardResultF64> {
    check_dense_inputs(problem, q, k, v, g)?;
    check_len("dy", &problem.q_shape(), dy.len())?;
    let forward = forward_f64(problem, q, k, v, g)?;
    let d = problem.head_dim;
    let (hq, hkv) = (problem.heads_q, problem.heads_kv);
    let group = problem.group_size().max(1);
    let scale = f64::from(problem.softmax_scale());
    let act = problem.activation;
    let tq = problem.total_q();
    let mut mag = BackwardResultF64 {
        dq: vec![0.0; q.len()],
        dk: vec![0.0; k.len()],
        dv: vec![0.0; v.len()],
        dg: g.map(|g| vec![0.0; g.len()]),
    };
    let mut d_o = vec![0.0; d];
    let sequences = (0..problem.batch).filter_map(|b| Some((b, problem.sequence(b)?)));
    for (b, (q_tokens, k_tokens)) in sequences {
        let (sq, sk) = (q_tokens.len(), k_tokens.len());
        for h in 0..hq {
            let hk = h / group;
            for i in 0..sq {
                let t = q_tokens.start + i;
                let row = (t * hq + h) * d;
                let lse = forward.lse[match problem.varlen {
                    Some(_) => h * tq + t,
                    None => (b * hq + h) * sq + i,
                }];
                let (q_row, o_row, dy_row) = (
                    &q[row..row + d],
                    &forward.o[row..row + d],
                    &dy[row..row + d],
                );
                for c in 0..d {
                    let gate = match (problem.gate, g) {
                        (GateMode::Elementwise, Some(g)) => Some(g[row + c]),
                        (GateMode::Headwise, Some(g)) => Some(g[t * hq + h]),
                        _ => None,
                    };
                    d_o[c] = dy_row[c] * gate.map_or(1.0, |x| act.apply(x));
                    if let (Some(x), Some(dg)) = (gate, mag.dg.as_mut()) {
                        let term = (dy_row[c] * o_row[c] * act.derivative(x)).abs();
                        match problem.gate {
                            GateMode::Headwise => dg[t * hq + h] += term,
                            _ => dg[row + c] = term,
                        }
                    }
                }
                let delta = dot(&d_o, o_row).abs();
                for j in 0..visible_keys(problem.causal, i, sq, sk) {
                    let kr = ((k_tokens.start + j) * hkv + hk) * d;
                    let p = (scale * dot(q_row, &k[kr..kr + d]) - lse).exp();
                    let ds = p * (dot(&d_o, &v[kr..kr + d]).abs() + delta);
                    for c in 0..d {
                        mag.dq[row + c] += scale * ds * k[kr + c].abs();
                        mag.dk[kr + c] += scale * ds * q_row[c].abs();
                        mag.dv[kr + c] += p * d_o[c].abs();
                    }
                }
            }
        }
    }
    Ok(mag)
}

fn check_len(tensor: &'static str, shape: &[usize], len: usize) -> Result<()> {
    let expected = shape.iter().try_fold(1usize, |a, &e| a.checked_mul(e));
    if expected != Some(len) {
        return Err(GsdpaError::ShapeMismatch {
            tensor,
            expected: shape.to_vec(),
            actual: vec![len],
        });
    }
    Ok(())
}

fn check_dense_inputs(
    problem: &AttentionProblem,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    g: Option<&[f64]>,
) -> Result<()> {
    validate_problem(problem)?;
    check_len("q", &problem.q_shape(), q.len())?;
    check_len("k", &problem.kv_shape(), k.len())?;
    check_len("v", &problem.kv_shape(), v.len())?;
    match (problem.gate_shape(), g) {
        (None, Some(_)) => Err(GsdpaError::GateUnexpected { tensor: "g" }),
        (Some(_), None) => Err(GsdpaError::GateMissing {
            tensor: "g",
            gate: problem.gate.name(),
        }),
        (Some(shape), Some(g)) => check_len("g", &shape, g.len()),
        (None, None) => Ok(()),
    }
}

struct Inputs<'a> {
    q: &'a [f64],
    k: &'a [f64],
    v: &'a [f64],
    g: Option<&'a [f64]>,
}

struct Outputs {
    forward: ForwardResultF64,
    backward: Option<BackwardResultF64>,
}

/// Number of keys query `i` of a sequence sees: all `sk` without a mask, else those with
/// `j <= i + sk - sq` (bottom-right aligned), clamped to `[0, sk]`.
fn visible_keys(causal: bool, i: usize, sq: usize, sk: usize) -> usize {
    if !causal {
        return sk;
    }
    let last = i as i64 + sk as i64 - sq as i64; // index of the last visible key
    (last + 1).clamp(0, sk as i64) as usize
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The forward for every row and, when `dy` is given, the backward.
fn run(problem: &AttentionProblem, x: &Inputs<'_>, dy: Option<&[f64]>) -> Outputs {
    let d = problem.head_dim;
    let (hq, hkv) = (problem.heads_q, problem.heads_kv);
    let group = problem.group_size().max(1);
    let scale = f64::from(problem.softmax_scale());
    let act = problem.activation;
    let (tq, tk) = (problem.total_q(), problem.total_k());

    let mut y = vec![0.0; tq * hq * d];
    let mut o = vec![0.0; tq * hq * d];
    let mut lse = vec![f64::NEG_INFINITY; tq * hq];
    let mut grads = dy.map(|_| BackwardResultF64 {
        dq: vec![0.0; tq * hq * d],
        dk: vec![0.0; tk * hkv * d],
        dv: vec![0.0; tk * hkv * d],
        dg: problem
            .gate_shape()
            .map(|_| vec![0.0; x.g.map_or(0, <[f64]>::len)]),
    });

    let mut probs = Vec::new();
    let mut act_row = vec![1.0; d];
    let mut d_o = vec![0.0; d];
    // `problem` was validated, so every sequence exists.
    let sequences = (0..problem.batch).filter_map(|b| Some((b, problem.sequence(b)?)));
    for (b, (q_tokens, k_tokens)) in sequences {
        let (sq, sk) = (q_tokens.len(), k_tokens.len());
        for h in 0..hq {
            let hk = h / group;
            for i in 0..sq {
                let t = q_tokens.start + i;
                let row = (t * hq + h) * d;
                let lse_index = match problem.varlen {
                    Some(_) => h * tq + t,
                    None => (b * hq + h) * sq + i,
                };
                let q_row = &x.q[row..row + d];
                let key_row = |j: usize| ((k_tokens.start + j) * hkv + hk) * d;
                let n = visible_keys(problem.causal, i, sq, sk);

                // Softmax over the visible keys; probs[j] = exp(s_j - lse).
                probs.clear();
                probs.extend((0..n).map(|j| scale * dot(q_row, &x.k[key_row(j)..key_row(j) + d])));
                let row_lse = if n == 0 {
                    f64::NEG_INFINITY
                } else {
                    let max = probs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = probs.iter().map(|s| (s - max).exp()).sum();
                    max + sum.ln()
                };
                for p in probs.iter_mut() {
                    *p = (*p - row_lse).exp();
                }
                lse[lse_index] = row_lse;

                let o_row = &mut o[row..row + d];
                for (j, &p) in probs.iter().enumerate() {
                    let v_row = &x.v[key_row(j)..key_row(j) + d];
                    for (acc, &val) in o_row.iter_mut().zip(v_row) {
                        *acc += p * val;
                    }
                }

                // Gate activations for this row (1 without a gate).
                match (problem.gate, x.g) {
                    (GateMode::Elementwise, Some(g)) => {
                        for (a, &gv) in act_row.iter_mut().zip(&g[row..row + d]) {
                            *a = act.apply(gv);
                        }
                    }
                    (GateMode::Headwise, Some(g)) => act_row.fill(act.apply(g[t * hq + h])),
                    _ => act_row.fill(1.0),
                }
                for ((yv, &ov), &a) in y[row..row + d].iter_mut().zip(&*o_row).zip(&act_row) {
                    *yv = ov * a;
                }

                let (Some(dy), Some(grads)) = (dy, grads.as_mut()) else {
                    continue;
                };
                let dy_row = &dy[row..row + d];
                let o_row = &o[row..row + d];
                // dO = dY * act(g); dg from dY * O * act'(g).
                for ((dov, &dyv), &a) in d_o.iter_mut().zip(dy_row).zip(&act_row) {
                    *dov = dyv * a;
                }
                match (problem.gate, x.g, grads.dg.as_mut()) {
                    (GateMode::Elementwise, Some(g), Some(dg)) => {
                        for c in 0..d {
                            dg[row + c] = dy_row[c] * o_row[c] * act.derivative(g[row + c]);
                        }
                    }
                    (GateMode::Headwise, Some(g), Some(dg)) => {
                        let gi = t * hq + h;
                        dg[gi] = dot(dy_row, o_row) * act.derivative(g[gi]);
                    }
                    _ => {}
                }
                // FlashAttention's Delta = rowsum(dO * O), then dS = P (dP - Delta).
                let delta = dot(&d_o, o_row);
                for (j, &p) in probs.iter().enumerate() {
                    let kr = key_row(j);
                    let dp = dot(&d_o, &x.v[kr..kr + d]);
                    let ds = p * (dp - delta);
                    for c in 0..d {
                        grads.dq[row + c] += scale * ds * x.k[kr + c];
                        grads.dk[kr + c] += scale * ds * q_row[c];
                        grads.dv[kr + c] += p * d_o[c];
                    }
                }
            }
        }
    }
    Outputs {
        forward: ForwardResultF64 { y, o, lse },
        backward: grads,
    }
}

/// Reads a strided 16-bit tensor into a dense f64 array (C order of its shape).
fn gather<T: Element>(tensor: &Tensor<&[T]>) -> Vec<f64> {
    let mut out = vec![0.0; tensor.layout.num_elements().unwrap_or(0)];
    tensor
        .layout
        .for_each_offset(|linear, offset| out[linear] = tensor.data[offset].to_f64());
    out
}

/// Writes a dense f64 array into a strided tensor, rounding each element with `convert`.
fn scatter<E>(data: &mut [E], layout: &Layout, values: &[f64], convert: impl Fn(f64) -> E) {
    layout.for_each_offset(|linear, offset| data[offset] = convert(values[linear]));
}

/// The CPU reference as a backend: validates like every backend, reads the strided inputs, computes in
/// f64 and writes outputs rounded to the tensors' element type (LSE to f32).
///
/// The backward recomputes the forward from q, k, v and g in f64; it validates but does not read the
/// given `y`, `o` and `lse`, so its gradients are the exact ones of the rounded inputs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reference;

impl HostBackend for Reference {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn forward<T: Element>(
        &self,
        problem: &AttentionProblem,
        args: &mut HostForwardArgs<'_, T>,
    ) -> Result<()> {
        validate_forward(problem, args)?;
        let (q, k) = (gather(&args.q), gather(&args.k));
        let g = args.g.as_ref().map(gather);
        if let Some(diagnostics) = args.diagnostics.as_mut() {
            let n_sink = diagnostics.n_sink;
            let result = diagnostics_f64(problem, &q, &k, g.as_deref(), n_sink)?;
            if let Some(sink) = diagnostics.sink_mass.as_mut() {
                scatter(sink.data, &sink.layout, &result.sink_mass, |x| x as f32);
            }
            if let Some(stats) = diagnostics.gate_stats.as_mut() {
                scatter(stats.data, &stats.layout, &result.gate_stats, |x| x as f32);
            }
        }
        if problem.is_empty() {
            return Ok(());
        }
        let v = gather(&args.v);
        let result = run(
            problem,
            &Inputs {
                q: &q,
                k: &k,
                v: &v,
                g: g.as_deref(),
            },
            None,
        )
        .forward;
        scatter(args.y.data, &args.y.layout, &result.y, T::from_f64);
        if let Some(o) = args.o.as_mut() {
            scatter(o.data, &o.layout, &result.o, T::from_f64);
        }
        if let Some(lse) = args.lse.as_mut() {
            scatter(lse.data, &lse.layout, &result.lse, |x| x as f32);
        }
        Ok(())
    }

    fn backward<T: Element>(
        &self,
        problem: &AttentionProblem,
        args: &mut HostBackwardArgs<'_, T>,
        _options: BackwardOptions,
    ) -> Result<()> {
        validate_backward(problem, args, true)?;
        // No early return for empty problems: with no query row, dK and dV (which may still have
        // elements) are zero and must be written as such.
        let (q, k, v) = (gather(&args.q), gather(&args.k), gather(&args.v));
        let g = args.g.as_ref().map(gather);
        let dy = gather(&args.dy);
        let grads = run(
            problem,
            &Inputs {
                q: &q,
                k: &k,
                v: &v,
                g: g.as_deref(),
            },
            Some(&dy),
        )
        .backward
        .ok_or_else(|| GsdpaError::InvalidArgument("backward produced no gradients".into()))?;
        scatter(args.dq.data, &args.dq.layout, &grads.dq, T::from_f64);
        scatter(args.dk.data, &args.dk.layout, &grads.dk, T::from_f64);
        scatter(args.dv.data, &args.dv.layout, &grads.dv, T::from_f64);
        if let (Some(dg), Some(values)) = (args.dg.as_mut(), grads.dg.as_ref()) {
            scatter(dg.data, &dg.layout, values, T::from_f64);
        }
        Ok(())
    }
}
