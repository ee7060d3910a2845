//! Paged decode on the GPU: fused gated vs gate = none vs decode + separate gate kernel, at the
//! Qwen3-Next shape (see `gated_sdpa::testing::decode_bench`).
//!
//! `cargo bench --bench decode` (set `GSDPA_BENCH_FILTER=b8-k8k,b64-` to run a subset: comma-separated
//! name substrings). Timed with CUDA events through criterion's `iter_custom`; criterion's throughput is
//! the K and V bytes each step reads, so it reports GB/s. Shapes that do not fit the device's memory are
//! skipped with a note. Without a GPU the bench prints why and exits.
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gated_sdpa::cuda::CudaBackend;
use gated_sdpa::testing::decode_bench::{
    filter_shapes, skip_reason, standard_decode_shapes, DecodeSetup, DecodeVariant,
};

fn decode(c: &mut Criterion) {
    let backend = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("decode bench skipped: no usable GPU ({e})");
            return;
        }
    };
    let filter = std::env::var("GSDPA_BENCH_FILTER").ok();
    for shape in filter_shapes(standard_decode_shapes(), filter.as_deref()) {
        match skip_reason(&backend, &shape) {
            Ok(None) => {}
            Ok(Some(reason)) => {
                eprintln!("{}: skipped: {reason}", shape.name);
                continue;
            }
            Err(e) => {
                eprintln!("{}: {e}", shape.name);
                continue;
            }
        }
        let mut setup = match DecodeSetup::new(&backend, &shape) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{}: setup failed: {e}", shape.name);
                continue;
            }
        };
        let mut group = c.benchmark_group(format!("decode/{}", shape.name));
        group.throughput(Throughput::Bytes(shape.kv_bytes() as u64));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for variant in DecodeVariant::ALL {
            group.bench_function(variant.name(), |b| {
                b.iter_custom(|iters| {
                    let ms = setup
                        .time(&backend, black_box(variant), iters as usize)
                        .expect("timed decode");
                    Duration::from_secs_f64(ms / 1e3)
                })
            });
        }
        group.finish();
        if let Err(e) = setup.check_outputs() {
            panic!("{e}");
        }
    }
}

criterion_group!(benches, decode);
criterion_main!(benches);
