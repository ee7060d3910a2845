//! The build's record of itself: the ptxas resource report, the fatbin, the emulator.
//!
//! The spill check is the point: a kernel that spills registers or needs a stack frame goes through local
//! memory in its inner loop, which no test on the emulator would notice. It holds on every SASS arch of
//! the build (by default sm_80, sm_86, sm_89, sm_90a, sm_100 and sm_120, see build/archs.rs).

use gated_sdpa::build_info::{self, KernelResources};

/// Kernels were built, or the test explains why it skips (and fails if nvcc was required).
fn kernels_built() -> bool {
    match build_info::kernels_not_built_reason() {
        None => true,
        Some(reason) => {
            assert!(
                !build_info::nvcc_required(),
                "built with GSDPA_REQUIRE_NVCC=1 but without kernels: {reason}"
            );
            eprintln!("skipping the ptxas checks: {reason}");
            false
        }
    }
}

fn describe(k: &KernelResources) -> String {
    format!(
        "{} on {}: {} registers, {} bytes smem, {} bytes stack frame, {} / {} bytes spill stores / loads",
        k.name, k.arch, k.registers, k.shared_bytes, k.stack_bytes, k.spill_store_bytes, k.spill_load_bytes
    )
}

#[test]
fn no_kernel_spills_or_uses_a_stack_frame_on_any_arch() {
    if !kernels_built() {
        return;
    }
    for k in build_info::kernels() {
        eprintln!("{}", describe(k));
    }
    let offenders: Vec<String> = build_info::kernels()
        .iter()
        .filter(|k| k.uses_local_memory())
        .map(describe)
        .collect();
    assert!(
        offenders.is_empty(),
        "kernels using local memory (spills or a stack frame):\n  {}",
        offenders.join("\n  ")
    );
}

#[test]
fn report_covers_every_kernel_on_every_sass_arch() {
    if !kernels_built() {
        return;
    }
    let sass: Vec<&str> = build_info::archs()
        .iter()
        .copied()
        .filter(|a| a.starts_with("sm_"))
        .collect();
    assert!(
        !sass.is_empty(),
        "no SASS arch in {:?}",
        build_info::archs()
    );
    // The fatbin always carries PTX for the lowest arch, listed last.
    let ptx = build_info::archs().last().expect("archs");
    assert!(
        ptx.starts_with("compute_"),
        "no PTX target in {:?}",
        build_info::archs()
    );

    let kernels = build_info::kernels();
    let mut names: Vec<&str> = kernels.iter().map(|k| k.name).collect();
    names.dedup();
    // Every kernel the launchers (src/launch.rs) can name must be in the fatbin.
    let mut required = vec!["gsdpa_conformance".to_string()];
    for dt in ["bf16", "f16"] {
        for prefix in [
            "gsdpa_gate",
            "gsdpa_gate_backward",
            "gsdpa_bwd_preprocess",
            "gsdpa_bwd_dq_convert",
        ] {
            required.push(format!("{prefix}_{dt}"));
        }
        for d in [64, 128, 256] {
            for prefix in ["gsdpa_fwd", "gsdpa_bwd_dkdv", "gsdpa_bwd_dq"] {
                required.push(format!("{prefix}_{dt}_d{d}"));
            }
        }
    }
    for required in &required {
        assert!(
            names.contains(&required.as_str()),
            "{required} missing from the ptxas report: {names:?}"
        );
    }
    for name in &names {
        for arch in &sass {
            let count = kernels
                .iter()
                .filter(|k| k.name == *name && k.arch == *arch)
                .count();
            assert_eq!(
                count, 1,
                "{name} appears {count} times for {arch} in the ptxas report"
            );
        }
    }
    for k in kernels {
        assert!(
            sass.contains(&k.arch),
            "{} reported for {}, which is not a target",
            k.name,
            k.arch
        );
        // Every real kernel needs registers; 0 would mean the report was misparsed.
        assert!(k.registers > 0 && k.registers <= 255, "{}", describe(k));
    }
}

/// Without `GSDPA_CUDA_ARCHS` the fatbin has SASS for every default arch this nvcc can target (sm_100
/// and sm_120 need CUDA 12.8), in build/archs.rs's order, and PTX for compute_80.
#[test]
fn default_archs_are_all_built_when_nvcc_supports_them() {
    if !kernels_built() || option_env!("GSDPA_CUDA_ARCHS").is_some_and(|a| !a.trim().is_empty()) {
        return;
    }
    let version = build_info::nvcc_version().expect("nvcc version");
    let mut numbers = version.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    let major_minor = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let mut expected = vec!["sm_80", "sm_86", "sm_89", "sm_90a"];
    if major_minor >= (12, 8) {
        expected.extend(["sm_100", "sm_120"]);
    }
    expected.push("compute_80");
    assert_eq!(build_info::archs(), expected, "nvcc {version}");
}

#[test]
fn fatbin_is_embedded_when_kernels_are_built() {
    match build_info::fatbin() {
        Some(fatbin) => {
            assert!(build_info::kernels_not_built_reason().is_none());
            // Fatbin container magic 0xBA55ED50, little endian.
            assert_eq!(
                fatbin.get(..4),
                Some(&[0x50, 0xed, 0x55, 0xba][..]),
                "not a fatbin"
            );
            assert_eq!(
                fatbin.as_ptr() as usize % 64,
                0,
                "the fatbin must be embedded 64-byte aligned for the driver"
            );
            let version =
                build_info::nvcc_version().expect("nvcc version recorded with the fatbin");
            assert!(
                version.starts_with(|c: char| c.is_ascii_digit()),
                "nvcc version {version:?}"
            );
            assert!(!build_info::archs().is_empty());
        }
        None => {
            let reason =
                build_info::kernels_not_built_reason().expect("a reason when there is no fatbin");
            assert!(!reason.is_empty());
            assert!(
                !build_info::nvcc_required(),
                "GSDPA_REQUIRE_NVCC=1 but no fatbin: {reason}"
            );
            assert!(build_info::kernels().is_empty() && build_info::archs().is_empty());
            eprintln!("no fatbin in this build: {reason}");
        }
    }
}

#[test]
fn emulator_is_built_with_its_feature() {
    assert_eq!(build_info::emulator_built(), cfg!(feature = "emulator"));
}
