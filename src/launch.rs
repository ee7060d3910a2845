//! Launch configurations: which kernel runs a problem, on what grid, with how much shared memory.
//!
//! Shared by the CUDA and emulator backends so that both launch the same kernels the same way. The
//! tile sizes come from `kernels/gsdpa_params.h` through the generated bindings.

use crate::error::{GsdpaError, Result};
use crate::ffi;
use crate::problem::{AttentionProblem, DType};

/// One kernel launch: name, grid, block and dynamic shared memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    /// The kernel's `extern "C"` name.
    pub kernel: String,
    /// Grid dimensions (x, y, z).
    pub grid: [u32; 3],
    /// Block dimensions (x, y, z).
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// True when the grid has no blocks (nothing to launch).
    pub fn is_empty(&self) -> bool {
        self.grid.iter().any(|&d| d == 0)
    }
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
    }
}

fn grid_dim(value: usize, what: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| GsdpaError::SizeOverflow(format!("{what} ({value}) exceeds the grid limit")))
}

/// Forward tile geometry for a head dim: (block_m, threads, shared bytes).
fn forward_geometry(head_dim: usize) -> Result<(usize, u32, u32)> {
    let (m, threads, smem) = match head_dim {
        64 => (ffi::GSDPA_FWD_BLOCK_M_D64, ffi::GSDPA_FWD_THREADS_D64, ffi::GSDPA_FWD_SMEM_D64),
        128 => (ffi::GSDPA_FWD_BLOCK_M_D128, ffi::GSDPA_FWD_THREADS_D128, ffi::GSDPA_FWD_SMEM_D128),
        256 => (ffi::GSDPA_FWD_BLOCK_M_D256, ffi::GSDPA_FWD_THREADS_D256, ffi::GSDPA_FWD_SMEM_D256),
        _ => return Err(GsdpaError::UnsupportedHeadDim { head_dim }),
    };
    Ok((m as usize, threads, smem))
}

/// The fused forward kernel for `problem` (already validated).
pub fn forward(problem: &AttentionProblem) -> Result<LaunchConfig> {
    let (block_m, threads, shared_bytes) = forward_geometry(problem.head_dim)?;
    Ok(LaunchConfig {
        kernel: format!("gsdpa_fwd_{}_d{}", dtype_name(problem.dtype), problem.head_dim),
        grid: [
            grid_dim(problem.seqlen_q.div_ceil(block_m), "query tiles")?,
            grid_dim(problem.heads_q, "heads_q")?,
            grid_dim(problem.batch, "batch")?,
        ],
        block: [threads, 1, 1],
        shared_bytes,
    })
}

/// The standalone gate kernel `Y = O * act(G)` over `rows` rows of `heads` heads.
pub fn gate(dtype: DType, rows: usize, heads: usize, head_dim: usize) -> Result<LaunchConfig> {
    // One thread per 8 elements (16 bytes); 256 threads a block.
    let vectors = rows
        .checked_mul(heads)
        .and_then(|n| n.checked_mul(head_dim.div_ceil(8)))
        .ok_or_else(|| GsdpaError::SizeOverflow("gate elements".into()))?;
    Ok(LaunchConfig {
        kernel: format!("gsdpa_gate_{}", dtype_name(dtype)),
        grid: [grid_dim(vectors.div_ceil(256).max(1), "gate blocks")?, 1, 1],
        block: [256, 1, 1],
        shared_bytes: 0,
    })
}

/// The conformance kernel: one warp.
pub fn conformance() -> LaunchConfig {
    LaunchConfig {
        kernel: "gsdpa_conformance".into(),
        grid: [1, 1, 1],
        block: [32, 1, 1],
        shared_bytes: ffi::GSDPA_CONFORMANCE_SMEM,
    }
}
