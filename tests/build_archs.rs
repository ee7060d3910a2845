//! The build script's choice of target archs (`build/archs.rs`, included here as a module): the defaults,
//! what an nvcc that does not know sm_100 / sm_120 leaves out, and `GSDPA_CUDA_ARCHS`.

#[path = "../build/archs.rs"]
mod archs;

use archs::{
    arch_number, lowest_arch, parse_gpu_arch_list, select_archs, ArchSelection, DEFAULT_ARCHS,
};

/// `nvcc --list-gpu-arch` of the pinned 13.0.88 wheels, as captured.
const NVCC_13_LIST: &str = include_str!("../build/testdata/nvcc-13.0.88-list-gpu-arch.txt");
/// The list of an nvcc from before CUDA 12.8, which stops at compute_90.
const NVCC_12_4_LIST: &str = "compute_50\ncompute_52\ncompute_53\ncompute_60\ncompute_61\ncompute_62\n\
                              compute_70\ncompute_72\ncompute_75\ncompute_80\ncompute_86\ncompute_87\n\
                              compute_89\ncompute_90\n";

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn select(requested: Option<&str>, list: &str) -> Result<ArchSelection, String> {
    let supported = parse_gpu_arch_list(list);
    select_archs(requested, supported.as_deref(), "test")
}

#[test]
fn the_list_of_nvcc_13_has_every_default_arch() {
    let supported = parse_gpu_arch_list(NVCC_13_LIST).expect("a list");
    assert_eq!(supported.first().map(String::as_str), Some("75"));
    for arch in DEFAULT_ARCHS {
        assert!(supported.iter().any(|s| s == arch_number(arch)), "{arch}");
    }
    assert_eq!(parse_gpu_arch_list(""), None);
    assert_eq!(parse_gpu_arch_list("nvcc fatal : Unknown option"), None);
}

#[test]
fn defaults_with_nvcc_13_are_all_six() {
    assert_eq!(
        select(None, NVCC_13_LIST),
        Ok(ArchSelection {
            archs: strings(&["80", "86", "89", "90a", "100", "120"]),
            dropped: vec![],
        })
    );
    // An empty GSDPA_CUDA_ARCHS means the defaults too.
    assert_eq!(select(Some("  "), NVCC_13_LIST), select(None, NVCC_13_LIST));
}

#[test]
fn defaults_with_an_nvcc_before_12_8_drop_sm_100_and_sm_120() {
    assert_eq!(
        select(None, NVCC_12_4_LIST),
        Ok(ArchSelection {
            archs: strings(&["80", "86", "89", "90a"]),
            dropped: strings(&["100", "120"]),
        })
    );
}

#[test]
fn an_nvcc_that_cannot_list_its_archs_keeps_the_defaults() {
    assert_eq!(
        select_archs(None, None, "test").map(|s| s.archs),
        Ok(strings(DEFAULT_ARCHS))
    );
}

#[test]
fn an_nvcc_that_knows_no_default_arch_is_an_error() {
    let error = select(None, "compute_50\ncompute_75\n").expect_err("no arch left");
    assert!(error.contains("none of the default archs"), "{error}");
}

#[test]
fn requested_archs_keep_their_order_prefixes_and_suffixes() {
    assert_eq!(
        select(Some("sm_90a, 80 compute_120,80"), NVCC_13_LIST),
        Ok(ArchSelection {
            archs: strings(&["90a", "80", "120"]),
            dropped: vec![],
        })
    );
    assert_eq!(
        select(Some("100f"), NVCC_13_LIST).map(|s| s.archs),
        Ok(strings(&["100f"]))
    );
}

#[test]
fn requested_archs_that_are_unknown_or_malformed_are_errors() {
    let unknown = select(Some("80,120"), NVCC_12_4_LIST).expect_err("12.4 has no sm_120");
    assert!(unknown.contains("cannot target sm_120"), "{unknown}");
    for bad in ["ampere", "90aa", "sm_", "9x0", ",,"] {
        assert!(
            select(Some(bad), NVCC_13_LIST).is_err(),
            "GSDPA_CUDA_ARCHS={bad} accepted"
        );
    }
}

#[test]
fn the_ptx_is_the_numerically_lowest_arch() {
    assert_eq!(
        lowest_arch(&strings(&["90a", "100", "86", "120"])),
        Some("86")
    );
    assert_eq!(lowest_arch(&strings(&["120", "100f"])), Some("100f"));
    assert_eq!(lowest_arch(&[]), None);
}
