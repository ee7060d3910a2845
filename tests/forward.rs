//! The fused forward kernel (`kernels/forward.cu`) on the emulator against the f64 reference.
//!
//! Every case rounds random inputs to the kernel's dtype, runs the real kernel through the
//! [`Emulator`] backend (guarded buffers, outputs poisoned), and compares with
//! [`reference::forward_f64`] on the rounded inputs:
//! - Y and O: relative error in Frobenius norm <= 1e-2 (bf16) or 2e-3 (f16), and no NaN anywhere (every
//!   element written: the outputs start as NaN);
//! - LSE: `|lse - ref| <= 1e-4 * max(1, |ref|)` where the reference is finite, exactly `-inf` where the
//!   row sees no key (then Y and O must be exactly 0).
//!
//! Coverage: dtype x head dim x causal x gate mode x activation at one small size; odd lengths
//! (1, 17, 100, 129, 300, Sq != Sk both ways); GQA ratios 1, 4, 8; Sk = 0; causal rows that see
//! nothing; varlen with empty sequences; the Qwen3-Next layout (q and g strided views of one
//! `[B, S, Hq, 2D]` buffer); strided outputs; the optional ungated O; bit-identical results across
//! emulator seeds. Sizes are kept small (the emulator runs every CUDA thread as a fiber).
#![cfg(feature = "emulator")]

use gated_sdpa::emulator::Emulator;
use gated_sdpa::{
    Activation, AttentionProblem, DType, Element, ForwardArgs, GateMode, GsdpaError, HostBackend,
    HostBuffer, Reference, Tensor, Varlen, MAX_SOFTMAX_SCALE,
};
use half::{bf16, f16};

mod common;
use common::forward_harness::{with_o, Harness, Inputs, KernelOutputs, LayoutOptions};
use common::{numel, GATES, HEAD_DIMS};

/// The mma.sync kernel on the default emulator, which every run must launch.
fn harness() -> Harness {
    Harness::new(Emulator::new())
        .expecting(|p, dtype| format!("gsdpa_fwd_{}_d{}", dtype.name(), p.head_dim))
}

fn check_case(
    p: &AttentionProblem,
    dtype: DType,
    options: LayoutOptions,
    seed: u64,
) -> KernelOutputs {
    harness().check_case(p, dtype, options, seed)
}

fn run_kernel<T: Element>(
    p: &AttentionProblem,
    x: &Inputs,
    options: LayoutOptions,
    seed: u64,
) -> KernelOutputs {
    harness().run_kernel::<T>(p, x, options, seed)
}

#[test]
fn every_dtype_head_dim_causal_gate_and_activation() {
    // Sq = 37 (one partial query block), Sk = 70 (one or two key tiles, the last partial), two query
    // heads on one kv head, two batches.
    let mut seed = 0;
    for dtype in [DType::BF16, DType::F16] {
        for d in HEAD_DIMS {
            for causal in [false, true] {
                for (gate, activation) in GATES {
                    seed += 1;
                    let p = AttentionProblem::new(2, 37, 70, 2, 1, d)
                        .causal(causal)
                        .gate(gate)
                        .activation(activation);
                    check_case(&p, dtype, with_o(), seed);
                }
            }
        }
    }
}

#[test]
fn odd_lengths_both_ways() {
    // Every (Sq, Sk) pair of odd lengths, causal and not, per head dim; dtype and gate rotate over the
    // cases so each appears with every head dim.
    const LENGTHS: [usize; 5] = [1, 17, 100, 129, 300];
    let mut case = 0usize;
    for d in HEAD_DIMS {
        for sq in LENGTHS {
            for sk in LENGTHS {
                for causal in [false, true] {
                    case += 1;
                    let dtype = if case % 2 == 0 {
                        DType::BF16
                    } else {
                        DType::F16
                    };
                    let (gate, activation) = GATES[case % GATES.len()];
                    let p = AttentionProblem::new(1, sq, sk, 1, 1, d)
                        .causal(causal)
                        .gate(gate)
                        .activation(activation);
                    let options = LayoutOptions {
                        with_o: case % 3 == 0,
                        ..LayoutOptions::default()
                    };
                    check_case(&p, dtype, options, 1000 + case as u64);
                }
            }
        }
    }
}

#[test]
fn gqa_ratios_1_4_8() {
    for d in HEAD_DIMS {
        for (heads_q, heads_kv) in [(2, 2), (8, 2), (8, 1)] {
            for causal in [false, true] {
                let p = AttentionProblem::new(1, 40, 57, heads_q, heads_kv, d)
                    .causal(causal)
                    .gate(GateMode::Elementwise);
                check_case(
                    &p,
                    DType::BF16,
                    with_o(),
                    2000 + heads_q as u64 * 10 + heads_kv as u64,
                );
            }
        }
    }
}

#[test]
fn key_tiles_that_raise_the_row_max_late() {
    // OnlineSoftmax::update_lazy: O rescaled only when a warp's m-tile sees its max rise by more than 2^8.
    harness().check_rising_scores(70, 4000);
}

#[test]
fn no_keys_gives_zero_output_and_minus_infinite_lse() {
    for d in HEAD_DIMS {
        for (gate, activation) in GATES {
            for causal in [false, true] {
                let p = AttentionProblem::new(2, 19, 0, 2, 1, d)
                    .causal(causal)
                    .gate(gate)
                    .activation(activation);
                let out = check_case(&p, DType::F16, with_o(), 3000);
                assert!(out.y.iter().all(|&y| y == 0.0));
                assert!(out.o.unwrap().iter().all(|&o| o == 0.0));
                assert!(out.lse.unwrap().iter().all(|&l| l == f64::NEG_INFINITY));
            }
        }
    }
}

#[test]
fn causal_rows_before_the_first_key_see_nothing() {
    // Bottom-right alignment with Sq > Sk: query i sees key j iff j <= i - (Sq - Sk), so the first
    // Sq - Sk rows see nothing (whole query blocks of them at Sq = 300, Sk = 20).
    for d in HEAD_DIMS {
        for (sq, sk) in [(300, 20), (70, 9), (5, 1)] {
            let p = AttentionProblem::new(1, sq, sk, 2, 1, d)
                .causal(true)
                .gate(GateMode::Elementwise)
                .activation(Activation::Silu);
            let out = check_case(&p, DType::BF16, with_o(), 4000 + sq as u64);
            let lse = out.lse.unwrap();
            let empty_rows = (0..2 * sq).filter(|&r| lse[r] == f64::NEG_INFINITY).count();
            assert_eq!(
                empty_rows,
                2 * (sq - sk),
                "rows with LSE -inf for Sq = {sq}, Sk = {sk}"
            );
        }
    }
}

#[test]
fn varlen_with_empty_sequences() {
    // Sequences: (q 5, k 7), (q 0, k 23), (q 75, k 0), (q 1, k 70), (q 130, k 129).
    let cu_q = vec![0, 5, 5, 80, 81, 211];
    let cu_k = vec![0, 7, 30, 30, 100, 229];
    let mut seed = 5000;
    for d in HEAD_DIMS {
        for causal in [false, true] {
            for (gate, activation) in [GATES[0], GATES[2], GATES[3]] {
                seed += 1;
                let varlen = Varlen::new(cu_q.clone(), cu_k.clone()).unwrap();
                let p = AttentionProblem::new_varlen(varlen, 4, 2, d)
                    .causal(causal)
                    .gate(gate)
                    .activation(activation);
                check_case(
                    &p,
                    if causal { DType::F16 } else { DType::BF16 },
                    with_o(),
                    seed,
                );
            }
        }
    }
}

#[test]
fn qwen3_next_q_proj_layout() {
    // q and g are the two halves of each head of one [B, S, Hq, 2D] buffer; GQA 8 as in Qwen3-Next.
    for d in HEAD_DIMS {
        for causal in [false, true] {
            let p = AttentionProblem::new(2, 33, 33, 8, 1, d)
                .causal(causal)
                .gate(GateMode::Elementwise);
            let options = LayoutOptions {
                q_proj: true,
                with_o: true,
                ..LayoutOptions::default()
            };
            check_case(&p, DType::BF16, options, 6000 + d as u64);
        }
    }
    // Packed (varlen) q_proj output.
    let varlen = Varlen::new(vec![0, 20, 61], vec![0, 20, 61]).unwrap();
    let p = AttentionProblem::new_varlen(varlen, 4, 1, 256)
        .causal(true)
        .gate(GateMode::Elementwise)
        .activation(Activation::Silu);
    let options = LayoutOptions {
        q_proj: true,
        ..LayoutOptions::default()
    };
    check_case(&p, DType::F16, options, 6001);
}

#[test]
fn strided_outputs_leave_the_rest_of_the_buffer_alone() {
    for d in HEAD_DIMS {
        for varlen in [false, true] {
            let mut p = AttentionProblem::new(2, 45, 50, 2, 2, d)
                .causal(true)
                .gate(GateMode::Headwise);
            if varlen {
                p = p.varlen(Varlen::new(vec![0, 45, 52], vec![0, 30, 80]).unwrap());
            }
            let options = LayoutOptions {
                with_o: true,
                strided_outputs: true,
                ..LayoutOptions::default()
            };
            check_case(&p, DType::F16, options, 7000 + d as u64);
        }
    }
}

#[test]
fn ungated_output_is_optional() {
    for d in HEAD_DIMS {
        let p = AttentionProblem::new(1, 50, 64, 2, 1, d)
            .gate(GateMode::Elementwise)
            .activation(Activation::Silu);
        let without = check_case(&p, DType::BF16, LayoutOptions::default(), 8000);
        let with = check_case(&p, DType::BF16, with_o(), 8000);
        assert!(without.o.is_none());
        // The gated output does not depend on whether O is also written.
        assert_eq!(
            without.y.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            with.y.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn lse_is_optional() {
    // Without LSE the kernel skips its store: Y (all of it: the NaN check) and O are bit-identical to
    // a run with LSE, and the LSE buffer is left alone.
    for (d, causal, gate) in [
        (64, true, GateMode::Elementwise),
        (128, false, GateMode::None),
        (256, true, GateMode::Headwise),
    ] {
        let p = AttentionProblem::new(1, 70, 45, 2, 1, d)
            .causal(causal)
            .gate(gate);
        let without = LayoutOptions {
            no_lse: true,
            ..with_o()
        };
        let out = check_case(&p, DType::F16, without, 8100 + d as u64);
        let full = check_case(&p, DType::F16, with_o(), 8100 + d as u64);
        assert!(out.lse.is_none());
        assert_eq!(out.y, full.y, "y changed without lse for {p:?}");
        assert_eq!(out.o, full.o, "o changed without lse for {p:?}");
    }
}

#[test]
fn unsupported_scales_are_rejected_and_the_largest_accepted_is_finite() {
    // 3e38 made every output NaN (scale * log2(e) is infinite) and 1e37 some of them with an infinite
    // LSE (s * scale * log2(e) overflows): both are typed errors before any launch.
    for scale in [3e38, 1e37] {
        let mut p = AttentionProblem::new(1, 8, 8, 1, 1, 64).gate(GateMode::Elementwise);
        p.softmax_scale = Some(scale);
        let n = numel(&p.q_shape());
        let x = vec![bf16::from_f32(0.5); n];
        let (mut y, mut lse) = (HostBuffer::<bf16>::new(n), HostBuffer::<f32>::new(8));
        let mut args = ForwardArgs {
            q: Tensor::contiguous(&x[..], &p.q_shape()),
            k: Tensor::contiguous(&x[..], &p.kv_shape()),
            v: Tensor::contiguous(&x[..], &p.kv_shape()),
            g: Some(Tensor::contiguous(&x[..], &p.q_shape())),
            y: Tensor::contiguous(y.as_mut_slice(), &p.q_shape()),
            o: None,
            lse: Some(Tensor::contiguous(lse.as_mut_slice(), &p.lse_shape())),
            diagnostics: None,
        };
        let expected = GsdpaError::UnsupportedScale {
            scale,
            max: MAX_SOFTMAX_SCALE,
        };
        assert_eq!(
            Emulator::new().forward(&p, &mut args).unwrap_err(),
            expected
        );
        assert_eq!(Reference.forward(&p, &mut args).unwrap_err(), expected);
    }
    // At the largest accepted scale the softmax is all but an argmax: still finite and right.
    for (d, dtype) in [(64, DType::BF16), (256, DType::F16)] {
        let mut p = AttentionProblem::new(1, 40, 70, 2, 1, d)
            .causal(true)
            .gate(GateMode::Elementwise);
        p.softmax_scale = Some(MAX_SOFTMAX_SCALE);
        let out = check_case(&p, dtype, with_o(), 8200 + d as u64);
        assert!(out.lse.unwrap().iter().all(|l| l.is_finite()));
    }
}

#[test]
fn bit_identical_across_emulator_seeds() {
    // A race (a missing barrier or wait) makes results depend on the order threads run in.
    let varlen = Varlen::new(vec![0, 3, 90, 200], vec![0, 100, 110, 240]).unwrap();
    let problems = [
        (
            AttentionProblem::new(1, 130, 200, 2, 1, 64)
                .causal(true)
                .gate(GateMode::Elementwise),
            DType::BF16,
        ),
        (
            AttentionProblem::new(1, 70, 150, 2, 2, 128)
                .gate(GateMode::Headwise)
                .activation(Activation::Silu),
            DType::F16,
        ),
        (
            AttentionProblem::new_varlen(varlen, 2, 1, 256)
                .causal(true)
                .gate(GateMode::Elementwise)
                .activation(Activation::Silu),
            DType::BF16,
        ),
    ];
    for (p, dtype) in &problems {
        let x = Inputs::new(p, *dtype, 9000);
        let run = |seed| match dtype {
            DType::BF16 => run_kernel::<bf16>(p, &x, with_o(), seed),
            DType::F16 => run_kernel::<f16>(p, &x, with_o(), seed),
        };
        let first = run(1).bits();
        for seed in [2, 0xdead_beef] {
            assert!(
                run(seed).bits() == first,
                "seed {seed} changed the outputs of {p:?}"
            );
        }
    }
}
