//! A candle program on the GPU calling the fused gated attention on the packed `q_proj` output; CI only
//! compiles it (there is no GPU there). On a machine with one it runs a Qwen3-Next-shaped call.

use candle_core::{DType, Device, Tensor};
use gated_sdpa::candle::gated_flash_attn_packed;

fn main() -> candle_core::Result<()> {
    let device = match Device::new_cuda(0) {
        Ok(device) => device,
        Err(e) => {
            println!("no CUDA device: {e}");
            return Ok(());
        }
    };
    let (b, s, hq, hkv, d) = (1, 128, 16, 2, 256);
    let q_proj = Tensor::randn(0f32, 1.0, (b, s, hq, 2 * d), &device)?.to_dtype(DType::BF16)?;
    let k = Tensor::randn(0f32, 1.0, (b, s, hkv, d), &device)?.to_dtype(DType::BF16)?;
    let v = Tensor::randn(0f32, 1.0, (b, s, hkv, d), &device)?.to_dtype(DType::BF16)?;
    let y = gated_flash_attn_packed(&q_proj, &k, &v, 1.0 / (d as f32).sqrt(), true)?;
    println!("y {:?} {:?}", y.dims(), y.dtype());
    Ok(())
}
