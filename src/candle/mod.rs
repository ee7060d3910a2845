//! The kernels on candle tensors (feature `candle`; CUDA tensors with `candle-cuda`).
//!
//! The functions mirror candle-flash-attn's names and arguments, with the gate added:
//! [`gated_flash_attn`] (`q`, `k`, `v`, `g`, `softmax_scale`, `causal`), [`gated_flash_attn_packed`]
//! (the Qwen3-Next `q_proj` output `[B, S, Hq, 2 D]` itself, each head `[q_h | g_h]`, read in place),
//! [`gated_flash_attn_varlen`] (packed sequences with `cu_seqlens` tensors and maximum lengths) and
//! [`gated_flash_attn_paged`] (decode over a paged KV cache). [`GatedAttention`] holds the options
//! (gate mode, activation) for the same calls.
//!
//! - The output has the input dtype (bf16 or f16) and `q`'s shape `[B, S, Hq, D]` (varlen `[T, Hq, D]`),
//!   contiguous, so `reshape((b, s, hq * d))` feeds `o_proj` with no copy.
//! - CPU tensors run the kernels on the emulator (the same CUDA sources compiled for the host; the
//!   default feature `emulator`), so a candle model using this runs, and is tested, on a machine
//!   without a GPU. CUDA tensors run them on
//!   the device's candle stream, with no synchronization and no allocation beyond the outputs.
//! - Autograd: [`gated_flash_attn_packed`] is a candle custom op with a backward, whose `q_proj`
//!   gradient is dq and dg interleaved per head exactly as `q_proj` produced them. The elementwise
//!   [`gated_flash_attn`] and [`gated_flash_attn_varlen`] get theirs through the packed op when a gradient
//!   is tracked (q and g are concatenated into one `[.., Hq, 2 D]` tensor first). The headwise gate and
//!   the paged decode have no backward here: a backward through them (q, k or v tracked) fails with a
//!   message saying so; a gate that is the only tracked input gets no gradient.
//! - Every [`crate::GsdpaError`] becomes a [`candle_core::Error`] with the same message.
//!
//! `docs/candle.md` shows a Qwen3-Next attention layer built on it.

#[cfg(feature = "emulator")]
mod host;
mod op;

/// Without the `emulator` feature, CPU tensors have nothing to run on.
#[cfg(not(feature = "emulator"))]
mod host {
    use super::op::{BackwardInputs, ForwardOut, ForwardViews, Gradients, PagedViews};
    use crate::{paged::DecodeProblem, AttentionProblem, GsdpaError};
    use candle_core::CpuStorage;

    fn no_emulator() -> candle_core::Error {
        super::to_candle(GsdpaError::KernelsNotBuilt(
            "CPU tensors run on the emulator, which this build leaves out (feature `emulator`)"
                .into(),
        ))
    }

    pub(super) fn forward(
        _: &AttentionProblem,
        _: &ForwardViews<'_, CpuStorage>,
        _: bool,
    ) -> candle_core::Result<ForwardOut<CpuStorage>> {
        Err(no_emulator())
    }

    pub(super) fn backward(
        _: &AttentionProblem,
        _: &BackwardInputs<'_>,
    ) -> candle_core::Result<Gradients> {
        Err(no_emulator())
    }

    pub(super) fn forward_paged(
        _: &DecodeProblem,
        _: &PagedViews<'_, CpuStorage>,
        _: &[i32],
        _: &[i32],
    ) -> candle_core::Result<CpuStorage> {
        Err(no_emulator())
    }
}

#[cfg(feature = "candle-cuda")]
mod device;

use candle_core::{DType as CandleDType, Device, Tensor};

use crate::error::GsdpaError;
use crate::paged::DecodeProblem;
use crate::problem::{Activation, AttentionProblem, GateMode, Varlen};

pub use op::PACKED_OP_NAME;

/// A crate error as a candle error, with the same message (and no backtrace appended to it, which
/// `candle_core::Error::wrap` adds when `RUST_BACKTRACE` is set).
pub(crate) fn to_candle(e: GsdpaError) -> candle_core::Error {
    candle_core::Error::Wrapped(Box::new(e))
}

/// The options of a gated attention call: softmax scale, causal mask, gate mode and activation.
///
/// `GatedAttention::new(scale, causal)` is an elementwise sigmoid gate (Qwen3-Next's); the free
/// functions of this module are shorthands for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GatedAttention {
    softmax_scale: f32,
    causal: bool,
    gate: GateMode,
    activation: Activation,
}

impl GatedAttention {
    /// An elementwise sigmoid gate, `softmax_scale` (usually `1 / sqrt(D)`) and the causal mask
    /// (bottom-right aligned when `Sq != Sk`) as candle-flash-attn takes them.
    pub fn new(softmax_scale: f32, causal: bool) -> Self {
        GatedAttention {
            softmax_scale,
            causal,
            gate: GateMode::Elementwise,
            activation: Activation::Sigmoid,
        }
    }

    /// The gate mode: elementwise (`g` like `q`), headwise (`g [.., Hq]`) or none (plain flash
    /// attention, `g` absent).
    pub fn gate(mut self, gate: GateMode) -> Self {
        self.gate = gate;
        self
    }

    /// The gate's activation, sigmoid (the default) or silu.
    pub fn activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// The problem of a `[B, Sq, Hq, D]` query (or `[T, Hq, D]` with `varlen`) and `[B, Sk, Hkv, D]`
    /// keys; the tensors themselves are checked by the crate's validation when the kernels run.
    fn problem(
        &self,
        q_dims: &[usize],
        k_dims: &[usize],
        varlen: Option<Varlen>,
    ) -> candle_core::Result<AttentionProblem> {
        let problem = match varlen {
            None => {
                let (&[b, sq, hq, d], &[_, sk, hkv, _]) = (q_dims, k_dims) else {
                    return Err(shape_error("q and k", "[B, S, H, D]", q_dims, k_dims));
                };
                AttentionProblem::new(b, sq, sk, hq, hkv, d)
            }
            Some(varlen) => {
                let (&[_, hq, d], &[_, hkv, _]) = (q_dims, k_dims) else {
                    return Err(shape_error("q and k", "[T, H, D]", q_dims, k_dims));
                };
                AttentionProblem::new_varlen(varlen, hq, hkv, d)
            }
        };
        let mut problem = problem
            .causal(self.causal)
            .gate(self.gate)
            .activation(self.activation);
        problem.softmax_scale = Some(self.softmax_scale);
        crate::validate::validate_problem(&problem).map_err(to_candle)?;
        Ok(problem)
    }

    /// `softmax(scale Q K^T + mask) V * act(G)`: `q [B, Sq, Hq, D]`, `k`, `v [B, Sk, Hkv, D]`, `g` like
    /// `q` (elementwise), `[B, Sq, Hq]` (headwise) or `None` (gate mode none). Any strides with a
    /// contiguous last dimension (CUDA: 16-byte aligned rows).
    pub fn forward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        g: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let problem = self.problem(q.dims(), k.dims(), None)?;
        op::forward(problem, q, k, v, g)
    }

    /// The same on the Qwen3-Next `q_proj` output `[B, Sq, Hq, 2 D]` (each head `[q_h | g_h]`), read
    /// in place; with autograd, its gradient is dq and dg interleaved the same way. The gate mode must
    /// be elementwise.
    pub fn forward_packed(
        &self,
        q_proj: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let q_dims = op::packed_q_dims(q_proj.dims())?;
        self.check_packed_gate()?;
        let problem = self.problem(&q_dims, k.dims(), None)?;
        op::forward_packed(problem, q_proj, k, v)
    }

    fn check_packed_gate(&self) -> candle_core::Result<()> {
        if self.gate != GateMode::Elementwise {
            return Err(to_candle(GsdpaError::InvalidArgument(format!(
                "the packed q_proj form holds an elementwise gate, the gate mode is {}",
                self.gate.name()
            ))));
        }
        Ok(())
    }

    /// Packed sequences: `q [Tq, Hq, D]`, `k`, `v [Tk, Hkv, D]`, `g [Tq, Hq(, D)]`, and the prefix sums
    /// `seqlens_q`, `seqlens_k` (`[B + 1]`, u32 or i32, as candle-flash-attn takes them) with the longest
    /// lengths. The prefix sums are read on the host (for CUDA tensors that is a small device-to-host
    /// copy, which waits for candle's stream), because validation checks every length.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_varlen(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        g: Option<&Tensor>,
        seqlens_q: &Tensor,
        seqlens_k: &Tensor,
        max_seqlen_q: usize,
        max_seqlen_k: usize,
    ) -> candle_core::Result<Tensor> {
        let varlen = varlen_of(seqlens_q, seqlens_k, max_seqlen_q, max_seqlen_k)?;
        let problem = self.problem(q.dims(), k.dims(), Some(varlen))?;
        op::forward(problem, q, k, v, g)
    }

    /// Decode over a paged KV cache: `q [B, Sq, Hq, D]` (Sq small), `k_cache`, `v_cache`
    /// `[num_blocks, block_size, Hkv, D]`, `block_table [B, max_blocks]` and `cache_seqlens [B]` (u32 or
    /// i32). Inference only (no backward). On the CPU the table and lengths are checked first
    /// ([`crate::GsdpaError::InvalidPagedKv`]); on CUDA they stay on the device and invalid values give
    /// NaN rows (see `docs/decode.md`).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_paged(
        &self,
        q: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
        g: Option<&Tensor>,
        block_table: &Tensor,
        cache_seqlens: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (&[b, sq, hq, d], &[num_blocks, block_size, hkv, _], &[_, max_blocks]) =
            (q.dims(), k_cache.dims(), block_table.dims())
        else {
            return Err(to_candle(GsdpaError::InvalidArgument(format!(
                "paged decode: q must be [B, Sq, Hq, D], the caches [num_blocks, block_size, Hkv, D] \
                 and block_table [B, max_blocks]; got {:?}, {:?}, {:?}",
                q.dims(),
                k_cache.dims(),
                block_table.dims()
            ))));
        };
        let mut problem = DecodeProblem::new(b, sq, hq, hkv, d, block_size, num_blocks, max_blocks)
            .causal(self.causal)
            .gate(self.gate)
            .activation(self.activation);
        problem.softmax_scale = Some(self.softmax_scale);
        op::forward_paged(problem, q, k_cache, v_cache, g, block_table, cache_seqlens)
    }
}

fn shape_error(what: &str, expected: &str, a: &[usize], b: &[usize]) -> candle_core::Error {
    to_candle(GsdpaError::InvalidArgument(format!(
        "{what} must be {expected}, got {a:?} and {b:?}"
    )))
}

/// The host copy of a `[n]` u32 or i32 index tensor, as i32.
pub(crate) fn host_i32(t: &Tensor, name: &str) -> candle_core::Result<Vec<i32>> {
    let t = t.to_device(&Device::Cpu)?.flatten_all()?;
    match t.dtype() {
        CandleDType::I32 => t.to_vec1::<i32>(),
        CandleDType::U32 => t
            .to_vec1::<u32>()?
            .into_iter()
            .map(|x| {
                i32::try_from(x).map_err(|_| {
                    to_candle(GsdpaError::InvalidArgument(format!(
                        "{name}: {x} does not fit the kernels' i32"
                    )))
                })
            })
            .collect(),
        other => Err(to_candle(GsdpaError::InvalidArgument(format!(
            "{name} must be u32 or i32, got {other:?}"
        )))),
    }
}

fn varlen_of(
    seqlens_q: &Tensor,
    seqlens_k: &Tensor,
    max_seqlen_q: usize,
    max_seqlen_k: usize,
) -> candle_core::Result<Varlen> {
    let varlen = Varlen::new(
        host_i32(seqlens_q, "seqlens_q")?,
        host_i32(seqlens_k, "seqlens_k")?,
    )
    .map_err(to_candle)?;
    // candle-flash-attn takes the longest lengths from the caller; here they are computed, and a
    // caller's value that disagrees is a mistake worth reporting.
    for (name, given, actual) in [
        ("max_seqlen_q", max_seqlen_q, varlen.max_seqlen_q),
        ("max_seqlen_k", max_seqlen_k, varlen.max_seqlen_k),
    ] {
        if given != actual {
            return Err(to_candle(GsdpaError::InvalidArgument(format!(
                "{name} is {given}, the prefix sums' longest sequence has {actual}"
            ))));
        }
    }
    Ok(varlen)
}

/// The gate mode a gate tensor's rank implies next to `q`'s: as many dimensions as `q` is elementwise,
/// one fewer headwise.
fn gate_mode_of(q: &Tensor, g: &Tensor) -> GateMode {
    if g.rank() + 1 == q.rank() {
        GateMode::Headwise
    } else {
        GateMode::Elementwise
    }
}

/// candle-flash-attn's `flash_attn` with the sigmoid output gate: `q [B, Sq, Hq, D]`, `k`, `v
/// [B, Sk, Hkv, D]`, `g` like `q` (elementwise) or `[B, Sq, Hq]` (headwise); returns `Y [B, Sq, Hq, D]`.
pub fn gated_flash_attn(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: &Tensor,
    softmax_scale: f32,
    causal: bool,
) -> candle_core::Result<Tensor> {
    GatedAttention::new(softmax_scale, causal)
        .gate(gate_mode_of(q, g))
        .forward(q, k, v, Some(g))
}

/// [`gated_flash_attn`] on the Qwen3-Next `q_proj` output `q_proj [B, Sq, Hq, 2 D]` (each head
/// `[q_h | g_h]`), read in place, with a backward whose `q_proj` gradient is interleaved the same way.
pub fn gated_flash_attn_packed(
    q_proj: &Tensor,
    k: &Tensor,
    v: &Tensor,
    softmax_scale: f32,
    causal: bool,
) -> candle_core::Result<Tensor> {
    GatedAttention::new(softmax_scale, causal).forward_packed(q_proj, k, v)
}

/// candle-flash-attn's `flash_attn_varlen` with the sigmoid gate: `q [Tq, Hq, D]`, `k`, `v
/// [Tk, Hkv, D]`, `g [Tq, Hq, D]` or `[Tq, Hq]`, the `[B + 1]` prefix sums and the longest lengths.
#[allow(clippy::too_many_arguments)]
pub fn gated_flash_attn_varlen(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: &Tensor,
    seqlens_q: &Tensor,
    seqlens_k: &Tensor,
    max_seqlen_q: usize,
    max_seqlen_k: usize,
    softmax_scale: f32,
    causal: bool,
) -> candle_core::Result<Tensor> {
    GatedAttention::new(softmax_scale, causal)
        .gate(gate_mode_of(q, g))
        .forward_varlen(
            q,
            k,
            v,
            Some(g),
            seqlens_q,
            seqlens_k,
            max_seqlen_q,
            max_seqlen_k,
        )
}

/// Decode over a paged KV cache with the sigmoid gate (`flash_attn_with_kvcache`'s arguments): see
/// [`GatedAttention::forward_paged`].
#[allow(clippy::too_many_arguments)]
pub fn gated_flash_attn_paged(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    g: &Tensor,
    block_table: &Tensor,
    cache_seqlens: &Tensor,
    softmax_scale: f32,
    causal: bool,
) -> candle_core::Result<Tensor> {
    GatedAttention::new(softmax_scale, causal)
        .gate(gate_mode_of(q, g))
        .forward_paged(q, k_cache, v_cache, Some(g), block_table, cache_seqlens)
}
