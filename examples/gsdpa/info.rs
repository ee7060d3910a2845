//! `gsdpa info [--json]`: what this build contains and what can run here.

use gated_sdpa::launch::{self, LaunchConfig};
use gated_sdpa::{
    build_info, AttentionProblem, BackwardOptions, BackwardTiles, DType, GsdpaError,
    SUPPORTED_HEAD_DIMS,
};

use crate::args::Flags;
use crate::backends;
use crate::CliError;

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt_string(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), json_string)
}

/// Every launch the library makes, one per kernel: the forward, the backward's kernels (both modes)
/// and the gate kernels for each dtype and head dim, and the conformance kernel. The dynamic shared
/// memory of a launch depends only on the kernel (the tile geometry), not on the problem size, so a
/// minimal problem per head dim and dtype shows it.
fn launches() -> Result<Vec<LaunchConfig>, GsdpaError> {
    let mut all = vec![launch::conformance()];
    for dtype in [DType::BF16, DType::F16] {
        all.push(launch::gate(dtype, 1, 1, 64)?);
        all.push(launch::gate_backward(dtype, 1, 1, 64)?);
        for head_dim in SUPPORTED_HEAD_DIMS {
            let problem = AttentionProblem::new(1, 1, 1, 1, 1, head_dim);
            all.push(launch::forward(&problem, dtype)?);
            for deterministic in [false, true] {
                for tiles in [BackwardTiles::Compact, BackwardTiles::Large] {
                    let options = BackwardOptions {
                        deterministic,
                        tiles,
                    };
                    // Without a limit, and at sm_80's (D = 256's one-stage large tiles there).
                    let sm80 = gated_sdpa::TargetArch::SM80.max_dynamic_shared_bytes();
                    for limit in [u32::MAX, sm80] {
                        all.extend(launch::backward(&problem, dtype, options, limit)?);
                    }
                }
            }
        }
    }
    // Each kernel once (both backward modes share their first launches), sorted like ptxas's table.
    all.sort_by(|a, b| a.kernel.cmp(&b.kernel));
    all.dedup_by(|a, b| a.kernel == b.kernel);
    Ok(all)
}

/// The dynamic shared memory `kernel`'s launch requests, `None` for a kernel the library does not
/// launch through a [`LaunchConfig`] (e.g. the emulator's self-tests).
fn dynamic_shared(launches: &[LaunchConfig], kernel: &str) -> Option<u32> {
    launches
        .iter()
        .find(|l| l.kernel == kernel)
        .map(|l| l.shared_bytes)
}

pub fn run(args: &[String]) -> Result<(), CliError> {
    let flags = Flags::parse(args, &[], &["json"])?;
    let backends = backends::availability();
    let launches = launches()?;
    if flags.switch("json") {
        println!("{}", to_json(&backends, &launches));
    } else {
        print_text(&backends, &launches);
    }
    Ok(())
}

fn json_opt_u32(x: Option<u32>) -> String {
    x.map_or_else(|| "null".to_string(), |x| x.to_string())
}

fn to_json(backends: &[(&str, Option<String>)], launches: &[LaunchConfig]) -> String {
    let archs: Vec<String> = build_info::archs().iter().map(|a| json_string(a)).collect();
    let backend_entries: Vec<String> = backends
        .iter()
        .map(|(name, reason)| {
            format!(
                "{}: {{\"usable\": {}, \"reason\": {}}}",
                json_string(name),
                reason.is_none(),
                json_opt_string(reason.as_deref())
            )
        })
        .collect();
    let kernels: Vec<String> = build_info::kernels()
        .iter()
        .map(|k| {
            format!(
                "{{\"name\": {}, \"arch\": {}, \"registers\": {}, \"shared_bytes\": {}, \
                 \"dynamic_shared_bytes\": {}, \"stack_bytes\": {}, \"spill_store_bytes\": {}, \
                 \"spill_load_bytes\": {}}}",
                json_string(k.name),
                json_string(k.arch),
                k.registers,
                k.shared_bytes,
                json_opt_u32(dynamic_shared(launches, k.name)),
                k.stack_bytes,
                k.spill_store_bytes,
                k.spill_load_bytes
            )
        })
        .collect();
    let launch_entries: Vec<String> = launches
        .iter()
        .map(|l| {
            format!(
                "{{\"kernel\": {}, \"block_threads\": {}, \"dynamic_shared_bytes\": {}}}",
                json_string(&l.kernel),
                l.block[0] * l.block[1] * l.block[2],
                l.shared_bytes
            )
        })
        .collect();
    format!(
        "{{\"version\": {}, \"nvcc_version\": {}, \"archs\": [{}], \"kernels_not_built_reason\": {}, \
         \"emulator_built\": {}, \"backends\": {{{}}}, \"kernels\": [{}], \"launches\": [{}]}}",
        json_string(env!("CARGO_PKG_VERSION")),
        json_opt_string(build_info::nvcc_version()),
        archs.join(", "),
        json_opt_string(build_info::kernels_not_built_reason()),
        build_info::emulator_built(),
        backend_entries.join(", "),
        kernels.join(", "),
        launch_entries.join(", ")
    )
}

fn print_text(backends: &[(&str, Option<String>)], launches: &[LaunchConfig]) {
    println!("gated-sdpa {}", env!("CARGO_PKG_VERSION"));
    match build_info::nvcc_version() {
        Some(v) => println!("nvcc:     {v}"),
        None => println!(
            "nvcc:     none ({})",
            build_info::kernels_not_built_reason().unwrap_or("kernels not built")
        ),
    }
    let archs = build_info::archs();
    println!(
        "archs:    {}",
        if archs.is_empty() {
            "-".to_string()
        } else {
            archs.join(" ")
        }
    );
    println!(
        "emulator: {}",
        if build_info::emulator_built() {
            "built"
        } else {
            "not built"
        }
    );
    println!("backends:");
    for (name, reason) in backends {
        match reason {
            None => println!("  {name:<10} usable"),
            Some(why) => println!("  {name:<10} unavailable: {why}"),
        }
    }
    let kernels = build_info::kernels();
    if kernels.is_empty() {
        // No ptxas report without nvcc; what each launch asks for is known all the same.
        println!("kernels:  none built for the GPU; launches (dynamic shared memory per block):");
        for l in launches {
            println!("  {:<44} {:>8}", l.kernel, l.shared_bytes);
        }
        return;
    }
    println!(
        "kernels (registers, static shared memory, stack and spills in bytes from ptxas -v; the"
    );
    println!(
        "dynamic shared memory each launch requests, '-' for kernels the library does not launch):"
    );
    println!(
        "  {:<44} {:<8} {:>5} {:>8} {:>8} {:>6} {:>6} {:>6}",
        "name", "arch", "regs", "smem st", "smem dyn", "stack", "spillS", "spillL"
    );
    for k in kernels {
        let dynamic = dynamic_shared(launches, k.name).map_or("-".to_string(), |b| b.to_string());
        println!(
            "  {:<44} {:<8} {:>5} {:>8} {:>8} {:>6} {:>6} {:>6}",
            k.name,
            k.arch,
            k.registers,
            k.shared_bytes,
            dynamic,
            k.stack_bytes,
            k.spill_store_bytes,
            k.spill_load_bytes
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_attention_kernel_has_its_launch_and_shared_memory() {
        let launches = launches().unwrap();
        for dt in ["bf16", "f16"] {
            for d in SUPPORTED_HEAD_DIMS {
                for kernel in [
                    format!("gsdpa_fwd_{dt}_d{d}"),
                    format!("gsdpa_bwd_dkdv_{dt}_d{d}"),
                    format!("gsdpa_bwd_dq_{dt}_d{d}"),
                ] {
                    // The tiled attention kernels keep their tiles in dynamic shared memory.
                    let bytes = dynamic_shared(&launches, &kernel);
                    assert!(bytes.is_some_and(|b| b > 0), "{kernel}: {bytes:?}");
                }
            }
            assert_eq!(
                dynamic_shared(&launches, &format!("gsdpa_gate_{dt}")),
                Some(0)
            );
        }
        assert_eq!(dynamic_shared(&launches, "gsdpa_selftest_correct"), None);
        // Every kernel in ptxas's table that the library launches is found by name.
        for k in build_info::kernels() {
            if k.name.starts_with("gsdpa_fwd_") || k.name.starts_with("gsdpa_bwd_") {
                assert!(dynamic_shared(&launches, k.name).is_some(), "{}", k.name);
            }
        }
        let backends = backends::availability();
        let json = to_json(&backends, &launches);
        assert!(json.contains("\"launches\": [{\"kernel\": "), "{json}");
        assert!(json.contains("\"dynamic_shared_bytes\": "), "{json}");
    }

    #[test]
    fn escapes_json_strings() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }
}
