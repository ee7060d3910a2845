//! `gsdpa info [--json]`: what this build contains and what can run here.

use gated_sdpa::build_info;

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

pub fn run(args: &[String]) -> Result<(), CliError> {
    let flags = Flags::parse(args, &[], &["json"])?;
    let backends = backends::availability();
    if flags.switch("json") {
        println!("{}", to_json(&backends));
    } else {
        print_text(&backends);
    }
    Ok(())
}

fn to_json(backends: &[(&str, Option<String>)]) -> String {
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
                "{{\"name\": {}, \"arch\": {}, \"registers\": {}, \"shared_bytes\": {}, \"stack_bytes\": {}, \
                 \"spill_store_bytes\": {}, \"spill_load_bytes\": {}}}",
                json_string(k.name),
                json_string(k.arch),
                k.registers,
                k.shared_bytes,
                k.stack_bytes,
                k.spill_store_bytes,
                k.spill_load_bytes
            )
        })
        .collect();
    format!(
        "{{\"version\": {}, \"nvcc_version\": {}, \"archs\": [{}], \"kernels_not_built_reason\": {}, \
         \"emulator_built\": {}, \"backends\": {{{}}}, \"kernels\": [{}]}}",
        json_string(env!("CARGO_PKG_VERSION")),
        json_opt_string(build_info::nvcc_version()),
        archs.join(", "),
        json_opt_string(build_info::kernels_not_built_reason()),
        build_info::emulator_built(),
        backend_entries.join(", "),
        kernels.join(", ")
    )
}

fn print_text(backends: &[(&str, Option<String>)]) {
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
        println!("kernels:  none built for the GPU");
        return;
    }
    println!("kernels (ptxas -v):");
    println!(
        "  {:<44} {:<8} {:>5} {:>8} {:>6} {:>6} {:>6}",
        "name", "arch", "regs", "smem", "stack", "spillS", "spillL"
    );
    for k in kernels {
        println!(
            "  {:<44} {:<8} {:>5} {:>8} {:>6} {:>6} {:>6}",
            k.name,
            k.arch,
            k.registers,
            k.shared_bytes,
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
    fn escapes_json_strings() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }
}
