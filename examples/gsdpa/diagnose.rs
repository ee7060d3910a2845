//! `gsdpa diagnose`: the gated-attention paper's two numbers per head, from one forward with the
//! kernel's diagnostics (docs/diagnostics.md):
//! - sink mass: the attention on the first `n_sink` keys, averaged over the query rows that see at
//!   least one key (rows with LSE = -inf have no attention to measure);
//! - gate score: the mean of act(G) over the head's rows (and D for the elementwise gate), i.e. the
//!   per-(sequence, head) statistics weighted by sequence length.
//!
//! The layer line averages the heads (every head has the same rows, so it is also the mean over rows).

use std::fmt::Write;

use gated_sdpa::{AttentionProblem, Element, GateMode};

use crate::backends::{Diagnose, ForwardOut};

/// The per-head table and the layer means, as printed.
pub fn report<T: Element>(
    p: &AttentionProblem,
    out: &ForwardOut<T>,
    diagnose: Diagnose,
    backend: &str,
) -> String {
    let hq = p.heads_q;
    let tq = p.total_q();
    // Rows of head h, in the lse layout: varlen [Hq, Tq], else [B, Hq, Sq].
    let rows = |h: usize| -> Vec<usize> {
        match p.varlen {
            Some(_) => (0..tq).map(|t| h * tq + t).collect(),
            None => (0..p.batch)
                .flat_map(|b| (0..p.seqlen_q).map(move |i| (b * hq + h) * p.seqlen_q + i))
                .collect(),
        }
    };
    let sink_of_head = |h: usize| -> Option<f64> {
        let sink = out.sink_mass.as_ref()?;
        let (sum, n) = rows(h)
            .into_iter()
            .filter(|&r| out.lse.as_slice()[r] != f32::NEG_INFINITY)
            .fold((0.0, 0usize), |(s, n), r| {
                (s + f64::from(sink.as_slice()[r]), n + 1)
            });
        (n > 0).then(|| sum / n as f64)
    };
    let gate_of_head = |h: usize| -> Option<f64> {
        let stats = out.gate_stats.as_ref()?;
        let (sum, n) = (0..p.batch).fold((0.0, 0usize), |(s, n), b| {
            let len = p.sequence(b).map_or(0, |(q, _)| q.len());
            (
                s + f64::from(stats.as_slice()[b * hq + h]) * len as f64,
                n + len,
            )
        });
        (n > 0).then(|| sum / n as f64)
    };
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));

    let mut text = String::new();
    let _ = writeln!(
        text,
        "diagnose: backend {backend}, batch {}, seqlen_q {}, seqlen_k {}, heads {}/{}, head_dim {}, \
         gate {} ({}), causal {}, n_sink {}",
        p.batch,
        p.seqlen_q,
        p.seqlen_k,
        p.heads_q,
        p.heads_kv,
        p.head_dim,
        p.gate.name(),
        p.activation.name(),
        p.causal,
        diagnose.n_sink.unwrap_or(1),
    );
    let _ = writeln!(
        text,
        "{:>6}  {:>10}  {:>10}",
        "head", "sink mass", "gate score"
    );
    let (mut sinks, mut gates) = (Vec::new(), Vec::new());
    for h in 0..hq {
        let (sink, gate) = (sink_of_head(h), gate_of_head(h));
        sinks.extend(sink);
        gates.extend(gate);
        let _ = writeln!(text, "{h:>6}  {:>10}  {:>10}", cell(sink), cell(gate));
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let _ = writeln!(
        text,
        "{:>6}  {:>10}  {:>10}",
        "layer",
        cell(mean(&sinks)),
        cell(if p.gate == GateMode::None {
            None
        } else {
            mean(&gates)
        }),
    );
    text
}

#[cfg(test)]
#[path = "diagnose_tests.rs"]
mod diagnose_tests;
