//! Tests of the CPU reference against independent formulations of the same maths.

use gated_sdpa::reference::{backward_f64, forward_f64, BackwardResultF64, ForwardResultF64};
use gated_sdpa::{
    split_q_proj, Activation, AttentionProblem, BackwardArgs, BackwardOptions, Element,
    ForwardArgs, GateMode, HostBackend, Layout, Reference, Tensor, Varlen,
};
use half::bf16;
use rand::{rngs::StdRng, SeedableRng};

mod common;
use common::{numel, random_values as random};

const D: usize = 64;

/// Random inputs for a problem: q, k, v, g (if gated), dy.
struct Inputs {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    g: Option<Vec<f64>>,
    dy: Vec<f64>,
}

impl Inputs {
    fn new(p: &AttentionProblem, seed: u64) -> Inputs {
        let mut rng = StdRng::seed_from_u64(seed);
        Inputs {
            // Amplitude 2 makes the softmax far from uniform at scale 1/8.
            q: random(&mut rng, numel(&p.q_shape()), 2.0),
            k: random(&mut rng, numel(&p.kv_shape()), 2.0),
            v: random(&mut rng, numel(&p.kv_shape()), 1.0),
            g: p.gate_shape().map(|s| random(&mut rng, numel(&s), 3.0)),
            dy: random(&mut rng, numel(&p.q_shape()), 1.0),
        }
    }

    fn forward(&self, p: &AttentionProblem) -> ForwardResultF64 {
        forward_f64(p, &self.q, &self.k, &self.v, self.g.as_deref()).unwrap()
    }

    fn backward(&self, p: &AttentionProblem) -> BackwardResultF64 {
        backward_f64(p, &self.q, &self.k, &self.v, self.g.as_deref(), &self.dy).unwrap()
    }

    /// The scalar whose gradient the backward computes: sum(Y * dy).
    fn loss(&self, p: &AttentionProblem) -> f64 {
        let y = self.forward(p).y;
        y.iter().zip(&self.dy).map(|(a, b)| a * b).sum()
    }
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().map(|x| x.abs()).fold(0.0, f64::max)
}

fn assert_close(what: &str, actual: &[f64], expected: &[f64], tol: f64) {
    let diff = max_abs_diff(actual, expected);
    let bound = tol * (1.0 + max_abs(expected));
    assert!(
        diff <= bound,
        "{what}: max abs diff {diff:e} > {bound:e} (max |expected| {:e})",
        max_abs(expected)
    );
}

/// Central finite differences of `loss` with respect to every element of one input.
fn finite_difference(
    p: &AttentionProblem,
    inputs: &Inputs,
    select: fn(&mut Inputs) -> &mut Vec<f64>,
) -> Vec<f64> {
    let eps = 1e-5;
    let mut work = Inputs {
        q: inputs.q.clone(),
        k: inputs.k.clone(),
        v: inputs.v.clone(),
        g: inputs.g.clone(),
        dy: inputs.dy.clone(),
    };
    let n = select(&mut work).len();
    (0..n)
        .map(|i| {
            let x = select(&mut work)[i];
            select(&mut work)[i] = x + eps;
            let plus = work.loss(p);
            select(&mut work)[i] = x - eps;
            let minus = work.loss(p);
            select(&mut work)[i] = x;
            (plus - minus) / (2.0 * eps)
        })
        .collect()
}

fn check_gradients(p: &AttentionProblem, seed: u64) {
    let inputs = Inputs::new(p, seed);
    let grads = inputs.backward(p);
    let label = format!("{p:?}");
    let tol = 1e-7;
    assert_close(
        &format!("dq {label}"),
        &grads.dq,
        &finite_difference(p, &inputs, |x| &mut x.q),
        tol,
    );
    assert_close(
        &format!("dk {label}"),
        &grads.dk,
        &finite_difference(p, &inputs, |x| &mut x.k),
        tol,
    );
    assert_close(
        &format!("dv {label}"),
        &grads.dv,
        &finite_difference(p, &inputs, |x| &mut x.v),
        tol,
    );
    match (&grads.dg, p.gate) {
        (None, GateMode::None) => {}
        (Some(dg), GateMode::Elementwise | GateMode::Headwise) => assert_close(
            &format!("dg {label}"),
            dg,
            &finite_difference(p, &inputs, |x| x.g.as_mut().unwrap()),
            tol,
        ),
        (dg, gate) => panic!("dg is {dg:?} for gate {gate:?}"),
    }
    // The gradients must be sensitive at all: a zero gradient would pass a sloppy comparison.
    assert!(max_abs(&grads.dq) > 1e-3 && max_abs(&grads.dk) > 1e-3 && max_abs(&grads.dv) > 1e-3);
}

#[test]
fn finite_differences_all_options() {
    let mut seed = 0;
    for gate in [GateMode::None, GateMode::Elementwise, GateMode::Headwise] {
        for activation in [Activation::Sigmoid, Activation::Silu] {
            if gate == GateMode::None && activation == Activation::Silu {
                continue;
            }
            for causal in [false, true] {
                // (heads_q, heads_kv, seqlen_q, seqlen_k): MHA, GQA, MQA; Sq < Sk and Sq > Sk (rows
                // above the bottom-right diagonal see nothing).
                for (hq, hkv, sq, sk) in [(2, 2, 4, 4), (4, 2, 3, 5), (3, 1, 5, 3)] {
                    seed += 1;
                    let p = AttentionProblem::new(1, sq, sk, hq, hkv, D)
                        .causal(causal)
                        .gate(gate)
                        .activation(activation);
                    check_gradients(&p, seed);
                }
            }
        }
    }
}

#[test]
fn finite_differences_varlen_and_batch() {
    let varlen = Varlen::new(vec![0, 2, 2, 5], vec![0, 3, 4, 4]).unwrap();
    let p = AttentionProblem::new_varlen(varlen, 2, 1, D)
        .causal(true)
        .gate(GateMode::Elementwise);
    check_gradients(&p, 100);
    let p = AttentionProblem::new(2, 3, 2, 2, 2, D).gate(GateMode::Headwise);
    check_gradients(&p, 101);
    let p = AttentionProblem::builder()
        .batch(1)
        .seqlen_q(3)
        .seqlen_k(4)
        .heads_q(2)
        .head_dim(D)
        .softmax_scale(0.7)
        .gate(GateMode::Elementwise)
        .activation(Activation::Silu)
        .build()
        .unwrap();
    check_gradients(&p, 102);
}

#[test]
fn identical_keys_give_the_mean_of_v() {
    let p = AttentionProblem::new(1, 3, 6, 2, 1, D);
    let mut inputs = Inputs::new(&p, 7);
    let key: Vec<f64> = inputs.k[..D].to_vec();
    for row in inputs.k.chunks_mut(D) {
        row.copy_from_slice(&key);
    }
    let out = inputs.forward(&p);
    let mut mean = vec![0.0; D];
    for row in inputs.v.chunks(D) {
        for (m, x) in mean.iter_mut().zip(row) {
            *m += x / 6.0;
        }
    }
    for row in out.y.chunks(D) {
        assert_close("y", row, &mean, 1e-14);
    }
    // All scores equal s: lse = s + ln(6).
    for h in 0..2 {
        for i in 0..3 {
            let q = &inputs.q[(i * 2 + h) * D..][..D];
            let s: f64 = q.iter().zip(&key).map(|(a, b)| a * b).sum::<f64>() / 8.0;
            let lse = out.lse[h * 3 + i];
            assert!((lse - (s + 6f64.ln())).abs() < 1e-12, "lse {lse}");
        }
    }
}

#[test]
fn gate_logits_of_plus_30_give_the_ungated_output() {
    for gate in [GateMode::Elementwise, GateMode::Headwise] {
        let p = AttentionProblem::new(2, 5, 4, 4, 2, D)
            .causal(true)
            .gate(gate);
        let mut inputs = Inputs::new(&p, 8);
        inputs.g.as_mut().unwrap().fill(30.0);
        let gated = inputs.forward(&p);
        let ungated = Inputs {
            g: None,
            ..Inputs::new(&p, 8)
        }
        .forward(&p.clone().gate(GateMode::None));
        // sigmoid(30) = 1 - 9.4e-14.
        assert_close("y", &gated.y, &ungated.y, 1e-12);
        assert_eq!(gated.o, ungated.o);
        assert_eq!(gated.lse, ungated.lse);
    }
}

#[test]
fn headwise_equals_elementwise_with_broadcast_logits() {
    for activation in [Activation::Sigmoid, Activation::Silu] {
        let headwise = AttentionProblem::new(2, 4, 5, 4, 2, D)
            .gate(GateMode::Headwise)
            .activation(activation);
        let elementwise = headwise.clone().gate(GateMode::Elementwise);
        let inputs = Inputs::new(&headwise, 9);
        let broadcast: Vec<f64> = inputs
            .g
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|&x| std::iter::repeat_n(x, D))
            .collect();
        let inputs_e = Inputs {
            g: Some(broadcast),
            ..Inputs::new(&headwise, 9)
        };
        let (fh, fe) = (inputs.forward(&headwise), inputs_e.forward(&elementwise));
        assert_close("y", &fh.y, &fe.y, 1e-14);
        let (bh, be) = (inputs.backward(&headwise), inputs_e.backward(&elementwise));
        assert_close("dq", &bh.dq, &be.dq, 1e-13);
        assert_close("dk", &bh.dk, &be.dk, 1e-13);
        assert_close("dv", &bh.dv, &be.dv, 1e-13);
        // The headwise dg is the sum over D of the elementwise one.
        let summed: Vec<f64> = be.dg.unwrap().chunks(D).map(|c| c.iter().sum()).collect();
        assert_close("dg", &bh.dg.unwrap(), &summed, 1e-13);
    }
}

/// Repeats each kv head `group` times along the head axis of a `[B, S, Hkv, D]` array.
fn repeat_heads(x: &[f64], hkv: usize, group: usize) -> Vec<f64> {
    x.chunks(hkv * D)
        .flat_map(|token| {
            token
                .chunks(D)
                .flat_map(move |head| std::iter::repeat_n(head, group).flatten().copied())
        })
        .collect()
}

#[test]
fn gqa_equals_mha_with_repeated_kv() {
    for causal in [false, true] {
        let (hq, hkv) = (6, 2);
        let gqa = AttentionProblem::new(2, 4, 5, hq, hkv, D)
            .causal(causal)
            .gate(GateMode::Elementwise);
        let mha = AttentionProblem::new(2, 4, 5, hq, hq, D)
            .causal(causal)
            .gate(GateMode::Elementwise);
        let inputs = Inputs::new(&gqa, 10);
        let repeated = Inputs {
            k: repeat_heads(&inputs.k, hkv, hq / hkv),
            v: repeat_heads(&inputs.v, hkv, hq / hkv),
            ..Inputs::new(&gqa, 10)
        };
        let (fg, fm) = (inputs.forward(&gqa), repeated.forward(&mha));
        assert_eq!(fg.y, fm.y);
        assert_eq!(fg.lse, fm.lse);
        let (bg, bm) = (inputs.backward(&gqa), repeated.backward(&mha));
        assert_close("dq", &bg.dq, &bm.dq, 1e-14);
        assert_close("dg", &bg.dg.unwrap(), &bm.dg.unwrap(), 1e-14);
        // dK of a kv head = sum of the MHA dK of the query heads it serves.
        let group = hq / hkv;
        let sum_groups = |x: &[f64]| -> Vec<f64> {
            let mut out = vec![0.0; x.len() / group];
            for (t, token) in x.chunks(hq * D).enumerate() {
                for (h, head) in token.chunks(D).enumerate() {
                    let dst = &mut out[(t * hkv + h / group) * D..][..D];
                    for (acc, &val) in dst.iter_mut().zip(head) {
                        *acc += val;
                    }
                }
            }
            out
        };
        assert_close("dk", &bg.dk, &sum_groups(&bm.dk), 1e-13);
        assert_close("dv", &bg.dv, &sum_groups(&bm.dv), 1e-13);
    }
}

/// Causal masking checked against its definition: row `i` of a causal problem equals a non-causal
/// problem whose only query is row `i` and whose keys are those with `j <= i + Sk - Sq`.
#[test]
fn causal_equals_explicit_mask() {
    for (sq, sk) in [(5, 5), (3, 6), (6, 3)] {
        let p = AttentionProblem::new(1, sq, sk, 2, 1, D)
            .causal(true)
            .gate(GateMode::Elementwise);
        let inputs = Inputs::new(&p, 11);
        let out = inputs.forward(&p);
        for i in 0..sq {
            let visible = (i as i64 + sk as i64 - sq as i64 + 1).clamp(0, sk as i64) as usize;
            let row = AttentionProblem::new(1, 1, visible, 2, 1, D).gate(GateMode::Elementwise);
            let single = Inputs {
                q: inputs.q[i * 2 * D..(i + 1) * 2 * D].to_vec(),
                k: inputs.k[..visible * D].to_vec(),
                v: inputs.v[..visible * D].to_vec(),
                g: Some(inputs.g.as_ref().unwrap()[i * 2 * D..(i + 1) * 2 * D].to_vec()),
                dy: vec![0.0; 2 * D],
            }
            .forward(&row);
            assert_eq!(single.y, out.y[i * 2 * D..(i + 1) * 2 * D], "row {i}");
            for h in 0..2 {
                assert_eq!(single.lse[h], out.lse[h * sq + i], "row {i} head {h}");
            }
        }
        // And Sq == Sk means the classic lower-triangular mask: row i sees exactly i + 1 keys.
        if sq == sk {
            let full = inputs.forward(&p.clone().causal(false));
            assert_eq!(full.y[(sq - 1) * 2 * D..], out.y[(sq - 1) * 2 * D..]);
            assert_ne!(full.y[..2 * D], out.y[..2 * D]);
        }
    }
}

fn assert_no_nan(name: &str, x: &[f64]) {
    assert!(x.iter().all(|v| !v.is_nan()), "{name} has NaN");
}

#[test]
fn queries_that_see_no_key_give_zero_and_minus_infinity() {
    for activation in [Activation::Sigmoid, Activation::Silu] {
        // Causal with Sq > Sk: rows 0 and 1 see no key (bottom-right alignment).
        let p = AttentionProblem::new(1, 5, 3, 2, 2, D)
            .causal(true)
            .gate(GateMode::Elementwise)
            .activation(activation);
        let inputs = Inputs::new(&p, 12);
        let out = inputs.forward(&p);
        let grads = inputs.backward(&p);
        for x in [&out.y, &out.o, &grads.dq, &grads.dk, &grads.dv] {
            assert_no_nan("output", x);
        }
        let dg = grads.dg.unwrap();
        assert_no_nan("dg", &dg);
        let row = 2 * D; // elements per token
        assert!(out.y[..2 * row].iter().all(|&v| v == 0.0));
        assert!(out.o[..2 * row].iter().all(|&v| v == 0.0));
        assert!(grads.dq[..2 * row].iter().all(|&v| v == 0.0));
        assert!(dg[..2 * row].iter().all(|&v| v == 0.0));
        assert!(out.y[2 * row..].iter().any(|&v| v != 0.0));
        for h in 0..2 {
            for i in 0..5 {
                let lse = out.lse[h * 5 + i];
                if i < 2 {
                    assert_eq!(lse, f64::NEG_INFINITY);
                } else {
                    assert!(lse.is_finite());
                }
            }
        }
    }
    // Sk = 0: nothing is visible anywhere.
    let p = AttentionProblem::new(2, 3, 0, 2, 1, D).gate(GateMode::Headwise);
    let inputs = Inputs::new(&p, 13);
    let out = inputs.forward(&p);
    assert!(out.y.iter().all(|&v| v == 0.0));
    assert!(out.lse.iter().all(|&v| v == f64::NEG_INFINITY));
    let grads = inputs.backward(&p);
    assert!(grads.dq.iter().all(|&v| v == 0.0));
    assert!(grads.dg.unwrap().iter().all(|&v| v == 0.0));
    assert!(grads.dk.is_empty() && grads.dv.is_empty());
}

#[test]
fn varlen_equals_separate_runs() {
    // Includes an empty query sequence and an empty key sequence.
    let cu_q = vec![0, 3, 3, 7, 9];
    let cu_k = vec![0, 5, 6, 6, 10];
    let (hq, hkv) = (4, 2);
    for causal in [false, true] {
        for gate in [GateMode::Elementwise, GateMode::Headwise] {
            let varlen = Varlen::new(cu_q.clone(), cu_k.clone()).unwrap();
            let p = AttentionProblem::new_varlen(varlen, hq, hkv, D)
                .causal(causal)
                .gate(gate)
                .activation(Activation::Silu);
            assert_eq!((p.batch, p.seqlen_q, p.seqlen_k), (4, 4, 5));
            let inputs = Inputs::new(&p, 14);
            let out = inputs.forward(&p);
            let grads = inputs.backward(&p);
            let gate_width = if gate == GateMode::Headwise { 1 } else { D };
            let mut dk_seen = vec![false; grads.dk.len()];
            for b in 0..4 {
                let (q0, q1) = (cu_q[b] as usize, cu_q[b + 1] as usize);
                let (k0, k1) = (cu_k[b] as usize, cu_k[b + 1] as usize);
                let single_p = AttentionProblem::new(1, q1 - q0, k1 - k0, hq, hkv, D)
                    .causal(causal)
                    .gate(gate)
                    .activation(Activation::Silu);
                let qs = |x: &[f64], w: usize| x[q0 * hq * w..q1 * hq * w].to_vec();
                let ks = |x: &[f64]| x[k0 * hkv * D..k1 * hkv * D].to_vec();
                let single = Inputs {
                    q: qs(&inputs.q, D),
                    k: ks(&inputs.k),
                    v: ks(&inputs.v),
                    g: inputs.g.as_ref().map(|g| qs(g, gate_width)),
                    dy: qs(&inputs.dy, D),
                };
                let f = single.forward(&single_p);
                assert_eq!(f.y, qs(&out.y, D), "y of sequence {b}");
                for h in 0..hq {
                    let packed = &out.lse[h * 9 + q0..h * 9 + q1];
                    let alone = &f.lse[h * (q1 - q0)..(h + 1) * (q1 - q0)];
                    assert_eq!(packed, alone, "lse of sequence {b} head {h}");
                }
                let g = single.backward(&single_p);
                assert_eq!(g.dq, qs(&grads.dq, D));
                assert_eq!(g.dk, ks(&grads.dk));
                assert_eq!(g.dv, ks(&grads.dv));
                assert_eq!(g.dg.unwrap(), qs(grads.dg.as_ref().unwrap(), gate_width));
                dk_seen[k0 * hkv * D..k1 * hkv * D].fill(true);
            }
            assert!(dk_seen.iter().all(|&s| s));
        }
    }
}

/// Correct rounding of each value (the crate's `Element::from_f64`, not `half`'s own, which can round
/// twice through f32: tests/element.rs).
fn to_bf16(x: &[f64]) -> Vec<bf16> {
    x.iter().map(|&v| <bf16 as Element>::from_f64(v)).collect()
}

fn to_f64(x: &[bf16]) -> Vec<f64> {
    x.iter().map(|v| v.to_f64()).collect()
}

/// The Reference backend equals the f64 entry points on the rounded inputs, rounded once.
#[test]
fn backend_rounds_the_f64_results() {
    let p = AttentionProblem::new(2, 5, 7, 4, 2, D)
        .causal(true)
        .gate(GateMode::Elementwise)
        .activation(Activation::Silu);
    let inputs = Inputs::new(&p, 15);
    let (q, k, v) = (to_bf16(&inputs.q), to_bf16(&inputs.k), to_bf16(&inputs.v));
    let g = to_bf16(inputs.g.as_ref().unwrap());
    let dy = to_bf16(&inputs.dy);
    let (qs, kvs, ls) = (p.q_shape(), p.kv_shape(), p.lse_shape());
    let mut y = vec![bf16::ZERO; numel(&qs)];
    let mut o = vec![bf16::ZERO; numel(&qs)];
    let mut lse = vec![0f32; numel(&ls)];
    let mut args = ForwardArgs {
        q: Tensor::contiguous(&q[..], &qs),
        k: Tensor::contiguous(&k[..], &kvs),
        v: Tensor::contiguous(&v[..], &kvs),
        g: Some(Tensor::contiguous(&g[..], &qs)),
        y: Tensor::contiguous(&mut y[..], &qs),
        o: Some(Tensor::contiguous(&mut o[..], &qs)),
        lse: Some(Tensor::contiguous(&mut lse[..], &ls)),
        diagnostics: None,
    };
    Reference.forward(&p, &mut args).unwrap();
    let exact = forward_f64(&p, &to_f64(&q), &to_f64(&k), &to_f64(&v), Some(&to_f64(&g))).unwrap();
    assert_eq!(y, to_bf16(&exact.y));
    assert_eq!(o, to_bf16(&exact.o));
    let exact_lse: Vec<f32> = exact.lse.iter().map(|&x| x as f32).collect();
    assert_eq!(lse, exact_lse);

    let (mut dq, mut dk, mut dv, mut dg) = (
        vec![bf16::ZERO; numel(&qs)],
        vec![bf16::ZERO; numel(&kvs)],
        vec![bf16::ZERO; numel(&kvs)],
        vec![bf16::ZERO; numel(&qs)],
    );
    let mut bargs = BackwardArgs {
        q: Tensor::contiguous(&q[..], &qs),
        k: Tensor::contiguous(&k[..], &kvs),
        v: Tensor::contiguous(&v[..], &kvs),
        g: Some(Tensor::contiguous(&g[..], &qs)),
        y: Tensor::contiguous(&y[..], &qs),
        o: Some(Tensor::contiguous(&o[..], &qs)),
        dy: Tensor::contiguous(&dy[..], &qs),
        lse: Tensor::contiguous(&lse[..], &ls),
        dq: Tensor::contiguous(&mut dq[..], &qs),
        dk: Tensor::contiguous(&mut dk[..], &kvs),
        dv: Tensor::contiguous(&mut dv[..], &kvs),
        dg: Some(Tensor::contiguous(&mut dg[..], &qs)),
    };
    Reference
        .backward(&p, &mut bargs, BackwardOptions::default())
        .unwrap();
    let exact = backward_f64(
        &p,
        &to_f64(&q),
        &to_f64(&k),
        &to_f64(&v),
        Some(&to_f64(&g)),
        &to_f64(&dy),
    )
    .unwrap();
    assert_eq!(dq, to_bf16(&exact.dq));
    assert_eq!(dk, to_bf16(&exact.dk));
    assert_eq!(dv, to_bf16(&exact.dv));
    assert_eq!(dg, to_bf16(&exact.dg.unwrap()));
}

/// Q and G as strided views of one Qwen3-Next q_proj buffer give the same results as dense copies,
/// and a strided (padded) output is written only where it should be.
#[test]
fn qwen3_next_strided_view_equals_dense_copy() {
    let (b, s, hq, hkv) = (2, 6, 4, 2);
    let p = AttentionProblem::new(b, s, s, hq, hkv, D)
        .causal(true)
        .gate(GateMode::Elementwise);
    let mut rng = StdRng::seed_from_u64(16);
    let qs = p.q_shape();
    let kvs = p.kv_shape();
    let ls = p.lse_shape();
    let q_proj = to_bf16(&random(&mut rng, b * s * hq * 2 * D, 2.0));
    let k = to_bf16(&random(&mut rng, numel(&kvs), 2.0));
    let v = to_bf16(&random(&mut rng, numel(&kvs), 1.0));
    // Dense copies of the two halves of every head.
    let (mut q_dense, mut g_dense) = (Vec::new(), Vec::new());
    for head in q_proj.chunks(2 * D) {
        q_dense.extend_from_slice(&head[..D]);
        g_dense.extend_from_slice(&head[D..]);
    }

    let run = |q: Tensor<&[bf16]>, g: Tensor<&[bf16]>, y_layout: Layout, y_len: usize| {
        let mut y = vec![bf16::from_f32(7.0); y_len];
        let mut lse = vec![0f32; numel(&ls)];
        let mut args = ForwardArgs {
            q,
            k: Tensor::contiguous(&k[..], &kvs),
            v: Tensor::contiguous(&v[..], &kvs),
            g: Some(g),
            y: Tensor::new(&mut y[..], y_layout),
            o: None,
            lse: Some(Tensor::contiguous(&mut lse[..], &ls)),
            diagnostics: None,
        };
        Reference.forward(&p, &mut args).unwrap();
        (y, lse)
    };
    let views = split_q_proj(&q_proj, &qs).unwrap();
    // Output y with a padded head stride (D + 8) to check strided writes too.
    let padded = Layout::strided(&qs, &[s * hq * (D + 8), hq * (D + 8), D + 8, 1]).unwrap();
    let (y_view, lse_view) = run(views.q, views.g, padded, b * s * hq * (D + 8));
    let (y_dense, lse_dense) = run(
        Tensor::contiguous(&q_dense[..], &qs),
        Tensor::contiguous(&g_dense[..], &qs),
        Layout::contiguous(&qs),
        numel(&qs),
    );
    assert_eq!(lse_view, lse_dense);
    let mut compacted = Vec::new();
    for head in y_view.chunks(D + 8) {
        compacted.extend_from_slice(&head[..D]);
        // The padding is untouched.
        assert!(head[D..].iter().all(|&x| x == bf16::from_f32(7.0)));
    }
    assert_eq!(compacted, y_dense);
}
