//! Fused gated scaled-dot-product attention.
pub mod backend;
pub mod build_info;
pub mod conformance;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod error;
pub mod ffi;
pub mod launch;
pub mod problem;
pub mod reference;
pub mod tensor;
pub mod validate;

pub use backend::{
    BackwardArgs, BackwardOptions, ForwardArgs, HostBackend, HostBackwardArgs, HostForwardArgs,
};
pub use error::{GsdpaError, Result};
pub use reference::Reference;
pub use problem::{Activation, AttentionProblem, DType, GateMode, Varlen, SUPPORTED_HEAD_DIMS};
pub use tensor::{split_q_proj, Element, Layout, Memory, QProjViews, Tensor};
pub use validate::{
    backward_workspace_bytes, backward_workspace_layout, set_backward_workspace, validate_backward,
    validate_forward, validate_problem, BackwardWorkspaceLayout,
};
