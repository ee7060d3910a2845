//! The description of one attention call: sizes, masking, scale, gate and varlen packing.
//!
//! Conventions (see `docs/conventions.md`): `q [B, Sq, Hq, D]`, `k, v [B, Sk, Hkv, D]`, query head
//! `h` reads kv head `h / (Hq / Hkv)`, causal masking is bottom-right aligned (query `i` sees key `j` iff
//! `j <= i + Sk - Sq`), `lse [B, Hq, Sq]` in f32 and natural log.

use std::fmt;

use crate::error::{GsdpaError, Result};
use crate::ffi;

/// Head dims the kernels are instantiated for.
pub const SUPPORTED_HEAD_DIMS: [usize; 3] = [64, 128, 256];

/// Element type of Q, K, V, G and of every output except LSE (always f32): the [`crate::Element`]
/// type of the tensors (`T::DTYPE`), never a separate setting that could disagree with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    BF16,
    F16,
}

impl DType {
    /// Lower-case name as the CLI spells it (`bf16`, `f16`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the output gate applies, and with what granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GateMode {
    /// Plain attention: `Y = O`.
    #[default]
    None,
    /// One gate logit per output element: `g [B, Sq, Hq, D]`.
    Elementwise,
    /// One gate logit per token and head, broadcast over D: `g [B, Sq, Hq]`.
    Headwise,
}

impl GateMode {
    /// Lower-case name as the CLI spells it.
    pub const fn name(self) -> &'static str {
        match self {
            GateMode::None => "none",
            GateMode::Elementwise => "elementwise",
            GateMode::Headwise => "headwise",
        }
    }

    /// The value of the kernels' `gate_mode` field (`enum GsdpaGateMode`).
    pub const fn to_ffi(self) -> i32 {
        (match self {
            GateMode::None => ffi::GSDPA_GATE_NONE,
            GateMode::Elementwise => ffi::GSDPA_GATE_ELEMENTWISE,
            GateMode::Headwise => ffi::GSDPA_GATE_HEADWISE,
        }) as i32
    }
}

impl fmt::Display for GateMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The gate's activation: `sigmoid(g)` or `silu(g) = g * sigmoid(g)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    #[default]
    Sigmoid,
    Silu,
}

impl Activation {
    /// Lower-case name as the CLI spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Activation::Sigmoid => "sigmoid",
            Activation::Silu => "silu",
        }
    }

    /// The value of the kernels' `activation` field (`enum GsdpaActivation`).
    pub const fn to_ffi(self) -> i32 {
        (match self {
            Activation::Sigmoid => ffi::GSDPA_ACT_SIGMOID,
            Activation::Silu => ffi::GSDPA_ACT_SILU,
        }) as i32
    }

    /// `act(g)` in f64.
    pub fn apply(self, g: f64) -> f64 {
        let s = sigmoid(g);
        match self {
            Activation::Sigmoid => s,
            Activation::Silu => g * s,
        }
    }

    /// `d act / d g` in f64: `s (1 - s)` for sigmoid, `s (1 + g (1 - s))` for silu.
    pub fn derivative(self, g: f64) -> f64 {
        let s = sigmoid(g);
        match self {
            Activation::Sigmoid => s * (1.0 - s),
            Activation::Silu => s * (1.0 + g * (1.0 - s)),
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Logistic sigmoid, written so that neither tail overflows (`exp` of a large positive argument).
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Variable-length packing, as FlashAttention's varlen API: the sequences of a batch are packed along one
/// token axis and `cu_seqlens_*[b]..cu_seqlens_*[b + 1]` are the tokens of sequence `b`.
///
/// Host copies of the prefix sums; device backends upload them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Varlen {
    /// Prefix sums of the query lengths, `batch + 1` entries starting at 0.
    pub cu_seqlens_q: Vec<i32>,
    /// Prefix sums of the key lengths, `batch + 1` entries starting at 0.
    pub cu_seqlens_k: Vec<i32>,
    /// An upper bound of the query lengths (sizes the kernels' grid). [`Varlen::new`] sets the exact maximum.
    pub max_seqlen_q: usize,
    /// An upper bound of the key lengths.
    pub max_seqlen_k: usize,
}

impl Varlen {
    /// Builds the packing from the two prefix sums, computing the maximum lengths; validates both.
    pub fn new(cu_seqlens_q: Vec<i32>, cu_seqlens_k: Vec<i32>) -> Result<Self> {
        let max_seqlen_q = max_length("cu_seqlens_q", &cu_seqlens_q)?;
        let max_seqlen_k = max_length("cu_seqlens_k", &cu_seqlens_k)?;
        let varlen = Varlen {
            cu_seqlens_q,
            cu_seqlens_k,
            max_seqlen_q,
            max_seqlen_k,
        };
        varlen.validate()?;
        Ok(varlen)
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.cu_seqlens_q.len().saturating_sub(1)
    }

    /// Total number of query tokens (the packed axis of q, y, o, g).
    pub fn total_q(&self) -> usize {
        self.cu_seqlens_q.last().map_or(0, |&t| t.max(0) as usize)
    }

    /// Total number of key tokens (the packed axis of k, v).
    pub fn total_k(&self) -> usize {
        self.cu_seqlens_k.last().map_or(0, |&t| t.max(0) as usize)
    }

    /// Checks: both prefix sums have the same length >= 1, start at 0, never decrease, and the max
    /// lengths bound the actual lengths.
    pub fn validate(&self) -> Result<()> {
        if self.cu_seqlens_q.len() != self.cu_seqlens_k.len() {
            return Err(GsdpaError::InvalidCuSeqlens {
                which: "cu_seqlens_k",
                reason: format!(
                    "has {} entries but cu_seqlens_q has {} (both must be batch + 1)",
                    self.cu_seqlens_k.len(),
                    self.cu_seqlens_q.len()
                ),
            });
        }
        let actual_q = max_length("cu_seqlens_q", &self.cu_seqlens_q)?;
        let actual_k = max_length("cu_seqlens_k", &self.cu_seqlens_k)?;
        for (which, given, actual) in [
            ("cu_seqlens_q", self.max_seqlen_q, actual_q),
            ("cu_seqlens_k", self.max_seqlen_k, actual_k),
        ] {
            if given < actual {
                return Err(GsdpaError::InvalidCuSeqlens {
                    which,
                    reason: format!("max_seqlen {given} is below the longest sequence ({actual})"),
                });
            }
        }
        Ok(())
    }
}

/// Validates one prefix sum and returns its longest sequence.
fn max_length(which: &'static str, cu: &[i32]) -> Result<usize> {
    let invalid = |reason: String| GsdpaError::InvalidCuSeqlens { which, reason };
    match cu.first() {
        None => return Err(invalid("is empty (needs batch + 1 entries)".into())),
        Some(&first) if first != 0 => return Err(invalid(format!("starts at {first}, not 0"))),
        Some(_) => {}
    }
    let mut longest = 0usize;
    for (b, pair) in cu.windows(2).enumerate() {
        if pair[1] < pair[0] {
            return Err(invalid(format!(
                "decreases at entry {}: {} after {}",
                b + 1,
                pair[1],
                pair[0]
            )));
        }
        // Both are non-negative i32 here, so the difference fits.
        longest = longest.max((pair[1] - pair[0]) as usize);
    }
    Ok(longest)
}

/// The largest softmax scale validation accepts: `2^16`.
///
/// The kernels fold the scale into the exponent: they compute `s * scale * log2(e)` in f32, where `s`
/// is the raw dot product `q . k`, and subtract the row maximum's product from it. With
/// `scale <= 2^16` both products and their difference stay finite for every raw score
/// `|s| < 2^110`, that is for every score a finite dot product of finite 16-bit inputs yields short of
/// f32 overflow. Larger scales overflow for ordinary scores (`scale = 1e37` at `|s| > 24`, and
/// `scale * log2(e)` itself is infinite above `2.4e38`), so they are rejected with
/// [`GsdpaError::UnsupportedScale`]. Scores `scale * q . k` that are not finite in f32 are non-finite
/// inputs (see `docs/conventions.md`).
pub const MAX_SOFTMAX_SCALE: f32 = 65536.0;

/// One attention call. Build it with [`AttentionProblem::builder`], where every size is named;
/// [`AttentionProblem::new`] takes them positionally. The modifiers ([`AttentionProblem::causal`],
/// [`AttentionProblem::gate`], ...) return a changed copy; the public fields can be read (and written)
/// directly. The element type is not part of the problem: it is the element type of the tensors the
/// problem runs on. Every backend validates the problem together with its tensors.
///
/// ```
/// use gated_sdpa::{Activation, AttentionProblem, GateMode};
/// let p = AttentionProblem::builder()
///     .batch(2)
///     .seqlen_q(1024)
///     .seqlen_k(1024)
///     .heads_q(16)
///     .heads_kv(2)
///     .head_dim(256)
///     .causal(true)
///     .gate(GateMode::Elementwise)
///     .activation(Activation::Sigmoid)
///     .build()?;
/// assert_eq!(p.softmax_scale(), 1.0 / 16.0);
/// # Ok::<(), gated_sdpa::GsdpaError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionProblem {
    /// Number of sequences (for varlen: `cu_seqlens.len() - 1`).
    pub batch: usize,
    /// Query length (for varlen: the maximum query length).
    pub seqlen_q: usize,
    /// Key length (for varlen: the maximum key length).
    pub seqlen_k: usize,
    pub heads_q: usize,
    pub heads_kv: usize,
    pub head_dim: usize,
    /// Bottom-right aligned causal mask.
    pub causal: bool,
    /// The explicit softmax scale; `None` means `1 / sqrt(head_dim)`. Read the scale in effect with
    /// [`AttentionProblem::softmax_scale`].
    pub softmax_scale: Option<f32>,
    pub gate: GateMode,
    pub activation: Activation,
    /// Packed variable-length sequences; `None` for the padded `[B, S, H, D]` layout.
    pub varlen: Option<Varlen>,
}

impl AttentionProblem {
    /// A non-causal, ungated problem with the default scale. The arguments are positional, in this
    /// order: `new(batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim)`; prefer
    /// [`AttentionProblem::builder`], which names them.
    pub fn new(
        batch: usize,
        seqlen_q: usize,
        seqlen_k: usize,
        heads_q: usize,
        heads_kv: usize,
        head_dim: usize,
    ) -> Self {
        AttentionProblem {
            batch,
            seqlen_q,
            seqlen_k,
            heads_q,
            heads_kv,
            head_dim,
            causal: false,
            softmax_scale: None,
            gate: GateMode::None,
            activation: Activation::Sigmoid,
            varlen: None,
        }
    }

    /// A builder that names every size (see [`ProblemBuilder`]).
    pub fn builder() -> ProblemBuilder {
        ProblemBuilder::default()
    }

    /// A varlen problem: batch and the (maximum) lengths come from `varlen`.
    pub fn new_varlen(varlen: Varlen, heads_q: usize, heads_kv: usize, head_dim: usize) -> Self {
        AttentionProblem::new(0, 0, 0, heads_q, heads_kv, head_dim).varlen(varlen)
    }

    pub fn causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }

    pub fn gate(mut self, gate: GateMode) -> Self {
        self.gate = gate;
        self
    }

    pub fn activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Switches to the packed varlen layout; also sets `batch`, `seqlen_q` and `seqlen_k` from `varlen`
    /// (`cu_seqlens_q.len() - 1`, `max_seqlen_q`, `max_seqlen_k`).
    pub fn varlen(mut self, varlen: Varlen) -> Self {
        self.batch = varlen.batch();
        self.seqlen_q = varlen.max_seqlen_q;
        self.seqlen_k = varlen.max_seqlen_k;
        self.varlen = Some(varlen);
        self
    }

    /// The softmax scale in effect: the explicit one, or `1 / sqrt(head_dim)`.
    pub fn softmax_scale(&self) -> f32 {
        self.softmax_scale
            .unwrap_or_else(|| 1.0 / (self.head_dim.max(1) as f32).sqrt())
    }

    /// Query heads per kv head (`heads_q / heads_kv`), 1 for MHA. 0 if heads_kv is 0.
    pub fn group_size(&self) -> usize {
        self.heads_q.checked_div(self.heads_kv).unwrap_or(0)
    }

    /// Number of query tokens along the packed token axis: `Tq` for varlen, else `batch * seqlen_q`.
    pub fn total_q(&self) -> usize {
        match &self.varlen {
            Some(v) => v.total_q(),
            None => self.batch.saturating_mul(self.seqlen_q),
        }
    }

    /// Number of key tokens: `Tk` for varlen, else `batch * seqlen_k`.
    pub fn total_k(&self) -> usize {
        match &self.varlen {
            Some(v) => v.total_k(),
            None => self.batch.saturating_mul(self.seqlen_k),
        }
    }

    /// True when there is no query row at all (batch, heads_q or every query length is 0). Such
    /// problems are valid: the forward has no output element to write and is a no-op. The backward
    /// still owes zeros to dK and dV when those have elements (`seqlen_q == 0 < seqlen_k`).
    /// Note that `seqlen_k == 0` with query rows is *not* empty: every row sees no key, so Y = 0 and
    /// LSE = -inf (and dQ = dG = 0) must still be written.
    pub fn is_empty(&self) -> bool {
        self.heads_q == 0 || self.total_q() == 0
    }

    /// Ranges of the packed query tokens and key tokens of sequence `b`; `None` when `b >= batch`.
    pub fn sequence(&self, b: usize) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
        if b >= self.batch {
            return None;
        }
        let to_index = |x: i32| x.max(0) as usize;
        Some(match &self.varlen {
            Some(v) => (
                to_index(*v.cu_seqlens_q.get(b)?)..to_index(*v.cu_seqlens_q.get(b + 1)?),
                to_index(*v.cu_seqlens_k.get(b)?)..to_index(*v.cu_seqlens_k.get(b + 1)?),
            ),
            None => (
                b * self.seqlen_q..(b + 1) * self.seqlen_q,
                b * self.seqlen_k..(b + 1) * self.seqlen_k,
            ),
        })
    }

    /// Shape of q, y, o, dy, dq (and an elementwise g/dg): `[B, Sq, Hq, D]`, varlen `[Tq, Hq, D]`.
    pub fn q_shape(&self) -> Vec<usize> {
        match &self.varlen {
            Some(v) => vec![v.total_q(), self.heads_q, self.head_dim],
            None => vec![self.batch, self.seqlen_q, self.heads_q, self.head_dim],
        }
    }

    /// Shape of k, v, dk, dv: `[B, Sk, Hkv, D]`, varlen `[Tk, Hkv, D]`.
    pub fn kv_shape(&self) -> Vec<usize> {
        match &self.varlen {
            Some(v) => vec![v.total_k(), self.heads_kv, self.head_dim],
            None => vec![self.batch, self.seqlen_k, self.heads_kv, self.head_dim],
        }
    }

    /// Shape of g and dg: the q shape for an elementwise gate, without D for a headwise gate.
    /// `None` when the problem has no gate.
    pub fn gate_shape(&self) -> Option<Vec<usize>> {
        match self.gate {
            GateMode::None => None,
            GateMode::Elementwise => Some(self.q_shape()),
            GateMode::Headwise => {
                let mut s = self.q_shape();
                s.pop();
                Some(s)
            }
        }
    }

    /// Shape of lse: `[B, Hq, Sq]`, varlen `[Hq, Tq]`.
    pub fn lse_shape(&self) -> Vec<usize> {
        match &self.varlen {
            Some(v) => vec![self.heads_q, v.total_q()],
            None => vec![self.batch, self.heads_q, self.seqlen_q],
        }
    }
}

/// Builds an [`AttentionProblem`] with every size named, so that two swapped sizes cannot compile into
/// a wrong problem silently:
///
/// ```
/// use gated_sdpa::{AttentionProblem, GateMode};
/// let p = AttentionProblem::builder()
///     .batch(1)
///     .seqlen_q(8)
///     .seqlen_k(8)
///     .heads_q(16)
///     .heads_kv(2)
///     .head_dim(256)
///     .gate(GateMode::Elementwise)
///     .build()?;
/// assert_eq!((p.heads_q, p.heads_kv), (16, 2));
/// # Ok::<(), gated_sdpa::GsdpaError>(())
/// ```
///
/// `batch`, `seqlen_q`, `seqlen_k`, `heads_q` and `head_dim` are required; `heads_kv` defaults to
/// `heads_q` (MHA). A varlen problem takes batch and lengths from [`ProblemBuilder::varlen`] instead,
/// and then must not set them. [`ProblemBuilder::build`] validates the problem
/// ([`crate::validate_problem`]).
#[derive(Debug, Clone, Default)]
pub struct ProblemBuilder {
    batch: Option<usize>,
    seqlen_q: Option<usize>,
    seqlen_k: Option<usize>,
    heads_q: Option<usize>,
    heads_kv: Option<usize>,
    head_dim: Option<usize>,
    causal: bool,
    softmax_scale: Option<f32>,
    gate: GateMode,
    activation: Activation,
    varlen: Option<Varlen>,
}

impl ProblemBuilder {
    /// Number of sequences.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = Some(batch);
        self
    }

    /// Query length.
    pub fn seqlen_q(mut self, seqlen_q: usize) -> Self {
        self.seqlen_q = Some(seqlen_q);
        self
    }

    /// Key length.
    pub fn seqlen_k(mut self, seqlen_k: usize) -> Self {
        self.seqlen_k = Some(seqlen_k);
        self
    }

    /// Number of query heads.
    pub fn heads_q(mut self, heads_q: usize) -> Self {
        self.heads_q = Some(heads_q);
        self
    }

    /// Number of key/value heads (a divisor of `heads_q`; defaults to `heads_q`).
    pub fn heads_kv(mut self, heads_kv: usize) -> Self {
        self.heads_kv = Some(heads_kv);
        self
    }

    /// Head dim: 64, 128 or 256.
    pub fn head_dim(mut self, head_dim: usize) -> Self {
        self.head_dim = Some(head_dim);
        self
    }

    /// Bottom-right aligned causal mask (default off).
    pub fn causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }

    /// The softmax scale (default `1 / sqrt(head_dim)`): finite, positive and at most
    /// [`MAX_SOFTMAX_SCALE`].
    pub fn softmax_scale(mut self, softmax_scale: f32) -> Self {
        self.softmax_scale = Some(softmax_scale);
        self
    }

    /// The output gate (default none).
    pub fn gate(mut self, gate: GateMode) -> Self {
        self.gate = gate;
        self
    }

    /// The gate's activation (default sigmoid).
    pub fn activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Packed variable-length sequences; batch and the (maximum) lengths come from `varlen`.
    pub fn varlen(mut self, varlen: Varlen) -> Self {
        self.varlen = Some(varlen);
        self
    }

    /// The problem, validated by [`crate::validate_problem`]. A required size that was not set is a
    /// [`GsdpaError::InvalidArgument`] naming it.
    pub fn build(self) -> Result<AttentionProblem> {
        let missing = |what: &str| {
            GsdpaError::InvalidArgument(format!("problem builder: {what} was not set"))
        };
        let heads_q = self.heads_q.ok_or_else(|| missing("heads_q"))?;
        let heads_kv = self.heads_kv.unwrap_or(heads_q);
        let head_dim = self.head_dim.ok_or_else(|| missing("head_dim"))?;
        let problem = match self.varlen {
            Some(varlen) => {
                if self.batch.is_some() || self.seqlen_q.is_some() || self.seqlen_k.is_some() {
                    return Err(GsdpaError::InvalidArgument(
                        "problem builder: a varlen problem takes batch, seqlen_q and seqlen_k from \
                         its cu_seqlens; do not set them"
                            .into(),
                    ));
                }
                AttentionProblem::new_varlen(varlen, heads_q, heads_kv, head_dim)
            }
            None => AttentionProblem::new(
                self.batch.ok_or_else(|| missing("batch"))?,
                self.seqlen_q.ok_or_else(|| missing("seqlen_q"))?,
                self.seqlen_k.ok_or_else(|| missing("seqlen_k"))?,
                heads_q,
                heads_kv,
                head_dim,
            ),
        };
        let problem = AttentionProblem {
            causal: self.causal,
            softmax_scale: self.softmax_scale,
            gate: self.gate,
            activation: self.activation,
            ..problem
        };
        crate::validate::validate_problem(&problem)?;
        Ok(problem)
    }
}
