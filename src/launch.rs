//! Launch configurations: which kernel runs a problem, on what grid, with how much shared memory.
//!
//! Shared by the CUDA and emulator backends so that both launch the same kernels the same way. The
//! tile sizes come from `kernels/gsdpa_params.h` through the generated bindings.

use crate::backend::{BackwardOptions, BackwardTiles};
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
        self.grid.contains(&0)
    }
}

fn grid_dim(value: usize, what: &str) -> Result<u32> {
    u32::try_from(value)
        .map_err(|_| GsdpaError::SizeOverflow(format!("{what} ({value}) exceeds the grid limit")))
}

/// Forward tile geometry for a head dim: (block_m, threads, shared bytes).
fn forward_geometry(head_dim: usize) -> Result<(usize, u32, u32)> {
    let (m, threads, smem) = match head_dim {
        64 => (
            ffi::GSDPA_FWD_BLOCK_M_D64,
            ffi::GSDPA_FWD_THREADS_D64,
            ffi::GSDPA_FWD_SMEM_D64,
        ),
        128 => (
            ffi::GSDPA_FWD_BLOCK_M_D128,
            ffi::GSDPA_FWD_THREADS_D128,
            ffi::GSDPA_FWD_SMEM_D128,
        ),
        256 => (
            ffi::GSDPA_FWD_BLOCK_M_D256,
            ffi::GSDPA_FWD_THREADS_D256,
            ffi::GSDPA_FWD_SMEM_D256,
        ),
        _ => return Err(GsdpaError::UnsupportedHeadDim { head_dim }),
    };
    Ok((m as usize, threads, smem))
}

/// The fused forward kernel for `problem` (already validated) on tensors of `dtype`.
pub fn forward(problem: &AttentionProblem, dtype: DType) -> Result<LaunchConfig> {
    let (block_m, threads, shared_bytes) = forward_geometry(problem.head_dim)?;
    Ok(LaunchConfig {
        kernel: format!("gsdpa_fwd_{}_d{}", dtype.name(), problem.head_dim),
        grid: [
            grid_dim(problem.seqlen_q.div_ceil(block_m), "query tiles")?,
            grid_dim(problem.heads_q, "heads_q")?,
            grid_dim(problem.batch, "batch")?,
        ],
        block: [threads, 1, 1],
        shared_bytes,
    })
}

/// Key tile of the Hopper forward for a head dim.
fn forward_sm90_geometry(head_dim: usize) -> Result<(u32, u32)> {
    Ok(match head_dim {
        64 => (
            ffi::GSDPA_FWD_SM90_BLOCK_N_D64,
            ffi::GSDPA_FWD_SM90_SMEM_D64,
        ),
        128 => (
            ffi::GSDPA_FWD_SM90_BLOCK_N_D128,
            ffi::GSDPA_FWD_SM90_SMEM_D128,
        ),
        256 => (
            ffi::GSDPA_FWD_SM90_BLOCK_N_D256,
            ffi::GSDPA_FWD_SM90_SMEM_D256,
        ),
        _ => return Err(GsdpaError::UnsupportedHeadDim { head_dim }),
    })
}

/// The Hopper forward kernel (kernels/forward_sm90.cu, sm_90a) for `problem` (already validated):
/// the grid of [`forward`] with 128-row query blocks of 384 threads.
pub fn forward_sm90(problem: &AttentionProblem, dtype: DType) -> Result<LaunchConfig> {
    let (_, shared_bytes) = forward_sm90_geometry(problem.head_dim)?;
    let block_m = ffi::GSDPA_FWD_SM90_BLOCK_M as usize;
    Ok(LaunchConfig {
        kernel: format!("gsdpa_fwd90_{}_d{}", dtype.name(), problem.head_dim),
        grid: [
            grid_dim(problem.seqlen_q.div_ceil(block_m), "query tiles")?,
            grid_dim(problem.heads_q, "heads_q")?,
            grid_dim(problem.batch, "batch")?,
        ],
        block: [ffi::GSDPA_FWD_SM90_THREADS, 1, 1],
        shared_bytes,
    })
}

/// Why the Hopper forward cannot run a validated call with these params (whose tensor pointers are the
/// addresses the kernel will see), or `None` when it can. Each reason is a fallback to the mma.sync
/// kernel that docs/hopper-forward.md lists.
pub fn hopper_forward_unsupported(
    problem: &AttentionProblem,
    params: &ffi::GsdpaFwdParams,
) -> Option<&'static str> {
    if forward_sm90_geometry(problem.head_dim).is_err() {
        return Some("head dim not supported by the Hopper forward");
    }
    let elementwise = problem.gate == crate::problem::GateMode::Elementwise;
    let g = if elementwise { Some(params.g) } else { None };
    for ptr in [params.q, params.k, params.v].into_iter().chain(g) {
        if ptr as usize % 16 != 0 {
            return Some("TMA needs 16-byte aligned Q, K, V (and elementwise G) base addresses");
        }
    }
    // The tensor maps' row extents: the packed totals for varlen (forward_sm90_maps).
    let dims_fit = [
        problem.seqlen_q,
        problem.seqlen_k,
        problem.total_q(),
        problem.total_k(),
        problem.heads_q,
        problem.heads_kv,
        problem.batch,
    ]
    .iter()
    .all(|&d| d < (1usize << 31));
    if !dims_fit {
        return Some("a dimension exceeds what TMA coordinates (32-bit signed) address");
    }
    None
}

/// The TMA tensor map parameters of Q, K, V and (elementwise gate only) G for the Hopper forward:
/// `[D, S, H, B]` (innermost first) with the tensors' row, head and batch strides, boxes of 64 columns
/// (one 128-byte swizzled row) by the kernel's query or key tile. For varlen the row dimension is the
/// packed token axis (`Tq` or `Tk` rows, batch extent 1): the kernel addresses sequence b's rows from
/// its `cu_seqlens` offset, loads past a sequence's end read the next one's rows (masked or never
/// stored), and a Y / O tile reaching past its sequence's end is stored from registers, since TMA would
/// clip only at `Tq` (docs/hopper-forward.md). Call after [`hopper_forward_unsupported`] returned `None`.
pub fn forward_sm90_maps(
    problem: &AttentionProblem,
    dtype: DType,
    params: &ffi::GsdpaFwdParams,
) -> Result<Sm90Maps> {
    use crate::tma::{TensorMapParams, TmaElement, TmaSwizzle};
    let (block_n, _) = forward_sm90_geometry(problem.head_dim)?;
    let element = match dtype {
        DType::BF16 => TmaElement::Bf16,
        DType::F16 => TmaElement::F16,
    };
    let eb = 2u64;
    // Rows per batch entry and batch extent of the maps (varlen: one batch of all packed tokens).
    let (rows_q, rows_k, batch) = match &problem.varlen {
        Some(v) => (v.total_q(), v.total_k(), 1),
        None => (problem.seqlen_q, problem.seqlen_k, problem.batch),
    };
    // A dimension of extent 1 is never stepped: its stride is free (validation does not constrain it),
    // so give the driver a legal one.
    let stride = |elements: i64, extent: usize| -> u64 {
        let bytes = elements.unsigned_abs() * eb;
        if extent <= 1 && (bytes % 16 != 0 || bytes == 0 || bytes >= 1 << 40) {
            16
        } else {
            bytes
        }
    };
    let map = |ptr: *const std::ffi::c_void,
               s: &ffi::GsdpaStrides,
               rows: usize,
               heads: usize,
               box_rows: u32| {
        TensorMapParams::tiled(
            element,
            ptr as u64,
            &[
                problem.head_dim as u64,
                rows.max(1) as u64,
                heads.max(1) as u64,
                batch.max(1) as u64,
            ],
            &[
                stride(s.row, rows),
                stride(s.head, heads),
                stride(s.batch, batch),
            ],
            &[ffi::GSDPA_FWD_SM90_BOX_COLS, box_rows, 1, 1],
        )
        .with_swizzle(TmaSwizzle::B128)
    };
    let g = (problem.gate == crate::problem::GateMode::Elementwise).then(|| {
        map(
            params.g,
            &params.g_stride,
            rows_q,
            problem.heads_q,
            ffi::GSDPA_FWD_SM90_BLOCK_M,
        )
    });
    // Y and O: TMA stores of one consumer warpgroup's rows. TMA cannot express a base that is not 16-byte
    // aligned or a stride that is negative or not a multiple of 16 bytes (validation excludes both, a raw
    // launch might not): such an output is stored from registers instead.
    let store_map = |ptr: *mut std::ffi::c_void, s: &ffi::GsdpaStrides| {
        let expressible = |elements: i64, extent: usize| {
            extent <= 1
                || (elements > 0
                    && (elements as u64 * eb) % 16 == 0
                    && (elements as u64 * eb) < 1 << 40)
        };
        let ok = !ptr.is_null()
            && ptr as usize % 16 == 0
            && expressible(s.row, rows_q)
            && expressible(s.head, problem.heads_q)
            && expressible(s.batch, batch);
        ok.then(|| {
            map(
                ptr,
                s,
                rows_q,
                problem.heads_q,
                ffi::GSDPA_FWD_SM90_STORE_ROWS,
            )
        })
    };
    let y = store_map(params.y, &params.y_stride);
    let o = store_map(params.o, &params.o_stride);
    let qkv = [
        map(
            params.q,
            &params.q_stride,
            rows_q,
            problem.heads_q,
            ffi::GSDPA_FWD_SM90_BLOCK_M,
        ),
        map(
            params.k,
            &params.k_stride,
            rows_k,
            problem.heads_kv,
            block_n,
        ),
        map(
            params.v,
            &params.v_stride,
            rows_k,
            problem.heads_kv,
            block_n,
        ),
    ];
    Ok(Sm90Maps { qkv, g, y, o })
}

/// The Hopper forward's tensor maps ([`forward_sm90_maps`]).
#[derive(Debug, Clone)]
pub struct Sm90Maps {
    /// Q, K, V.
    pub qkv: [crate::tma::TensorMapParams; 3],
    /// The elementwise gate (`None` for the other gate modes).
    pub g: Option<crate::tma::TensorMapParams>,
    /// Y for the TMA store (`None`: TMA cannot express its layout; the kernel stores it from registers).
    pub y: Option<crate::tma::TensorMapParams>,
    /// The ungated O, like `y` (`None` also when O is not requested).
    pub o: Option<crate::tma::TensorMapParams>,
}

impl Sm90Maps {
    /// `GsdpaFwdSm90Params::tma_store`: the outputs with a map.
    pub fn tma_store(&self) -> u32 {
        let y = if self.y.is_some() {
            ffi::GSDPA_FWD_SM90_STORE_Y
        } else {
            0
        };
        let o = if self.o.is_some() {
            ffi::GSDPA_FWD_SM90_STORE_O
        } else {
            0
        };
        y | o
    }
}

/// Partial sums per (batch, query head) that the mma.sync forward ([`forward`]) writes for the gate
/// statistics: one per warp of each query block of its grid (kernels/forward/diagnostics.h).
pub fn gate_partials_per_head(problem: &AttentionProblem) -> Result<usize> {
    let (block_m, threads, _) = forward_geometry(problem.head_dim)?;
    Ok(problem.seqlen_q.div_ceil(block_m) * (threads as usize / 32))
}

/// Partial sums per (batch, query head) that the Hopper forward ([`forward_sm90`]) writes: one per
/// consumer warp (16 rows) of each 128-row query block. The same layout as the mma.sync kernel's at
/// D = 128, and at D = 256 up to 4 trailing zeros; twice its count at D = 64 (warps of 16 rows, not
/// 32). The launch sets `GsdpaFwdParams::gate_partials_per_head` to the count of the kernel it runs.
pub fn gate_partials_per_head_sm90(problem: &AttentionProblem) -> Result<usize> {
    forward_sm90_geometry(problem.head_dim)?;
    let block_m = ffi::GSDPA_FWD_SM90_BLOCK_M as usize;
    let warps = (ffi::GSDPA_FWD_SM90_THREADS as usize - 128) / 32;
    Ok(problem.seqlen_q.div_ceil(block_m) * warps)
}

/// Partial sums per (batch, query head) a gate statistics workspace must hold: the larger of the two
/// forward kernels' counts, so that one workspace serves whichever kernel the backend picks.
pub fn gate_partials_workspace_per_head(problem: &AttentionProblem) -> Result<usize> {
    Ok(gate_partials_per_head(problem)?.max(gate_partials_per_head_sm90(problem)?))
}

/// The gate statistics' second launch (kernels/gate_stats.cu), after [`forward`] on the same stream and
/// with the same params: one warp per (query head, batch).
pub fn gate_stats(problem: &AttentionProblem) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        kernel: "gsdpa_diag_gate_stats".to_string(),
        grid: [
            grid_dim(problem.heads_q, "heads_q")?,
            grid_dim(problem.batch, "batch")?,
            1,
        ],
        block: [ffi::GSDPA_GATE_STATS_THREADS, 1, 1],
        shared_bytes: 0,
    })
}

/// The tiles of the backward's two main kernels for one head dim and tile configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BackwardGeometry {
    dkdv_block_n: u32,
    dkdv_threads: u32,
    dkdv_smem: u32,
    dq_block_m: u32,
    dq_threads: u32,
    dq_smem: u32,
    /// Compact or Large.
    tiles: BackwardTiles,
    /// The kernels' name suffixes, dK/dV then dQ: `""` (compact), `"_large"`, or `"_large_1stage"`
    /// (D = 256's large tiles with one Q buffer in dK/dV and one K buffer in dQ, for sm_80). D = 64's
    /// large tiles pair the compact dK/dV kernel with a large dQ kernel.
    suffixes: [&'static str; 2],
}

impl BackwardGeometry {
    /// From `[dkdv_block_n, dkdv_threads, dkdv_smem, dq_block_m, dq_threads, dq_smem]`, as
    /// `GsdpaBwdGeometry` lists them.
    fn new(constants: [u32; 6], tiles: BackwardTiles, suffixes: [&'static str; 2]) -> Self {
        let [dkdv_block_n, dkdv_threads, dkdv_smem, dq_block_m, dq_threads, dq_smem] = constants;
        BackwardGeometry {
            dkdv_block_n,
            dkdv_threads,
            dkdv_smem,
            dq_block_m,
            dq_threads,
            dq_smem,
            tiles,
            suffixes,
        }
    }
}

/// The compact tiles of a head dim (99 KiB at most: every arch).
fn backward_compact_geometry(head_dim: usize) -> Result<BackwardGeometry> {
    let constants = match head_dim {
        64 => [
            ffi::GSDPA_BWD_DKDV_BLOCK_N_D64,
            ffi::GSDPA_BWD_DKDV_THREADS_D64,
            ffi::GSDPA_BWD_DKDV_SMEM_D64,
            ffi::GSDPA_BWD_DQ_BLOCK_M_D64,
            ffi::GSDPA_BWD_DQ_THREADS_D64,
            ffi::GSDPA_BWD_DQ_SMEM_D64,
        ],
        128 => [
            ffi::GSDPA_BWD_DKDV_BLOCK_N_D128,
            ffi::GSDPA_BWD_DKDV_THREADS_D128,
            ffi::GSDPA_BWD_DKDV_SMEM_D128,
            ffi::GSDPA_BWD_DQ_BLOCK_M_D128,
            ffi::GSDPA_BWD_DQ_THREADS_D128,
            ffi::GSDPA_BWD_DQ_SMEM_D128,
        ],
        256 => [
            ffi::GSDPA_BWD_DKDV_BLOCK_N_D256,
            ffi::GSDPA_BWD_DKDV_THREADS_D256,
            ffi::GSDPA_BWD_DKDV_SMEM_D256,
            ffi::GSDPA_BWD_DQ_BLOCK_M_D256,
            ffi::GSDPA_BWD_DQ_THREADS_D256,
            ffi::GSDPA_BWD_DQ_SMEM_D256,
        ],
        _ => return Err(GsdpaError::UnsupportedHeadDim { head_dim }),
    };
    Ok(BackwardGeometry::new(
        constants,
        BackwardTiles::Compact,
        ["", ""],
    ))
}

/// The large tiles of a head dim, `None` for a head dim that has none. D = 64's are a large dQ kernel
/// beside the compact dK/dV one (kernels/backward/traits.h says why), 112 KiB; D = 64's and D = 128's fit
/// sm_80 and sm_90, D = 256's sm_90 only (see [`backward_large_one_stage_geometry`] for sm_80).
fn backward_large_geometry(head_dim: usize) -> Option<BackwardGeometry> {
    if head_dim == 64 {
        let compact = backward_compact_geometry(64).ok()?;
        return Some(BackwardGeometry {
            dq_block_m: ffi::GSDPA_BWD_LARGE_DQ_BLOCK_M_D64,
            dq_threads: ffi::GSDPA_BWD_LARGE_DQ_THREADS_D64,
            dq_smem: ffi::GSDPA_BWD_LARGE_DQ_SMEM_D64,
            tiles: BackwardTiles::Large,
            suffixes: ["", "_large"],
            ..compact
        });
    }
    let constants = match head_dim {
        128 => [
            ffi::GSDPA_BWD_LARGE_DKDV_BLOCK_N_D128,
            ffi::GSDPA_BWD_LARGE_DKDV_THREADS_D128,
            ffi::GSDPA_BWD_LARGE_DKDV_SMEM_D128,
            ffi::GSDPA_BWD_LARGE_DQ_BLOCK_M_D128,
            ffi::GSDPA_BWD_LARGE_DQ_THREADS_D128,
            ffi::GSDPA_BWD_LARGE_DQ_SMEM_D128,
        ],
        256 => [
            ffi::GSDPA_BWD_LARGE_DKDV_BLOCK_N_D256,
            ffi::GSDPA_BWD_LARGE_DKDV_THREADS_D256,
            ffi::GSDPA_BWD_LARGE_DKDV_SMEM_D256,
            ffi::GSDPA_BWD_LARGE_DQ_BLOCK_M_D256,
            ffi::GSDPA_BWD_LARGE_DQ_THREADS_D256,
            ffi::GSDPA_BWD_LARGE_DQ_SMEM_D256,
        ],
        _ => return None,
    };
    Some(BackwardGeometry::new(
        constants,
        BackwardTiles::Large,
        ["_large", "_large"],
    ))
}

/// D = 256's large tiles with one Q buffer in the dK/dV kernel and one K buffer in the dQ kernel
/// (144 KiB and 136 KiB: sm_80's 163 KiB holds them), `None` for the other head dims. The same tiles,
/// grids and threads as [`backward_large_geometry`]'s.
fn backward_large_one_stage_geometry(head_dim: usize) -> Option<BackwardGeometry> {
    let large = backward_large_geometry(head_dim).filter(|_| head_dim == 256)?;
    Some(BackwardGeometry {
        dkdv_smem: ffi::GSDPA_BWD_LARGE_1STAGE_DKDV_SMEM_D256,
        dq_smem: ffi::GSDPA_BWD_LARGE_1STAGE_DQ_SMEM_D256,
        suffixes: ["_large_1stage", "_large_1stage"],
        ..large
    })
}

/// The tile configuration a backward of head dim `head_dim` runs with when `requested`, on a device
/// whose blocks may opt in to `max_dynamic_shared_bytes` of dynamic shared memory: never
/// [`BackwardTiles::Auto`]. Auto is [`BackwardTiles::Large`] when the head dim has large tiles and both
/// main kernels' shared memory fits the limit (D = 64: 112 KiB and D = 128: 144 KiB, sm_80 and sm_90;
/// D = 256: 176 KiB with two stages, sm_90, or 144 KiB with one, sm_80), else
/// [`BackwardTiles::Compact`]; Large stays Large whatever the limit (the launch is then
/// refused: [`crate::arch::check_resources`]). At D = 256, Large runs the two-stage kernels
/// (`*_d256_large`) where the limit holds them, else the one-stage ones (`*_d256_large_1stage`).
pub fn backward_tiles(
    head_dim: usize,
    requested: BackwardTiles,
    max_dynamic_shared_bytes: u32,
) -> Result<BackwardTiles> {
    Ok(backward_geometry(head_dim, requested, max_dynamic_shared_bytes)?.tiles)
}

/// The geometry [`backward_tiles`] chooses.
fn backward_geometry(
    head_dim: usize,
    requested: BackwardTiles,
    max_dynamic_shared_bytes: u32,
) -> Result<BackwardGeometry> {
    let compact = backward_compact_geometry(head_dim)?;
    let fits = |g: &BackwardGeometry| g.dkdv_smem.max(g.dq_smem) <= max_dynamic_shared_bytes;
    // The large tiles this device runs: the two-stage kernels where they fit or the head dim has no
    // others (D = 128), else the one-stage ones (D = 256; a forced Large on a device that holds neither
    // is refused naming these).
    let large =
        backward_large_geometry(head_dim).map(|two| {
            match backward_large_one_stage_geometry(head_dim) {
                Some(one) if !fits(&two) => one,
                _ => two,
            }
        });
    Ok(match (requested, large) {
        (BackwardTiles::Large, Some(large)) => large,
        (BackwardTiles::Auto, Some(large)) if fits(&large) => large,
        _ => compact,
    })
}

/// The backward's launch sequence for tensors of `dtype`, in stream order, all taking the same
/// `GsdpaBwdParams`, with the tiles [`backward_tiles`] chooses for `options.tiles` on a device whose
/// blocks may opt in to `max_dynamic_shared_bytes` of dynamic shared memory:
/// 1. `gsdpa_bwd_preprocess`: Delta = rowsum(dY * Y), dO = dY * act(G), dG; zeroes the dQ accumulator
///    in the fast mode;
/// 2. `gsdpa_bwd_dkdv`: one block per K/V tile and kv head, looping over the query heads of its group
///    (dK, dV reduced in registers); the fast mode also adds dQ into the f32 accumulator with atomics;
/// 3. fast mode: `gsdpa_bwd_dq_convert` (accumulator to dtype); deterministic mode: `gsdpa_bwd_dq`, one
///    block per Q tile recomputing what it needs, no atomics.
///
/// The workspace ([`crate::backward_workspace_bytes`]) does not depend on the tiles. Launches whose grid
/// is empty are left out. An empty query side with keys still runs step 2, which writes dK = dV = 0.
pub fn backward(
    problem: &AttentionProblem,
    dtype: DType,
    options: BackwardOptions,
    max_dynamic_shared_bytes: u32,
) -> Result<Vec<LaunchConfig>> {
    let dt = dtype.name();
    let d = problem.head_dim;
    let geometry = backward_geometry(d, options.tiles, max_dynamic_shared_bytes)?;
    let [dkdv_suffix, dq_suffix] = geometry.suffixes;
    let heads_q = grid_dim(problem.heads_q, "heads_q")?;
    let heads_kv = grid_dim(problem.heads_kv, "heads_kv")?;
    let batch = grid_dim(problem.batch, "batch")?;
    let q_tiles = |rows: u32| grid_dim(problem.seqlen_q.div_ceil(rows as usize), "query tiles");
    let mut launches = vec![
        LaunchConfig {
            kernel: format!("gsdpa_bwd_preprocess_{dt}"),
            grid: [q_tiles(ffi::GSDPA_BWD_PRE_ROWS)?, heads_q, batch],
            block: [ffi::GSDPA_BWD_PRE_THREADS, 1, 1],
            shared_bytes: 0,
        },
        LaunchConfig {
            kernel: format!("gsdpa_bwd_dkdv_{dt}_d{d}{dkdv_suffix}"),
            grid: [
                grid_dim(
                    problem.seqlen_k.div_ceil(geometry.dkdv_block_n as usize),
                    "key tiles",
                )?,
                heads_kv,
                batch,
            ],
            block: [geometry.dkdv_threads, 1, 1],
            shared_bytes: geometry.dkdv_smem,
        },
    ];
    launches.push(if options.deterministic {
        LaunchConfig {
            kernel: format!("gsdpa_bwd_dq_{dt}_d{d}{dq_suffix}"),
            grid: [q_tiles(geometry.dq_block_m)?, heads_q, batch],
            block: [geometry.dq_threads, 1, 1],
            shared_bytes: geometry.dq_smem,
        }
    } else {
        LaunchConfig {
            kernel: format!("gsdpa_bwd_dq_convert_{dt}"),
            grid: [q_tiles(ffi::GSDPA_BWD_CONVERT_ROWS)?, heads_q, batch],
            block: [ffi::GSDPA_BWD_CONVERT_THREADS, 1, 1],
            shared_bytes: 0,
        }
    });
    launches.retain(|l| !l.is_empty());
    Ok(launches)
}

/// The standalone gate kernel `Y = O * act(G)` over `rows` rows of `heads` heads: blocks of
/// `GSDPA_GATE_THREADS`, one thread per 8 elements (16 bytes), the grid capped at a few waves (the kernel
/// walks the rest with a grid-stride loop).
pub fn gate(dtype: DType, rows: usize, heads: usize, head_dim: usize) -> Result<LaunchConfig> {
    let row_heads = rows
        .checked_mul(heads)
        .filter(|&n| n < (1usize << 32))
        .ok_or_else(|| GsdpaError::SizeOverflow("gate: rows * heads must be below 2^32".into()))?;
    let threads = ffi::GSDPA_GATE_THREADS as usize;
    let vectors = row_heads
        .checked_mul(head_dim.div_ceil(8))
        .ok_or_else(|| GsdpaError::SizeOverflow("gate elements".into()))?;
    Ok(LaunchConfig {
        kernel: format!("gsdpa_gate_{}", dtype.name()),
        grid: [
            grid_dim(vectors.div_ceil(threads).clamp(1, 65536), "gate blocks")?,
            1,
            1,
        ],
        block: [ffi::GSDPA_GATE_THREADS, 1, 1],
        shared_bytes: 0,
    })
}

/// Lanes of a warp that share one row in the gate backward kernel: the row's 16-byte vectors rounded up
/// to a power of two, at most 32 (mirrors `backward_lanes_per_row` in `kernels/gate.cu`).
fn gate_backward_lanes_per_row(head_dim: usize) -> usize {
    (head_dim / 8).clamp(1, 32).next_power_of_two()
}

/// The standalone gate backward kernel (`dO = dY * act(G)`, `dG = dY * O * act'(G)`) over `rows` rows
/// of `heads` heads: blocks of `GSDPA_GATE_THREADS`, each row handled by a group of lanes of one warp
/// (8 elements each), the grid capped at a few waves (the kernel walks the rest with a grid-stride loop).
pub fn gate_backward(
    dtype: DType,
    rows: usize,
    heads: usize,
    head_dim: usize,
) -> Result<LaunchConfig> {
    let row_heads = rows
        .checked_mul(heads)
        .filter(|&n| n < (1usize << 32))
        .ok_or_else(|| {
            GsdpaError::SizeOverflow("gate backward: rows * heads must be below 2^32".into())
        })?;
    let threads = ffi::GSDPA_GATE_THREADS as usize;
    let rows_per_block = threads / gate_backward_lanes_per_row(head_dim);
    Ok(LaunchConfig {
        kernel: format!("gsdpa_gate_backward_{}", dtype.name()),
        grid: [
            grid_dim(
                row_heads.div_ceil(rows_per_block).clamp(1, 65536),
                "gate backward blocks",
            )?,
            1,
            1,
        ],
        block: [ffi::GSDPA_GATE_THREADS, 1, 1],
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
