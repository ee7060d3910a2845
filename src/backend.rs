//! The arguments of a forward or backward call and the interface every host backend implements.
//!
//! The argument structs are generic over the storage so that the same structs (and the same validation,
//! [`crate::validate`]) serve host slices and device buffers: `I` is the storage of the inputs, `O` of
//! the 16-bit outputs, `F` / `L` of the f32 LSE. Validation requires `O` to hold the same element type
//! as `I`, so a call cannot mix bf16 and f16.

use crate::error::Result;
use crate::problem::AttentionProblem;
use crate::tensor::{Element, Tensor};

/// Tensors of a forward call. Shapes (see [`AttentionProblem::q_shape`] and friends):
/// q, y, o `[B, Sq, Hq, D]`; k, v `[B, Sk, Hkv, D]`; g `[B, Sq, Hq, D]` (elementwise) or `[B, Sq, Hq]`
/// (headwise); lse `[B, Hq, Sq]` f32. Varlen: `[Tq, Hq, D]`, `[Tk, Hkv, D]`, `[Tq, Hq(, D)]`, `[Hq, Tq]`.
#[derive(Debug)]
pub struct ForwardArgs<I, O, F> {
    pub q: Tensor<I>,
    pub k: Tensor<I>,
    pub v: Tensor<I>,
    /// Gate logits; required when the problem has a gate, must be `None` otherwise.
    pub g: Option<Tensor<I>>,
    /// The gated output `Y = O * act(G)` (equal to O without a gate).
    pub y: Tensor<O>,
    /// The ungated output O, written only when given (the silu backward needs it).
    pub o: Option<Tensor<O>>,
    /// Natural-log softmax denominator, `-inf` for rows that see no key; written only when given
    /// (the backward needs it, inference does not: FlashAttention's `return_softmax_lse`).
    pub lse: Option<Tensor<F>>,
}

/// Tensors of a backward call. `y` and `lse` are the forward's outputs (`lse` is required here), `o` the forward's ungated output
/// (required for the silu activation), `dy` the upstream gradient of `y`. Gradients have the shapes of
/// what they differentiate; `dk`, `dv` are summed over the query heads sharing a kv head.
#[derive(Debug)]
pub struct BackwardArgs<I, L, O> {
    pub q: Tensor<I>,
    pub k: Tensor<I>,
    pub v: Tensor<I>,
    pub g: Option<Tensor<I>>,
    pub y: Tensor<I>,
    pub o: Option<Tensor<I>>,
    pub dy: Tensor<I>,
    pub lse: Tensor<L>,
    pub dq: Tensor<O>,
    pub dk: Tensor<O>,
    pub dv: Tensor<O>,
    /// Gradient of the gate logits; required when the problem has a gate, `None` otherwise.
    pub dg: Option<Tensor<O>>,
}

/// Forward arguments over host slices.
pub type HostForwardArgs<'a, T> = ForwardArgs<&'a [T], &'a mut [T], &'a mut [f32]>;

/// Backward arguments over host slices.
pub type HostBackwardArgs<'a, T> = BackwardArgs<&'a [T], &'a [f32], &'a mut [T]>;

/// Options of the backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackwardOptions {
    /// Bit-reproducible gradients: dQ is computed by its own pass instead of with atomics. The CPU
    /// reference is always deterministic.
    pub deterministic: bool,
}

/// A backend that runs on host memory: the CPU reference and the kernel emulator.
pub trait HostBackend {
    /// Short name, as the CLI spells it (`reference`, `emulator`).
    fn name(&self) -> &'static str;

    /// Computes Y and, if requested, LSE and O. Validates everything first; writes nothing on error.
    fn forward<T: Element>(
        &self,
        problem: &AttentionProblem,
        args: &mut HostForwardArgs<'_, T>,
    ) -> Result<()>;

    /// Computes dQ, dK, dV and (with a gate) dG. Validates everything first; writes nothing on error.
    fn backward<T: Element>(
        &self,
        problem: &AttentionProblem,
        args: &mut HostBackwardArgs<'_, T>,
        options: BackwardOptions,
    ) -> Result<()>;
}

/// Tensors of a standalone gate call, `Y = O * act(G)`: the unfused path (an attention with gate = none,
/// then this pass), which engines run today and the benches compare the fused forward against.
/// `o` and `y` are `[rows, heads, D]` (rows: batch and sequence flattened, row stride first); `g` is
/// `[rows, heads, D]` for an elementwise gate and `[rows, heads]` for a headwise one. Without a gate
/// (gate mode none) `g` must be `None` and the call copies O to Y.
#[derive(Debug)]
pub struct GateArgs<I, O> {
    pub o: Tensor<I>,
    pub g: Option<Tensor<I>>,
    pub y: Tensor<O>,
}

/// Tensors of a standalone gate backward, the unfused path's first backward step: from the upstream
/// gradient `dy` of `Y = O * act(G)`, the ungated `o` and the logits `g`, it writes `d_o = dY * act(G)`
/// and `dg = dY * O * act'(G)` (headwise: `dg = act'(G) * sum_d dY * O`). Shapes as in [`GateArgs`]:
/// `o`, `dy`, `d_o` `[rows, heads, D]`; `g`, `dg` the gate's shape. Without a gate, `g` and `dg` must be
/// `None`, the call copies dY to dO and `o` is not read.
#[derive(Debug)]
pub struct GateBackwardArgs<I, O> {
    pub o: Tensor<I>,
    pub g: Option<Tensor<I>>,
    pub dy: Tensor<I>,
    pub d_o: Tensor<O>,
    pub dg: Option<Tensor<O>>,
}

/// Gate arguments over host slices.
pub type HostGateArgs<'a, T> = GateArgs<&'a [T], &'a mut [T]>;

/// Gate backward arguments over host slices.
pub type HostGateBackwardArgs<'a, T> = GateBackwardArgs<&'a [T], &'a mut [T]>;
