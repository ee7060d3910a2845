//! The kernels' launch parameters, mirrored from `kernels/gsdpa_params.h`.
//!
//! `params.rs` is generated from the header by bindgen (build with the feature `regen-bindings` and
//! `GSDPA_BINDGEN_OUT=$PWD/src/ffi/params.rs`) and committed, so building the crate needs no libclang;
//! CI regenerates it and fails on any difference. Its layout assertions (size, alignment and offset of
//! every field) are checked at compile time, so a struct that drifted from the header cannot build.
//!
//! The enum constants keep their C names (`GSDPA_GATE_ELEMENTWISE`, `GSDPA_FWD_BLOCK_M_D128`, ...) and
//! are `u32`; the params fields that hold them are `i32`.

// Generated code: not formatted by `cargo fmt` (bindgen runs rustfmt itself) and not linted.
#[rustfmt::skip]
#[allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code, clippy::all)]
mod params;

pub use params::*;

// SAFETY: each struct is #[repr(C)], mirrors the C struct the kernels take by value, and is Copy with
// no Drop and no references: a bitwise copy into the launch's parameter buffer is exactly the argument
// the kernel expects. (The raw pointers are device addresses; their validity is the launcher's job.)
unsafe impl cudarc::driver::DeviceRepr for GsdpaFwdParams {}
unsafe impl cudarc::driver::DeviceRepr for GsdpaBwdParams {}
unsafe impl cudarc::driver::DeviceRepr for GsdpaGateParams {}
unsafe impl cudarc::driver::DeviceRepr for GsdpaGateBackwardParams {}
unsafe impl cudarc::driver::DeviceRepr for GsdpaConformanceParams {}
