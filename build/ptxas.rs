//! Build step 2: reading ptxas's resource report (`nvcc -Xptxas -v`, or `ptxas -v` run directly).
//!
//! Pure functions over the text of the log: no cargo output, no files, so `tests/ptxas_report.rs` includes
//! this file as a module and checks it against logs captured from nvcc 12.x and 13.x (`build/testdata/`).
//! Per entry function ptxas prints
//!
//! ```text
//! ptxas info    : Compiling entry function 'gsdpa_gate_bf16' for 'sm_80'
//! ptxas info    : Function properties for gsdpa_gate_bf16
//!     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
//! ptxas info    : Used 44 registers, used 0 barriers, 4096 bytes smem, 472 bytes cmem[0]
//! ```
//!
//! The items of the "Used" line vary between CUDA versions (12.x lists `cmem[0]`, 13.x does not; "used N
//! barriers" is newer than "N bytes smem"), so each item is recognised by its words, not its position.
//! "Function properties" also appears for non-inlined device functions, which are not entries and are
//! skipped. With `nvcc --threads 0` the archs are compiled in parallel, but each arch's block of lines is
//! printed in one piece; every line is attributed to the entry named in the last "Compiling entry
//! function" line, so the result does not depend on the order of the blocks.

/// One kernel's resources as ptxas reports them for one arch. Mirrors `build_info::KernelResources`
/// (which the generated build-info file fills from this).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelResources {
    pub name: String,
    pub arch: String,
    pub registers: u32,
    pub shared_bytes: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
}

impl KernelResources {
    /// True when the kernel touches local memory: it spills registers or has a stack frame.
    pub fn uses_local_memory(&self) -> bool {
        self.stack_bytes > 0 || self.spill_store_bytes > 0 || self.spill_load_bytes > 0
    }
}

/// Every entry function in the log, sorted by name then arch. An error names the line it could not read.
pub fn parse_report(log: &str) -> Result<Vec<KernelResources>, String> {
    let mut kernels: Vec<KernelResources> = Vec::new();
    // Index of the entry whose "Function properties" header was the previous line.
    let mut properties_of: Option<usize> = None;
    let mut current: Option<usize> = None;
    for line in log.lines() {
        let pending = properties_of.take();
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let name = parts.next().unwrap_or_default().to_string();
            let arch = parts.nth(1).unwrap_or_default().to_string();
            if name.is_empty() || arch.is_empty() {
                return Err(format!(
                    "unexpected ptxas output (an entry without name or arch): `{line}`"
                ));
            }
            kernels.push(KernelResources {
                name,
                arch,
                ..Default::default()
            });
            current = Some(kernels.len() - 1);
        } else if let Some(name) = line.split("Function properties for ").nth(1) {
            // A device function's properties (not an entry) are recognised by the name and skipped.
            properties_of = current.filter(|&i| kernels[i].name == name.trim());
        } else if line.contains("bytes stack frame") {
            if let Some(i) = pending {
                for item in line.split(',') {
                    let value = leading_number(item)?;
                    if item.contains("stack frame") {
                        kernels[i].stack_bytes = value;
                    } else if item.contains("spill stores") {
                        kernels[i].spill_store_bytes = value;
                    } else if item.contains("spill loads") {
                        kernels[i].spill_load_bytes = value;
                    }
                }
            }
        } else if let Some(rest) = line
            .split("Used ")
            .nth(1)
            .filter(|r| r.contains("registers"))
        {
            let Some(i) = current else { continue };
            for item in rest.split(',') {
                // cmem (constant banks), barriers and the cumulative stack size are not recorded.
                if item.contains("registers") {
                    kernels[i].registers = leading_number(item)?;
                } else if item.contains("bytes smem") {
                    kernels[i].shared_bytes = leading_number(item)?;
                }
            }
        }
    }
    kernels.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    Ok(kernels)
}

/// The log's warning lines (nvcc's and ptxas's), trimmed: the build repeats them as cargo warnings, as
/// they would otherwise vanish into a log nobody reads.
pub fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("warning"))
        .map(str::trim)
        .collect()
}

fn leading_number(item: &str) -> Result<u32, String> {
    let digits: String = item
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .map_err(|_| format!("unexpected ptxas output: `{item}` does not start with a number"))
}
