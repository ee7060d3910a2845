//! `gsdpa demo`: Qwen3-Next-shaped gated attention, forward and backward, on the best backend here,
//! checked against the CPU reference.
//!
//! Shape: head dim 256, 16 query heads over 2 kv heads (GQA 8), causal, elementwise sigmoid gate, bf16,
//! with Q and G taken as strided views of one `q_proj` output `[B, S, 16, 2*256]` as the model produces
//! it. The sequence length is reduced off the GPU so the CPU backends finish in seconds.

use gated_sdpa::reference::{backward_f64, backward_magnitudes_f64, forward_f64};
use gated_sdpa::{
    Activation, AttentionProblem, BackwardOptions, Element, GateMode, GsdpaError, HostBuffer,
};
use half::bf16;
use rand::{rngs::StdRng, RngExt, SeedableRng};

use crate::args::Flags;
use crate::backends::{Backend, HostInputs};
use crate::CliError;

const HEADS_Q: usize = 16;
const HEADS_KV: usize = 2;
const HEAD_DIM: usize = 256;

/// Relative error in norm, `||a - b|| / ||b||` (0 when both are zero).
fn relative_error(actual: &[f64], expected: &[f64]) -> f64 {
    let norm: f64 = expected.iter().map(|b| b * b).sum();
    let diff = squared_distance(actual, expected);
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

fn squared_distance(actual: &[f64], expected: &[f64]) -> f64 {
    if actual.len() != expected.len() {
        return f64::INFINITY;
    }
    actual
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b) * (a - b))
        .sum()
}

/// The gradient metric: `||actual - exact|| / ||magnitude||`, where `magnitude` holds the gradient's
/// sums with every term in absolute value ([`backward_magnitudes_f64`]). Rounding errors scale with
/// that magnitude, not with the exact gradient, which can cancel to 0 (dQ and dK of a query that sees
/// one key are exactly 0, so `||actual - exact|| / ||exact||` would be meaningless there). NaN never
/// passes: a NaN anywhere makes the error NaN. An error with a zero magnitude is infinite.
pub fn error_vs_magnitude(actual: &[f64], exact: &[f64], magnitude: &[f64]) -> f64 {
    let diff = squared_distance(actual, exact);
    let norm: f64 = magnitude.iter().map(|m| m * m).sum();
    if diff == 0.0 {
        0.0
    } else {
        (diff / norm).sqrt()
    }
}

/// Bound of [`error_vs_magnitude`] for the bf16 gradients: a few bf16 roundings (2^-9 each) of the
/// terms; an error of the size of the gradient itself is far above it.
const GRADIENT_BOUND: f64 = 1e-2;

/// Host bytes the demo holds at its peak, roughly: the bf16 inputs, outputs and gradients (7 q-sized
/// and 4 kv-sized arrays), the f64 copies the reference reads and the f64 results of the forward, the
/// backward and the magnitudes (about 14 q-sized and 6 kv-sized at once), and the f32 LSE. `None` when
/// the count overflows.
fn host_bytes_needed(q_elems: usize, kv_elems: usize, lse_elems: usize) -> Option<usize> {
    let q_bytes = q_elems.checked_mul(7 * 2 + 14 * 8)?;
    let kv_bytes = kv_elems.checked_mul(4 * 2 + 6 * 8)?;
    q_bytes
        .checked_add(kv_bytes)?
        .checked_add(lse_elems.checked_mul(4 + 3 * 8)?)
}

/// `MemAvailable` of `/proc/meminfo` in bytes, `None` where it cannot be read.
fn available_memory() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

/// Checks, before allocating anything, that the demo at `seqlen` fits in the host's memory.
fn check_memory(seqlen: usize) -> Result<(), CliError> {
    let too_big = || {
        CliError::from(GsdpaError::SizeOverflow(format!(
            "demo --seqlen {seqlen}: the host buffers' sizes overflow"
        )))
    };
    let tokens = seqlen;
    let q_elems = tokens.checked_mul(HEADS_Q * HEAD_DIM).ok_or_else(too_big)?;
    let kv_elems = tokens
        .checked_mul(HEADS_KV * HEAD_DIM)
        .ok_or_else(too_big)?;
    let lse_elems = tokens.checked_mul(HEADS_Q).ok_or_else(too_big)?;
    let needed = host_bytes_needed(q_elems, kv_elems, lse_elems).ok_or_else(too_big)?;
    match available_memory() {
        Some(available) if needed > available => Err(CliError::usage(format!(
            "demo --seqlen {seqlen} needs about {:.1} GiB of host memory, {:.1} GiB are available",
            gib(needed),
            gib(available)
        ))),
        _ => Ok(()),
    }
}

/// A zeroed f64 vector of `len`, or a typed error when it cannot be allocated.
fn try_zeros(len: usize) -> Result<Vec<f64>, GsdpaError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| GsdpaError::OutOfMemory {
            bytes: len.saturating_mul(8),
        })?;
    v.resize(len, 0.0);
    Ok(v)
}

fn to_f64<T: Element>(buffer: &HostBuffer<T>) -> Result<Vec<f64>, GsdpaError> {
    let mut out = try_zeros(buffer.len())?;
    for (o, x) in out.iter_mut().zip(buffer.as_slice()) {
        *o = x.to_f64();
    }
    Ok(out)
}

struct Row {
    pass: &'static str,
    ms: Option<f64>,
    tensor: &'static str,
    error: f64,
    metric: &'static str,
    bound: f64,
}

impl Row {
    /// Within the bound (false for NaN).
    fn ok(&self) -> bool {
        self.error <= self.bound
    }
}

pub fn run(args: &[String]) -> Result<(), CliError> {
    let flags = Flags::parse(args, &["backend", "seqlen"], &[])?;
    let backend = match flags.value("backend") {
        Some(name) => Backend::open(name)
            .map_err(|e| CliError::usage(format!("backend {name} not available: {e}")))?,
        None => Backend::best(),
    };
    let default_seqlen = match backend.name() {
        "cuda" => 512,
        "emulator" => 128,
        _ => 128,
    };
    let seqlen = flags.parsed::<usize>("seqlen")?.unwrap_or(default_seqlen);
    let batch = 1;
    let problem = AttentionProblem::new(batch, seqlen, seqlen, HEADS_Q, HEADS_KV, HEAD_DIM)
        .causal(true)
        .gate(GateMode::Elementwise)
        .activation(Activation::Sigmoid);
    gated_sdpa::validate_problem(&problem)?;
    check_memory(seqlen)?;
    println!(
        "gated attention, Qwen3-Next shape: B={batch} S={seqlen} Hq={HEADS_Q} Hkv={HEADS_KV} D={HEAD_DIM}, causal, \
         elementwise sigmoid gate, bf16, Q and G strided views of q_proj"
    );
    println!("backend: {}", backend.describe());

    let mut rng = StdRng::seed_from_u64(2025);
    let mut draw = |n: usize, amplitude: f32| -> Result<HostBuffer<bf16>, GsdpaError> {
        let mut buffer = HostBuffer::try_new(n)?;
        for x in buffer.as_mut_slice() {
            *x = bf16::from_f32(rng.random_range(-amplitude..amplitude));
        }
        Ok(buffer)
    };
    // check_memory did these products with overflow checks.
    let q_elems = batch * seqlen * HEADS_Q * HEAD_DIM;
    let kv_elems = batch * seqlen * HEADS_KV * HEAD_DIM;
    let inputs = HostInputs {
        problem: problem.clone(),
        q: draw(2 * q_elems, 2.0)?,
        qg: true,
        g: None,
        k: draw(kv_elems, 2.0)?,
        v: draw(kv_elems, 1.0)?,
    };
    let dy = draw(q_elems, 1.0)?;

    let forward = backend.forward(&inputs, true)?;
    let backward = match backend.backward(&inputs, &forward, &dy, BackwardOptions::default()) {
        Ok(b) => Some(b),
        Err(e @ GsdpaError::KernelsNotBuilt(_)) => {
            println!("backward: not available on {} ({e})", backend.name());
            None
        }
        Err(e) => return Err(e.into()),
    };

    // The reference, in f64 on the same rounded inputs (q and g copied out of q_proj).
    let (mut q, mut g) = (try_zeros(q_elems)?, try_zeros(q_elems)?);
    let heads = inputs.q.as_slice().chunks(2 * HEAD_DIM);
    for ((head, q_head), g_head) in heads
        .zip(q.chunks_mut(HEAD_DIM))
        .zip(g.chunks_mut(HEAD_DIM))
    {
        for (out, x) in q_head.iter_mut().zip(&head[..HEAD_DIM]) {
            *out = x.to_f64();
        }
        for (out, x) in g_head.iter_mut().zip(&head[HEAD_DIM..]) {
            *out = x.to_f64();
        }
    }
    let (k, v) = (to_f64(&inputs.k)?, to_f64(&inputs.v)?);
    let exact = forward_f64(&problem, &q, &k, &v, Some(&g))?;

    let forward_bound = 1e-2;
    let lse_error = forward
        .lse
        .as_slice()
        .iter()
        .zip(&exact.lse)
        .map(|(&a, &b)| {
            if b == f64::NEG_INFINITY {
                if a == f32::NEG_INFINITY {
                    0.0
                } else {
                    f64::INFINITY
                }
            } else {
                (f64::from(a) - b).abs()
            }
        })
        .fold(0.0, f64::max);
    let fwd_ms = Some(forward.seconds * 1e3);
    let mut rows = vec![
        Row {
            pass: "forward",
            ms: fwd_ms,
            tensor: "y",
            error: relative_error(&to_f64(&forward.y)?, &exact.y),
            metric: "rel err (norm)",
            bound: forward_bound,
        },
        Row {
            pass: "",
            ms: None,
            tensor: "lse",
            error: lse_error,
            metric: "max abs err",
            bound: 1e-4,
        },
    ];
    if let Some(o) = &forward.o {
        rows.push(Row {
            pass: "",
            ms: None,
            tensor: "o",
            error: relative_error(&to_f64(o)?, &exact.o),
            metric: "rel err (norm)",
            bound: forward_bound,
        });
    }
    if let Some(grads) = &backward {
        let dy = to_f64(&dy)?;
        let exact = backward_f64(&problem, &q, &k, &v, Some(&g), &dy)?;
        let magnitude = backward_magnitudes_f64(&problem, &q, &k, &v, Some(&g), &dy)?;
        let none = Vec::new();
        let dg = grads
            .dg
            .as_ref()
            .map(to_f64)
            .transpose()?
            .unwrap_or_default();
        for (i, (tensor, actual, expected, mag)) in [
            ("dq", to_f64(&grads.dq)?, &exact.dq, &magnitude.dq),
            ("dk", to_f64(&grads.dk)?, &exact.dk, &magnitude.dk),
            ("dv", to_f64(&grads.dv)?, &exact.dv, &magnitude.dv),
            (
                "dg",
                dg,
                exact.dg.as_ref().unwrap_or(&none),
                magnitude.dg.as_ref().unwrap_or(&none),
            ),
        ]
        .into_iter()
        .enumerate()
        {
            rows.push(Row {
                pass: if i == 0 { "backward" } else { "" },
                ms: (i == 0).then_some(grads.seconds * 1e3),
                tensor,
                error: error_vs_magnitude(&actual, expected, mag),
                metric: "rel err (mag)",
                bound: GRADIENT_BOUND,
            });
        }
    }

    println!();
    println!(
        "{:<9} {:>10}  {:<6} {:<15} {:>10} {:>9}  check",
        "pass", "time ms", "tensor", "metric", "error", "bound"
    );
    for row in &rows {
        let ms = row.ms.map_or(String::new(), |ms| format!("{ms:.2}"));
        println!(
            "{:<9} {:>10}  {:<6} {:<15} {:>10.2e} {:>9.0e}  {}",
            row.pass,
            ms,
            row.tensor,
            row.metric,
            row.error,
            row.bound,
            if row.ok() { "ok" } else { "FAIL" }
        );
    }
    if backward.is_some() {
        println!(
            "\nrel err (mag) = ||x - x_ref|| / ||x_mag||, x_mag: the gradient's sums with every term in \
             absolute value (meaningful where x_ref cancels, e.g. to 0 at S=1)"
        );
    }
    let failed: Vec<&str> = rows.iter().filter(|r| !r.ok()).map(|r| r.tensor).collect();
    if !failed.is_empty() {
        return Err(CliError {
            code: 1,
            message: format!("demo: {} off the reference", failed.join(", ")),
        });
    }
    println!("\nall checks passed against the f64 CPU reference");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(x: &[f64]) -> f64 {
        x.iter().map(|v| v * v).sum::<f64>().sqrt()
    }

    /// The demo's gradient check on the f64 reference itself: exact gradients, and gradients rounded
    /// to bf16, pass; wrong ones fail, including where the exact dq and dk cancel to 0.
    #[test]
    fn the_gradient_metric_passes_rounding_and_fails_wrong_gradients() {
        for seqlen in [1, 2, 24] {
            let problem = AttentionProblem::new(1, seqlen, seqlen, 4, 2, 64)
                .causal(true)
                .gate(GateMode::Elementwise);
            let mut rng = StdRng::seed_from_u64(5);
            let mut draw = |n: usize, amplitude: f64| -> Vec<f64> {
                (0..n)
                    .map(|_| {
                        <bf16 as gated_sdpa::Element>::from_f64(
                            rng.random_range(-amplitude..amplitude),
                        )
                        .to_f64()
                    })
                    .collect()
            };
            let (qn, kvn) = (seqlen * 4 * 64, seqlen * 2 * 64);
            let (q, g, k, v, dy) = (
                draw(qn, 2.0),
                draw(qn, 2.0),
                draw(kvn, 2.0),
                draw(kvn, 1.0),
                draw(qn, 1.0),
            );
            let exact = backward_f64(&problem, &q, &k, &v, Some(&g), &dy).unwrap();
            let mag = backward_magnitudes_f64(&problem, &q, &k, &v, Some(&g), &dy).unwrap();
            if seqlen == 1 {
                // One key per query: dS = P (dP - Delta) = 0 exactly.
                assert!(exact.dq.iter().chain(&exact.dk).all(|&x| x == 0.0));
            }
            let dg = (exact.dg.as_ref().unwrap(), mag.dg.as_ref().unwrap());
            for (name, exact, mag) in [
                ("dq", &exact.dq, &mag.dq),
                ("dk", &exact.dk, &mag.dk),
                ("dv", &exact.dv, &mag.dv),
                ("dg", dg.0, dg.1),
            ] {
                let ratio = norm(exact) / norm(mag);
                eprintln!("S={seqlen} {name}: ||exact|| / ||magnitude|| = {ratio:.3}");
                assert!(norm(mag) >= norm(exact) * (1.0 - 1e-12));
                let check = |actual: &[f64]| error_vs_magnitude(actual, exact, mag);
                assert_eq!(check(exact), 0.0);
                // Rounded to bf16, as the kernels' outputs are: passes.
                let rounded: Vec<f64> = exact
                    .iter()
                    .map(|&x| <bf16 as gated_sdpa::Element>::from_f64(x).to_f64())
                    .collect();
                assert!(check(&rounded) < GRADIENT_BOUND / 2.0, "{name} S={seqlen}");
                // Rounding errors the size of bf16's on every term, in a consistent direction: passes.
                let drift: Vec<f64> = exact.iter().zip(mag).map(|(e, m)| e + m / 512.0).collect();
                assert!(check(&drift) < GRADIENT_BOUND, "{name} S={seqlen}");
                // Off by 5 % of the terms' size (for S=1: a nonzero dq or dk where they are 0): fails.
                let wrong: Vec<f64> = exact.iter().zip(mag).map(|(e, m)| e + m / 20.0).collect();
                assert!(check(&wrong) > GRADIENT_BOUND, "{name} S={seqlen}");
                // A NaN anywhere fails.
                let mut nan = exact.clone();
                nan[0] = f64::NAN;
                let row = Row {
                    pass: "",
                    ms: None,
                    tensor: name,
                    error: check(&nan),
                    metric: "",
                    bound: GRADIENT_BOUND,
                };
                assert!(!row.ok(), "{name}: a NaN passed");
                if seqlen > 1 {
                    // A gradient that is missing (zero) or of the wrong sign fails.
                    assert!(
                        check(&vec![0.0; exact.len()]) > GRADIENT_BOUND,
                        "{name} S={seqlen}"
                    );
                    let flipped: Vec<f64> = exact.iter().map(|x| -x).collect();
                    assert!(check(&flipped) > GRADIENT_BOUND, "{name} S={seqlen}");
                }
            }
        }
    }

    /// Every element of a magnitude bounds the exact gradient's (it is the same sum of absolute
    /// terms), for every gate mode, activation and for varlen; empty sequences give zero magnitudes.
    #[test]
    fn magnitudes_bound_the_exact_gradients() {
        let varlen = gated_sdpa::Varlen::new(vec![0, 3, 3, 7], vec![0, 2, 6, 9]).unwrap();
        let problems = [
            AttentionProblem::new(2, 5, 3, 4, 2, 64).gate(GateMode::Headwise),
            AttentionProblem::new(1, 4, 6, 2, 1, 64)
                .causal(true)
                .gate(GateMode::Elementwise)
                .activation(Activation::Silu),
            AttentionProblem::new_varlen(varlen, 2, 2, 64)
                .causal(true)
                .gate(GateMode::Headwise)
                .activation(Activation::Silu),
            AttentionProblem::new(1, 3, 3, 2, 2, 64),
        ];
        let mut rng = StdRng::seed_from_u64(9);
        for problem in problems {
            let n = |shape: Vec<usize>| shape.iter().product::<usize>();
            let mut draw = |len: usize| -> Vec<f64> {
                (0..len).map(|_| rng.random_range(-2.0..2.0)).collect()
            };
            let q = draw(n(problem.q_shape()));
            let k = draw(n(problem.kv_shape()));
            let v = draw(n(problem.kv_shape()));
            let g = problem.gate_shape().map(|s| draw(n(s)));
            let dy = draw(n(problem.q_shape()));
            let exact = backward_f64(&problem, &q, &k, &v, g.as_deref(), &dy).unwrap();
            let mag = backward_magnitudes_f64(&problem, &q, &k, &v, g.as_deref(), &dy).unwrap();
            assert_eq!(exact.dg.is_some(), mag.dg.is_some());
            let none = Vec::new();
            for (exact, mag) in [
                (&exact.dq, &mag.dq),
                (&exact.dk, &mag.dk),
                (&exact.dv, &mag.dv),
                (
                    exact.dg.as_ref().unwrap_or(&none),
                    mag.dg.as_ref().unwrap_or(&none),
                ),
            ] {
                assert_eq!(exact.len(), mag.len());
                for (e, m) in exact.iter().zip(mag) {
                    assert!(
                        e.abs() <= m * (1.0 + 1e-12) + 1e-300,
                        "{e} > {m} ({problem:?})"
                    );
                }
                assert!(mag.is_empty() || norm(mag) > 0.0);
            }
        }
    }
}
