//! Fused gated scaled-dot-product attention: `Y = softmax(scale Q K^T + mask) V * act(G)` and its
//! LSE, forward and backward, as hand-written CUDA kernels (bf16/f16, head dims 64/128/256).
//!
//! The gate is the output gate of "Gated Attention for Large Language Models" (Qwen, NeurIPS 2025):
//! elementwise (`g [B, Sq, Hq, D]`) or headwise (`g [B, Sq, Hq]`), sigmoid or silu, applied in the
//! attention kernel's epilogue instead of in two extra passes over the output.
//!
//! # Pieces
//! - [`AttentionProblem`]: sizes, causal (bottom-right aligned), softmax scale, gate, activation, varlen;
//!   built with [`AttentionProblem::builder`]. The element type (bf16 or f16) is the tensors' own.
//! - [`Tensor`]: storage plus [`Layout`] (shape and strides in elements, last dim contiguous). Storage
//!   is anything implementing [`Memory`]: host slices here, device buffers in the CUDA backend.
//!   [`split_q_proj`] takes q and g as strided views of one Qwen3-Next `q_proj` output, without a copy.
//! - [`validate_forward`] / [`validate_backward`]: the one validation path of every backend, returning
//!   typed [`GsdpaError`]s and the kernels' parameter struct ([`ffi`]).
//! - [`paged`]: decode over a paged KV cache (block table, split-KV, the gate fused into the combine)
//!   and appending new tokens to the cache; see `docs/decode.md`.
//! - Backends: [`Reference`] (naive CPU, f64 accumulation, every option), the kernel emulator (the CUDA
//!   sources compiled for the host) and CUDA; [`raw`] takes a driver stream and device addresses, and
//!   the `candle` feature adds the `candle` module for candle tensors (docs/candle.md).
//!
//! # Example
//! ```
//! use gated_sdpa::half::bf16;
//! use gated_sdpa::{
//!     AttentionProblem, BackwardArgs, BackwardOptions, ForwardArgs, GateMode, HostBackend,
//!     HostBuffer, Reference, Tensor,
//! };
//!
//! // Qwen3-Next-like: 16 query heads sharing 2 kv heads, head dim 256, elementwise sigmoid gate.
//! let p = AttentionProblem::builder()
//!     .batch(1)
//!     .seqlen_q(8)
//!     .seqlen_k(8)
//!     .heads_q(16)
//!     .heads_kv(2)
//!     .head_dim(256)
//!     .causal(true)
//!     .gate(GateMode::Elementwise)
//!     .build()?;
//! let (qs, kvs, ls) = (p.q_shape(), p.kv_shape(), p.lse_shape());
//! let n = |s: &[usize]| s.iter().product::<usize>();
//! let fill = |len: usize, f: fn(usize) -> f32| {
//!     let data: Vec<bf16> = (0..len).map(|i| bf16::from_f32(f(i))).collect();
//!     HostBuffer::from_slice(&data) // 16-byte aligned, as the kernels need
//! };
//! let q = fill(n(&qs), |i| ((i % 7) as f32 - 3.0) * 0.1);
//! let k = fill(n(&kvs), |i| ((i % 5) as f32 - 2.0) * 0.1);
//! let v = fill(n(&kvs), |i| (i % 3) as f32);
//! let g = fill(n(&qs), |_| 30.0); // a gate that is wide open
//! let mut y = HostBuffer::<bf16>::new(n(&qs));
//! let mut lse = HostBuffer::<f32>::new(n(&ls));
//!
//! let mut args = ForwardArgs {
//!     q: Tensor::contiguous(q.as_slice(), &qs),
//!     k: Tensor::contiguous(k.as_slice(), &kvs),
//!     v: Tensor::contiguous(v.as_slice(), &kvs),
//!     g: Some(Tensor::contiguous(g.as_slice(), &qs)),
//!     y: Tensor::contiguous(y.as_mut_slice(), &qs),
//!     o: None,
//!     lse: Some(Tensor::contiguous(lse.as_mut_slice(), &ls)), // None: inference, no LSE
//!     diagnostics: None, // sink mass and gate statistics: docs/diagnostics.md
//! };
//! Reference.forward(&p, &mut args)?;
//! // Bad input is a typed error, never a panic.
//! let err = Reference.forward(&p.clone().gate(GateMode::None), &mut args).unwrap_err();
//! assert!(matches!(err, gated_sdpa::GsdpaError::GateUnexpected { tensor: "g" }));
//! // Query 0 sees only key 0 (causal), so its output is v's first row: 0, 1, 2, 0, 1, 2, ...
//! assert_eq!(y.as_slice()[..3], [0.0, 1.0, 2.0].map(bf16::from_f32));
//!
//! // Backward: gradients of sum(Y * dy).
//! let dy = fill(n(&qs), |i| (i % 2) as f32);
//! let mut dq = HostBuffer::<bf16>::new(n(&qs));
//! let mut dk = HostBuffer::<bf16>::new(n(&kvs));
//! let mut dv = HostBuffer::<bf16>::new(n(&kvs));
//! let mut dg = HostBuffer::<bf16>::new(n(&qs));
//! let mut bargs = BackwardArgs {
//!     q: Tensor::contiguous(q.as_slice(), &qs),
//!     k: Tensor::contiguous(k.as_slice(), &kvs),
//!     v: Tensor::contiguous(v.as_slice(), &kvs),
//!     g: Some(Tensor::contiguous(g.as_slice(), &qs)),
//!     y: Tensor::contiguous(y.as_slice(), &qs),
//!     o: None, // only the silu gate needs the ungated output
//!     dy: Tensor::contiguous(dy.as_slice(), &qs),
//!     lse: Tensor::contiguous(lse.as_slice(), &ls),
//!     dq: Tensor::contiguous(dq.as_mut_slice(), &qs),
//!     dk: Tensor::contiguous(dk.as_mut_slice(), &kvs),
//!     dv: Tensor::contiguous(dv.as_mut_slice(), &kvs),
//!     dg: Some(Tensor::contiguous(dg.as_mut_slice(), &qs)),
//! };
//! Reference.backward(&p, &mut bargs, BackwardOptions::default())?;
//! # Ok::<(), gated_sdpa::GsdpaError>(())
//! ```
pub mod arch;
pub mod backend;
pub mod build_info;
#[cfg(feature = "candle")]
pub mod candle;
pub mod cuda;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod error;
pub mod ffi;
pub mod launch;
pub mod paged;
pub mod problem;
pub mod raw;
pub mod reference;
#[doc(hidden)]
pub mod sass;
pub mod tensor;
#[doc(hidden)]
pub mod testing;
pub mod tma;
pub mod validate;

/// The CUDA driver bindings the [`cuda`] backend's device buffers, streams and contexts come from.
pub use cudarc;
/// The 16-bit float types ([`half::bf16`], [`half::f16`]) the kernels take.
pub use half;

/// The README's code blocks, compiled and run as doctests so that its example cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use arch::TargetArch;
pub use backend::{
    gate_stats_workspace_len, ForwardDiagnostics, ForwardKernel, HostForwardDiagnostics,
};
pub use backend::{
    BackwardArgs, BackwardOptions, BackwardTiles, ForwardArgs, HostBackend, HostBackwardArgs,
    HostForwardArgs,
};
pub use backend::{GateArgs, GateBackwardArgs, HostGateArgs, HostGateBackwardArgs};
pub use cuda::CudaBackend;
#[cfg(feature = "emulator")]
pub use emulator::Emulator;
pub use error::{GsdpaError, Result};
pub use paged::{
    decode_workspace_bytes, num_splits_heuristic, DecodeArgs, DecodeProblem, HostDecodeArgs,
    NumSplits, PagedKv,
};
pub use problem::{
    Activation, AttentionProblem, DType, GateMode, ProblemBuilder, Varlen, MAX_SOFTMAX_SCALE,
    SUPPORTED_HEAD_DIMS,
};
pub use reference::Reference;
pub use tensor::{split_q_proj, Element, HostBuffer, Layout, Memory, QProjViews, Tensor};
pub use validate::{
    backward_workspace_bytes, backward_workspace_layout, set_backward_workspace, validate_backward,
    validate_forward, validate_problem, BackwardWorkspaceLayout,
};
pub use validate::{validate_gate, validate_gate_backward};
