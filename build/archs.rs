//! Build step 1's choice of target archs (used by `nvcc.rs`): pure functions over `GSDPA_CUDA_ARCHS` and
//! the output of `nvcc --list-gpu-arch`, so `tests/build_archs.rs` includes this file and tests them.
//!
//! docs/toolchain.md says which GPUs each arch covers and why the PTX is the lowest arch's.

/// SASS targets when `GSDPA_CUDA_ARCHS` is not set: Ampere (A100), Ampere consumer, Ada, Hopper (with the
/// arch-specific `a` features), Blackwell datacenter (B200) and Blackwell consumer (RTX 50xx). The kernels
/// use mma.sync, which all of them run. An nvcc that does not know an arch (sm_100 and sm_120 need CUDA
/// 12.8) builds the others, with a cargo warning. PTX for the lowest one is embedded as well, so a GPU
/// without its own SASS here JIT-compiles it.
pub const DEFAULT_ARCHS: &[&str] = &["80", "86", "89", "90a", "100", "120"];

/// The archs to build, and the default archs left out because this nvcc does not know them.
#[derive(Debug, PartialEq, Eq)]
pub struct ArchSelection {
    /// As nvcc spells them after `sm_`/`compute_`: `80`, `90a`, in the order given.
    pub archs: Vec<String>,
    /// Default archs dropped (only when `GSDPA_CUDA_ARCHS` is not set).
    pub dropped: Vec<String>,
}

/// The virtual archs an nvcc can compile for, as numbers, from `nvcc --list-gpu-arch` (which prints
/// `compute_80` and so on, one a line, without the `a`/`f` variants). `None` when it lists none.
pub fn parse_gpu_arch_list(output: &str) -> Option<Vec<String>> {
    let archs: Vec<String> = output
        .split_whitespace()
        .filter_map(|item| item.strip_prefix("compute_"))
        .map(String::from)
        .collect();
    (!archs.is_empty()).then_some(archs)
}

/// The SASS archs to build: `requested` (the value of `GSDPA_CUDA_ARCHS`: `80,90a`, commas or spaces,
/// `sm_` or `compute_` prefixes allowed), or else those of [`DEFAULT_ARCHS`] this nvcc supports.
/// `supported` is [`parse_gpu_arch_list`]'s answer; `None` (an nvcc that cannot list its archs) keeps
/// everything and leaves the verdict to nvcc. A requested arch nvcc does not know is an error.
pub fn select_archs(
    requested: Option<&str>,
    supported: Option<&[String]>,
    nvcc_version: &str,
) -> Result<ArchSelection, String> {
    let is_supported =
        |arch: &str| supported.is_none_or(|list| list.iter().any(|s| s == arch_number(arch)));
    let Some(list) = requested.filter(|v| !v.trim().is_empty()) else {
        let (kept, dropped): (Vec<&str>, Vec<&str>) =
            DEFAULT_ARCHS.iter().partition(|a| is_supported(a));
        if kept.is_empty() {
            return Err(format!(
                "nvcc {nvcc_version} supports none of the default archs {}: use CUDA 12.8 or newer",
                DEFAULT_ARCHS.join(",")
            ));
        }
        return Ok(ArchSelection {
            archs: kept.into_iter().map(String::from).collect(),
            dropped: dropped.into_iter().map(String::from).collect(),
        });
    };
    let mut archs: Vec<String> = Vec::new();
    for item in list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        let arch = item
            .trim_start_matches("sm_")
            .trim_start_matches("compute_");
        let digits = arch_number(arch);
        if digits.is_empty()
            || !digits.chars().all(|c| c.is_ascii_digit())
            || arch.len() > digits.len() + 1
        {
            return Err(format!(
                "GSDPA_CUDA_ARCHS: `{item}` is not an arch like 80, 86, 89, 90a or 120"
            ));
        }
        if !is_supported(arch) {
            return Err(format!(
                "GSDPA_CUDA_ARCHS: nvcc {nvcc_version} cannot target sm_{arch} (it knows compute_{})",
                supported.unwrap_or_default().join(", compute_")
            ));
        }
        if !archs.iter().any(|a| a == arch) {
            archs.push(arch.to_string());
        }
    }
    if archs.is_empty() {
        return Err(format!("GSDPA_CUDA_ARCHS=`{list}` names no arch"));
    }
    Ok(ArchSelection {
        archs,
        dropped: Vec::new(),
    })
}

/// `90a` -> `90`, `100f` -> `100`: the arch without its feature-set suffix.
pub fn arch_number(arch: &str) -> &str {
    arch.trim_end_matches(['a', 'f'])
}

/// The arch whose PTX is embedded: the numerically lowest (PTX JIT-compiles forward, never backward).
/// `None` for an empty list.
pub fn lowest_arch(archs: &[String]) -> Option<&str> {
    archs
        .iter()
        .min_by_key(|a| arch_number(a).parse::<u32>().unwrap_or(u32::MAX))
        .map(String::as_str)
}
