//! The kernels' machine code against their budgets (src/sass/budgets.rs; docs/sass.md): the main loop's
//! non-HMMA per HMMA, LDSM per HMMA, integer/predicate instructions and blocks per SM, each under its
//! enforced ceiling (its target is printed, met or not), and the gate rule: no kernel that applies the
//! gate calls a slow-path subroutine (an IEEE division's) beyond the allowances listed with the budgets.
//! The paged decode has its own budget (copies, not HMMA: it is memory-bound) and load rules: 16-byte
//! `cp.async` for K and V, no spills in the decode, combine and append kernels.
//!
//! Needs the embedded fatbin and `cuobjdump` (scripts/nvcc-env.sh installs it next to nvcc). Without
//! them the tests print why and pass, unless `GSDPA_REQUIRE_NVCC=1` (as in CI), where they fail.

use std::sync::OnceLock;

use gated_sdpa::build_info;
use gated_sdpa::sass::{self, budgets, KernelReport};

/// The analysis of the embedded fatbin, once per test binary (cuobjdump takes a few seconds), or why
/// there is none.
fn reports() -> Option<&'static [KernelReport]> {
    static REPORTS: OnceLock<Result<Vec<KernelReport>, String>> = OnceLock::new();
    let result = REPORTS.get_or_init(|| {
        sass::dump_embedded()
            .map(|listing| sass::analyze(&listing))
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(reports) => Some(reports),
        Err(reason) => {
            let required = build_info::nvcc_required()
                || std::env::var("GSDPA_REQUIRE_NVCC").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "GSDPA_REQUIRE_NVCC=1 but the SASS analysis cannot run: {reason}"
            );
            eprintln!("skipped: {reason}");
            None
        }
    }
}

#[test]
fn main_loops_stay_within_their_budgets() {
    let Some(reports) = reports() else { return };
    print!("{}", sass::table(reports));
    let checks = budgets::check(reports);
    print!("{}", budgets::table(&checks));
    let met = checks.iter().filter(|c| c.target_met()).count();
    println!("targets met: {met} of {}", checks.len());
    let exceeded: Vec<String> = checks
        .iter()
        .filter(|c| !c.within_ceiling())
        .map(|c| {
            format!(
                "{} {} {}: {:?} against ceiling {}",
                c.kernel, c.arch, c.metric, c.value, c.limit.ceiling
            )
        })
        .collect();
    assert!(
        exceeded.is_empty(),
        "budgets exceeded (src/sass/budgets.rs):\n{}",
        exceeded.join("\n")
    );
}

#[test]
fn decode_kernels_stay_within_their_budgets() {
    let Some(reports) = reports() else { return };
    let checks = budgets::check_decode(reports);
    print!("{}", budgets::table(&checks));
    let met = checks.iter().filter(|c| c.target_met()).count();
    println!("decode targets met: {met} of {}", checks.len());
    let exceeded: Vec<String> = checks
        .iter()
        .filter(|c| !c.within_ceiling())
        .map(|c| {
            format!(
                "{} {} {}: {:?} against ceiling {}",
                c.kernel, c.arch, c.metric, c.value, c.limit.ceiling
            )
        })
        .collect();
    assert!(
        exceeded.is_empty(),
        "decode budgets exceeded (src/sass/budgets.rs):\n{}",
        exceeded.join("\n")
    );
}

#[test]
fn decode_loads_are_16_byte_and_nothing_spills() {
    let Some(reports) = reports() else { return };
    let decode_path =
        |name: &str| name.starts_with("gsdpa_decode_") || name.starts_with("gsdpa_append_kv_");
    let checked: Vec<&KernelReport> = reports.iter().filter(|r| decode_path(&r.name)).collect();
    // 6 decode + 6 combine + 2 append kernels per arch.
    assert!(
        checked.len() >= 14,
        "decode kernels missing from the fatbin: {} found",
        checked.len()
    );
    for r in &checked {
        let t = &r.total;
        println!(
            "{:<32} {:<7} LDGSTS {:>3} (16 B {:>3}), LDG {:>3} (16 B {:>3}, 8 B {:>2}), STG {:>3} (16 B {:>3}), local {}",
            r.name,
            r.arch,
            t.get(sass::Class::Ldgsts),
            t.ldgsts_128,
            t.get(sass::Class::Ldg),
            t.ldg_128,
            t.ldg_64,
            t.get(sass::Class::Stg),
            t.stg_128,
            t.get(sass::Class::Local)
        );
    }
    let violations = budgets::decode_load_violations(reports);
    assert!(
        violations.is_empty(),
        "decode load rules violated (src/sass/budgets.rs):\n{}",
        violations.join("\n")
    );
}

#[test]
fn every_attention_kernel_on_a_budgeted_arch_has_a_budget() {
    let Some(reports) = reports() else { return };
    let attention = |name: &str| {
        ["gsdpa_fwd_", "gsdpa_bwd_dkdv_", "gsdpa_bwd_dq_"]
            .iter()
            .any(|p| name.starts_with(p))
            && !name.starts_with("gsdpa_bwd_dq_convert_")
    };
    // The decode's main kernels (not the combine, which has no loop over keys) have a decode budget.
    let decode = |name: &str| {
        name.starts_with("gsdpa_decode_") && !name.starts_with("gsdpa_decode_combine_")
    };
    let budgeted_archs: Vec<&str> = budgets::BUDGETS
        .iter()
        .map(|b| b.arch)
        .chain(budgets::DECODE_BUDGETS.iter().map(|b| b.arch))
        .collect();
    // A kernel the crate never launches on an arch (its tiles exceed the arch's shared memory) is
    // built empty there: no loop, no budget.
    let launched = |r: &KernelReport| sass::launchable(&r.name, &r.arch);
    let missing: Vec<String> = reports
        .iter()
        .filter(|r| {
            (attention(&r.name) || decode(&r.name))
                && launched(r)
                && budgeted_archs.contains(&r.arch.as_str())
        })
        .filter(|r| {
            let attention_row = budgets::BUDGETS
                .iter()
                .any(|b| b.kernel == r.name && b.arch == r.arch);
            let decode_row = budgets::DECODE_BUDGETS
                .iter()
                .any(|b| b.kernel == r.name && b.arch == r.arch);
            if decode(&r.name) {
                !decode_row
            } else {
                !attention_row
            }
        })
        .map(|r| format!("{} ({})", r.name, r.arch))
        .collect();
    assert!(missing.is_empty(), "kernels without a budget: {missing:?}");
    // And every attention and decode kernel has a main loop the rule finds, with HMMA in it.
    for r in reports
        .iter()
        .filter(|r| (attention(&r.name) || decode(&r.name)) && launched(r))
    {
        assert!(
            r.main_loop.is_some(),
            "{} ({}): no loop with HMMA found",
            r.name,
            r.arch
        );
    }
}

#[test]
fn large_backward_tiles_are_built_exactly_where_they_can_launch() {
    // kernels/common/platform.h's shared-memory table (which empties the large-tile entry points) and
    // src/arch.rs's (which the launch check applies) must agree on every arch of the build: a body
    // missing where the crate launches the kernel would run as a no-op.
    let Some(reports) = reports() else { return };
    let large: Vec<&KernelReport> = reports
        .iter()
        .filter(|r| {
            r.name.starts_with("gsdpa_bwd_")
                && (r.name.ends_with("_large") || r.name.ends_with("_large_1stage"))
        })
        .collect();
    assert!(
        !large.is_empty(),
        "no large-tile backward kernel in the fatbin"
    );
    for r in large {
        let has_loop = r.main_loop.is_some();
        assert_eq!(
            has_loop,
            sass::launchable(&r.name, &r.arch),
            "{} ({}): main loop present = {has_loop}, but the launch check says the opposite",
            r.name,
            r.arch
        );
    }
}

#[test]
fn gated_kernels_call_no_division_slow_path() {
    let Some(reports) = reports() else { return };
    let gated: Vec<&KernelReport> = reports.iter().filter(|r| sass::is_gated(&r.name)).collect();
    assert!(!gated.is_empty(), "no gated kernel in the fatbin");
    for r in &gated {
        println!(
            "{:<28} {:<7} slow-path calls {:>2} (allowed {}), shuffle subroutine calls {}, MUFU {:?}",
            r.name,
            r.arch,
            r.slow_path_calls().len(),
            budgets::allowed_slow_path_calls(&r.name),
            r.subroutine_calls.len() - r.slow_path_calls().len(),
            r.total.mufu
        );
    }
    let violations = budgets::gate_violations(reports);
    assert!(
        violations.is_empty(),
        "gate rule violated:\n{}",
        violations.join("\n")
    );
}
