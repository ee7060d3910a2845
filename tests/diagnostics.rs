//! The forward's diagnostics (docs/diagnostics.md): the sink mass per query row and the mean gate
//! score per (batch, head), measured by the kernel on the emulator, against
//! [`reference::diagnostics_f64`], which materialises every probability row and averages act(G)
//! directly.
//!
//! Every output starts as NaN (the emulator also poisons its copies), so an unwritten element fails.
//! Tolerances: both are f32 results of the same rounded inputs the reference reads; the kernel's
//! differences are f32 accumulation and the approximate exp2 / reciprocal, so
//! `|got - want| <= 1e-4 + 1e-3 |want|`.
#![cfg(feature = "emulator")]

use gated_sdpa::emulator::Emulator;
use gated_sdpa::reference::diagnostics_f64;
use gated_sdpa::{
    gate_stats_workspace_len, Activation, AttentionProblem, Element, ForwardArgs,
    ForwardDiagnostics, GateMode, GsdpaError, HostBackend, HostBuffer, Reference, TargetArch,
    Tensor, Varlen,
};
use half::{bf16, f16};
use rand::{rngs::StdRng, SeedableRng};

mod common;
use common::{numel, random_buffer, HEAD_DIMS};

/// Inputs of one problem, rounded to T.
struct Inputs<T> {
    q: HostBuffer<T>,
    k: HostBuffer<T>,
    v: HostBuffer<T>,
    g: Option<HostBuffer<T>>,
}

impl<T: Element> Inputs<T> {
    fn random(p: &AttentionProblem, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        Inputs {
            q: random_buffer(&mut rng, numel(&p.q_shape()), 2.0),
            k: random_buffer(&mut rng, numel(&p.kv_shape()), 2.0),
            v: random_buffer(&mut rng, numel(&p.kv_shape()), 1.0),
            g: p.gate_shape()
                .map(|s| random_buffer(&mut rng, numel(&s), 3.0)),
        }
    }

    fn to_f64(buffer: &HostBuffer<T>) -> Vec<f64> {
        buffer.as_slice().iter().map(|x| x.to_f64()).collect()
    }
}

/// What one run wrote: Y, LSE and the two diagnostics (sink mass, gate statistics).
#[derive(Debug, Clone, PartialEq)]
struct Outputs {
    y_bits: Vec<u64>,
    lse: Vec<f32>,
    sink_mass: Option<Vec<f32>>,
    gate_stats: Option<Vec<f32>>,
}

/// Runs `backend`'s forward with the requested diagnostics (sink mass of `n_sink` keys, gate stats).
fn run<T: Element>(
    backend: &impl HostBackend,
    p: &AttentionProblem,
    x: &Inputs<T>,
    n_sink: Option<usize>,
    gate_stats: bool,
) -> gated_sdpa::Result<Outputs> {
    let qs = p.q_shape();
    let mut y = HostBuffer::<T>::filled(numel(&qs), T::from_f32(f32::NAN));
    let mut lse = vec![f32::NAN; numel(&p.lse_shape())];
    let mut sink = vec![f32::NAN; numel(&p.lse_shape())];
    let mut stats = vec![f32::NAN; p.batch * p.heads_q];
    let workspace_len = if gate_stats {
        gate_stats_workspace_len(p)?
    } else {
        0
    };
    let mut workspace = vec![f32::NAN; workspace_len];
    let mut diagnostics = ForwardDiagnostics::default();
    if let Some(n) = n_sink {
        diagnostics =
            diagnostics.with_sink_mass(Tensor::contiguous(&mut sink[..], &p.lse_shape()), n);
    }
    if gate_stats {
        diagnostics = diagnostics.with_gate_stats(
            Tensor::contiguous(&mut stats[..], &[p.batch, p.heads_q]),
            Tensor::contiguous(&mut workspace[..], &[workspace_len]),
        );
    }
    let mut args = ForwardArgs {
        q: Tensor::contiguous(x.q.as_slice(), &qs),
        k: Tensor::contiguous(x.k.as_slice(), &p.kv_shape()),
        v: Tensor::contiguous(x.v.as_slice(), &p.kv_shape()),
        g: x.g
            .as_ref()
            .map(|g| Tensor::contiguous(g.as_slice(), &p.gate_shape().unwrap())),
        y: Tensor::contiguous(y.as_mut_slice(), &qs),
        o: None,
        lse: Some(Tensor::contiguous(&mut lse[..], &p.lse_shape())),
        diagnostics: (n_sink.is_some() || gate_stats).then_some(diagnostics),
    };
    backend.forward(p, &mut args)?;
    drop(args);
    Ok(Outputs {
        y_bits: y.as_slice().iter().map(|v| v.to_f64().to_bits()).collect(),
        lse,
        sink_mass: n_sink.map(|_| sink),
        gate_stats: gate_stats.then_some(stats),
    })
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        assert!(
            !g.is_nan() && (g - w).abs() <= 1e-4 + 1e-3 * w.abs(),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// The emulator's diagnostics against the reference's for one problem; also checks that asking for
/// them changes neither Y nor LSE.
fn check<T: Element>(p: &AttentionProblem, n_sink: usize, seed: u64) {
    check_on::<T>(&Emulator::new(), p, n_sink, seed);
}

/// [`check`] on the Hopper kernel (the emulator with an sm_90 target), checking that it ran.
fn check_hopper<T: Element>(p: &AttentionProblem, n_sink: usize, seed: u64) {
    let emulator = Emulator::new().with_arch(TargetArch::SM90);
    check_on::<T>(&emulator, p, n_sink, seed);
    if !p.is_empty() {
        let kernel = emulator.last_forward_kernel().unwrap_or_default();
        assert!(kernel.starts_with("gsdpa_fwd90_"), "{kernel} ran {p:?}");
    }
}

fn check_on<T: Element>(emulator: &Emulator, p: &AttentionProblem, n_sink: usize, seed: u64) {
    let x = Inputs::<T>::random(p, seed);
    let gated = p.gate != GateMode::None;
    let got = run(emulator, p, &x, Some(n_sink), gated).unwrap();
    let want = diagnostics_f64(
        p,
        &Inputs::to_f64(&x.q),
        &Inputs::to_f64(&x.k),
        x.g.as_ref().map(Inputs::to_f64).as_deref(),
        n_sink,
    )
    .unwrap();
    let case = format!("{p:?} n_sink {n_sink}");
    assert_close(
        &format!("sink_mass {case}"),
        got.sink_mass.as_ref().unwrap(),
        &want.sink_mass,
    );
    if gated {
        assert_close(
            &format!("gate_stats {case}"),
            got.gate_stats.as_ref().unwrap(),
            &want.gate_stats,
        );
    }
    let plain = run(emulator, p, &x, None, false).unwrap();
    assert_eq!(got.y_bits, plain.y_bits, "diagnostics changed Y: {case}");
    assert_eq!(
        got.lse.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        plain.lse.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        "diagnostics changed LSE: {case}"
    );
    // The reference backend writes the same (f32-rounded) values.
    let reference = run(&Reference, p, &x, Some(n_sink), gated).unwrap();
    assert_close(
        &format!("reference sink_mass {case}"),
        reference.sink_mass.as_ref().unwrap(),
        &want.sink_mass,
    );
}

fn problem(b: usize, sq: usize, sk: usize, hq: usize, hkv: usize, d: usize) -> AttentionProblem {
    AttentionProblem::new(b, sq, sk, hq, hkv, d)
}

#[test]
fn every_head_dim_and_gate_mode_matches_the_reference() {
    let gates = [
        (GateMode::None, Activation::Sigmoid),
        (GateMode::Elementwise, Activation::Sigmoid),
        (GateMode::Headwise, Activation::Silu),
    ];
    for (i, d) in HEAD_DIMS.into_iter().enumerate() {
        for (j, (gate, act)) in gates.into_iter().enumerate() {
            let causal = (i + j) % 2 == 1;
            let p = problem(2, 37, 45, 2, 1, d)
                .causal(causal)
                .gate(gate)
                .activation(act);
            check::<bf16>(&p, 1, 10 * i as u64 + j as u64);
        }
    }
    // f16, one case per head dim.
    for d in HEAD_DIMS {
        let p = problem(1, 20, 33, 4, 2, d)
            .gate(GateMode::Elementwise)
            .activation(Activation::Silu);
        check::<f16>(&p, 2, d as u64);
    }
}

#[test]
fn odd_lengths_many_sink_keys_and_gqa() {
    // Length 1, Sq != Sk both ways, a causal block whose rows see nothing (Sq > Sk), GQA 4, and n_sink
    // spanning several key tiles (every head dim's tile is at most 128 keys) or beyond Sk.
    let cases = [
        (problem(1, 1, 1, 1, 1, 64), 1),
        (problem(1, 1, 130, 4, 1, 64), 3),
        (problem(1, 150, 20, 2, 2, 128).causal(true), 5),
        (problem(2, 70, 200, 4, 1, 128), 150),
        (problem(1, 33, 90, 2, 2, 256).causal(true), 40),
        (problem(1, 9, 5, 1, 1, 64), 100),
    ];
    for (i, (p, n_sink)) in cases.into_iter().enumerate() {
        check::<bf16>(&p.gate(GateMode::Headwise), n_sink, 100 + i as u64);
    }
}

#[test]
fn varlen_with_empty_sequences() {
    let varlen = Varlen::new(vec![0, 5, 5, 75, 76], vec![0, 9, 12, 12, 140]).unwrap();
    for (d, gate) in [(64, GateMode::Elementwise), (128, GateMode::Headwise)] {
        let p = AttentionProblem::new_varlen(varlen.clone(), 2, 1, d).gate(gate);
        check::<bf16>(&p, 2, d as u64);
        check::<bf16>(&p.clone().causal(true), 1, d as u64 + 1);
    }
}

/// The Hopper kernel (kernels/forward_sm90.cu) measures both diagnostics itself, against the same
/// reference: every head dim and gate mode; n_sink within one key tile, across several and beyond Sk;
/// Sq != Sk both ways, with causal blocks whose rows see no key (their gate partials still count:
/// the elementwise gate tile is loaded without any key tile); GQA; varlen with empty sequences (the
/// blocks past a sequence's end write zero partials); its partials layout (8 warps of 16 rows per
/// 128-row block, twice the mma.sync kernel's count at D = 64) in a workspace sized for either kernel.
#[test]
fn hopper_kernel_matches_the_reference() {
    let gates = [
        (GateMode::None, Activation::Sigmoid),
        (GateMode::Elementwise, Activation::Sigmoid),
        (GateMode::Headwise, Activation::Silu),
    ];
    for (i, d) in HEAD_DIMS.into_iter().enumerate() {
        for (j, (gate, act)) in gates.into_iter().enumerate() {
            let p = problem(2, 37, 45, 2, 1, d)
                .causal((i + j) % 2 == 1)
                .gate(gate)
                .activation(act);
            check_hopper::<bf16>(&p, 1 + 20 * j, 500 + 10 * i as u64 + j as u64);
        }
    }
    let cases = [
        (problem(1, 150, 300, 2, 1, 64), 200, GateMode::Elementwise),
        (
            problem(1, 300, 20, 2, 2, 64).causal(true),
            5,
            GateMode::Elementwise,
        ),
        (
            problem(1, 140, 70, 4, 1, 128).causal(true),
            100,
            GateMode::Headwise,
        ),
        (
            problem(1, 70, 200, 1, 1, 256).causal(true),
            130,
            GateMode::Elementwise,
        ),
        (problem(1, 9, 5, 1, 1, 256), 100, GateMode::Headwise),
    ];
    for (i, (p, n_sink, gate)) in cases.into_iter().enumerate() {
        check_hopper::<f16>(&p.gate(gate), n_sink, 600 + i as u64);
    }
    let varlen = Varlen::new(vec![0, 5, 5, 140, 141], vec![0, 9, 12, 12, 200]).unwrap();
    for (d, gate) in [(64, GateMode::Elementwise), (256, GateMode::Headwise)] {
        let p = AttentionProblem::new_varlen(varlen.clone(), 2, 1, d).gate(gate);
        check_hopper::<bf16>(&p, 70, d as u64);
        check_hopper::<bf16>(&p.clone().causal(true), 1, d as u64 + 1);
    }
}

#[test]
fn hopper_diagnostics_are_bit_identical_across_emulator_seeds() {
    let p = problem(2, 150, 140, 2, 1, 128)
        .causal(true)
        .gate(GateMode::Elementwise);
    let x = Inputs::<bf16>::random(&p, 12);
    let sm90 = |seed| Emulator::new().with_arch(TargetArch::SM90).with_seed(seed);
    let first = run(&sm90(1), &p, &x, Some(130), true).unwrap();
    for seed in [2, 0xdead_beef] {
        assert_eq!(
            run(&sm90(seed), &p, &x, Some(130), true).unwrap(),
            first,
            "seed {seed}"
        );
    }
}

#[test]
fn no_query_rows_gives_zero_statistics() {
    let p = problem(2, 0, 16, 2, 1, 64).gate(GateMode::Elementwise);
    let x = Inputs::<bf16>::random(&p, 7);
    let got = run(&Emulator::new(), &p, &x, Some(1), true).unwrap();
    assert_eq!(got.gate_stats.unwrap(), vec![0.0; 4]);
    let got = run(&Reference, &p, &x, Some(1), true).unwrap();
    assert_eq!(got.gate_stats.unwrap(), vec![0.0; 4]);
}

/// A planted sink: key 0 of every sequence matches every query strongly, so nearly all attention
/// lands on it; with the same keys but key 0 ordinary, little does. Gates with logit 0 report their
/// mean, sigmoid(0) = 1/2, exactly.
#[test]
fn planted_sink_and_exact_gate_means() {
    let (sq, sk, h, d) = (40, 70, 2, 64);
    for gate in [GateMode::Elementwise, GateMode::Headwise] {
        let p = problem(1, sq, sk, h, 1, d).gate(gate);
        let mut x = Inputs::<bf16>::random(&p, 3);
        // Every query is u + noise and key 0 is 4 u, with u = (1, .., 1): scores ~ 4 D / sqrt(D) = 32
        // above the others'.
        let mut rng = StdRng::seed_from_u64(5);
        let noise = random_buffer::<bf16>(&mut rng, numel(&p.q_shape()), 0.1);
        for (q, n) in x.q.as_mut_slice().iter_mut().zip(noise.as_slice()) {
            *q = bf16::from_f32(1.0 + n.to_f32());
        }
        let unplanted = run(&Emulator::new(), &p, &x, Some(1), true).unwrap();
        for c in 0..d {
            x.k.as_mut_slice()[c] = bf16::from_f32(4.0);
        }
        x.g.as_mut().unwrap().as_mut_slice().fill(bf16::ZERO);
        let planted = run(&Emulator::new(), &p, &x, Some(1), true).unwrap();
        let sink = planted.sink_mass.unwrap();
        assert!(sink.iter().all(|&m| m > 0.999), "planted sink: {sink:?}");
        let before = unplanted.sink_mass.unwrap();
        let mean_before = before.iter().sum::<f32>() / before.len() as f32;
        assert!(
            mean_before < 0.2,
            "no sink planted, mean sink mass {mean_before}"
        );
        assert_eq!(planted.gate_stats.unwrap(), vec![0.5; h], "{gate:?}");
    }
}

#[test]
fn bit_identical_across_emulator_seeds() {
    let p = problem(2, 100, 77, 4, 2, 128)
        .causal(true)
        .gate(GateMode::Elementwise);
    let x = Inputs::<bf16>::random(&p, 11);
    let first = run(&Emulator::new().with_seed(1), &p, &x, Some(3), true).unwrap();
    let second = run(&Emulator::new().with_seed(2), &p, &x, Some(3), true).unwrap();
    assert_eq!(
        first
            .sink_mass
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>(),
        second
            .sink_mass
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        first
            .gate_stats
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>(),
        second
            .gate_stats
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    );
}

#[test]
fn bad_diagnostics_are_typed_errors() {
    let p = problem(1, 8, 8, 2, 1, 64).gate(GateMode::Headwise);
    let ls = p.lse_shape();
    let len = gate_stats_workspace_len(&p).unwrap();
    let (mut sink, mut stats, mut ws) = (vec![0f32; numel(&ls)], vec![0f32; 2], vec![0f32; len]);

    let err = forward_error(
        &p,
        ForwardDiagnostics::default().with_sink_mass(Tensor::contiguous(&mut sink[..], &ls), 0),
    );
    assert!(matches!(err, GsdpaError::InvalidArgument(_)), "{err}");
    let err = forward_error(
        &p,
        ForwardDiagnostics::default()
            .with_sink_mass(Tensor::contiguous(&mut sink[..8], &[1, 8]), 1),
    );
    assert!(
        matches!(
            err,
            GsdpaError::ShapeMismatch {
                tensor: "sink_mass",
                ..
            }
        ),
        "{err}"
    );
    let err = forward_error(
        &p,
        ForwardDiagnostics::default().with_gate_stats(
            Tensor::contiguous(&mut stats[..], &[1, 2]),
            Tensor::contiguous(&mut ws[..len - 1], &[len - 1]),
        ),
    );
    assert!(matches!(err, GsdpaError::WorkspaceTooSmall { .. }), "{err}");
    let err = forward_error(
        &p,
        ForwardDiagnostics {
            gate_stats: Some(Tensor::contiguous(&mut stats[..], &[1, 2])),
            ..ForwardDiagnostics::default()
        },
    );
    assert!(matches!(err, GsdpaError::InvalidArgument(_)), "{err}");
    let err = forward_error(
        &p,
        ForwardDiagnostics::default().with_gate_stats(
            Tensor::contiguous(&mut stats[..], &[2, 1]),
            Tensor::contiguous(&mut ws[..], &[len]),
        ),
    );
    assert!(
        matches!(
            err,
            GsdpaError::ShapeMismatch {
                tensor: "gate_stats",
                ..
            }
        ),
        "{err}"
    );

    // Gate statistics of an ungated problem.
    let err = forward_error(
        &problem(1, 8, 8, 2, 1, 64),
        ForwardDiagnostics::default().with_gate_stats(
            Tensor::contiguous(&mut stats[..], &[1, 2]),
            Tensor::contiguous(&mut ws[..], &[len]),
        ),
    );
    assert!(matches!(err, GsdpaError::InvalidArgument(_)), "{err}");
}

/// The error a forward of `p` with `diagnostics` returns on the emulator (the reference must agree).
fn forward_error(p: &AttentionProblem, diagnostics: ForwardDiagnostics<&mut [f32]>) -> GsdpaError {
    let x = Inputs::<bf16>::random(p, 1);
    let (qs, kvs) = (p.q_shape(), p.kv_shape());
    let mut y = HostBuffer::<bf16>::new(numel(&qs));
    let gate_shape = p.gate_shape();
    let mut args = ForwardArgs {
        q: Tensor::contiguous(x.q.as_slice(), &qs),
        k: Tensor::contiguous(x.k.as_slice(), &kvs),
        v: Tensor::contiguous(x.v.as_slice(), &kvs),
        g: x.g
            .as_ref()
            .map(|g| Tensor::contiguous(g.as_slice(), gate_shape.as_ref().unwrap())),
        y: Tensor::contiguous(y.as_mut_slice(), &qs),
        o: None,
        lse: None,
        diagnostics: Some(diagnostics),
    };
    let emulated = Emulator::new().forward(p, &mut args).unwrap_err();
    let reference = Reference.forward(p, &mut args).unwrap_err();
    assert_eq!(emulated.to_string(), reference.to_string());
    emulated
}
