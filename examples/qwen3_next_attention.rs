//! A Qwen3-Next gated attention layer in candle, fused with this crate and unfused with candle's own
//! ops, from the same random weights.
//!
//! `hidden [B, S, 2048]` -> `q_proj` (to `[B, S, 16, 2 * 256]`, each head `[q_h | g_h]`) -> split ->
//! q_norm and k_norm (RMSNorm over the head dim) and partial RoPE (the first 64 of 256 dims) on q and k
//! -> gated attention (16 query heads, 2 kv heads, head dim 256, causal, `* sigmoid(g)`) -> `o_proj`.
//!
//! The unfused path is what candle engines run today: the attention with candle's matmul and softmax
//! (kv heads repeated for GQA), then `sigmoid(g)` and `broadcast_mul`. The fused path passes the gate
//! as a strided view of the `q_proj` output (no copy) to [`gated_flash_attn`], whose epilogue applies it.
//!
//! `cargo run --release --features candle --example qwen3_next_attention` runs on the CPU (the kernels
//! on the emulator, at a small size); with `--features candle-cuda` on a machine with a GPU it runs on
//! device 0 at a larger size and prints both paths' times too.

use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor, D};
use gated_sdpa::candle::gated_flash_attn;

/// Qwen3-Next's attention sizes.
pub const HIDDEN: usize = 2048;
pub const HEADS_Q: usize = 16;
pub const HEADS_KV: usize = 2;
pub const HEAD_DIM: usize = 256;
/// Partial RoPE: the first quarter of each head's dims rotate.
pub const ROTARY_DIM: usize = HEAD_DIM / 4;
const ROPE_THETA: f64 = 10_000_000.0;
const RMS_EPS: f64 = 1e-6;

/// A bias-free linear layer, `x W^T`.
pub struct Linear {
    pub weight: Tensor,
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s, i) = x.dims3()?;
        let out = self.weight.dim(0)?;
        x.reshape((b * s, i))?
            .matmul(&self.weight.t()?)?
            .reshape((b, s, out))
    }
}

/// The layer's weights, random and scaled like an initialised model's.
pub struct Qwen3NextAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: Tensor,
    pub k_norm: Tensor,
}

fn random(
    shape: (usize, usize),
    scale: f64,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    Tensor::randn(0f32, scale as f32, shape, device)?.to_dtype(dtype)
}

impl Qwen3NextAttention {
    pub fn new(dtype: DType, device: &Device) -> candle_core::Result<Self> {
        let std_in = 1.0 / (HIDDEN as f64).sqrt();
        let linear = |out, inp, std| -> candle_core::Result<Linear> {
            Ok(Linear {
                weight: random((out, inp), std, dtype, device)?,
            })
        };
        Ok(Qwen3NextAttention {
            q_proj: linear(HEADS_Q * 2 * HEAD_DIM, HIDDEN, std_in)?,
            k_proj: linear(HEADS_KV * HEAD_DIM, HIDDEN, std_in)?,
            v_proj: linear(HEADS_KV * HEAD_DIM, HIDDEN, std_in)?,
            o_proj: linear(
                HIDDEN,
                HEADS_Q * HEAD_DIM,
                1.0 / ((HEADS_Q * HEAD_DIM) as f64).sqrt(),
            )?,
            q_norm: (Tensor::randn(0f32, 0.1, HEAD_DIM, device)? + 1.0)?.to_dtype(dtype)?,
            k_norm: (Tensor::randn(0f32, 0.1, HEAD_DIM, device)? + 1.0)?.to_dtype(dtype)?,
        })
    }

    /// Everything before the attention: `(q, k, v, g)`, with `g` a strided view of the `q_proj`
    /// output (`[B, S, Hq, D]` with the strides of `[B, S, Hq, 2 D]`) and q normed and rotated.
    pub fn project(
        &self,
        hidden: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor, Tensor)> {
        let (b, s, _) = hidden.dims3()?;
        let q_proj = self
            .q_proj
            .forward(hidden)?
            .reshape((b, s, HEADS_Q, 2 * HEAD_DIM))?;
        let q = q_proj.narrow(3, 0, HEAD_DIM)?;
        let g = q_proj.narrow(3, HEAD_DIM, HEAD_DIM)?;
        let k = self
            .k_proj
            .forward(hidden)?
            .reshape((b, s, HEADS_KV, HEAD_DIM))?;
        let v = self
            .v_proj
            .forward(hidden)?
            .reshape((b, s, HEADS_KV, HEAD_DIM))?;
        let q = rope(&rms_norm(&q, &self.q_norm)?)?;
        let k = rope(&rms_norm(&k, &self.k_norm)?)?;
        Ok((q, k, v, g))
    }

    /// The layer with the fused gated attention.
    pub fn forward_fused(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s, _) = hidden.dims3()?;
        let (q, k, v, g) = self.project(hidden)?;
        let y = gated_flash_attn(&q, &k, &v, &g, 1.0 / (HEAD_DIM as f32).sqrt(), true)?;
        self.o_proj.forward(&y.reshape((b, s, HEADS_Q * HEAD_DIM))?)
    }

    /// The layer as candle engines write it: attention with candle's ops, then the gate.
    pub fn forward_unfused(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s, _) = hidden.dims3()?;
        let (q, k, v, g) = self.project(hidden)?;
        let y = attention_unfused(&q, &k, &v, 1.0 / (HEAD_DIM as f64).sqrt())?;
        let sigmoid_g = (g.neg()?.exp()? + 1.0)?.recip()?;
        let y = (y * sigmoid_g)?;
        self.o_proj.forward(&y.reshape((b, s, HEADS_Q * HEAD_DIM))?)
    }
}

/// RMSNorm over the head dim (in f32), times `weight`.
fn rms_norm(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + RMS_EPS)?.sqrt()?;
    x.broadcast_div(&rms)?
        .to_dtype(dtype)?
        .broadcast_mul(weight)
}

/// Rotary position embedding on the first [`ROTARY_DIM`] dims of each head (the rotate-half form),
/// positions `0..S`; the other dims pass through.
fn rope(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, s, _, d) = x.dims4()?;
    let dtype = x.dtype();
    let half = ROTARY_DIM / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| (1.0 / ROPE_THETA.powf(2.0 * i as f64 / ROTARY_DIM as f64)) as f32)
        .collect();
    let inv_freq = Tensor::new(inv_freq.as_slice(), x.device())?;
    let pos = Tensor::arange(0u32, s as u32, x.device())?.to_dtype(DType::F32)?;
    let angles = pos.unsqueeze(1)?.broadcast_mul(&inv_freq.unsqueeze(0)?)?; // [S, half]
    let (cos, sin) = (
        angles.cos()?.unsqueeze(1)?, // [S, 1, half], broadcast over batch and heads
        angles.sin()?.unsqueeze(1)?,
    );
    let xf = x.to_dtype(DType::F32)?;
    let x1 = xf.narrow(3, 0, half)?;
    let x2 = xf.narrow(3, half, half)?;
    let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    let pass = xf.narrow(3, ROTARY_DIM, d - ROTARY_DIM)?;
    Tensor::cat(&[r1, r2, pass], 3)?.to_dtype(dtype)
}

/// Causal GQA attention with candle's ops, in f32: `[B, S, H, D]` in and out.
fn attention_unfused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let dtype = q.dtype();
    let (b, s, hq, d) = q.dims4()?;
    let hkv = k.dim(2)?;
    let repeat = |t: &Tensor| -> candle_core::Result<Tensor> {
        t.to_dtype(DType::F32)?
            .transpose(1, 2)?
            .unsqueeze(2)?
            .expand((b, hkv, hq / hkv, s, d))?
            .reshape((b, hq, s, d))
    };
    let q = q.to_dtype(DType::F32)?.transpose(1, 2)?.contiguous()?;
    let (k, v) = (repeat(k)?, repeat(v)?);
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let mask: Vec<f32> = (0..s)
        .flat_map(|i| (0..s).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let scores = scores.broadcast_add(&Tensor::from_vec(mask, (s, s), q.device())?)?;
    let max = scores.max_keepdim(D::Minus1)?;
    let e = scores.broadcast_sub(&max)?.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    p.matmul(&v)?.transpose(1, 2)?.to_dtype(dtype)
}

/// Largest |a - b| over largest |b|.
pub fn relative_difference(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    let a = a.to_dtype(DType::F32)?.flatten_all()?;
    let b = b.to_dtype(DType::F32)?.flatten_all()?;
    let diff = (&a - &b)?.abs()?.max(0)?.to_scalar::<f32>()?;
    let scale = b.abs()?.max(0)?.to_scalar::<f32>()?;
    Ok(diff / scale.max(f32::MIN_POSITIVE))
}

fn main() -> candle_core::Result<()> {
    let (device, (b, s)) = match Device::new_cuda(0) {
        Ok(device) => (device, (2, 2048)),
        Err(_) => (Device::Cpu, (1, 12)),
    };
    println!("device {device:?}, hidden [{b}, {s}, {HIDDEN}], bf16");
    let layer = Qwen3NextAttention::new(DType::BF16, &device)?;
    let hidden = Tensor::randn(0f32, 1.0, (b, s, HIDDEN), &device)?.to_dtype(DType::BF16)?;
    let fused = layer.forward_fused(&hidden)?;
    let unfused = layer.forward_unfused(&hidden)?;
    println!(
        "output [{b}, {s}, {HIDDEN}]: max |fused - unfused| / max |unfused| = {:.3e}",
        relative_difference(&fused, &unfused)?
    );
    if device.is_cuda() {
        let time = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> candle_core::Result<f64> {
            f()?;
            device.synchronize()?;
            let start = Instant::now();
            let runs = 20;
            for _ in 0..runs {
                f()?;
            }
            device.synchronize()?;
            Ok(start.elapsed().as_secs_f64() * 1e3 / runs as f64)
        };
        let fused_ms = time(&|| layer.forward_fused(&hidden))?;
        let unfused_ms = time(&|| layer.forward_unfused(&hidden))?;
        println!("layer time: fused {fused_ms:.3} ms, unfused {unfused_ms:.3} ms");
    }
    Ok(())
}
