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
    /// The gated-attention paper's diagnostics, measured by the kernel; `None` (the default) costs
    /// nothing.
    pub diagnostics: Option<ForwardDiagnostics<F>>,
}

/// Optional measurements of a forward call (docs/diagnostics.md): the attention sink and the gate's
/// sparsity, the two numbers per layer that the gated-attention paper reports. Each output is written
/// only when given.
#[derive(Debug)]
pub struct ForwardDiagnostics<F> {
    /// `[B, Hq, Sq]` f32 (varlen `[Hq, Tq]`), laid out like lse: for each query row, the attention
    /// probability on the first `n_sink` keys of its sequence, normalised as the output is (0 for a
    /// row that sees no key).
    pub sink_mass: Option<Tensor<F>>,
    /// How many leading keys of each sequence count as the sink (at least 1; default 1).
    pub n_sink: usize,
    /// `[B, Hq]` f32: the mean of act(G) over each sequence's query rows (and over D for the
    /// elementwise gate); 0 for an empty sequence. Needs a gate and `gate_workspace`.
    pub gate_stats: Option<Tensor<F>>,
    /// `[`[`gate_stats_workspace_len`]`(problem)]` f32 scratch for `gate_stats`: the per-block partial
    /// sums that a second kernel adds in a fixed order, so that the statistics are deterministic.
    /// Overwritten; required exactly when `gate_stats` is given.
    pub gate_workspace: Option<Tensor<F>>,
}

impl<F> Default for ForwardDiagnostics<F> {
    fn default() -> Self {
        ForwardDiagnostics {
            sink_mass: None,
            n_sink: 1,
            gate_stats: None,
            gate_workspace: None,
        }
    }
}

impl<F> ForwardDiagnostics<F> {
    /// Requests the sink mass of the first `n_sink` keys into `sink_mass`.
    pub fn with_sink_mass(mut self, sink_mass: Tensor<F>, n_sink: usize) -> Self {
        self.sink_mass = Some(sink_mass);
        self.n_sink = n_sink;
        self
    }

    /// Requests the mean gate score per (batch, head) into `gate_stats`, with its scratch `workspace`.
    pub fn with_gate_stats(mut self, gate_stats: Tensor<F>, workspace: Tensor<F>) -> Self {
        self.gate_stats = Some(gate_stats);
        self.gate_workspace = Some(workspace);
        self
    }
}

/// f32 elements of [`ForwardDiagnostics::gate_workspace`] a forward of `problem` needs: one partial sum
/// per (batch, query head, query block, warp) of the forward kernel's grid, sized for the larger of the
/// mma.sync and the Hopper kernel's ([`crate::launch::gate_partials_workspace_per_head`]). Errors for an
/// unsupported head dim or a size that overflows.
pub fn gate_stats_workspace_len(problem: &AttentionProblem) -> Result<usize> {
    crate::launch::gate_partials_workspace_per_head(problem).and_then(|per_head| {
        problem
            .batch
            .checked_mul(problem.heads_q)
            .and_then(|n| n.checked_mul(per_head))
            .ok_or_else(|| {
                crate::error::GsdpaError::SizeOverflow("gate statistics workspace".into())
            })
    })
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

/// Forward diagnostics over host slices.
pub type HostForwardDiagnostics<'a> = ForwardDiagnostics<&'a mut [f32]>;

/// Backward arguments over host slices.
pub type HostBackwardArgs<'a, T> = BackwardArgs<&'a [T], &'a [f32], &'a mut [T]>;

/// Options of the backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackwardOptions {
    /// Bit-reproducible gradients: dQ is computed by its own pass instead of with atomics. The CPU
    /// reference is always deterministic.
    pub deterministic: bool,
    /// Which tile configuration the dK/dV and dQ kernels run with (docs/backward.md).
    pub tiles: BackwardTiles,
}

/// The backward kernels' tile configuration (kernels/backward/traits.h, docs/backward.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackwardTiles {
    /// [`BackwardTiles::Large`] where the head dim has large-tile kernels and the device's opt-in shared
    /// memory per block holds them (D = 64 and 128: sm_80, sm_90; D = 256: sm_90 with two stages, sm_80
    /// with one), [`BackwardTiles::Compact`] otherwise ([`crate::launch::backward_tiles`]).
    #[default]
    Auto,
    /// The tiles that fit 99 KiB of shared memory per block (every arch, sm_86 and sm_89 included).
    Compact,
    /// The large-tile kernels: at D = 64 a large dQ kernel (the deterministic mode's) beside the compact
    /// dK/dV one, at D = 128 and 256 both.
    /// At D = 256 these are the two-stage kernels (`*_d256_large`, 176 / 168 KiB) where the device's
    /// limit holds them (sm_90), else the one-stage ones (`*_d256_large_1stage`: one Q buffer in dK/dV,
    /// one K buffer in dQ, 144 / 136 KiB; sm_80). On a device whose shared memory per block holds neither
    /// the launch is refused with [`crate::GsdpaError::LaunchResources`], as the GPU would refuse it.
    Large,
}

impl BackwardTiles {
    /// Parses `auto`, `compact` and `large`.
    pub fn parse(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(BackwardTiles::Auto),
            "compact" => Ok(BackwardTiles::Compact),
            "large" => Ok(BackwardTiles::Large),
            other => Err(crate::error::GsdpaError::InvalidArgument(format!(
                "`{other}` is not a backward tile configuration (auto, compact, large)"
            ))),
        }
    }
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

/// Which forward kernel a backend runs (docs/hopper-forward.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardKernel {
    /// The Hopper kernel on an emulator targeting sm_90 ([`crate::Emulator::with_arch`]) where the call
    /// is one it supports, the mma.sync kernel otherwise. On the CUDA backend, the mma.sync kernel for now:
    /// the Hopper kernel becomes its default on sm_90 once it has passed the GPU suite on hardware.
    #[default]
    Auto,
    /// Always the mma.sync kernel (FlashAttention-2 design, every arch).
    MmaSync,
    /// The warp-specialized wgmma / TMA kernel (sm_90a) wherever it supports the call, falling back to
    /// the mma.sync kernel where it does not ([`crate::launch::hopper_forward_unsupported`]); on the CUDA
    /// backend a device other than sm_90 is an error.
    Hopper,
}

impl ForwardKernel {
    /// Parses `auto`, `mma-sync` (or `mma`, `sm80`) and `hopper` (or `sm90`).
    pub fn parse(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(ForwardKernel::Auto),
            "mma-sync" | "mma_sync" | "mma" | "sm80" => Ok(ForwardKernel::MmaSync),
            "hopper" | "sm90" | "wgmma" => Ok(ForwardKernel::Hopper),
            other => Err(crate::error::GsdpaError::InvalidArgument(format!(
                "`{other}` is not a forward kernel (auto, mma-sync, hopper)"
            ))),
        }
    }
}
