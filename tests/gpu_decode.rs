//! The paged decode and append kernels on a real GPU against the f64 reference (the GPU half of
//! `tests/decode.rs`). Skips with a printed reason without a usable GPU; fails instead when
//! `GSDPA_REQUIRE_GPU=1`.
//!
//! Run on a GPU machine: `GSDPA_REQUIRE_GPU=1 cargo test --release --test gpu_decode`.

mod common;
use common::gpu;
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use gated_sdpa::cuda::CudaBackend;
use gated_sdpa::ffi;
use gated_sdpa::paged::{
    decode_f64, decode_workspace_bytes, resolve_num_splits, AppendKvArgs, DecodeArgs,
    DecodeProblem, NumSplits, PagedKv,
};
use gated_sdpa::{Activation, GateMode, Reference, Tensor};
use half::bf16;
use rand::{rngs::StdRng, seq::SliceRandom, RngExt, SeedableRng};

fn upload<T: DeviceRepr + ValidAsZeroBits>(
    stream: &std::sync::Arc<CudaStream>,
    x: &[T],
) -> CudaSlice<T> {
    let mut slice = stream.alloc_zeros::<T>(x.len().max(1)).expect("alloc");
    if !x.is_empty() {
        stream
            .memcpy_htod(x, &mut slice.slice_mut(0..x.len()))
            .expect("upload");
    }
    slice
}

fn download<T: DeviceRepr + Default + Clone>(
    stream: &std::sync::Arc<CudaStream>,
    x: &CudaSlice<T>,
    len: usize,
) -> Vec<T> {
    let mut out = vec![T::default(); len];
    if len > 0 {
        stream
            .memcpy_dtoh(&x.slice(0..len), &mut out)
            .expect("download");
    }
    out
}

fn random(n: usize, rng: &mut StdRng, scale: f32) -> Vec<bf16> {
    (0..n)
        .map(|_| bf16::from_f32((rng.random::<f32>() * 2.0 - 1.0) * scale))
        .collect()
}

/// One decode on the device and on the reference; returns (relative error of Y on the valid
/// sequences, status word, the device Y as f64).
fn device_vs_reference(
    backend: &CudaBackend,
    p: &DecodeProblem,
    seqlens: &[i32],
    device_seqlens: &[i32],
    splits: NumSplits,
    seed: u64,
) -> (f64, i32, Vec<f64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let q_shape = p.q_shape();
    let n = |s: &[usize]| s.iter().product::<usize>();
    let q = random(n(&q_shape), &mut rng, 1.0);
    let k = random(n(&p.cache_shape()), &mut rng, 1.0);
    let v = random(n(&p.cache_shape()), &mut rng, 1.0);
    let g = p.gate_shape().map(|s| random(n(&s), &mut rng, 3.0));
    let mut table: Vec<i32> = (0..p.num_blocks as i32).collect();
    table.shuffle(&mut rng);
    table.truncate(p.batch * p.max_blocks);

    let mut y_host = vec![bf16::ZERO; n(&q_shape)];
    let want = decode_f64(
        p,
        &DecodeArgs {
            q: Tensor::contiguous(&q[..], &q_shape),
            kv: PagedKv {
                k_cache: Tensor::contiguous(&k[..], &p.cache_shape()),
                v_cache: Tensor::contiguous(&v[..], &p.cache_shape()),
                block_table: Tensor::contiguous(&table[..], &p.table_shape()),
                cache_seqlens: Tensor::contiguous(seqlens, &[p.batch]),
            },
            cu_seqlens_q: None,
            g: g.as_ref()
                .map(|g| Tensor::contiguous(&g[..], &p.gate_shape().unwrap())),
            y: Tensor::contiguous(&mut y_host[..], &q_shape),
            lse: None::<Tensor<&mut [f32]>>,
        },
    )
    .expect("reference");

    let stream = backend.context().default_stream();
    let sm = backend
        .context()
        .attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
        .expect("SM count") as usize;
    let num_splits = resolve_num_splits(p, splits, sm).unwrap();
    let (dq, dk, dv) = (
        upload(&stream, &q),
        upload(&stream, &k),
        upload(&stream, &v),
    );
    let dg = g.as_ref().map(|g| upload(&stream, g));
    let (dt, ds) = (upload(&stream, &table), upload(&stream, device_seqlens));
    let mut y = upload(&stream, &vec![bf16::from_f32(f32::NAN); n(&q_shape)]);
    let mut status = upload(&stream, &[0i32]);
    let ws_bytes = decode_workspace_bytes(p, num_splits).unwrap();
    let mut ws = upload(&stream, &vec![0xffu8; ws_bytes]);
    {
        let mut args = DecodeArgs {
            q: Tensor::contiguous(dq.slice(0..dq.len()), &q_shape),
            kv: PagedKv {
                k_cache: Tensor::contiguous(dk.slice(0..dk.len()), &p.cache_shape()),
                v_cache: Tensor::contiguous(dv.slice(0..dv.len()), &p.cache_shape()),
                block_table: Tensor::contiguous(dt.slice(0..dt.len()), &p.table_shape()),
                cache_seqlens: Tensor::contiguous(ds.slice(0..ds.len()), &[p.batch]),
            },
            cu_seqlens_q: None,
            g: dg
                .as_ref()
                .map(|g| Tensor::contiguous(g.slice(0..g.len()), &p.gate_shape().unwrap())),
            y: Tensor::contiguous(y.slice_mut(0..n(&q_shape)), &q_shape),
            lse: None,
        };
        let mut ws_view = ws.slice_mut(0..ws_bytes.max(1));
        let mut status_view = status.slice_mut(0..1);
        backend
            .forward_paged(
                &stream,
                p,
                &mut args,
                num_splits,
                Some(&mut ws_view),
                Some(&mut status_view),
            )
            .expect("forward_paged");
    }
    stream.synchronize().expect("synchronize");
    let got: Vec<f64> = download(&stream, &y, n(&q_shape))
        .iter()
        .map(|x| x.to_f64())
        .collect();
    let word = download(&stream, &status, 1)[0];
    // Error over the sequences whose device length equals the host one.
    let row = p.heads_q * p.head_dim;
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for b in 0..p.batch {
        if seqlens[b] != device_seqlens[b] {
            continue;
        }
        for t in b * p.seqlen_q..(b + 1) * p.seqlen_q {
            for e in t * row..(t + 1) * row {
                if got[e].is_nan() {
                    return (f64::INFINITY, word, got);
                }
                err += (got[e] - want.y[e]).powi(2);
                norm += want.y[e].powi(2);
            }
        }
    }
    ((err / norm.max(1e-30)).sqrt(), word, got)
}

#[test]
fn decode_on_the_gpu_matches_the_reference() {
    let Some(backend) = gpu() else { return };
    // Qwen3-Next decode (d256, 16 / 2 heads, elementwise sigmoid), split-KV auto.
    let p = DecodeProblem::new(3, 1, 16, 2, 256, 16, 200, 64).gate(GateMode::Elementwise);
    let lens = [1000, 17, 0];
    let (err, status, _) = device_vs_reference(&backend, &p, &lens, &lens, NumSplits::Auto, 1);
    assert_eq!(status, 0);
    assert!(err < 1e-2, "relative error {err}");
    // Speculative decode, causal, GQA 8, d128, headwise silu, 3 splits.
    let p = DecodeProblem::new(2, 4, 8, 1, 128, 32, 20, 8)
        .causal(true)
        .gate(GateMode::Headwise)
        .activation(Activation::Silu);
    let lens = [200, 33];
    let (err, status, _) = device_vs_reference(&backend, &p, &lens, &lens, NumSplits::Fixed(3), 2);
    assert_eq!(status, 0);
    assert!(err < 1e-2, "relative error {err}");
}

#[test]
fn hostile_device_lengths_give_nan_rows_and_the_status_word() {
    let Some(backend) = gpu() else { return };
    let p = DecodeProblem::new(3, 1, 4, 1, 64, 16, 12, 4);
    let lens = [40, 30, 64];
    let hostile = [40, -3, 1 << 30];
    for splits in [1, 3] {
        let (err, status, y) =
            device_vs_reference(&backend, &p, &lens, &hostile, NumSplits::Fixed(splits), 3);
        assert_eq!(status, ffi::GSDPA_DECODE_STATUS_INVALID_INPUT as i32);
        assert!(err < 1e-2, "sequence 0: relative error {err}");
        let row = p.heads_q * p.head_dim;
        assert!(
            y[row..].iter().all(|x| x.is_nan()),
            "sequences 1 and 2 are NaN"
        );
    }
}

#[test]
fn append_on_the_gpu_matches_the_host_copy() {
    let Some(backend) = gpu() else { return };
    let (batch, s_new) = (2, 3);
    let p = DecodeProblem::new(batch, 1, 2, 2, 64, 16, 6, 3);
    let mut rng = StdRng::seed_from_u64(4);
    let cache = p.cache_shape();
    let len = cache.iter().product::<usize>();
    let (k0, v0) = (random(len, &mut rng, 1.0), random(len, &mut rng, 1.0));
    let new_shape = [batch, s_new, 2, 64];
    let new_len = new_shape.iter().product::<usize>();
    let (kn, vn) = (
        random(new_len, &mut rng, 1.0),
        random(new_len, &mut rng, 1.0),
    );
    let table = [3, 0, 5, 1, 4, 2];
    let lens = [15, 0];

    let (mut k_want, mut v_want) = (k0.clone(), v0.clone());
    Reference
        .append_kv(
            &p,
            s_new,
            &mut AppendKvArgs {
                k_new: Tensor::contiguous(&kn[..], &new_shape),
                v_new: Tensor::contiguous(&vn[..], &new_shape),
                k_cache: Tensor::contiguous(&mut k_want[..], &cache),
                v_cache: Tensor::contiguous(&mut v_want[..], &cache),
                block_table: Tensor::contiguous(&table[..], &p.table_shape()),
                cache_seqlens: Tensor::contiguous(&lens[..], &[batch]),
            },
        )
        .unwrap();

    let stream = backend.context().default_stream();
    let (dkn, dvn) = (upload(&stream, &kn), upload(&stream, &vn));
    let (mut dk, mut dv) = (upload(&stream, &k0), upload(&stream, &v0));
    let (dt, ds) = (upload(&stream, &table), upload(&stream, &lens));
    {
        let mut args = AppendKvArgs {
            k_new: Tensor::contiguous(dkn.slice(0..new_len), &new_shape),
            v_new: Tensor::contiguous(dvn.slice(0..new_len), &new_shape),
            k_cache: Tensor::contiguous(dk.slice_mut(0..len), &cache),
            v_cache: Tensor::contiguous(dv.slice_mut(0..len), &cache),
            block_table: Tensor::contiguous(dt.slice(0..table.len()), &p.table_shape()),
            cache_seqlens: Tensor::contiguous(ds.slice(0..batch), &[batch]),
        };
        backend
            .append_kv(&stream, &p, s_new, &mut args, None)
            .expect("append_kv");
    }
    stream.synchronize().expect("synchronize");
    let bits = |x: &[bf16]| x.iter().map(|v| v.to_bits()).collect::<Vec<u16>>();
    assert_eq!(bits(&download(&stream, &dk, len)), bits(&k_want));
    assert_eq!(bits(&download(&stream, &dv, len)), bits(&v_want));
}
