//! What the build produced: the embedded CUDA fatbin, the nvcc that built it, the target archs, ptxas's
//! resource report per kernel and arch, and whether the CPU emulator was compiled in.
//!
//! Everything here is recorded by the build script at build time (`build/info.rs` writes it, from the
//! report `build/ptxas.rs` parses); nothing is probed at run time. The report is how spills are caught
//! without a GPU: `tests/build_info.rs` fails the build's tests if a kernel spills or uses a stack frame on
//! any SASS arch. docs/toolchain.md describes the archs and the toolchains.

/// ptxas's resource usage of one kernel compiled for one arch (`-Xptxas -v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelResources {
    /// The kernel's entry-point name (the `extern "C"` name the driver looks up).
    pub name: &'static str,
    /// The SASS target, e.g. `sm_80` or `sm_90a`.
    pub arch: &'static str,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory per block in bytes (dynamic shared memory is sized at launch, not here).
    pub shared_bytes: u32,
    /// Stack frame per thread in bytes (local memory; 0 for a well-behaved kernel).
    pub stack_bytes: u32,
    /// Bytes of registers spilled to local memory per thread.
    pub spill_store_bytes: u32,
    /// Bytes reloaded from those spills per thread.
    pub spill_load_bytes: u32,
}

impl KernelResources {
    /// True when the kernel touches local memory: it spills registers or has a stack frame.
    pub fn uses_local_memory(&self) -> bool {
        self.stack_bytes > 0 || self.spill_store_bytes > 0 || self.spill_load_bytes > 0
    }
}

mod generated {
    use super::KernelResources;
    include!(concat!(env!("OUT_DIR"), "/gsdpa_build_info.rs"));
}

/// ptxas's report for every kernel and SASS arch, sorted by name then arch. Empty without nvcc.
pub fn kernels() -> &'static [KernelResources] {
    generated::KERNELS
}

/// The version of the nvcc that built the kernels (e.g. `13.0.88`), or `None` without nvcc.
pub fn nvcc_version() -> Option<&'static str> {
    generated::NVCC_VERSION
}

/// The fatbin's targets: `sm_XX` for each SASS arch, then `compute_XX` for the embedded PTX.
/// Empty without nvcc.
pub fn archs() -> &'static [&'static str] {
    generated::ARCHS
}

/// The CUDA kernels as one fatbin (SASS for every arch in [`archs`], PTX for the lowest), or `None`
/// when the crate was built without nvcc. Embedded in the binary, 64-byte aligned: the driver reads its
/// header fields in place.
pub fn fatbin() -> Option<&'static [u8]> {
    generated::FATBIN
}

/// Why there are no CUDA kernels in this build (e.g. nvcc was not found), or `None` when they were built.
pub fn kernels_not_built_reason() -> Option<&'static str> {
    generated::KERNELS_NOT_BUILT_REASON
}

/// True when the kernels were also compiled for the CPU emulator (feature `emulator`).
pub fn emulator_built() -> bool {
    generated::EMULATOR_BUILT
}

/// True when the crate was built with `GSDPA_REQUIRE_NVCC=1` (so the kernels are guaranteed present).
pub fn nvcc_required() -> bool {
    generated::REQUIRE_NVCC
}
