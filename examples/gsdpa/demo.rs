//! `gsdpa demo`: Qwen3-Next-shaped gated attention, forward and backward, on the best backend here,
//! checked against the CPU reference.
//!
//! Shape: head dim 256, 16 query heads over 2 kv heads (GQA 8), causal, elementwise sigmoid gate, bf16,
//! with Q and G taken as strided views of one `q_proj` output `[B, S, 16, 2*256]` as the model produces
//! it. The sequence length is reduced off the GPU so the CPU backends finish in seconds.

use gated_sdpa::reference::{backward_f64, forward_f64};
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
    let diff: f64 = actual
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    let norm: f64 = expected.iter().map(|b| b * b).sum();
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

fn to_f64<T: Element>(buffer: &HostBuffer<T>) -> Vec<f64> {
    buffer.as_slice().iter().map(|x| x.to_f64()).collect()
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
    println!(
        "gated attention, Qwen3-Next shape: B={batch} S={seqlen} Hq={HEADS_Q} Hkv={HEADS_KV} D={HEAD_DIM}, causal, \
         elementwise sigmoid gate, bf16, Q and G strided views of q_proj"
    );
    println!("backend: {}", backend.describe());

    let mut rng = StdRng::seed_from_u64(2025);
    let mut draw = |n: usize, amplitude: f32| -> HostBuffer<bf16> {
        let data: Vec<bf16> = (0..n)
            .map(|_| bf16::from_f32(rng.random_range(-amplitude..amplitude)))
            .collect();
        HostBuffer::from_slice(&data)
    };
    let q_elems = batch * seqlen * HEADS_Q * HEAD_DIM;
    let kv_elems = batch * seqlen * HEADS_KV * HEAD_DIM;
    let inputs = HostInputs {
        problem: problem.clone(),
        q: draw(2 * q_elems, 2.0),
        qg: true,
        g: None,
        k: draw(kv_elems, 2.0),
        v: draw(kv_elems, 1.0),
    };
    let dy = draw(q_elems, 1.0);

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
    let (mut q, mut g) = (Vec::with_capacity(q_elems), Vec::with_capacity(q_elems));
    for head in inputs.q.as_slice().chunks(2 * HEAD_DIM) {
        q.extend(head[..HEAD_DIM].iter().map(|x| x.to_f64()));
        g.extend(head[HEAD_DIM..].iter().map(|x| x.to_f64()));
    }
    let (k, v) = (to_f64(&inputs.k), to_f64(&inputs.v));
    let exact = forward_f64(&problem, &q, &k, &v, Some(&g))?;

    let forward_bound = 1e-2;
    let backward_bound = 2e-2;
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
            error: relative_error(&to_f64(&forward.y), &exact.y),
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
            error: relative_error(&to_f64(o), &exact.o),
            metric: "rel err (norm)",
            bound: forward_bound,
        });
    }
    if let Some(grads) = &backward {
        let exact = backward_f64(&problem, &q, &k, &v, Some(&g), &to_f64(&dy))?;
        let exact_dg = exact.dg.as_deref().unwrap_or(&[]);
        let dg = grads.dg.as_ref().map(to_f64).unwrap_or_default();
        for (i, (tensor, actual, expected)) in [
            ("dq", to_f64(&grads.dq), &exact.dq[..]),
            ("dk", to_f64(&grads.dk), &exact.dk[..]),
            ("dv", to_f64(&grads.dv), &exact.dv[..]),
            ("dg", dg, exact_dg),
        ]
        .into_iter()
        .enumerate()
        {
            rows.push(Row {
                pass: if i == 0 { "backward" } else { "" },
                ms: (i == 0).then_some(grads.seconds * 1e3),
                tensor,
                error: relative_error(&actual, expected),
                metric: "rel err (norm)",
                bound: backward_bound,
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
