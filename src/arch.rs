//! Target GPU architectures and the launch-resource limits a kernel launch must respect on them.
//!
//! The driver refuses a launch that asks for more than the GPU offers (too much dynamic shared memory,
//! more threads than the kernel's `__launch_bounds__`, a grid too tall, more registers than the SM
//! has). [`check_resources`] applies the same limits before a launch, so that the emulator refuses what a
//! GPU would refuse, with the same [`GsdpaError::LaunchResources`] error on both backends: the CUDA
//! backend checks against the device's architecture, the emulator against the one it is configured for
//! ([`crate::emulator::Emulator::with_arch`], default sm_80).

use std::fmt;

use crate::build_info::{self, KernelResources};
use crate::error::{GsdpaError, Result};
use crate::launch::LaunchConfig;

/// A GPU architecture as its compute capability (major, minor), e.g. 8.0 for A100, 9.0 for H100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TargetArch {
    /// Compute capability major version.
    pub major: u32,
    /// Compute capability minor version.
    pub minor: u32,
}

/// Registers per SM on every architecture these kernels run on (sm_80 through sm_90); one block may
/// use all of them.
pub const REGISTERS_PER_BLOCK: u32 = 65536;
/// Threads per block, on every architecture.
pub const MAX_THREADS_PER_BLOCK: u32 = 1024;
/// Grid x extent limit (exclusive: at most 2^31 - 1 blocks).
pub const GRID_X_LIMIT: u64 = 1 << 31;
/// Largest grid y and z extents.
pub const MAX_GRID_YZ: u32 = 65535;
/// Registers are allocated per warp in units of this many.
const REGISTER_ALLOCATION_UNIT: u32 = 256;

impl TargetArch {
    /// sm_80 (A100): the emulator's default target.
    pub const SM80: TargetArch = TargetArch::new(8, 0);
    /// sm_86 (RTX 30xx, A40).
    pub const SM86: TargetArch = TargetArch::new(8, 6);
    /// sm_89 (RTX 40xx, L40).
    pub const SM89: TargetArch = TargetArch::new(8, 9);
    /// sm_90 (H100, H200).
    pub const SM90: TargetArch = TargetArch::new(9, 0);

    /// The architecture of compute capability `major.minor`.
    pub const fn new(major: u32, minor: u32) -> Self {
        TargetArch { major, minor }
    }

    /// Parses `sm_80`, `sm_90a`, `80`, `8.6` (the `a` suffix is ignored: same limits).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || {
            GsdpaError::InvalidArgument(format!(
                "`{text}` is not a GPU architecture like sm_80, sm_86, sm_89 or sm_90"
            ))
        };
        let t = text.trim();
        let t = t.strip_prefix("sm_").unwrap_or(t);
        let t = t.strip_suffix('a').unwrap_or(t);
        let (major, minor) = match t.split_once('.') {
            Some((major, minor)) => (major, minor),
            None if t.len() >= 2 => t.split_at(t.len() - 1),
            None => return Err(bad()),
        };
        let major = major.parse().map_err(|_| bad())?;
        let minor = minor.parse().map_err(|_| bad())?;
        if major == 0 || minor > 9 {
            return Err(bad());
        }
        Ok(TargetArch::new(major, minor))
    }

    /// The most dynamic shared memory one block may opt in to, in bytes: 163 KiB on sm_80 and sm_87,
    /// 99 KiB on sm_86, sm_89 and sm_120, 227 KiB on sm_90 and sm_100. Other architectures get the
    /// smallest of these, 99 KiB (a conservative guess: every kernel here fits in it).
    pub fn max_dynamic_shared_bytes(self) -> u32 {
        match (self.major, self.minor) {
            (8, 0) | (8, 7) => 163 * 1024,
            (9, 0) | (10, 0) => 227 * 1024,
            _ => 99 * 1024,
        }
    }

    /// The SASS that runs on this architecture from the build's ptxas table: the same `sm_XY` (or
    /// `sm_XYa`), else the newest arch of the same major version not newer than it (SASS runs on later
    /// minor versions). `None` when the build has none for it.
    fn sass_arch<'a>(self, built: impl Iterator<Item = &'a str>) -> Option<&'a str> {
        built
            .filter_map(|name| TargetArch::parse(name).ok().map(|arch| (arch, name)))
            .filter(|(arch, _)| arch.major == self.major && arch.minor <= self.minor)
            .max_by_key(|(arch, _)| arch.minor)
            .map(|(_, name)| name)
    }
}

impl fmt::Display for TargetArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sm_{}{}", self.major, self.minor)
    }
}

/// What the launch check knows of one kernel. `None` fields are not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelLimits {
    /// The kernel's `__launch_bounds__` (most threads per block).
    pub max_threads: Option<u32>,
    /// Registers per thread for the target architecture.
    pub registers: Option<u32>,
}

impl KernelLimits {
    /// The registers of `kernel` on `arch` from the build's ptxas table ([`build_info::kernels`]), or
    /// `None` when the build has no table (no nvcc) or no SASS for that architecture.
    pub fn registers_from_ptxas(kernel: &str, arch: TargetArch) -> Option<u32> {
        registers_in(build_info::kernels(), kernel, arch)
    }
}

fn registers_in(table: &[KernelResources], kernel: &str, arch: TargetArch) -> Option<u32> {
    let sass = arch.sass_arch(table.iter().filter(|k| k.name == kernel).map(|k| k.arch))?;
    table
        .iter()
        .find(|k| k.name == kernel && k.arch == sass)
        .map(|k| k.registers)
}

/// Registers one block of `threads` threads needs at `registers` per thread: each warp is allocated
/// `registers * 32` rounded up to the allocation unit of 256.
pub fn block_registers(registers: u32, threads: u32) -> u64 {
    let warps = u64::from(threads.div_ceil(32));
    let per_warp = u64::from(registers) * 32;
    warps
        * per_warp.div_ceil(u64::from(REGISTER_ALLOCATION_UNIT))
        * u64::from(REGISTER_ALLOCATION_UNIT)
}

/// Checks that `config` can launch on `arch`: dynamic shared memory within the opt-in limit, threads
/// within 1..=1024 and the kernel's `__launch_bounds__`, grid x below 2^31 and y, z at most 65535, and
/// the block's registers within the SM's 64K. The error names the kernel, the arch and the limit.
pub fn check_resources(
    config: &LaunchConfig,
    arch: TargetArch,
    kernel: &KernelLimits,
) -> Result<()> {
    let fail = |reason: String| {
        Err(GsdpaError::LaunchResources {
            kernel: config.kernel.clone(),
            arch: arch.to_string(),
            reason,
        })
    };
    let smem_limit = arch.max_dynamic_shared_bytes();
    if config.shared_bytes > smem_limit {
        return fail(format!(
            "{} bytes of dynamic shared memory, above the opt-in limit of {smem_limit} bytes",
            config.shared_bytes
        ));
    }
    let threads = config.block.iter().map(|&d| u64::from(d)).product::<u64>();
    let max_threads = kernel
        .max_threads
        .unwrap_or(MAX_THREADS_PER_BLOCK)
        .min(MAX_THREADS_PER_BLOCK);
    if threads == 0 || threads > u64::from(max_threads) {
        let bound = match kernel.max_threads {
            Some(n) if n < MAX_THREADS_PER_BLOCK => format!("its __launch_bounds__ of {n}"),
            _ => format!("the limit of {MAX_THREADS_PER_BLOCK}"),
        };
        return fail(format!(
            "{threads} threads per block ({:?}), outside 1..={max_threads}: {bound}",
            config.block
        ));
    }
    let [x, y, z] = config.grid;
    if u64::from(x) >= GRID_X_LIMIT || y > MAX_GRID_YZ || z > MAX_GRID_YZ {
        return fail(format!(
            "grid {:?}: x must be below 2^31, y and z at most {MAX_GRID_YZ}",
            config.grid
        ));
    }
    if let Some(registers) = kernel.registers {
        // threads <= 1024 here, so the cast is exact.
        let needed = block_registers(registers, threads as u32);
        if needed > u64::from(REGISTERS_PER_BLOCK) {
            return fail(format!(
                "{registers} registers per thread x {threads} threads need {needed} registers (allocated \
                 per warp in units of {REGISTER_ALLOCATION_UNIT}), above the {REGISTERS_PER_BLOCK} of one SM"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(name: &'static str, arch: &'static str, registers: u32) -> KernelResources {
        KernelResources {
            name,
            arch,
            registers,
            shared_bytes: 0,
            stack_bytes: 0,
            spill_store_bytes: 0,
            spill_load_bytes: 0,
        }
    }

    #[test]
    fn parses_arch_spellings() {
        assert_eq!(TargetArch::parse("sm_80").unwrap(), TargetArch::SM80);
        assert_eq!(TargetArch::parse("sm_90a").unwrap(), TargetArch::SM90);
        assert_eq!(TargetArch::parse("86").unwrap(), TargetArch::SM86);
        assert_eq!(TargetArch::parse("8.9").unwrap(), TargetArch::SM89);
        assert_eq!(TargetArch::parse("sm_120").unwrap(), TargetArch::new(12, 0));
        for bad in ["", "sm_", "8", "x86", "sm_8x"] {
            assert!(TargetArch::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn registers_come_from_the_sass_that_runs() {
        let table = [
            resources("k", "sm_80", 100),
            resources("k", "sm_86", 110),
            resources("k", "sm_90a", 120),
            resources("other", "sm_89", 50),
        ];
        assert_eq!(registers_in(&table, "k", TargetArch::SM80), Some(100));
        assert_eq!(registers_in(&table, "k", TargetArch::SM86), Some(110));
        // No sm_89 SASS for k: the sm_86 SASS runs there.
        assert_eq!(registers_in(&table, "k", TargetArch::SM89), Some(110));
        assert_eq!(registers_in(&table, "k", TargetArch::SM90), Some(120));
        assert_eq!(registers_in(&table, "k", TargetArch::new(7, 5)), None);
        assert_eq!(registers_in(&table, "missing", TargetArch::SM80), None);
    }

    #[test]
    fn block_registers_round_per_warp() {
        // 255 registers: 8160 per warp, allocated as 8192.
        assert_eq!(block_registers(255, 32), 8192);
        assert_eq!(block_registers(255, 256), 65536);
        assert_eq!(block_registers(255, 257), 65536 + 8192);
        // 1 register: 32 per warp, allocated as 256.
        assert_eq!(block_registers(1, 64), 512);
    }
}
