//! Typed errors: every way a call into this crate can fail, shared by all backends.
//!
//! Nothing in the public API panics on bad input; it returns one of these instead. Tensor-related
//! variants name the offending tensor (`"q"`, `"lse"`, `"dg"`, ...) so a message is actionable.

/// The error type of every fallible function in this crate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GsdpaError {
    /// A tensor's shape is not what the problem implies.
    #[error("{tensor}: expected shape {expected:?}, got {actual:?}")]
    ShapeMismatch {
        tensor: &'static str,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    /// A tensor's strides are unusable: the last dimension is not contiguous, the strides and shape
    /// disagree in length, the largest offset lies beyond the buffer, or an output overlaps itself.
    #[error("{tensor}: bad strides: {reason}")]
    BadStrides {
        tensor: &'static str,
        reason: String,
    },

    /// A pointer or stride breaks the alignment the kernels' vector loads need.
    #[error("{tensor}: misaligned: {reason}")]
    Misaligned {
        tensor: &'static str,
        reason: String,
    },

    /// The kernels exist for head dims 64, 128 and 256 only.
    #[error("unsupported head dim {head_dim} (supported: 64, 128, 256)")]
    UnsupportedHeadDim { head_dim: usize },

    /// The softmax scale is not finite, not positive, or above what the kernels' f32 exponent
    /// arithmetic can take ([`crate::problem::MAX_SOFTMAX_SCALE`]).
    #[error("unsupported softmax scale {scale}: it must be finite, positive and at most {max}")]
    UnsupportedScale { scale: f32, max: f32 },

    /// An output shares memory with an input or with another output.
    #[error("{output} overlaps {other} in memory")]
    Overlap {
        output: &'static str,
        other: &'static str,
    },

    /// GQA/MQA needs every kv head to serve the same number of query heads.
    #[error("heads_q ({heads_q}) must be a positive multiple of heads_kv ({heads_kv})")]
    HeadsNotDivisible { heads_q: usize, heads_kv: usize },

    /// cu_seqlens_q / cu_seqlens_k are not valid prefix sums for this problem.
    #[error("{which}: {reason}")]
    InvalidCuSeqlens { which: &'static str, reason: String },

    /// A size does not fit the kernels' index arithmetic (i32 lengths, i64 element offsets, grid limits).
    #[error("size overflow: {0}")]
    SizeOverflow(String),

    /// The problem has a gate but the gate tensor (or its gradient) was not given.
    #[error("{tensor} is required when the gate mode is {gate}")]
    GateMissing {
        tensor: &'static str,
        gate: &'static str,
    },

    /// The problem has no gate but a gate tensor (or gradient) was given.
    #[error("{tensor} was given but the problem has no gate")]
    GateUnexpected { tensor: &'static str },

    /// The silu backward needs the ungated forward output O (recovering it as Y / silu(G) is unstable).
    #[error("the silu backward needs the ungated forward output o (save it in the forward)")]
    MissingUngatedOutput,

    /// Any other inconsistent argument (a size missing from the problem builder, varlen fields disagreeing with the problem, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The CUDA driver library could not be loaded.
    #[error("no CUDA driver: {0}")]
    NoDriver(String),

    /// The driver loaded but no device can be used: the driver fails to initialise (e.g. a container
    /// without `/dev/nvidia*`), reports no device, or not the one asked for. `reason` names the driver's
    /// error code or the device count.
    #[error("no usable CUDA device: {reason}")]
    NoDevice { reason: String },

    /// The crate was built without the kernels this backend needs (no nvcc, or the emulator feature off).
    #[error("kernels not built: {0}")]
    KernelsNotBuilt(String),

    /// A CUDA driver call failed.
    #[error("CUDA error: {0}")]
    Cuda(String),

    /// The CPU emulator reported a failure (a kernel fault, a trapped out-of-bounds access, ...).
    #[error("emulator error: {0}")]
    Emulator(String),

    /// The launch asks for more than the target GPU architecture allows (dynamic shared memory above
    /// the opt-in limit, threads above the kernel's `__launch_bounds__`, grid y or z above 65535,
    /// registers above the SM's): the driver would refuse it. Checked by both backends
    /// (`arch::check_resources`), so the emulator refuses what a GPU would.
    #[error("kernel {kernel} cannot launch on {arch}: {reason}")]
    LaunchResources {
        kernel: String,
        arch: String,
        reason: String,
    },

    /// The caller's backward workspace is smaller than `backward_workspace_bytes` asks for.
    #[error("workspace too small: need {needed} bytes, got {got}")]
    WorkspaceTooSmall { needed: usize, got: usize },

    /// A host allocation of `bytes` bytes failed (the size itself was representable; see
    /// [`HostBuffer::try_new`](crate::HostBuffer::try_new)).
    #[error("out of memory: cannot allocate {bytes} bytes on the host")]
    OutOfMemory { bytes: usize },

    /// A paged-KV call's block table, cache lengths or query prefix sums (host copies) cannot be
    /// followed: a block id outside `[0, num_blocks)`, a length outside `[0, max_blocks * block_size]`,
    /// prefix sums that are not non-decreasing from 0 to the query count. (Device-resident values are not
    /// checked on the host: the kernels turn them into NaN rows and a status word, see `paged`.)
    #[error("{tensor}: {reason}")]
    InvalidPagedKv {
        tensor: &'static str,
        reason: String,
    },
}

/// `Result` with [`GsdpaError`].
pub type Result<T> = std::result::Result<T, GsdpaError>;
