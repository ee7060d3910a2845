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
/// addresses were hoisted (kernels/forward/kernel_traits.h), same margins.
#[rustfmt::skip]
pub const BUDGETS: &[Budget] = &[
    budget!("gsdpa_fwd_bf16_d128", "sm_80", limit(FWD_NON_HMMA, 2.86), limit(FWD_LDSM, 0.52), limit(FWD_INT, 41.0), limit(FWD_BLOCKS, 1.0)),
    budget!("gsdpa_fwd_bf16_d128", "sm_90a", limit(FWD_NON_HMMA, 2.85), limit(FWD_LDSM, 0.52), limit(FWD_INT, 39.0), limit(FWD_BLOCKS, 1.0)),
    budget!("gsdpa_fwd_bf16_d256", "sm_80", limit(FWD_NON_HMMA, 4.07), limit(FWD_LDSM, 0.65), limit(FWD_D256_INT, 164.0), limit(FWD_D256_BLOCKS, 2.0)),
    budget!("gsdpa_fwd_bf16_d256", "sm_90a", limit(FWD_NON_HMMA, 3.59), limit(FWD_LDSM, 0.65), limit(FWD_D256_INT, 105.0), limit(FWD_D256_BLOCKS, 2.0)),
    budget!("gsdpa_fwd_bf16_d64", "sm_80", limit(FWD_NON_HMMA, 3.77), limit(FWD_LDSM, 0.52), limit(FWD_INT, 49.0), limit(FWD_BLOCKS, 1.0)),
    budget!("gsdpa_fwd_bf16_d64", "sm_90a", limit(FWD_NON_HMMA, 3.79), limit(FWD_LDSM, 0.52), limit(FWD_INT, 48.0), limit(FWD_BLOCKS, 1.0)),
    budget!("gsdpa_fwd_f16_d128", "sm_80", limit(FWD_NON_HMMA, 2.86), limit(FWD_LDSM, 0.52), limit(FWD_INT, 41.0), limit(FWD_BLOCKS, 1.0)),
    budget!("gsdpa_fwd_f16_d128", "sm_90a", limit(FWD_NON_HMMA, 2.85), limit(FWD_LDSM, 0.52), limit(FWD_INT, 39.0), limit(FWD_BLOCKS, 1.0)),
    budget!("gsdpa_fwd_f16_d256", "sm_80", limit(FWD_NON_HMMA, 4.07), limit(FWD_LDSM, 0.65), limit(FWD_D256_INT, 164.0), limit(FWD_D256_BLOCKS, 2.0)),
    budget!("gsdpa_fwd_f16_d256", "sm_90a", limit(FWD_NON_HMMA, 3.59), limit(FWD_LDSM, 0.65), limit(FWD_D256_INT, 103.0), limit(FWD_D256_BLOCKS, 2.0)),
    budget!("gsdpa_fwd_f16_d64", "sm_80", limit(FWD_NON_HMMA, 3.77), limit(FWD_LDSM, 0.52), limit(FWD_INT, 49.0), limit(FWD_BLOCKS, 1.0)),
    budget!("gsdpa_fwd_f16_d64", "sm_90a", limit(FWD_NON_HMMA, 3.79), limit(FWD_LDSM, 0.52), limit(FWD_INT, 49.0), limit(FWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d128", "sm_80", limit(BWD_NON_HMMA, 7.50), limit(BWD_LDSM, 0.65), limit(BWD_INT, 719.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d128", "sm_90a", limit(BWD_NON_HMMA, 7.50), limit(BWD_LDSM, 0.65), limit(BWD_INT, 712.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d256", "sm_80", limit(BWD_NON_HMMA, 8.41), limit(BWD_LDSM, 1.36), limit(BWD_INT, 385.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d256", "sm_90a", limit(BWD_NON_HMMA, 8.42), limit(BWD_LDSM, 1.36), limit(BWD_INT, 374.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d64", "sm_80", limit(BWD_NON_HMMA, 7.28), limit(BWD_LDSM, 0.52), limit(BWD_INT, 598.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_bf16_d64", "sm_90a", limit(BWD_NON_HMMA, 7.30), limit(BWD_LDSM, 0.52), limit(BWD_INT, 595.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d128", "sm_80", limit(BWD_NON_HMMA, 7.50), limit(BWD_LDSM, 0.65), limit(BWD_INT, 719.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d128", "sm_90a", limit(BWD_NON_HMMA, 7.50), limit(BWD_LDSM, 0.65), limit(BWD_INT, 712.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d256", "sm_80", limit(BWD_NON_HMMA, 8.41), limit(BWD_LDSM, 1.36), limit(BWD_INT, 385.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d256", "sm_90a", limit(BWD_NON_HMMA, 8.42), limit(BWD_LDSM, 1.36), limit(BWD_INT, 374.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d64", "sm_80", limit(BWD_NON_HMMA, 7.28), limit(BWD_LDSM, 0.52), limit(BWD_INT, 598.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dkdv_f16_d64", "sm_90a", limit(BWD_NON_HMMA, 7.30), limit(BWD_LDSM, 0.52), limit(BWD_INT, 595.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d128", "sm_80", limit(BWD_NON_HMMA, 5.81), limit(BWD_LDSM, 0.69), limit(BWD_INT, 372.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d128", "sm_90a", limit(BWD_NON_HMMA, 5.80), limit(BWD_LDSM, 0.69), limit(BWD_INT, 368.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d256", "sm_80", limit(BWD_NON_HMMA, 6.85), limit(BWD_LDSM, 1.59), limit(BWD_INT, 204.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d256", "sm_90a", limit(BWD_NON_HMMA, 6.29), limit(BWD_LDSM, 1.59), limit(BWD_INT, 178.0), limit(BWD_BLOCKS, 2.0)),
    budget!("gsdpa_bwd_dq_bf16_d64", "sm_80", limit(BWD_NON_HMMA, 6.49), limit(BWD_LDSM, 0.61), limit(BWD_INT, 346.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_bf16_d64", "sm_90a", limit(BWD_NON_HMMA, 6.47), limit(BWD_LDSM, 0.61), limit(BWD_INT, 345.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d128", "sm_80", limit(BWD_NON_HMMA, 5.81), limit(BWD_LDSM, 0.69), limit(BWD_INT, 372.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d128", "sm_90a", limit(BWD_NON_HMMA, 5.80), limit(BWD_LDSM, 0.69), limit(BWD_INT, 368.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d256", "sm_80", limit(BWD_NON_HMMA, 6.85), limit(BWD_LDSM, 1.59), limit(BWD_INT, 204.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d256", "sm_90a", limit(BWD_NON_HMMA, 6.29), limit(BWD_LDSM, 1.59), limit(BWD_INT, 178.0), limit(BWD_BLOCKS, 2.0)),
    budget!("gsdpa_bwd_dq_f16_d64", "sm_80", limit(BWD_NON_HMMA, 6.49), limit(BWD_LDSM, 0.61), limit(BWD_INT, 346.0), limit(BWD_BLOCKS, 1.0)),
    budget!("gsdpa_bwd_dq_f16_d64", "sm_90a", limit(BWD_NON_HMMA, 6.47), limit(BWD_LDSM, 0.61), limit(BWD_INT, 345.0), limit(BWD_BLOCKS, 1.0)),
];

/// Slow-path calls a gated kernel may make: (kernel prefix, count on every arch, the code that makes
/// them). The count is exact: more is a new slow path, fewer means the entry is stale.
pub const ALLOWED_SLOW_PATH_CALLS: &[(&str, usize, &str)] = &[
    // Empty: the forward's `1 / l` became `fast_rcp(l)` (kernels/forward/online_softmax.h), the last
    // IEEE division in a gated kernel.
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
