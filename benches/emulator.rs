//! How fast the emulator runs the real forward kernel on the CPU (issue: about a second for B=1, H=2,
//! S=256, D=128 on a 2-core machine), which bounds how broad the emulator test grid can be.
//!
//! `cargo bench --bench emulator`
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use gated_sdpa::emulator::Emulator;
use gated_sdpa::{AttentionProblem, ForwardArgs, GateMode, HostBackend, Layout, Tensor};

fn emulated_forward(c: &mut Criterion) {
    let (b, h, s, d) = (1, 2, 256, 128);
    let problem = AttentionProblem::new(b, s, s, h, h, d).gate(GateMode::Elementwise);
    let shape = [b, s, h, d];
    let n = b * s * h * d;
    let input: Vec<half::bf16> = (0..n)
        .map(|i| half::bf16::from_f32(((i * 37 % 101) as f32 - 50.0) / 50.0))
        .collect();
    let mut y = vec![half::bf16::ZERO; n];
    let mut lse = vec![0f32; b * h * s];
    let emulator = Emulator::new();
    let mut group = c.benchmark_group("emulator");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("forward_bf16_b1_h2_s256_d128_gated", |bench| {
        bench.iter(|| {
            let mut args = ForwardArgs {
                q: Tensor::new(&input[..], Layout::contiguous(&shape)),
                k: Tensor::new(&input[..], Layout::contiguous(&shape)),
                v: Tensor::new(&input[..], Layout::contiguous(&shape)),
                g: Some(Tensor::new(&input[..], Layout::contiguous(&shape))),
                y: Tensor::new(&mut y[..], Layout::contiguous(&shape)),
                o: None,
                lse: Some(Tensor::new(&mut lse[..], Layout::contiguous(&[b, h, s]))),
                diagnostics: None,
            };
            emulator
                .forward(black_box(&problem), &mut args)
                .expect("emulated forward");
        })
    });
    group.finish();
}

criterion_group!(benches, emulated_forward);
criterion_main!(benches);
