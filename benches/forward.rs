//! Forward throughput on the GPU: fused gated vs our gate = none kernel vs attention + separate gate.
//!
//! `cargo bench --bench forward` (set `GSDPA_BENCH_FILTER=d128` to run a subset). Timed with CUDA events
//! through criterion's `iter_custom`; criterion reports time per forward, and a summary table with
//! TFLOP/s, the gate's overhead and the fused speedup is printed at the end. Without a GPU the bench
//! prints why and exits.
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gated_sdpa::cuda::CudaBackend;
use gated_sdpa::testing::bench::{standard_shapes, ForwardSetup, Variant};

fn forward(c: &mut Criterion) {
    let backend = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("forward bench skipped: no usable GPU ({e})");
            return;
        }
    };
    let filter = std::env::var("GSDPA_BENCH_FILTER").unwrap_or_default();
    for shape in standard_shapes()
        .into_iter()
        .filter(|s| s.name.contains(&filter))
    {
        let mut setup = match ForwardSetup::new(&backend, &shape) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{}: setup failed: {e}", shape.name);
                continue;
            }
        };
        let mut group = c.benchmark_group(format!("forward/{}", shape.name));
        group.throughput(Throughput::Elements(shape.forward_flops() as u64));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for variant in Variant::ALL {
            group.bench_function(variant.name(), |b| {
                b.iter_custom(|iters| {
                    let ms = setup
                        .time(&backend, black_box(variant), iters as usize)
                        .expect("timed forward");
                    Duration::from_secs_f64(ms / 1e3)
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, forward);
criterion_main!(benches);
