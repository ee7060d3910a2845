//! The budget every attention kernel's main loop is held to, in one table, and the check against it.
//!
//! Each metric has two numbers:
//! - the TARGET: what the kernel should reach. For the forward at D = 64 and 128 these are the project's
//!   goals, set from FlashAttention-2's own kernel compiled with the same nvcc (2.68 non-HMMA per HMMA,
//!   0.31 LDSM per HMMA, 33 integer/predicate instructions per warp per key tile, 2 blocks per SM on
//!   A100 and H100), with a little headroom. Reported as met / not met; not enforced.
//! - the CEILING: what is enforced now, today's measured value plus a small margin (or, for blocks per
//!   SM, today's value as a floor), so that any regression fails `tests/sass.rs`. When a kernel
//!   improves, lower its ceiling to the new value; when it reaches the target, the ceiling becomes the
//!   target.
//!
//! Why the other targets are what they are:
//! - Forward, D = 256: one key tile issues twice the HMMA of D = 128 (both GEMMs grow with D) while the
//!   softmax work per tile stays the same, so the D = 128 ratios are an upper bound (FlashAttention-2's
//!   D = 256 kernel has the same loop shape). Its integer work grows with the loads it addresses, twice
//!   D = 128's: 120. FlashAttention-2 runs D = 256 at one block per SM (its K and V tiles alone are
//!   64 KiB), so the target is 1.
//! - Backward (dK/dV and dQ loops): FlashAttention-2's backward does five GEMMs per tile pair against the
//!   forward's two, with about twice the elementwise work per score (P, then dS), so its non-HMMA per
//!   HMMA is no worse than its forward's: 2.8 again. Both operands of most of those GEMMs come from shared
//!   memory (the forward keeps P in registers), so LDSM per HMMA is higher: 0.5. Integer work per tile
//!   is that of two forward tiles: 120. Its backward kernels run one block per SM on A100 at D >= 64.
//! - Backward with the large tiles (`*_large`, D = 128, kernels/backward/traits.h): FlashAttention-2's
//!   own tile on A100 (64 query rows x 128 keys, warp tiles of 32 x 32 for the scores and 32 keys x 64
//!   dims for dK, dV) reads about 0.45 LDSM per HMMA, the target of the dK/dV kernel; the dQ kernel's
//!   third GEMM has 32 x 32 warp tiles (0.5 LDSM per HMMA), so it meets the compact target but not this
//!   one. The other targets are the compact kernels'; int+pred counts a whole tile, twice the compact
//!   tile's HMMA, so 120 is a stricter bound there.
//! - Backward with D = 64's large dQ kernel (128 x 128, the deterministic mode's): the compact targets;
//!   its 16 x 128 score warp tiles (the only spill-free grid) read more LDSM than FA2's 32 x 64.
//! - Backward with D = 256's large tiles (64 x 64 for both kernels, two stages: sm_90):
//!   FlashAttention-2's own D = 256 tile on the GPUs with the shared memory for it. Four mma tiles per
//!   warp for the scores (32 x 16: 3 LDSM per 4 HMMA) keep its LDSM per HMMA above the D = 128 large
//!   tile's, so the targets are the compact kernels'. sm_80 cannot hold the tile: its entry points are
//!   empty there (no budget). Its one-stage variant (`*_d256_large_1stage`: one Q buffer in dK/dV, one K buffer in dQ, 144 and
//!   136 KiB) runs there instead, with the same targets; it has a budget on sm_80 and on sm_90a, whose
//!   shared memory holds it too (the launch picks the two-stage kernels there).
//!
//! The gate rule is separate and exact: no kernel that applies the gate ([`super::is_gated`]) may call a
//! slow-path subroutine ([`super::SubroutineKind::SlowPath`]; the IEEE division's out-of-range case is
//! one), except for the calls listed in [`ALLOWED_SLOW_PATH_CALLS`], each with the code that makes it.

use super::KernelReport;

/// A target and the ceiling enforced now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub target: f64,
    pub ceiling: f64,
}

const fn limit(target: f64, ceiling: f64) -> Limit {
    Limit { target, ceiling }
}

/// The budget of one kernel on one arch. Ratios and counts are per main-loop iteration (one tile per
/// warp) on the loop's steady path ([`super::steady_path`]: a tile that prefetches the next one and
/// needs no causal mask); blocks per SM on the GPU that runs the arch (A100 for sm_80, H100
/// for sm_90a).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub kernel: &'static str,
    pub arch: &'static str,
    pub non_hmma_per_hmma: Limit,
    pub ldsm_per_hmma: Limit,
    pub int_pred: Limit,
    /// Higher is better: the ceiling is a floor here.
    pub blocks_per_sm: Limit,
}

// Targets, as above.
const FWD_NON_HMMA: f64 = 2.8;
const FWD_LDSM: f64 = 0.34;
const FWD_INT: f64 = 60.0;
const FWD_BLOCKS: f64 = 2.0;
const FWD_D256_INT: f64 = 120.0;
const FWD_D256_BLOCKS: f64 = 1.0;
const BWD_NON_HMMA: f64 = 2.8;
const BWD_LDSM: f64 = 0.5;
const BWD_INT: f64 = 120.0;
const BWD_BLOCKS: f64 = 1.0;
const BWD_LARGE_LDSM: f64 = 0.45;

macro_rules! budget {
    ($kernel:literal, $arch:literal, $non_hmma:expr, $ldsm:expr, $int:expr, $blocks:expr) => {
        Budget {
            kernel: $kernel,
            arch: $arch,
            non_hmma_per_hmma: $non_hmma,
            ldsm_per_hmma: $ldsm,
            int_pred: $int,
            blocks_per_sm: $blocks,
        }
    };
}

/// Every budgeted kernel and arch. Ceilings: the values measured on 2026-12-01 (nvcc 13.0.88, after the
/// branch-free gate; BENCHMARKS.md) plus about 3% (ratios) or 5% (integer counts), blocks as measured;
/// the forward's non-HMMA and integer ceilings re-measured on 2026-12-02 after its key loop's ldmatrix
/// addresses were hoisted (kernels/forward/kernel_traits.h), same margins; the forward at D = 64 and
/// D = 128 sm_80 re-measured on 2026-12-02 after D = 64 moved to 4 warps x 32 rows (two blocks per SM,
/// LDSM per HMMA at target; its non-HMMA and integer ceilings rose with the softmax and Q addressing
/// per HMMA, kernel_traits.h says why), same margins; the forward at D = 64 and 256 re-measured on
/// 2026-12-02 after its loop-invariant ldmatrix bases were made loop-carried
/// (`LdsmLaneOffsets::keep_in_registers`: int+pred on sm_80 103 -> 63 and 152 -> 112, on sm_90a 50 -> 64
/// and 100 -> 114), same margins; the large-tile backward kernels measured on 2026-12-02 when they were
/// added, same margins; on 2026-12-03 the compact dK/dV kernels re-measured after their loop-invariant
/// ldmatrix bases were made loop-carried (int+pred on sm_80: 182 -> 126, 186 -> 163, 146 -> 142 at
/// D = 64 / 128 / 256) and D = 256's large tiles measured when they were added, same margins; D = 256's
/// one-stage large tiles (`*_large_1stage`) and D = 64's large dQ kernel measured on 2026-12-03 when
/// they were added, same margins.
#[rustfmt::skip]
pub const BUDGETS: &[Budget] = &[
    budget!("gsdpa_fwd_bf16_d128", "sm_80", limit(FWD_NON_HMMA, 2.36), limit(FWD_LDSM, 0.52), limit(FWD_INT, 46.0), limit(FWD_BLOCKS, 1.0)),
    budget!("gsdpa_fwd_bf16_d128", "sm_90a", limit(FWD_NON_HMMA, 2.37), limit(FWD_LDSM, 0.52), limit(FWD_INT, 46.0), limit(FWD_BLOCKS, 1.0)),
    budget!("gsdpa_fwd_bf16_d256", "sm_80", limit(FWD_NON_HMMA, 2.15), limit(FWD_LDSM, 0.65), limit(FWD_D256_INT, 66.0), limit(FWD_D256_BLOCKS, 2.0)),
    budget!("gsdpa_fwd_bf16_d256", "sm_90a", limit(FWD_NON_HMMA, 2.16), limit(FWD_LDSM, 0.65), limit(FWD_D256_INT, 66.0), limit(FWD_D256_BLOCKS, 2.0)),
    budget!("gsdpa_fwd_bf16_d64", "sm_80", limit(FWD_NON_HMMA, 3.55), limit(FWD_LDSM, 0.32), limit(FWD_INT, 50.0), limit(FWD_BLOCKS, 2.0)),
    budget!("gsdpa_fwd_bf16_d64", "sm_90a", limit(FWD_NON_HMMA, 3.56), limit(FWD_LDSM, 0.32), limit(FWD_INT, 50.0), limit(FWD_BLOCKS, 2.0)),
    budget!("gsdpa_fwd_f16_d128", "sm_80", limit(FWD_NON_HMMA, 2.36), limit(FWD_LDSM, 0.52), limit(FWD_INT, 46.0), limit(FWD_BLOCKS, 1.0)),
    budget!("gsdpa_fwd_f16_d128", "sm_90a", limit(FWD_NON_HMMA, 2.37), limit(FWD_LDSM, 0.52), limit(FWD_INT, 46.0), limit(FWD_BLOCKS, 1.0)),
    budget!("gsdpa_fwd_f16_d256", "sm_80", limit(FWD_NON_HMMA, 2.15), limit(FWD_LDSM, 0.65), limit(FWD_D256_INT, 66.0), limit(FWD_D256_BLOCKS, 2.0)),
    budget!("gsdpa_fwd_f16_d256", "sm_90a", limit(FWD_NON_HMMA, 2.16), limit(FWD_LDSM, 0.65), limit(FWD_D256_INT, 66.0), limit(FWD_D256_BLOCKS, 2.0)),
    budget!("gsdpa_fwd_f16_d64", "sm_80", limit(FWD_NON_HMMA, 3.55), limit(FWD_LDSM, 0.32), limit(FWD_INT, 50.0), limit(FWD_BLOCKS, 2.0)),
    budget!("gsdpa_fwd_f16_d64", "sm_90a", limit(FWD_NON_HMMA, 3.56), limit(FWD_LDSM, 0.32), limit(FWD_INT, 50.0), limit(FWD_BLOCKS, 2.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d128", "sm_80", limit(BWD_NON_HMMA, 2.70), limit(BWD_LDSM, 0.64), limit(BWD_INT, 117.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d128", "sm_90a", limit(BWD_NON_HMMA, 2.74), limit(BWD_LDSM, 0.64), limit(BWD_INT, 119.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d128_large", "sm_80", limit(BWD_NON_HMMA, 2.17), limit(BWD_LARGE_LDSM, 0.45), limit(BWD_INT, 184.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d128_large", "sm_90a", limit(BWD_NON_HMMA, 2.08), limit(BWD_LARGE_LDSM, 0.45), limit(BWD_INT, 165.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d256_large", "sm_90a", limit(BWD_NON_HMMA, 1.82), limit(BWD_LDSM, 0.58), limit(BWD_INT, 160.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d256_large_1stage", "sm_80", limit(BWD_NON_HMMA, 2.04), limit(BWD_LDSM, 0.58), limit(BWD_INT, 204.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d256_large_1stage", "sm_90a", limit(BWD_NON_HMMA, 2.00), limit(BWD_LDSM, 0.58), limit(BWD_INT, 196.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d256", "sm_80", limit(BWD_NON_HMMA, 4.03), limit(BWD_LDSM, 1.35), limit(BWD_INT, 108.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d256", "sm_90a", limit(BWD_NON_HMMA, 4.04), limit(BWD_LDSM, 1.35), limit(BWD_INT, 107.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d64", "sm_80", limit(BWD_NON_HMMA, 3.11), limit(BWD_LDSM, 0.52), limit(BWD_INT, 91.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d64", "sm_90a", limit(BWD_NON_HMMA, 3.15), limit(BWD_LDSM, 0.52), limit(BWD_INT, 93.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d128", "sm_80", limit(BWD_NON_HMMA, 2.70), limit(BWD_LDSM, 0.64), limit(BWD_INT, 117.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d128", "sm_90a", limit(BWD_NON_HMMA, 2.74), limit(BWD_LDSM, 0.64), limit(BWD_INT, 119.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d128_large", "sm_80", limit(BWD_NON_HMMA, 2.17), limit(BWD_LARGE_LDSM, 0.45), limit(BWD_INT, 184.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d128_large", "sm_90a", limit(BWD_NON_HMMA, 2.08), limit(BWD_LARGE_LDSM, 0.45), limit(BWD_INT, 165.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d256_large", "sm_90a", limit(BWD_NON_HMMA, 1.82), limit(BWD_LDSM, 0.58), limit(BWD_INT, 160.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d256_large_1stage", "sm_80", limit(BWD_NON_HMMA, 2.04), limit(BWD_LDSM, 0.58), limit(BWD_INT, 204.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d256_large_1stage", "sm_90a", limit(BWD_NON_HMMA, 2.00), limit(BWD_LDSM, 0.58), limit(BWD_INT, 196.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d256", "sm_80", limit(BWD_NON_HMMA, 4.03), limit(BWD_LDSM, 1.35), limit(BWD_INT, 108.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d256", "sm_90a", limit(BWD_NON_HMMA, 4.04), limit(BWD_LDSM, 1.35), limit(BWD_INT, 107.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d64", "sm_80", limit(BWD_NON_HMMA, 3.11), limit(BWD_LDSM, 0.52), limit(BWD_INT, 91.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d64", "sm_90a", limit(BWD_NON_HMMA, 3.15), limit(BWD_LDSM, 0.52), limit(BWD_INT, 93.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d128", "sm_80", limit(BWD_NON_HMMA, 2.69), limit(BWD_LDSM, 0.70), limit(BWD_INT, 81.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d128", "sm_90a", limit(BWD_NON_HMMA, 2.53), limit(BWD_LDSM, 0.70), limit(BWD_INT, 69.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d128_large", "sm_80", limit(BWD_NON_HMMA, 2.11), limit(BWD_LARGE_LDSM, 0.52), limit(BWD_INT, 107.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d128_large", "sm_90a", limit(BWD_NON_HMMA, 2.11), limit(BWD_LARGE_LDSM, 0.52), limit(BWD_INT, 107.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d256_large", "sm_90a", limit(BWD_NON_HMMA, 1.73), limit(BWD_LDSM, 0.65), limit(BWD_INT, 93.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d256_large_1stage", "sm_80", limit(BWD_NON_HMMA, 1.81), limit(BWD_LDSM, 0.65), limit(BWD_INT, 103.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d256_large_1stage", "sm_90a", limit(BWD_NON_HMMA, 1.80), limit(BWD_LDSM, 0.65), limit(BWD_INT, 100.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d256", "sm_80", limit(BWD_NON_HMMA, 3.91), limit(BWD_LDSM, 1.59), limit(BWD_INT, 65.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d256", "sm_90a", limit(BWD_NON_HMMA, 3.85), limit(BWD_LDSM, 1.59), limit(BWD_INT, 62.0), limit(BWD_BLOCKS, 2.0)),
    budget!("gsdpa_bwd_dq_bf16_d64", "sm_80", limit(BWD_NON_HMMA, 3.31), limit(BWD_LDSM, 0.60), limit(BWD_INT, 69.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d64", "sm_90a", limit(BWD_NON_HMMA, 3.31), limit(BWD_LDSM, 0.60), limit(BWD_INT, 69.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d64_large", "sm_80", limit(BWD_NON_HMMA, 3.03), limit(BWD_LDSM, 0.56), limit(BWD_INT, 119.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d64_large", "sm_90a", limit(BWD_NON_HMMA, 3.02), limit(BWD_LDSM, 0.56), limit(BWD_INT, 118.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d128", "sm_80", limit(BWD_NON_HMMA, 2.69), limit(BWD_LDSM, 0.70), limit(BWD_INT, 81.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d128", "sm_90a", limit(BWD_NON_HMMA, 2.53), limit(BWD_LDSM, 0.70), limit(BWD_INT, 69.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d128_large", "sm_80", limit(BWD_NON_HMMA, 2.11), limit(BWD_LARGE_LDSM, 0.52), limit(BWD_INT, 107.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d128_large", "sm_90a", limit(BWD_NON_HMMA, 2.11), limit(BWD_LARGE_LDSM, 0.52), limit(BWD_INT, 107.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d256_large", "sm_90a", limit(BWD_NON_HMMA, 1.73), limit(BWD_LDSM, 0.65), limit(BWD_INT, 93.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d256_large_1stage", "sm_80", limit(BWD_NON_HMMA, 1.81), limit(BWD_LDSM, 0.65), limit(BWD_INT, 103.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d256_large_1stage", "sm_90a", limit(BWD_NON_HMMA, 1.80), limit(BWD_LDSM, 0.65), limit(BWD_INT, 100.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d256", "sm_80", limit(BWD_NON_HMMA, 3.91), limit(BWD_LDSM, 1.59), limit(BWD_INT, 65.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d256", "sm_90a", limit(BWD_NON_HMMA, 3.85), limit(BWD_LDSM, 1.59), limit(BWD_INT, 62.0), limit(BWD_BLOCKS, 2.0)),
    budget!("gsdpa_bwd_dq_f16_d64", "sm_80", limit(BWD_NON_HMMA, 3.31), limit(BWD_LDSM, 0.60), limit(BWD_INT, 69.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d64", "sm_90a", limit(BWD_NON_HMMA, 3.31), limit(BWD_LDSM, 0.60), limit(BWD_INT, 69.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d64_large", "sm_80", limit(BWD_NON_HMMA, 3.03), limit(BWD_LDSM, 0.56), limit(BWD_INT, 119.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d64_large", "sm_90a", limit(BWD_NON_HMMA, 3.02), limit(BWD_LDSM, 0.56), limit(BWD_INT, 118.0), limit(BWD_BLOCKS, 1.0)),
];

// ---------------------------------------------------------------------------------------------------
// The paged decode (kernels/decode.cu): memory-bound, so its budget is on the copies, not the HMMA.
// ---------------------------------------------------------------------------------------------------

/// The budget of one decode kernel on one arch, per iteration of its main loop (one key tile per warp).
///
/// Decode is memory-bound, so the budget is on what a warp issues per 16-byte copy and on the copies in
/// flight, not on the HMMA ratios of [`Budget`]. The paths are [`super::loaded_path`]'s: a tile of
/// in-range keys (block-table reads taken; the steady path would take the cheaper zero-fill side of a
/// key past the length). At decode's GQA packing (group 8, Sq 1: 8 real rows of 64) one warp of four
/// does the math and three only copy (kernels/decode.cu), so both paths are held to a budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeBudget {
    pub kernel: &'static str,
    pub arch: &'static str,
    /// All instructions per `LDGSTS`, on the path of a warp that only copies.
    pub insts_per_ldgsts: Limit,
    /// All instructions per `LDGSTS`, on the path of the warp that also does the math.
    pub math_insts_per_ldgsts: Limit,
    /// Integer / predicate instructions, on the copy path.
    pub int_pred: Limit,
    /// LDG on the copy path: the block-table reads.
    pub table_reads: Limit,
    /// Higher is better: the ceiling is a floor here.
    pub blocks_per_sm: Limit,
}

// Decode targets.
// - Instructions per 16-byte copy (copy path): an H200 moves 4.8 TB/s over 132 SMs at about 1.98 GHz,
//   18 bytes per SM cycle, so a warp-wide 16-byte LDGSTS (512 bytes) is due every 28 SM cycles, 110
//   issue slots of the SM's four schedulers. The paged gather needs the copy, its address (block id *
//   block stride + slot * slot stride: about 6 integer instructions), its table read and its share of
//   the loop's barriers and waits: 16 keeps the schedulers at most 15% busy with copies.
// - Instructions per copy on the math path: the math warp's whole iteration must issue within the
//   tile's transfer time. At D = 256 and 2 blocks per SM a block's 32 KB tile (32 keys of K and V)
//   arrives in about 3500 cycles at 80% of the peak, 220 cycles per copy of the warp's 16; at a
//   dependent-chain issue rate of one instruction per 2 cycles that is 110: the target is 100.
// - Integer work (copy path): those 6 address instructions per copy, D / 16 copies per thread per
//   tile: 96 at D = 256, 48 at 128, 24 at 64.
// - Table reads: a thread's rows of a 32-key tile lie in at most 2 pages at block size 16, for K and
//   for V: 4 (met: each tile's at most two ids are read once, kernels/decode/paged_tile.h).
// - Blocks per SM: bytes in flight. Little's law at 4.8 TB/s and about 1 us of DRAM latency asks for
//   about 36 KB in flight per SM; one block has one 16 KB tile (D = 256) in flight at a time, so 2 blocks
//   at D = 256 and 4 at D = 128 and 64, whose tiles are a half and a quarter of that.
const DEC_INSTS_PER_COPY: f64 = 16.0;
const DEC_MATH_INSTS_PER_COPY: f64 = 100.0;
const DEC_TABLE_READS: f64 = 4.0;

macro_rules! decode_budget {
    ($kernel:literal, $arch:literal, $per_copy:expr, $math_per_copy:expr, $int:expr, $table:expr, $blocks:expr) => {
        DecodeBudget {
            kernel: $kernel,
            arch: $arch,
            insts_per_ldgsts: $per_copy,
            math_insts_per_ldgsts: $math_per_copy,
            int_pred: $int,
            table_reads: $table,
            blocks_per_sm: $blocks,
        }
    };
}

/// Every budgeted decode kernel and arch. Ceilings: the values measured on 2026-12-02 (nvcc 13.0.88,
/// after the per-tile page location of kernels/decode/paged_tile.h) plus about 3% (ratios) or 5%
/// (integer counts); table reads and blocks as measured.
#[rustfmt::skip]
pub const DECODE_BUDGETS: &[DecodeBudget] = &[
    decode_budget!("gsdpa_decode_bf16_d128", "sm_80", limit(DEC_INSTS_PER_COPY, 46.23), limit(DEC_MATH_INSTS_PER_COPY, 67.08), limit(48.0, 342.0), limit(DEC_TABLE_READS, 4.0), limit(4.0, 3.0)),
    decode_budget!("gsdpa_decode_bf16_d128", "sm_90a", limit(DEC_INSTS_PER_COPY, 47.13), limit(DEC_MATH_INSTS_PER_COPY, 67.98), limit(48.0, 343.0), limit(DEC_TABLE_READS, 4.0), limit(4.0, 3.0)),
    decode_budget!("gsdpa_decode_bf16_d256", "sm_80", limit(DEC_INSTS_PER_COPY, 38.18), limit(DEC_MATH_INSTS_PER_COPY, 58.65), limit(96.0, 578.0), limit(DEC_TABLE_READS, 4.0), limit(2.0, 2.0)),
    decode_budget!("gsdpa_decode_bf16_d256", "sm_90a", limit(DEC_INSTS_PER_COPY, 38.57), limit(DEC_MATH_INSTS_PER_COPY, 59.03), limit(96.0, 577.0), limit(DEC_TABLE_READS, 4.0), limit(2.0, 2.0)),
    decode_budget!("gsdpa_decode_bf16_d64", "sm_80", limit(DEC_INSTS_PER_COPY, 63.35), limit(DEC_MATH_INSTS_PER_COPY, 85.75), limit(24.0, 226.0), limit(DEC_TABLE_READS, 4.0), limit(4.0, 4.0)),
    decode_budget!("gsdpa_decode_bf16_d64", "sm_90a", limit(DEC_INSTS_PER_COPY, 64.89), limit(DEC_MATH_INSTS_PER_COPY, 87.30), limit(24.0, 225.0), limit(DEC_TABLE_READS, 4.0), limit(4.0, 4.0)),
    decode_budget!("gsdpa_decode_f16_d128", "sm_80", limit(DEC_INSTS_PER_COPY, 46.23), limit(DEC_MATH_INSTS_PER_COPY, 66.95), limit(48.0, 342.0), limit(DEC_TABLE_READS, 4.0), limit(4.0, 3.0)),
    decode_budget!("gsdpa_decode_f16_d128", "sm_90a", limit(DEC_INSTS_PER_COPY, 47.13), limit(DEC_MATH_INSTS_PER_COPY, 67.98), limit(48.0, 344.0), limit(DEC_TABLE_READS, 4.0), limit(4.0, 3.0)),
    decode_budget!("gsdpa_decode_f16_d256", "sm_80", limit(DEC_INSTS_PER_COPY, 38.18), limit(DEC_MATH_INSTS_PER_COPY, 58.65), limit(96.0, 576.0), limit(DEC_TABLE_READS, 4.0), limit(2.0, 2.0)),
    decode_budget!("gsdpa_decode_f16_d256", "sm_90a", limit(DEC_INSTS_PER_COPY, 38.57), limit(DEC_MATH_INSTS_PER_COPY, 59.03), limit(96.0, 576.0), limit(DEC_TABLE_READS, 4.0), limit(2.0, 2.0)),
    decode_budget!("gsdpa_decode_f16_d64", "sm_80", limit(DEC_INSTS_PER_COPY, 63.35), limit(DEC_MATH_INSTS_PER_COPY, 85.75), limit(24.0, 225.0), limit(DEC_TABLE_READS, 4.0), limit(4.0, 4.0)),
    decode_budget!("gsdpa_decode_f16_d64", "sm_90a", limit(DEC_INSTS_PER_COPY, 64.89), limit(DEC_MATH_INSTS_PER_COPY, 87.30), limit(24.0, 225.0), limit(DEC_TABLE_READS, 4.0), limit(4.0, 4.0)),
];

/// Checks every decode budget whose arch is among the reports' archs, as [`check`] does.
pub fn check_decode(reports: &[KernelReport]) -> Vec<Check> {
    let mut checks = Vec::new();
    for b in DECODE_BUDGETS {
        if !reports.iter().any(|r| r.arch == b.arch) {
            continue;
        }
        let report = reports
            .iter()
            .find(|r| r.name == b.kernel && r.arch == b.arch);
        let main_loop = report.and_then(|r| r.main_loop.as_ref());
        let copy_path = main_loop.map(|l| &l.loaded);
        let per_copy = |c: &super::Counts| {
            let copies = c.get(super::Class::Ldgsts);
            (copies > 0).then(|| f64::from(c.total()) / f64::from(copies))
        };
        let blocks = report
            .and_then(|r| r.occupancy)
            .map(|o| f64::from(o.blocks));
        let mut push = |metric, value, limit, higher_is_better| {
            checks.push(Check {
                kernel: b.kernel,
                arch: b.arch,
                metric,
                value,
                limit,
                higher_is_better,
            })
        };
        push(
            "insts_per_ldgsts",
            copy_path.and_then(per_copy),
            b.insts_per_ldgsts,
            false,
        );
        push(
            "math_insts_per_ldgsts",
            main_loop.and_then(|l| per_copy(&l.loaded_math)),
            b.math_insts_per_ldgsts,
            false,
        );
        push(
            "int_pred",
            copy_path.map(|c| f64::from(c.get(super::Class::IntPred))),
            b.int_pred,
            false,
        );
        push(
            "table_reads",
            copy_path.map(|c| f64::from(c.get(super::Class::Ldg))),
            b.table_reads,
            false,
        );
        push("blocks_per_sm", blocks, b.blocks_per_sm, true);
    }
    checks.extend(check_hopper(reports));
    checks
}

/// The decode path's load rules, exact, one line per violation:
/// - `gsdpa_decode_*`: every `LDGSTS` copies 16 bytes (`.128`), and the main loop issues some (K and V
///   come in through `cp.async`); the main loop issues no 8- or 16-byte `LDG` (no K, V or Q element is
///   loaded around `cp.async`: what the loop reads with `LDG` is the 4-byte block table);
/// - `gsdpa_decode_combine_*`: the partial outputs are read in 16-byte loads and nothing in 8-byte ones;
/// - `gsdpa_append_kv_*`: the new tokens move in 16-byte loads and stores;
/// - all of them: no local memory (`LDL` / `STL`: spills or stack arrays).
pub fn decode_load_violations(reports: &[KernelReport]) -> Vec<String> {
    let mut out = Vec::new();
    for r in reports {
        let at = format!("{} ({})", r.name, r.arch);
        let is_combine = r.name.starts_with("gsdpa_decode_combine_");
        let is_decode = r.name.starts_with("gsdpa_decode_") && !is_combine;
        let is_append = r.name.starts_with("gsdpa_append_kv_");
        if !(is_decode || is_combine || is_append) {
            continue;
        }
        let local = r.total.get(super::Class::Local);
        if local > 0 {
            out.push(format!("{at}: {local} LDL/STL"));
        }
        let t = &r.total;
        if is_decode {
            let copies = t.get(super::Class::Ldgsts);
            if t.ldgsts_128 != copies {
                out.push(format!(
                    "{at}: {} of {copies} LDGSTS are narrower than 16 bytes",
                    copies - t.ldgsts_128
                ));
            }
            match &r.main_loop {
                None => out.push(format!("{at}: no main loop found")),
                Some(l) => {
                    if l.loaded.ldgsts_128 == 0 {
                        out.push(format!("{at}: the main loop issues no 16-byte LDGSTS"));
                    }
                    let wide = l.counts.ldg_64 + l.counts.ldg_128;
                    if wide > 0 {
                        out.push(format!("{at}: {wide} 8- or 16-byte LDG in the main loop"));
                    }
                }
            }
        }
        if is_combine && (t.ldg_128 == 0 || t.ldg_64 > 0) {
            out.push(format!(
                "{at}: partial outputs not read in 16-byte loads ({} x 16 B, {} x 8 B)",
                t.ldg_128, t.ldg_64
            ));
        }
        if is_append && (t.ldg_128 == 0 || t.stg_128 == 0) {
            out.push(format!(
                "{at}: tokens not moved in 16-byte loads and stores ({} LDG.128, {} STG.128)",
                t.ldg_128, t.stg_128
            ));
        }
    }
    out
}

/// Slow-path calls a gated kernel may make: (kernel prefix, count on every arch, the code that makes
/// them). The count is exact: more is a new slow path, fewer means the entry is stale.
pub const ALLOWED_SLOW_PATH_CALLS: &[(&str, usize, &str)] = &[
    // Empty: the forward's `1 / l` and the decode combine's `1 / sum` go through `fast_rcp`, and the
    // combine numbers its rows in 32 bits (no 64-bit division subroutine).
];

/// One metric of one kernel against its budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub kernel: &'static str,
    pub arch: &'static str,
    pub metric: &'static str,
    /// The measured value, `None` when the kernel (or its main loop, or its occupancy) is missing.
    pub value: Option<f64>,
    pub limit: Limit,
    /// True for blocks per SM, where the ceiling is a floor.
    pub higher_is_better: bool,
}

impl Check {
    /// The target is reached.
    pub fn target_met(&self) -> bool {
        self.value
            .is_some_and(|v| self.compare(v, self.limit.target))
    }

    /// The enforced ceiling (floor) holds.
    pub fn within_ceiling(&self) -> bool {
        self.value
            .is_some_and(|v| self.compare(v, self.limit.ceiling))
    }

    fn compare(&self, value: f64, bound: f64) -> bool {
        // Ratios are printed to two decimals; compare with a hair of tolerance for the division.
        if self.higher_is_better {
            value >= bound - 1e-9
        } else {
            value <= bound + 1e-9
        }
    }
}

/// Checks every budget whose arch is among the reports' archs (a build for fewer archs checks fewer
/// rows). A budgeted kernel missing from a built arch, or without a main loop, yields checks with no
/// value, which fail.
pub fn check(reports: &[KernelReport]) -> Vec<Check> {
    let mut checks = Vec::new();
    for b in BUDGETS {
        if !reports.iter().any(|r| r.arch == b.arch) {
            continue;
        }
        let report = reports
            .iter()
            .find(|r| r.name == b.kernel && r.arch == b.arch);
        let counts = report.and_then(|r| r.main_loop.as_ref()).map(|l| &l.steady);
        let blocks = report
            .and_then(|r| r.occupancy)
            .map(|o| f64::from(o.blocks));
        let mut push = |metric, value, limit, higher_is_better| {
            checks.push(Check {
                kernel: b.kernel,
                arch: b.arch,
                metric,
                value,
                limit,
                higher_is_better,
            })
        };
        push(
            "non_hmma_per_hmma",
            counts.and_then(|c| c.non_hmma_per_hmma()),
            b.non_hmma_per_hmma,
            false,
        );
        push(
            "ldsm_per_hmma",
            counts.and_then(|c| c.ldsm_per_hmma()),
            b.ldsm_per_hmma,
            false,
        );
        push(
            "int_pred",
            counts.map(|c| f64::from(c.get(super::Class::IntPred))),
            b.int_pred,
            false,
        );
        push("blocks_per_sm", blocks, b.blocks_per_sm, true);
    }
    checks.extend(check_hopper(reports));
    checks
}

/// The Hopper forward kernels (kernels/forward_sm90.cu), checked on sm_90a by [`check_hopper`].
pub const HOPPER_FORWARD_KERNELS: [&str; 6] = [
    "gsdpa_fwd90_bf16_d64",
    "gsdpa_fwd90_bf16_d128",
    "gsdpa_fwd90_bf16_d256",
    "gsdpa_fwd90_f16_d64",
    "gsdpa_fwd90_f16_d128",
    "gsdpa_fwd90_f16_d256",
];

/// The Hopper forward's main-loop budgets on sm_90a, per head dim: (non-HGMMA instructions per HGMMA,
/// integer/predicate instructions) on the consumers' steady path (one key tile per warpgroup: S = Q K^T
/// and O += P V, D / 16 + BLOCK_N / 16 HGMMA). Targets are the CUDA 13.0 build's measurements (bf16;
/// f16 is at or below), ceilings about 10% above. Each HGMMA is a whole m64nNk16 warpgroup product
/// (N = 64..256), so the ratio is not comparable with the mma.sync kernels' per-HMMA ratio; it tracks how
/// much softmax, masking and barrier work surrounds the GEMMs. 2026-12-03, with the lazy O rescale (its
/// steady path is the tile that skips it; the vote adds a few int/pred): d64: 399 of 411 instructions
/// beside 12 HGMMA, 51 int/pred; d128: 438 beside 16, 81; d256: 348 beside 20, 99 (before it: 428 / 51,
/// 499 / 78, 473 / 93).
const HOPPER_FORWARD_BUDGETS: [(usize, Limit, Limit); 3] = [
    (64, limit(33.3, 36.6), limit(51.0, 56.0)),
    (128, limit(27.4, 30.1), limit(81.0, 89.0)),
    (256, limit(17.4, 19.1), limit(99.0, 109.0)),
];

/// The Hopper forward's structure and budgets on sm_90a (part of [`check`]): its consumers' main loop
/// issues HGMMA and no mma.sync work (HMMA, LDSM), within [`HOPPER_FORWARD_BUDGETS`], and its producer
/// loop issues the TMA loads (UTMALDG).
pub fn check_hopper(reports: &[KernelReport]) -> Vec<Check> {
    let mut checks = Vec::new();
    if !reports.iter().any(|r| r.arch == "sm_90a") {
        return checks;
    }
    for kernel in HOPPER_FORWARD_KERNELS {
        let report = reports
            .iter()
            .find(|r| r.name == kernel && r.arch == "sm_90a");
        let main = report.and_then(|r| r.main_loop.as_ref()).map(|l| &l.counts);
        let steady = report.and_then(|r| r.main_loop.as_ref()).map(|l| &l.steady);
        let producer = report.and_then(|r| r.tma_loop.as_ref()).map(|l| &l.counts);
        let head_dim: usize = kernel
            .rsplit("_d")
            .next()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        let (_, per_hgmma, int_pred) = HOPPER_FORWARD_BUDGETS
            .iter()
            .copied()
            .find(|(d, _, _)| *d == head_dim)
            .expect("a budget per Hopper forward head dim");
        let mut push = |metric, value, bound, higher_is_better| {
            checks.push(Check {
                kernel,
                arch: "sm_90a",
                metric,
                value,
                limit: limit(bound, bound),
                higher_is_better,
            })
        };
        push(
            "main_loop_hgmma",
            main.map(|c| f64::from(c.get(super::Class::Hgmma))),
            1.0,
            true,
        );
        push(
            "main_loop_hmma_ldsm",
            main.map(|c| f64::from(c.get(super::Class::Hmma) + c.get(super::Class::Ldsm))),
            0.0,
            false,
        );
        push(
            "producer_loop_utmaldg",
            producer.map(|c| f64::from(c.get(super::Class::Tma))),
            1.0,
            true,
        );
        let non_hgmma_per_hgmma = steady.and_then(|c| {
            let h = c.get(super::Class::Hgmma);
            (h > 0).then(|| f64::from(c.total() - h) / f64::from(h))
        });
        let mut push_limit = |metric, value, limit: Limit| {
            checks.push(Check {
                kernel,
                arch: "sm_90a",
                metric,
                value,
                limit,
                higher_is_better: false,
            })
        };
        push_limit("non_hgmma_per_hgmma", non_hgmma_per_hgmma, per_hgmma);
        push_limit(
            "int_pred",
            steady.map(|c| f64::from(c.get(super::Class::IntPred))),
            int_pred,
        );
    }
    checks
}

/// The slow-path calls a gated kernel may make ([`ALLOWED_SLOW_PATH_CALLS`]).
pub fn allowed_slow_path_calls(kernel: &str) -> usize {
    ALLOWED_SLOW_PATH_CALLS
        .iter()
        .find(|(prefix, _, _)| kernel.starts_with(prefix))
        .map_or(0, |&(_, count, _)| count)
}

/// Gated kernels that make more (or fewer: the allowance is then stale) slow-path calls than allowed,
/// one line each.
pub fn gate_violations(reports: &[KernelReport]) -> Vec<String> {
    reports
        .iter()
        .filter(|r| super::is_gated(&r.name))
        .filter(|r| r.slow_path_calls().len() != allowed_slow_path_calls(&r.name))
        .map(|r| {
            let calls = r.slow_path_calls();
            let mut sites: Vec<String> =
                calls.iter().take(8).map(|a| format!("{a:#06x}")).collect();
            if calls.len() > 8 {
                sites.push("...".to_string());
            }
            format!(
                "{} ({}): {} slow-path call(s), {} allowed, at [{}]",
                r.name,
                r.arch,
                calls.len(),
                allowed_slow_path_calls(&r.name),
                sites.join(", ")
            )
        })
        .collect()
}

/// The checks as a table: value, target (met / not met), ceiling (ok / EXCEEDED).
pub fn table(checks: &[Check]) -> String {
    let mut out = format!(
        "{:<26} {:<7} {:<18} {:>8} {:>8} {:<8} {:>8} {:<8}\n",
        "kernel", "arch", "metric", "value", "target", "", "ceiling", ""
    );
    for c in checks {
        let value = c.value.map_or("missing".to_string(), |v| format!("{v:.2}"));
        let bound = if c.higher_is_better { ">=" } else { "<=" };
        out += &format!(
            "{:<26} {:<7} {:<18} {:>8} {:>2}{:>6.2} {:<8} {:>2}{:>6.2} {:<8}\n",
            c.kernel,
            c.arch,
            c.metric,
            value,
            bound,
            c.limit.target,
            if c.target_met() { "met" } else { "not met" },
            bound,
            c.limit.ceiling,
            if c.within_ceiling() { "ok" } else { "EXCEEDED" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECODE_LISTING: &str = "
	code for sm_80
		Function : gsdpa_decode_bf16_d64
        /*0000*/                   LDGSTS.E.BYPASS.128.ZFILL [R1], [R2.64], P1 ;
        /*0010*/                   LDGSTS.E.64 [R1+0x10], [R2.64] ;
        /*0020*/                   LDG.E.128 R4, [R2.64] ;
        /*0030*/                   HMMA.16816.F32 R0, R4, R6, R0 ;
        /*0040*/                   STL [R1], R4 ;
        /*0050*/              @!P3 BRA 0x0 ;
        /*0060*/                   EXIT ;
		Function : gsdpa_decode_combine_bf16_d64
        /*0000*/                   LDG.E.64 R4, [R2.64] ;
        /*0010*/                   EXIT ;
		Function : gsdpa_append_kv_bf16
        /*0000*/                   LDG.E.128 R4, [R2.64] ;
        /*0010*/                   STG.E [R2.64], R4 ;
        /*0020*/                   EXIT ;
		Function : gsdpa_fwd_bf16_d64
        /*0000*/                   LDGSTS.E.64 [R1+0x10], [R2.64] ;
        /*0010*/                   EXIT ;
";

    #[test]
    fn decode_load_rules_catch_narrow_copies_wide_loads_and_spills() {
        let v = decode_load_violations(&super::super::analyze(DECODE_LISTING));
        let joined = v.join("\n");
        for expected in [
            "gsdpa_decode_bf16_d64 (sm_80): 1 LDL/STL",
            "gsdpa_decode_bf16_d64 (sm_80): 1 of 2 LDGSTS are narrower than 16 bytes",
            "gsdpa_decode_bf16_d64 (sm_80): 1 8- or 16-byte LDG in the main loop",
            "gsdpa_decode_combine_bf16_d64 (sm_80): partial outputs not read in 16-byte loads",
            "gsdpa_append_kv_bf16 (sm_80): tokens not moved in 16-byte loads and stores",
        ] {
            assert!(
                joined.contains(expected),
                "{expected} missing from:\n{joined}"
            );
        }
        // The forward's copies are not held to the decode's rules.
        assert_eq!(v.len(), 5, "{joined}");
    }

    #[test]
    fn decode_checks_fail_without_the_kernel_and_over_a_ceiling() {
        let reports = super::super::analyze(DECODE_LISTING);
        let checks = check_decode(&reports);
        // Every sm_80 decode row is checked; the kernels absent from the listing have no value.
        let rows = DECODE_BUDGETS.iter().filter(|b| b.arch == "sm_80").count();
        assert_eq!(checks.len(), 5 * rows);
        let d64: Vec<&Check> = checks
            .iter()
            .filter(|c| c.kernel == "gsdpa_decode_bf16_d64")
            .collect();
        let per_copy = d64.iter().find(|c| c.metric == "insts_per_ldgsts").unwrap();
        // 6 instructions on the loop's path, 2 copies.
        assert_eq!(per_copy.value, Some(3.0));
        assert!(per_copy.within_ceiling() && per_copy.target_met());
        let missing = checks
            .iter()
            .find(|c| c.kernel == "gsdpa_decode_bf16_d128")
            .unwrap();
        assert_eq!(missing.value, None);
        assert!(!missing.within_ceiling());
    }
}
