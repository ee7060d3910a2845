//! The build script's ptxas-report parser (`build/ptxas.rs`, included here as a module) over real logs
//! captured from nvcc 13.0 and ptxas 12.9 (`build/testdata/`, whose README says how each was made).
//!
//! The values asserted are the ones in the logs: a parser that misses an item, misreads a CUDA version's
//! layout or attributes a line to the wrong kernel or arch fails here, not in a silently wrong spill check.
//! The last test checks a ptxas 12.9 report of the crate's own kernels when CI provides one.

#[path = "../build/ptxas.rs"]
mod ptxas;

use ptxas::{parse_report, KernelResources};

const NVCC_13_KERNELS: &str = include_str!("../build/testdata/nvcc-13.0.88-kernels.log");
const PTXAS_12_KERNELS: &str = include_str!("../build/testdata/ptxas-12.9.86-kernels.log");
const NVCC_13_STATIC_SMEM: &str = include_str!("../build/testdata/nvcc-13.0.88-static-smem.log");
const PTXAS_12_STATIC_SMEM: &str = include_str!("../build/testdata/ptxas-12.9.86-static-smem.log");
const PTXAS_13_SPILLS: &str = include_str!("../build/testdata/ptxas-13.0.88-spills.log");
const PTXAS_12_SPILLS: &str = include_str!("../build/testdata/ptxas-12.9.86-spills.log");

const SASS_ARCHS: [&str; 6] = ["sm_100", "sm_120", "sm_80", "sm_86", "sm_89", "sm_90a"];

fn kernel(name: &str, arch: &str, registers: u32) -> KernelResources {
    KernelResources {
        name: name.into(),
        arch: arch.into(),
        registers,
        ..Default::default()
    }
}

fn parse(log: &str) -> Vec<KernelResources> {
    parse_report(log).unwrap_or_else(|e| panic!("{e}"))
}

/// The (name, arch) pairs must be unique and sorted, whatever order the log had.
fn assert_sorted_and_unique(kernels: &[KernelResources]) {
    for pair in kernels.windows(2) {
        assert!(
            (&pair[0].name, &pair[0].arch) < (&pair[1].name, &pair[1].arch),
            "not sorted or repeated: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
}

/// Registers of gsdpa_gate_bf16, gsdpa_fwd_f16_d256 and gsdpa_bwd_dq_bf16_d64, in SASS_ARCHS order.
fn expected(registers: [[u32; 6]; 3]) -> Vec<KernelResources> {
    let names = [
        "gsdpa_bwd_dq_bf16_d64",
        "gsdpa_fwd_f16_d256",
        "gsdpa_gate_bf16",
    ];
    let by_name = [registers[2], registers[1], registers[0]];
    let mut out = Vec::new();
    for (name, regs) in names.iter().zip(by_name) {
        for (arch, r) in SASS_ARCHS.iter().zip(regs) {
            out.push(kernel(name, arch, r));
        }
    }
    out
}

#[test]
fn nvcc_13_report_of_three_kernels_on_six_archs() {
    // nvcc --threads 0 printed the archs as they finished: sm_120 first, sm_100 last.
    let first_arch = NVCC_13_KERNELS
        .lines()
        .find_map(|l| l.split("' for '").nth(1))
        .expect("an entry");
    assert_eq!(first_arch, "sm_120'");
    let kernels = parse(NVCC_13_KERNELS);
    assert_eq!(
        kernels,
        expected([
            // gate, fwd d256, bwd dq d64 on sm_100, sm_120, sm_80, sm_86, sm_89, sm_90a
            [39, 47, 48, 48, 48, 47],
            [243, 242, 241, 241, 241, 255],
            [125, 126, 223, 223, 223, 222],
        ])
    );
    assert_sorted_and_unique(&kernels);
}

#[test]
fn ptxas_12_report_of_three_kernels_on_six_archs() {
    // ptxas 12.9 adds "N bytes cmem[0]" to the "Used" line, which is not recorded.
    assert!(PTXAS_12_KERNELS.contains("bytes cmem[0]"));
    // Its blocks come one arch after another, in the order the script ran them.
    let first_arch = PTXAS_12_KERNELS
        .lines()
        .find_map(|l| l.split("' for '").nth(1))
        .expect("an entry");
    assert_eq!(first_arch, "sm_80'");
    let kernels = parse(PTXAS_12_KERNELS);
    // ptxas 12.9 allocates these kernels exactly as 13.0 does.
    assert_eq!(
        kernels,
        expected([
            [39, 47, 48, 48, 48, 47],
            [243, 242, 241, 241, 241, 255],
            [125, 126, 223, 223, 223, 222],
        ])
    );
    assert_sorted_and_unique(&kernels);
}

#[test]
fn block_order_does_not_matter() {
    // Reversing the order of the per-entry blocks (as another --threads schedule might) gives the same
    // report: every line belongs to the entry named last.
    for log in [NVCC_13_KERNELS, PTXAS_12_KERNELS] {
        let mut blocks: Vec<String> = Vec::new();
        for line in log.lines() {
            if line.contains("Compiling entry function") || blocks.is_empty() {
                blocks.push(String::new());
            }
            let block = blocks.last_mut().expect("a block");
            block.push_str(line);
            block.push('\n');
        }
        blocks.reverse();
        assert_eq!(parse(&blocks.concat()), parse(log));
    }
}

#[test]
fn static_shared_memory_and_an_out_of_line_device_function() {
    // nvcc 13.0 for sm_120 and sm_80 (sm_120 has no cmem[0] item); ptxas 12.9 for sm_80. The
    // "Function properties for _Z4pickPKfi" block that follows the kernel's belongs to a device
    // function, not an entry: its "0 bytes stack frame" must not overwrite the kernel's 64.
    let static_smem = |arch: &str| KernelResources {
        shared_bytes: 4096,
        stack_bytes: 64,
        ..kernel("static_smem_kernel", arch, 24)
    };
    assert_eq!(
        parse(NVCC_13_STATIC_SMEM),
        [static_smem("sm_120"), static_smem("sm_80")]
    );
    assert_eq!(parse(PTXAS_12_STATIC_SMEM), [static_smem("sm_80")]);
}

#[test]
fn spills_and_stack_frame_under_a_register_cap() {
    // The forward kernel forced into 128 registers (`.minnctapersm 2` added to its PTX) spills; the gate
    // kernel beside it does not. Both ptxas versions report the same numbers, with "cumulative stack
    // size" in the "Used" line.
    let spilling = KernelResources {
        stack_bytes: 200,
        spill_store_bytes: 312,
        spill_load_bytes: 248,
        ..kernel("gsdpa_fwd_bf16_d128", "sm_80", 128)
    };
    for log in [PTXAS_13_SPILLS, PTXAS_12_SPILLS] {
        let kernels = parse(log);
        assert_eq!(
            kernels,
            [spilling.clone(), kernel("gsdpa_gate_f16", "sm_80", 48)]
        );
        assert!(kernels[0].uses_local_memory());
        assert!(!kernels[1].uses_local_memory());
    }
}

#[test]
fn a_stack_frame_alone_counts_as_local_memory() {
    let k = KernelResources {
        stack_bytes: 16,
        ..kernel("k", "sm_80", 32)
    };
    assert!(k.uses_local_memory());
}

#[test]
fn unreadable_reports_are_errors_not_zeros() {
    let entry = "ptxas info    : Compiling entry function 'k' for 'sm_80'\n";
    let properties = "ptxas info    : Function properties for k\n";
    let bad_registers = format!("{entry}ptxas info    : Used many registers, used 0 barriers\n");
    let bad_spills =
        format!("{entry}{properties}    0 bytes stack frame, some bytes spill stores\n");
    let no_arch = "ptxas info    : Compiling entry function 'k'\n";
    for log in [bad_registers.as_str(), bad_spills.as_str(), no_arch] {
        assert!(parse_report(log).is_err(), "accepted:\n{log}");
    }
    assert_eq!(parse(""), []);
}

#[test]
fn warnings_are_collected_trimmed() {
    let log =
        "ptxas info    : 0 bytes gmem\n  ptxas warning : Registers are spilled\nnvcc warning : x\n";
    assert_eq!(
        ptxas::warnings(log),
        ["ptxas warning : Registers are spilled", "nvcc warning : x"]
    );
    assert!(ptxas::warnings(NVCC_13_KERNELS).is_empty());
}

/// CI's CUDA 12.x check (`scripts/ptxas12-report.sh`, run by .ci/run) writes ptxas 12.9's report of the
/// crate's kernels and points `GSDPA_PTXAS_REPORT` at it: every kernel and arch of this build must be
/// there, without spills or a stack frame. Without the variable there is nothing to check.
#[test]
fn external_ptxas_report_has_every_kernel_and_no_local_memory() {
    let Ok(path) = std::env::var("GSDPA_PTXAS_REPORT") else {
        eprintln!("GSDPA_PTXAS_REPORT is not set: no external ptxas report to check");
        return;
    };
    let log = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let external = parse(&log);
    let built = gated_sdpa::build_info::kernels();
    assert!(
        !built.is_empty(),
        "GSDPA_PTXAS_REPORT is set but this build has no kernels to compare with: {:?}",
        gated_sdpa::build_info::kernels_not_built_reason()
    );
    // Both lists are sorted by name then arch.
    let built_pairs: Vec<(&str, &str)> = built.iter().map(|k| (k.name, k.arch)).collect();
    let external_pairs: Vec<(&str, &str)> = external
        .iter()
        .map(|k| (k.name.as_str(), k.arch.as_str()))
        .collect();
    assert_eq!(
        external_pairs, built_pairs,
        "{path} does not cover exactly the kernels and archs of this build"
    );
    let offenders: Vec<String> = external
        .iter()
        .filter(|k| k.uses_local_memory())
        .map(|k| format!("{k:?}"))
        .collect();
    assert!(
        offenders.is_empty(),
        "kernels using local memory under {path}:\n  {}",
        offenders.join("\n  ")
    );
    eprintln!(
        "{path}: {} kernel reports, none using local memory",
        external.len()
    );
}
