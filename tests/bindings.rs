//! The Rust side's view of `kernels/gsdpa_params.h` agrees with the header.
//!
//! The generated structs check their own size, alignment and field offsets at compile time (bindgen's
//! layout assertions in `src/ffi/params.rs`); CI regenerates that file and diffs it. What is left to
//! check here: the public enums map onto the header's constants, and default params are all zero.

use gated_sdpa::ffi;
use gated_sdpa::{Activation, GateMode};

#[test]
fn public_enums_use_the_header_constants() {
    assert_eq!(GateMode::None.to_ffi(), ffi::GSDPA_GATE_NONE as i32);
    assert_eq!(
        GateMode::Elementwise.to_ffi(),
        ffi::GSDPA_GATE_ELEMENTWISE as i32
    );
    assert_eq!(GateMode::Headwise.to_ffi(), ffi::GSDPA_GATE_HEADWISE as i32);
    assert_eq!(Activation::Sigmoid.to_ffi(), ffi::GSDPA_ACT_SIGMOID as i32);
    assert_eq!(Activation::Silu.to_ffi(), ffi::GSDPA_ACT_SILU as i32);
}

#[test]
fn default_params_are_null_and_zero() {
    let fwd = ffi::GsdpaFwdParams::default();
    assert!(fwd.q.is_null() && fwd.g.is_null() && fwd.y.is_null() && fwd.lse.is_null());
    assert!(fwd.cu_seqlens_q.is_null() && fwd.cu_seqlens_k.is_null());
    assert_eq!((fwd.batch, fwd.head_dim, fwd.scale), (0, 0, 0.0));
    let bwd = ffi::GsdpaBwdParams::default();
    assert!(bwd.dq.is_null() && bwd.dq_accum.is_null() && bwd.delta.is_null());
    let gate = ffi::GsdpaGateParams::default();
    assert!(gate.o.is_null() && gate.g.is_null() && gate.y.is_null());
    assert_eq!(gate.o_stride.row, 0);
    let gate_bwd = ffi::GsdpaGateBackwardParams::default();
    assert!(gate_bwd.dy.is_null() && gate_bwd.d_o.is_null() && gate_bwd.dg.is_null());
}

#[test]
fn params_are_passed_by_value_as_plain_c_structs() {
    // Kernel arguments live in a 4 KiB parameter space (32 KiB from Hopper on, with CUDA 12.1+).
    fn assert_launchable<T: cudarc::driver::DeviceRepr + Copy>() {
        assert!(std::mem::size_of::<T>() <= 4096);
        assert_eq!(std::mem::align_of::<T>(), 8);
    }
    assert_launchable::<ffi::GsdpaFwdParams>();
    assert_launchable::<ffi::GsdpaBwdParams>();
    assert_launchable::<ffi::GsdpaGateParams>();
    assert_launchable::<ffi::GsdpaGateBackwardParams>();
    assert_launchable::<ffi::GsdpaConformanceParams>();
}
