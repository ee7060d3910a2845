//! `gsdpa sass [--json] [--arch sm_80] [--kernel PATTERN] [--fatbin FILE]`: the static SASS analysis of
//! the kernels (gated_sdpa::sass; docs/sass.md): per kernel and arch, the main loop's instructions per
//! iteration by class, the ratios, the occupancy, the gate rule and the budgets.

use gated_sdpa::sass::{self, budgets};

use crate::args::Flags;
use crate::CliError;

pub fn run(args: &[String]) -> Result<(), CliError> {
    let flags = Flags::parse(args, &["arch", "kernel", "fatbin"], &["json"])?;
    let listing = match flags.value("fatbin") {
        Some(path) => sass::dump_sass_file(std::path::Path::new(path)),
        None => sass::dump_embedded(),
    }
    .map_err(|e| CliError {
        code: 1,
        message: format!("sass: {e}"),
    })?;
    let reports: Vec<sass::KernelReport> = sass::analyze(&listing)
        .into_iter()
        .filter(|r| flags.value("arch").is_none_or(|a| r.arch == a))
        .filter(|r| flags.value("kernel").is_none_or(|k| r.name.contains(k)))
        .collect();
    if reports.is_empty() {
        return Err(CliError::usage("sass: no kernel matches --arch / --kernel"));
    }
    let checks: Vec<budgets::Check> = budgets::check(&reports)
        .into_iter()
        .filter(|c| {
            reports
                .iter()
                .any(|r| r.name == c.kernel && r.arch == c.arch)
        })
        .collect();
    let violations = budgets::gate_violations(&reports);
    if flags.switch("json") {
        let kernels: Vec<String> = reports.iter().map(|r| r.to_json()).collect();
        let checks: Vec<String> = checks
            .iter()
            .map(|c| {
                format!(
                    "{{\"kernel\": \"{}\", \"arch\": \"{}\", \"metric\": \"{}\", \"value\": {}, \"target\": {}, \"target_met\": {}, \"ceiling\": {}, \"within_ceiling\": {}}}",
                    c.kernel,
                    c.arch,
                    c.metric,
                    c.value.map_or("null".to_string(), |v| format!("{v:.3}")),
                    c.limit.target,
                    c.target_met(),
                    c.limit.ceiling,
                    c.within_ceiling()
                )
            })
            .collect();
        let violations: Vec<String> = violations
            .iter()
            .map(|v| crate::info::json_string(v))
            .collect();
        println!(
            "{{\"kernels\": [{}], \"budgets\": [{}], \"gate_violations\": [{}]}}",
            kernels.join(", "),
            checks.join(", "),
            violations.join(", ")
        );
    } else {
        println!("Main loop, instructions per iteration on its steady path (one tile per warp); slow = slow-path calls in the whole kernel");
        print!("{}", sass::table(&reports));
        if !checks.is_empty() {
            println!("\nBudgets (src/sass/budgets.rs)");
            print!("{}", budgets::table(&checks));
        }
        println!(
            "\nGate rule (no slow-path call in a gated kernel beyond the listed allowances): {}",
            if violations.is_empty() {
                "ok"
            } else {
                "VIOLATED"
            }
        );
        for v in &violations {
            println!("  {v}");
        }
    }
    Ok(())
}
