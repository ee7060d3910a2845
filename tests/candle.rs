//! `gated_sdpa::candle` on CPU tensors (the kernels on the emulator), against the same attention
//! written with candle's own ops in f32, forward and backward.

use candle_core::{DType, Device, IndexOp, Tensor, Var, D};
use gated_sdpa::candle::{
    gated_flash_attn, gated_flash_attn_packed, gated_flash_attn_paged, gated_flash_attn_varlen,
    GatedAttention,
};
use gated_sdpa::{Activation, GateMode, GsdpaError};

const CPU: Device = Device::Cpu;

/// The example's Qwen3-Next layer, checked here fused against unfused.
#[allow(dead_code)]
#[path = "../examples/qwen3_next_attention.rs"]
mod qwen3_next_attention;

/// A deterministic pseudo-random tensor in [-scale, scale) of `dtype`.
fn rand(shape: &[usize], seed: u64, scale: f32, dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(data, shape, &CPU)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// The unfused attention in f32 with candle's ops: `q [B, Sq, Hq, D]`, `k`, `v [B, Sk, Hkv, D]`, the
/// causal mask bottom-right aligned, then `* act(g)` (`g` elementwise or headwise, or none).
fn reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: Option<&Tensor>,
    scale: f32,
    causal: bool,
    activation: Activation,
) -> candle_core::Result<Tensor> {
    let (b, sq, hq, d) = q.dims4()?;
    let (_, sk, hkv, _) = k.dims4()?;
    let group = hq / hkv;
    let f = |t: &Tensor| t.to_dtype(DType::F32);
    let q = f(q)?.transpose(1, 2)?.contiguous()?; // [B, Hq, Sq, D]
    let repeat = |t: &Tensor| -> candle_core::Result<Tensor> {
        // [B, Sk, Hkv, D] -> [B, Hq, Sk, D], query head h reading kv head h / group.
        let t = f(t)?.transpose(1, 2)?; // [B, Hkv, Sk, D]
        t.unsqueeze(2)?
            .expand((b, hkv, group, sk, d))?
            .reshape((b, hq, sk, d))
    };
    let (k, v) = (repeat(k)?, repeat(v)?);
    let mut scores = (q.matmul(&k.t()?)? * scale as f64)?; // [B, Hq, Sq, Sk]
    if causal {
        let mask: Vec<f32> = (0..sq)
            .flat_map(|i| {
                (0..sk).map(move |j| {
                    if j + sq > i + sk {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (sq, sk), q.device())?;
        scores = scores.broadcast_add(&mask)?;
    }
    let p = candle_nn_softmax(&scores)?;
    let o = p.matmul(&v)?.transpose(1, 2)?; // [B, Sq, Hq, D]
    let Some(g) = g else {
        return Ok(o);
    };
    let g = f(g)?;
    let s = candle_core::Tensor::ones_like(&g)? / (g.neg()?.exp()? + 1.0)?; // sigmoid
    let act = match activation {
        Activation::Sigmoid => s?,
        Activation::Silu => (s? * &g)?,
    };
    let act = if act.rank() == 3 {
        act.unsqueeze(3)?
    } else {
        act
    };
    o.broadcast_mul(&act)
}

/// Softmax over the last dimension; rows of only `-inf` give 0 as the kernels do.
fn candle_nn_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let max = max.maximum(&max.ones_like()?.affine(0.0, -1e30)?)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum.maximum(&sum.ones_like()?.affine(0.0, 1e-30)?)?)
}

/// Largest |a - b| and largest |b|, both in f32.
fn max_diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let diff = (&a - &b).unwrap().abs().unwrap().max(0).unwrap();
    let scale = b.abs().unwrap().max(0).unwrap();
    let (diff, scale) = (
        diff.to_scalar::<f32>().unwrap(),
        scale.to_scalar::<f32>().unwrap(),
    );
    let a_vec = a.to_vec1::<f32>().unwrap();
    assert!(a_vec.iter().all(|x| x.is_finite()), "non-finite output");
    (diff, scale)
}

/// Within the 16-bit type's rounding of the output, relative to the output's largest value.
fn assert_close(what: &str, got: &Tensor, want: &Tensor, dtype: DType) {
    let (diff, scale) = max_diff(got, want);
    let tol = match dtype {
        DType::BF16 => 2e-2,
        _ => 4e-3,
    } * scale.max(1e-3);
    assert!(
        diff <= tol,
        "{what}: max |diff| {diff} above {tol} (max |want| {scale})"
    );
}

struct Shapes {
    b: usize,
    sq: usize,
    sk: usize,
    hq: usize,
    hkv: usize,
    d: usize,
}

const SMALL: Shapes = Shapes {
    b: 2,
    sq: 5,
    sk: 9,
    hq: 4,
    hkv: 2,
    d: 64,
};

fn inputs(s: &Shapes, dtype: DType) -> (Tensor, Tensor, Tensor, Tensor) {
    let q = rand(&[s.b, s.sq, s.hq, s.d], 1, 1.0, dtype);
    let k = rand(&[s.b, s.sk, s.hkv, s.d], 2, 1.0, dtype);
    let v = rand(&[s.b, s.sk, s.hkv, s.d], 3, 1.0, dtype);
    let g = rand(&[s.b, s.sq, s.hq, s.d], 4, 3.0, dtype);
    (q, k, v, g)
}

#[test]
fn forward_matches_unfused_candle_ops() {
    let s = &SMALL;
    let scale = 1.0 / (s.d as f32).sqrt();
    for dtype in [DType::BF16, DType::F16] {
        for causal in [false, true] {
            let (q, k, v, g) = inputs(s, dtype);
            let y = gated_flash_attn(&q, &k, &v, &g, scale, causal).unwrap();
            assert_eq!(y.dims(), q.dims());
            assert_eq!(y.dtype(), dtype);
            let want = reference(&q, &k, &v, Some(&g), scale, causal, Activation::Sigmoid).unwrap();
            assert_close(&format!("{dtype:?} causal={causal}"), &y, &want, dtype);
        }
    }
}

#[test]
fn headwise_silu_and_no_gate_forward() {
    let s = &SMALL;
    let scale = 0.2;
    let (q, k, v, _) = inputs(s, DType::BF16);
    let gh = rand(&[s.b, s.sq, s.hq], 5, 3.0, DType::BF16);
    let y = gated_flash_attn(&q, &k, &v, &gh, scale, true).unwrap();
    let want = reference(&q, &k, &v, Some(&gh), scale, true, Activation::Sigmoid).unwrap();
    assert_close("headwise", &y, &want, DType::BF16);

    let (q, k, v, g) = inputs(s, DType::F16);
    let y = GatedAttention::new(scale, false)
        .activation(Activation::Silu)
        .forward(&q, &k, &v, Some(&g))
        .unwrap();
    let want = reference(&q, &k, &v, Some(&g), scale, false, Activation::Silu).unwrap();
    assert_close("silu", &y, &want, DType::F16);

    let y = GatedAttention::new(scale, true)
        .gate(GateMode::None)
        .forward(&q, &k, &v, None)
        .unwrap();
    let want = reference(&q, &k, &v, None, scale, true, Activation::Sigmoid).unwrap();
    assert_close("no gate", &y, &want, DType::F16);
}

#[test]
fn packed_q_proj_is_read_in_place_and_matches_separate_q_and_g() {
    let s = &SMALL;
    let (q, k, v, g) = inputs(s, DType::BF16);
    let q_proj = Tensor::cat(&[&q, &g], 3).unwrap(); // [B, S, H, 2D], each head [q_h | g_h]
    let packed = gated_flash_attn_packed(&q_proj, &k, &v, 0.125, true).unwrap();
    // The same q and g as strided views of q_proj (what engines split today).
    let (qv, gv) = (
        q_proj.narrow(3, 0, s.d).unwrap(),
        q_proj.narrow(3, s.d, s.d).unwrap(),
    );
    assert!(!qv.is_contiguous());
    let separate = gated_flash_attn(&qv, &k, &v, &gv, 0.125, true).unwrap();
    let separate_dense = gated_flash_attn(&q, &k, &v, &g, 0.125, true).unwrap();
    assert_eq!(max_diff(&packed, &separate).0, 0.0);
    assert_eq!(max_diff(&packed, &separate_dense).0, 0.0);
    // The output feeds o_proj after a reshape, with no copy.
    let flat = packed.reshape((s.b, s.sq, s.hq * s.d)).unwrap();
    assert!(flat.is_contiguous());
}

/// Gradients of `sum(Y * w)` for a fixed random `w`, through the fused op and through the unfused ops.
#[test]
fn packed_backward_matches_unfused_autograd() {
    let s = &SMALL;
    let scale = 1.0 / (s.d as f32).sqrt();
    for (dtype, activation) in [
        (DType::BF16, Activation::Sigmoid),
        (DType::F16, Activation::Silu),
    ] {
        let (q, k, v, g) = inputs(s, dtype);
        let q_proj = Tensor::cat(&[&q, &g], 3).unwrap();
        let w = rand(&[s.b, s.sq, s.hq, s.d], 9, 1.0, DType::F32);
        let attention = GatedAttention::new(scale, true).activation(activation);

        let (qp, kv, vv) = (
            Var::from_tensor(&q_proj).unwrap(),
            Var::from_tensor(&k).unwrap(),
            Var::from_tensor(&v).unwrap(),
        );
        let y = attention.forward_packed(&qp, &kv, &vv).unwrap();
        let loss = (y.to_dtype(DType::F32).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let dq_proj = grads.get(&qp).expect("d q_proj");
        assert_eq!(dq_proj.dims(), q_proj.dims());

        // The unfused path in f32, from the same 16-bit values.
        let f = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap();
        let (qp32, k32, v32) = (f(&q_proj), f(&k), f(&v));
        let q32 = qp32.narrow(3, 0, s.d).unwrap();
        let g32 = qp32.narrow(3, s.d, s.d).unwrap();
        let y32 = reference(&q32, &k32, &v32, Some(&g32), scale, true, activation).unwrap();
        let loss32 = (&y32 * &w).unwrap().sum_all().unwrap();
        let grads32 = loss32.backward().unwrap();
        let what = format!("{dtype:?} {activation:?}");
        assert_close(&format!("{what} y"), &y, &y32, dtype);
        // dq and dg interleaved per head exactly as q_proj holds q and g.
        let want = grads32.get(&qp32).unwrap();
        assert_close(
            &format!("{what} dq"),
            &dq_proj.narrow(3, 0, s.d).unwrap(),
            &want.narrow(3, 0, s.d).unwrap(),
            dtype,
        );
        assert_close(
            &format!("{what} dg"),
            &dq_proj.narrow(3, s.d, s.d).unwrap(),
            &want.narrow(3, s.d, s.d).unwrap(),
            dtype,
        );
        assert_close(
            &format!("{what} dk"),
            grads.get(&kv).unwrap(),
            grads32.get(&k32).unwrap(),
            dtype,
        );
        assert_close(
            &format!("{what} dv"),
            grads.get(&vv).unwrap(),
            grads32.get(&v32).unwrap(),
            dtype,
        );
    }
}

#[test]
fn separate_elementwise_gate_backward_reaches_q_and_g() {
    let s = &SMALL;
    let (q, k, v, g) = inputs(s, DType::BF16);
    let (qv, gv) = (Var::from_tensor(&q).unwrap(), Var::from_tensor(&g).unwrap());
    let y = gated_flash_attn(&qv, &k, &v, &gv, 0.125, false).unwrap();
    let grads = y
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let f = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap();
    let (q32, g32) = (f(&q), f(&g));
    let y32 = reference(&q32, &k, &v, Some(&g32), 0.125, false, Activation::Sigmoid).unwrap();
    let grads32 = y32.sum_all().unwrap().backward().unwrap();
    assert_close(
        "dq",
        grads.get(&qv).unwrap(),
        grads32.get(&q32).unwrap(),
        DType::BF16,
    );
    assert_close(
        "dg",
        grads.get(&gv).unwrap(),
        grads32.get(&g32).unwrap(),
        DType::BF16,
    );
}

#[test]
fn varlen_matches_each_sequence_alone() {
    let (hq, hkv, d) = (4, 2, 64);
    let (lens_q, lens_k) = ([3usize, 0, 6], [5usize, 2, 6]);
    let (tq, tk) = (lens_q.iter().sum::<usize>(), lens_k.iter().sum::<usize>());
    let q = rand(&[tq, hq, d], 11, 1.0, DType::BF16);
    let k = rand(&[tk, hkv, d], 12, 1.0, DType::BF16);
    let v = rand(&[tk, hkv, d], 13, 1.0, DType::BF16);
    let g = rand(&[tq, hq, d], 14, 3.0, DType::BF16);
    let prefix = |lens: &[usize]| {
        let mut acc = vec![0u32];
        for &l in lens {
            acc.push(acc.last().unwrap() + l as u32);
        }
        Tensor::new(acc.as_slice(), &CPU).unwrap()
    };
    let (cu_q, cu_k) = (prefix(&lens_q), prefix(&lens_k));
    let y = gated_flash_attn_varlen(&q, &k, &v, &g, &cu_q, &cu_k, 6, 6, 0.125, true).unwrap();
    assert_eq!(y.dims(), q.dims());
    let (mut oq, mut ok) = (0, 0);
    for (&lq, &lk) in lens_q.iter().zip(&lens_k) {
        if lq > 0 {
            let part = |t: &Tensor, o, l| t.narrow(0, o, l).unwrap().unsqueeze(0).unwrap();
            let alone = gated_flash_attn(
                &part(&q, oq, lq),
                &part(&k, ok, lk),
                &part(&v, ok, lk),
                &part(&g, oq, lq),
                0.125,
                true,
            )
            .unwrap();
            assert_eq!(
                max_diff(&y.narrow(0, oq, lq).unwrap(), &alone.i(0).unwrap()).0,
                0.0
            );
        }
        oq += lq;
        ok += lk;
    }
    // A wrong maximum length is reported, not used.
    let err = gated_flash_attn_varlen(&q, &k, &v, &g, &cu_q, &cu_k, 5, 6, 0.125, true).unwrap_err();
    assert!(err.to_string().contains("max_seqlen_q"), "{err}");
}

#[test]
fn paged_decode_matches_dense_attention_over_the_same_keys() {
    let (b, hq, hkv, d, block, blocks) = (2, 4, 2, 64, 16, 5);
    let lens = [20u32, 7];
    let k_cache = rand(&[blocks, block, hkv, d], 21, 1.0, DType::BF16);
    let v_cache = rand(&[blocks, block, hkv, d], 22, 1.0, DType::BF16);
    let table_rows: [[u32; 2]; 2] = [[3, 1], [4, 0]];
    let table = Tensor::new(&table_rows, &CPU).unwrap();
    let seqlens = Tensor::new(&lens, &CPU).unwrap();
    let q = rand(&[b, 1, hq, d], 23, 1.0, DType::BF16);
    let g = rand(&[b, 1, hq, d], 24, 3.0, DType::BF16);
    let y =
        gated_flash_attn_paged(&q, &k_cache, &v_cache, &g, &table, &seqlens, 0.125, true).unwrap();
    assert_eq!(y.dims(), q.dims());
    for bi in 0..b {
        // The sequence's keys, gathered from its blocks.
        let gather = |cache: &Tensor| {
            let rows: Vec<Tensor> = table_rows[bi]
                .iter()
                .map(|&blk| cache.i(blk as usize).unwrap())
                .collect();
            Tensor::cat(&rows, 0)
                .unwrap()
                .narrow(0, 0, lens[bi] as usize)
                .unwrap()
                .unsqueeze(0)
                .unwrap()
        };
        let qb = q.narrow(0, bi, 1).unwrap();
        let gb = g.narrow(0, bi, 1).unwrap();
        let want = reference(
            &qb,
            &gather(&k_cache),
            &gather(&v_cache),
            Some(&gb),
            0.125,
            true,
            Activation::Sigmoid,
        )
        .unwrap();
        assert_close(
            &format!("paged sequence {bi}"),
            &y.narrow(0, bi, 1).unwrap(),
            &want,
            DType::BF16,
        );
    }
    // A block id outside the cache is a typed error with the crate's message.
    let bad = Tensor::new(&[[3u32, 9], [4, 0]], &CPU).unwrap();
    let err = gated_flash_attn_paged(&q, &k_cache, &v_cache, &g, &bad, &seqlens, 0.125, true)
        .unwrap_err();
    assert!(err.to_string().contains("block_table"), "{err}");
}

#[test]
fn crate_errors_become_candle_errors_with_the_same_message() {
    let s = &SMALL;
    let (q, k, v, g) = inputs(s, DType::BF16);
    // A head dim the kernels do not have.
    let q48 = rand(&[1, 3, 2, 48], 1, 1.0, DType::BF16);
    let err = gated_flash_attn(&q48, &q48, &q48, &q48, 0.1, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        GsdpaError::UnsupportedHeadDim { head_dim: 48 }.to_string()
    );
    // f32 tensors.
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let err = gated_flash_attn(&f(&q), &f(&k), &f(&v), &f(&g), 0.1, false).unwrap_err();
    assert!(err.to_string().contains("bf16 or f16"), "{err}");
    // A v of the wrong shape: the crate's ShapeMismatch message.
    let v_bad = v.narrow(1, 0, s.sk - 1).unwrap();
    let err = gated_flash_attn(&q, &k, &v_bad, &g, 0.1, false).unwrap_err();
    let want = GsdpaError::ShapeMismatch {
        tensor: "v",
        expected: vec![s.b, s.sk, s.hkv, s.d],
        actual: v_bad.dims().to_vec(),
    };
    assert_eq!(err.to_string(), want.to_string());
    // The packed form needs an elementwise gate.
    let q_proj = Tensor::cat(&[&q, &g], 3).unwrap();
    let err = GatedAttention::new(0.1, false)
        .gate(GateMode::Headwise)
        .forward_packed(&q_proj, &k, &v)
        .unwrap_err();
    assert!(err.to_string().contains("elementwise"), "{err}");
}

#[test]
fn headwise_backward_is_a_clear_error() {
    let s = &SMALL;
    let (q, k, v, _) = inputs(s, DType::BF16);
    let gh = Var::from_tensor(&rand(&[s.b, s.sq, s.hq], 5, 3.0, DType::BF16)).unwrap();
    let qv = Var::from_tensor(&q).unwrap();
    let y = gated_flash_attn(&qv, &k, &v, &gh, 0.125, false).unwrap();
    let err = y
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no backward for the headwise gate"),
        "{err}"
    );
}

#[test]
fn qwen3_next_layer_fused_matches_unfused_forward_and_backward() {
    use qwen3_next_attention::{relative_difference, Qwen3NextAttention, HIDDEN};
    let layer = Qwen3NextAttention::new(DType::BF16, &CPU).unwrap();
    let hidden = Var::from_tensor(&rand(&[1, 7, HIDDEN], 31, 1.0, DType::BF16)).unwrap();
    let fused = layer.forward_fused(&hidden).unwrap();
    let unfused = layer.forward_unfused(&hidden).unwrap();
    let forward = relative_difference(&fused, &unfused).unwrap();
    assert!(forward < 2e-2, "forward: relative difference {forward}");
    // d/d hidden of sum(out * w): through the fused op's backward (q and the strided g view packed),
    // and through candle's own ops.
    let w = rand(fused.dims(), 32, 1.0, DType::F32);
    let grad = |out: &Tensor| {
        let loss = (out.to_dtype(DType::F32).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap();
        loss.backward().unwrap().get(&hidden).unwrap().clone()
    };
    let backward = relative_difference(&grad(&fused), &grad(&unfused)).unwrap();
    assert!(backward < 3e-2, "backward: relative difference {backward}");
}

#[test]
fn no_gate_backward_matches_unfused_autograd() {
    let s = &SMALL;
    let (q, k, v, _) = inputs(s, DType::F16);
    let (qv, kv, vv) = (
        Var::from_tensor(&q).unwrap(),
        Var::from_tensor(&k).unwrap(),
        Var::from_tensor(&v).unwrap(),
    );
    let y = GatedAttention::new(0.125, true)
        .gate(GateMode::None)
        .forward(&qv, &kv, &vv, None)
        .unwrap();
    let w = rand(&[s.b, s.sq, s.hq, s.d], 41, 1.0, DType::F32);
    let grads = (y.to_dtype(DType::F32).unwrap() * &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let f = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap();
    let (q32, k32, v32) = (f(&q), f(&k), f(&v));
    let y32 = reference(&q32, &k32, &v32, None, 0.125, true, Activation::Sigmoid).unwrap();
    let grads32 = (&y32 * &w).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, got, want) in [
        ("dq", grads.get(&qv), grads32.get(&q32)),
        ("dk", grads.get(&kv), grads32.get(&k32)),
        ("dv", grads.get(&vv), grads32.get(&v32)),
    ] {
        assert_close(name, got.unwrap(), want.unwrap(), DType::F16);
    }
}
