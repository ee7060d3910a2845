//! Entry points for the crate's own tests, benchmarks and CLI: the GPU benchmark harness, the
//! conformance kernel and the emulator's self-tests. Hidden from the documentation and not part of the
//! API: they allocate, synchronize and change without notice.

pub mod bench;
pub mod conformance;
pub mod decode_bench;
pub mod hopper;
#[cfg(feature = "emulator")]
pub mod selftest;
