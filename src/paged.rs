//! Gated attention over a paged KV cache: decode (and chunked prefill) with split-KV, the gate fused
//! into the combine.
//!
//! The interface engines know from FlashAttention's `flash_attn_with_kvcache` and
//! `flash_attn_varlen_func(..., block_table=...)`:
//! - `k_cache`, `v_cache` `[num_blocks, block_size, Hkv, D]` with any block / slot / head strides (so a
//!   FlashInfer-style `[num_blocks, Hkv, block_size, D]` cache is a strided view, no copy);
//! - `block_table [B, max_blocks]` i32 and `cache_seqlens [B]` i32: key `j` of sequence `b` is slot
//!   `j % block_size` of block `block_table[b][j / block_size]`, for `j < cache_seqlens[b]`;
//! - `q [B, Sq, Hq, D]` (Sq small: 1 for decode, up to 16 for speculative decoding), or packed
//!   `[Tq, Hq, D]` with `cu_seqlens_q` (chunked prefill over a paged cache); causal is bottom-right
//!   aligned as everywhere else;
//! - the gate `g` (elementwise `[.., Hq, D]` or headwise `[.., Hq]`, sigmoid or silu) and the outputs
//!   `y` (like q) and, optionally, `lse` (`[B, Hq, Sq]`, varlen `[Hq, Tq]`).
//!
//! The keys are cut into `num_splits` ranges ([`num_splits_heuristic`], or the caller's choice); each
//! split writes a partial O and LSE into a caller-provided workspace ([`decode_workspace_bytes`]) and a
//! combine kernel merges them by LSE and applies the gate. With one split the main kernel writes Y.
//!
//! Device values are not trusted (`docs/decode.md`): host validation ([`validate_decode`]) checks
//! shapes, strides and sizes only, as the CUDA path must (the lengths and the table live on the device,
//! so a CUDA graph can replay with new values). A length above `max_blocks * block_size` or negative, or
//! a block id outside `[0, num_blocks)` within a sequence's length, gives NaN rows for that sequence and
//! sets the status word to [`ffi::GSDPA_DECODE_STATUS_INVALID_INPUT`]; the kernels never read outside
//! the cache or the table. The reference backend, which has host copies, rejects such values with
//! [`GsdpaError::InvalidPagedKv`] instead ([`check_paged_values`]).

use std::ffi::c_void;

use crate::error::{GsdpaError, Result};
use crate::ffi::{self, GsdpaDecodeParams, GsdpaPagedStrides, GsdpaStrides};
use crate::launch::LaunchConfig;
use crate::problem::{Activation, DType, GateMode, SUPPORTED_HEAD_DIMS};
use crate::reference::Reference;
use crate::tensor::{Element, Memory, Tensor, ELEMENT_BYTES};
use crate::validate::{self, check_overlaps, Checked, Kind, WORKSPACE_ALIGN};

/// Block sizes must be a multiple of this (one mma k-step of keys never straddles a page boundary
/// within a 16-key group, and engines use 16 or 32).
pub const BLOCK_SIZE_MULTIPLE: usize = 16;

/// The sizes and options of one paged decode call. The element type comes from the tensors (`T`).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeProblem {
    pub batch: usize,
    /// Queries per sequence (decode: 1; speculative decoding: a few). Varlen: the longest sequence's.
    pub seqlen_q: usize,
    pub heads_q: usize,
    pub heads_kv: usize,
    pub head_dim: usize,
    /// Slots per cache block: a multiple of 16, at most 256.
    pub block_size: usize,
    /// Blocks in the cache (its first dimension).
    pub num_blocks: usize,
    /// Columns of the block table: a sequence holds at most `max_blocks * block_size` keys.
    pub max_blocks: usize,
    pub causal: bool,
    /// Softmax scale; `None`: `1 / sqrt(head_dim)`.
    pub softmax_scale: Option<f32>,
    pub gate: GateMode,
    pub activation: Activation,
    /// `Some(total)`: packed queries `[total, Hq, D]` delimited by `cu_seqlens_q` (given in the args).
    pub varlen_total_q: Option<usize>,
}

impl DecodeProblem {
    /// A decode problem with no gate, not causal, the default scale.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        batch: usize,
        seqlen_q: usize,
        heads_q: usize,
        heads_kv: usize,
        head_dim: usize,
        block_size: usize,
        num_blocks: usize,
        max_blocks: usize,
    ) -> Self {
        DecodeProblem {
            batch,
            seqlen_q,
            heads_q,
            heads_kv,
            head_dim,
            block_size,
            num_blocks,
            max_blocks,
            causal: false,
            softmax_scale: None,
            gate: GateMode::None,
            activation: Activation::Sigmoid,
            varlen_total_q: None,
        }
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

    /// Packed queries: `total_q` tokens, `seqlen_q` then being the longest sequence's query count.
    pub fn varlen(mut self, total_q: usize) -> Self {
        self.varlen_total_q = Some(total_q);
        self
    }

    /// The softmax scale in effect: the explicit one, or `1 / sqrt(head_dim)`.
    pub fn softmax_scale(&self) -> f32 {
        self.softmax_scale
            .unwrap_or_else(|| 1.0 / (self.head_dim.max(1) as f32).sqrt())
    }

    /// Query heads per kv head.
    pub fn group_size(&self) -> usize {
        self.heads_q.checked_div(self.heads_kv).unwrap_or(0)
    }

    /// Query tokens: `B * Sq`, or the packed count.
    pub fn total_q(&self) -> usize {
        self.varlen_total_q
            .unwrap_or(self.batch.saturating_mul(self.seqlen_q))
    }

    /// Keys a sequence can hold: `max_blocks * block_size`.
    pub fn capacity(&self) -> usize {
        self.max_blocks.saturating_mul(self.block_size)
    }

    /// `[B, Sq, Hq, D]`, varlen `[Tq, Hq, D]`: q and y.
    pub fn q_shape(&self) -> Vec<usize> {
        match self.varlen_total_q {
            Some(t) => vec![t, self.heads_q, self.head_dim],
            None => vec![self.batch, self.seqlen_q, self.heads_q, self.head_dim],
        }
    }

    /// The gate's shape (`None` without a gate).
    pub fn gate_shape(&self) -> Option<Vec<usize>> {
        let mut shape = self.q_shape();
        match self.gate {
            GateMode::None => None,
            GateMode::Elementwise => Some(shape),
            GateMode::Headwise => {
                shape.pop();
                Some(shape)
            }
        }
    }

    /// `[num_blocks, block_size, Hkv, D]`: k_cache and v_cache.
    pub fn cache_shape(&self) -> Vec<usize> {
        vec![
            self.num_blocks,
            self.block_size,
            self.heads_kv,
            self.head_dim,
        ]
    }

    /// `[B, max_blocks]`.
    pub fn table_shape(&self) -> Vec<usize> {
        vec![self.batch, self.max_blocks]
    }

    /// `[B, Hq, Sq]`, varlen `[Hq, Tq]`.
    pub fn lse_shape(&self) -> Vec<usize> {
        match self.varlen_total_q {
            Some(t) => vec![self.heads_q, t],
            None => vec![self.batch, self.heads_q, self.seqlen_q],
        }
    }

    /// Row blocks per (kv head, sequence, split): `ceil(group * Sq / BLOCK_M)`.
    pub fn row_blocks(&self) -> usize {
        self.group_size()
            .saturating_mul(self.seqlen_q)
            .div_ceil(ffi::GSDPA_DECODE_BLOCK_M as usize)
    }

    /// Keys per key tile of the main kernel at this head dim (0 if unsupported).
    pub fn block_n(&self) -> usize {
        match self.head_dim {
            64 => ffi::GSDPA_DECODE_BLOCK_N_D64 as usize,
            128 => ffi::GSDPA_DECODE_BLOCK_N_D128 as usize,
            256 => ffi::GSDPA_DECODE_BLOCK_N_D256 as usize,
            _ => 0,
        }
    }
}

/// The paged cache of a call: the caches, the block table and the lengths (`X`: i32 storage).
#[derive(Debug)]
pub struct PagedKv<I, X> {
    /// `[num_blocks, block_size, Hkv, D]`, any strides with the last dimension contiguous.
    pub k_cache: Tensor<I>,
    pub v_cache: Tensor<I>,
    /// `[B, max_blocks]` i32, the last dimension contiguous.
    pub block_table: Tensor<X>,
    /// `[B]` i32: keys of each sequence.
    pub cache_seqlens: Tensor<X>,
}

/// Tensors of a paged decode call.
#[derive(Debug)]
pub struct DecodeArgs<I, X, O, F> {
    pub q: Tensor<I>,
    pub kv: PagedKv<I, X>,
    /// `[B + 1]` i32 prefix sums of the packed queries; required iff the problem is varlen.
    pub cu_seqlens_q: Option<Tensor<X>>,
    /// Gate logits; required when the problem has a gate, must be `None` otherwise.
    pub g: Option<Tensor<I>>,
    pub y: Tensor<O>,
    /// Natural-log LSE, written when given.
    pub lse: Option<Tensor<F>>,
}

/// Decode arguments over host slices.
pub type HostDecodeArgs<'a, T> = DecodeArgs<&'a [T], &'a [i32], &'a mut [T], &'a mut [f32]>;

/// How many key splits to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NumSplits {
    /// [`num_splits_heuristic`] for the device's SM count and the cache capacity.
    #[default]
    Auto,
    /// Exactly this many (1 ..= `GSDPA_DECODE_MAX_SPLITS`).
    Fixed(usize),
}

/// SM count the host backends assume for [`NumSplits::Auto`] (an H100 / H200), so that the emulator
/// runs the split counts a GPU would.
pub const HOST_NOMINAL_SM_COUNT: usize = 132;

/// FlashAttention's split heuristic: split only when the blocks of one split fill less than 80% of the
/// SMs, and then take the smallest split count whose wave efficiency (`waves / ceil(waves)`) is within
/// 85% of the best, among the counts that change the number of key tiles per split.
/// `max_seqlen_k` bounds the lengths (the host does not know the device lengths; pass the capacity
/// when nothing better is known).
pub fn num_splits_heuristic(
    problem: &DecodeProblem,
    sm_count: usize,
    max_seqlen_k: usize,
) -> usize {
    let block_n = problem.block_n().max(1);
    let ctas = problem
        .batch
        .saturating_mul(problem.heads_kv)
        .saturating_mul(problem.row_blocks());
    let key_tiles = max_seqlen_k.min(problem.capacity()).div_ceil(block_n);
    if sm_count == 0 || ctas == 0 || key_tiles <= 1 || ctas as f64 >= 0.8 * sm_count as f64 {
        return 1;
    }
    let max_splits = (ffi::GSDPA_DECODE_MAX_SPLITS as usize)
        .min(sm_count)
        .min(key_tiles);
    let eligible = |s: usize| s == 1 || key_tiles.div_ceil(s) != key_tiles.div_ceil(s - 1);
    let efficiency = |s: usize| {
        let waves = (ctas * s) as f64 / sm_count as f64;
        waves / waves.ceil()
    };
    let best = (1..=max_splits)
        .filter(|&s| eligible(s))
        .map(efficiency)
        .fold(0.0, f64::max);
    (1..=max_splits)
        .find(|&s| eligible(s) && efficiency(s) >= 0.85 * best)
        .unwrap_or(1)
}

/// Resolves [`NumSplits`] for `problem` on a device with `sm_count` SMs.
pub fn resolve_num_splits(
    problem: &DecodeProblem,
    splits: NumSplits,
    sm_count: usize,
) -> Result<usize> {
    let n = match splits {
        NumSplits::Auto => num_splits_heuristic(problem, sm_count, problem.capacity()),
        NumSplits::Fixed(n) => n,
    };
    if n == 0 || n > ffi::GSDPA_DECODE_MAX_SPLITS as usize {
        return Err(GsdpaError::InvalidArgument(format!(
            "num_splits must be in 1..={}, got {n}",
            ffi::GSDPA_DECODE_MAX_SPLITS
        )));
    }
    Ok(n)
}

/// Where the two workspace arrays start, in bytes from the workspace's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeWorkspaceLayout {
    /// f32 `[num_splits, Tq, Hq, D]` partial outputs.
    pub o_partial: usize,
    /// f32 `[num_splits, Tq, Hq]` partial LSEs.
    pub lse_partial: usize,
    /// Total bytes (a multiple of [`WORKSPACE_ALIGN`]); 0 for one split.
    pub bytes: usize,
}

fn align_up(x: usize) -> Option<usize> {
    x.checked_add(WORKSPACE_ALIGN - 1)
        .map(|v| v / WORKSPACE_ALIGN * WORKSPACE_ALIGN)
}

/// The workspace layout for `num_splits` splits.
pub fn decode_workspace_layout(
    problem: &DecodeProblem,
    num_splits: usize,
) -> Result<DecodeWorkspaceLayout> {
    if num_splits <= 1 {
        return Ok(DecodeWorkspaceLayout {
            o_partial: 0,
            lse_partial: 0,
            bytes: 0,
        });
    }
    let overflow = || GsdpaError::SizeOverflow("decode workspace".into());
    let rows = num_splits
        .checked_mul(problem.total_q())
        .and_then(|r| r.checked_mul(problem.heads_q))
        .ok_or_else(overflow)?;
    let o_bytes = rows
        .checked_mul(problem.head_dim)
        .and_then(|e| e.checked_mul(4))
        .and_then(align_up)
        .ok_or_else(overflow)?;
    let lse_bytes = rows
        .checked_mul(4)
        .and_then(align_up)
        .ok_or_else(overflow)?;
    Ok(DecodeWorkspaceLayout {
        o_partial: 0,
        lse_partial: o_bytes,
        bytes: o_bytes.checked_add(lse_bytes).ok_or_else(overflow)?,
    })
}

/// Bytes of workspace a call with `num_splits` splits needs (0 for one split). The workspace must start
/// [`WORKSPACE_ALIGN`]-byte aligned.
pub fn decode_workspace_bytes(problem: &DecodeProblem, num_splits: usize) -> Result<usize> {
    Ok(decode_workspace_layout(problem, num_splits)?.bytes)
}

/// Points the params at a workspace of `bytes` bytes at device (or host) address `addr`.
pub fn set_decode_workspace(
    params: &mut GsdpaDecodeParams,
    problem: &DecodeProblem,
    addr: usize,
    bytes: usize,
) -> Result<()> {
    let splits = params.num_splits.max(1) as usize;
    let layout = decode_workspace_layout(problem, splits)?;
    if splits == 1 {
        params.o_partial = std::ptr::null_mut();
        params.lse_partial = std::ptr::null_mut();
        return Ok(());
    }
    if bytes < layout.bytes {
        return Err(GsdpaError::WorkspaceTooSmall {
            needed: layout.bytes,
            got: bytes,
        });
    }
    if addr % WORKSPACE_ALIGN != 0 {
        return Err(GsdpaError::Misaligned {
            tensor: "workspace",
            reason: format!("address {addr:#x} is not {WORKSPACE_ALIGN}-byte aligned"),
        });
    }
    params.o_partial = (addr + layout.o_partial) as *mut f32;
    params.lse_partial = (addr + layout.lse_partial) as *mut f32;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Validation (shapes, strides, sizes; never the device values).
// ---------------------------------------------------------------------------------------------------

/// The shared tensor checks of `validate` (shape, strides, alignment, byte span), with the element size
/// that follows from the kind: 16-bit tensors, or 32-bit rows (block table, lengths, lse).
fn check_tensor<S: Memory>(
    name: &'static str,
    tensor: &Tensor<S>,
    expected: &[usize],
    kind: Kind,
    output: bool,
) -> Result<Checked> {
    let elem_bytes = if kind == Kind::Rows32 {
        4
    } else {
        ELEMENT_BYTES
    };
    validate::check_tensor(name, tensor, expected, elem_bytes, kind, output)
}

fn to_i32(value: usize, what: &str) -> Result<i32> {
    i32::try_from(value)
        .map_err(|_| GsdpaError::SizeOverflow(format!("{what} ({value}) does not fit in i32")))
}

/// Checks the problem's sizes (not the tensors).
pub fn validate_decode_problem(problem: &DecodeProblem) -> Result<()> {
    if !SUPPORTED_HEAD_DIMS.contains(&problem.head_dim) {
        return Err(GsdpaError::UnsupportedHeadDim {
            head_dim: problem.head_dim,
        });
    }
    if problem.heads_kv == 0 || problem.heads_q == 0 || problem.heads_q % problem.heads_kv != 0 {
        return Err(GsdpaError::HeadsNotDivisible {
            heads_q: problem.heads_q,
            heads_kv: problem.heads_kv,
        });
    }
    let bs = problem.block_size;
    if bs == 0 || bs % BLOCK_SIZE_MULTIPLE != 0 || bs > ffi::GSDPA_DECODE_MAX_BLOCK_SIZE as usize {
        return Err(GsdpaError::InvalidArgument(format!(
            "block_size must be a positive multiple of {BLOCK_SIZE_MULTIPLE} up to {}, got {bs}",
            ffi::GSDPA_DECODE_MAX_BLOCK_SIZE
        )));
    }
    validate::check_softmax_scale(problem.softmax_scale())?;
    to_i32(problem.batch, "batch")?;
    to_i32(problem.seqlen_q, "seqlen_q")?;
    to_i32(problem.num_blocks, "num_blocks")?;
    to_i32(problem.max_blocks, "max_blocks")?;
    // Key indices are i32 in the kernels, and a key tile may reach up to one tile past the capacity.
    to_i32(
        problem.capacity().saturating_add(256),
        "max_blocks * block_size (+ one key tile)",
    )?;
    to_i32(problem.total_q(), "total query tokens")?;
    // The combine numbers output rows (token, query head) in 32 bits.
    if problem
        .total_q()
        .checked_mul(problem.heads_q)
        .is_none_or(|rows| rows >= 1usize << 32)
    {
        return Err(GsdpaError::SizeOverflow(
            "total query tokens * heads_q must be below 2^32 (output rows are numbered in 32 bits)"
                .into(),
        ));
    }
    to_i32(
        problem.group_size().saturating_mul(problem.seqlen_q),
        "query rows per kv head (group * seqlen_q)",
    )?;
    if problem.heads_kv > 65535 || problem.batch > 65535 {
        return Err(GsdpaError::SizeOverflow(
            "heads_kv and batch must be at most 65535 (grid limits)".into(),
        ));
    }
    if problem.varlen_total_q.is_none() && problem.seqlen_q > 16 {
        // Not a kernel limit; a guard against a prefill mistaken for a decode (the rows of a block
        // are group * Sq: use the varlen form for long query chunks).
        return Err(GsdpaError::InvalidArgument(format!(
            "seqlen_q must be at most 16 for decode (got {}); use varlen cu_seqlens_q for prefill chunks",
            problem.seqlen_q
        )));
    }
    Ok(())
}

/// Validates a paged decode call (shapes, strides, alignment, overlaps, sizes; not the values of the
/// table, the lengths or cu_seqlens_q) and returns the kernels' parameters, pointing at the given
/// storage, without workspace ([`set_decode_workspace`]) and without a status word.
pub fn validate_decode<I, X, O, F>(
    problem: &DecodeProblem,
    args: &DecodeArgs<I, X, O, F>,
    num_splits: usize,
) -> Result<GsdpaDecodeParams>
where
    I: Memory,
    I::Elem: Element,
    X: Memory<Elem = i32>,
    O: Memory<Elem = I::Elem>,
    F: Memory<Elem = f32>,
{
    validate_decode_problem(problem)?;
    if num_splits == 0 || num_splits > ffi::GSDPA_DECODE_MAX_SPLITS as usize {
        return Err(GsdpaError::InvalidArgument(format!(
            "num_splits must be in 1..={}, got {num_splits}",
            ffi::GSDPA_DECODE_MAX_SPLITS
        )));
    }
    let grid_x = problem.row_blocks().saturating_mul(num_splits);
    if grid_x > i32::MAX as usize {
        return Err(GsdpaError::SizeOverflow(format!(
            "row blocks x splits ({grid_x}) exceeds the grid limit"
        )));
    }
    let gate_name = problem.gate.name();
    match (&args.g, problem.gate) {
        (None, GateMode::Elementwise | GateMode::Headwise) => {
            return Err(GsdpaError::GateMissing {
                tensor: "g",
                gate: gate_name,
            })
        }
        (Some(_), GateMode::None) => return Err(GsdpaError::GateUnexpected { tensor: "g" }),
        _ => {}
    }
    let varlen = problem.varlen_total_q.is_some();
    match (&args.cu_seqlens_q, varlen) {
        (None, true) => {
            return Err(GsdpaError::InvalidArgument(
                "a varlen decode problem needs cu_seqlens_q".into(),
            ))
        }
        (Some(_), false) => {
            return Err(GsdpaError::InvalidArgument(
                "cu_seqlens_q was given but the problem is not varlen".into(),
            ))
        }
        _ => {}
    }

    let q_shape = problem.q_shape();
    let cache_shape = problem.cache_shape();
    let q = check_tensor("q", &args.q, &q_shape, Kind::Vector16, false)?;
    let k = check_tensor(
        "k_cache",
        &args.kv.k_cache,
        &cache_shape,
        Kind::Vector16,
        false,
    )?;
    let v = check_tensor(
        "v_cache",
        &args.kv.v_cache,
        &cache_shape,
        Kind::Vector16,
        false,
    )?;
    let table = check_tensor(
        "block_table",
        &args.kv.block_table,
        &problem.table_shape(),
        Kind::Rows32,
        false,
    )?;
    let seqlens = check_tensor(
        "cache_seqlens",
        &args.kv.cache_seqlens,
        &[problem.batch],
        Kind::Rows32,
        false,
    )?;
    let cu = args
        .cu_seqlens_q
        .as_ref()
        .map(|t| check_tensor("cu_seqlens_q", t, &[problem.batch + 1], Kind::Rows32, false))
        .transpose()?;
    let gate_kind = if problem.gate == GateMode::Headwise {
        Kind::Scalar16
    } else {
        Kind::Vector16
    };
    let g = match (&args.g, problem.gate_shape()) {
        (Some(g), Some(shape)) => Some(check_tensor("g", g, &shape, gate_kind, false)?),
        _ => None,
    };
    let y = check_tensor("y", &args.y, &q_shape, Kind::Vector16, true)?;
    let lse = args
        .lse
        .as_ref()
        .map(|t| check_tensor("lse", t, &problem.lse_shape(), Kind::Rows32, true))
        .transpose()?;

    let mut inputs = vec![&q, &k, &v, &table, &seqlens];
    inputs.extend(cu.as_ref());
    inputs.extend(g.as_ref());
    let mut outputs = vec![&y];
    outputs.extend(lse.as_ref());
    check_overlaps(&inputs, &outputs)?;

    let token_strides = |c: &Checked| -> GsdpaStrides {
        let s = &c.strides;
        if varlen {
            GsdpaStrides {
                batch: 0,
                row: s[0],
                head: s.get(1).copied().unwrap_or(0),
            }
        } else {
            GsdpaStrides {
                batch: s[0],
                row: s[1],
                head: s.get(2).copied().unwrap_or(0),
            }
        }
    };
    let paged_strides = |c: &Checked| GsdpaPagedStrides {
        block: c.strides[0],
        slot: c.strides[1],
        head: c.strides[2],
    };
    let (lse_batch_stride, lse_head_stride) = match (&lse, varlen) {
        (None, _) => (0, 0),
        (Some(l), true) => (0, l.strides[0]),
        (Some(l), false) => (l.strides[0], l.strides[1]),
    };
    let scale = problem.softmax_scale();
    let zero = GsdpaStrides::default();
    Ok(GsdpaDecodeParams {
        q: q.addr as *const c_void,
        k_cache: k.addr as *const c_void,
        v_cache: v.addr as *const c_void,
        block_table: table.addr as *const i32,
        cache_seqlens: seqlens.addr as *const i32,
        cu_seqlens_q: cu
            .as_ref()
            .map_or(std::ptr::null(), |c| c.addr as *const i32),
        g: g.as_ref()
            .map_or(std::ptr::null(), |c| c.addr as *const c_void),
        y: y.addr as *mut c_void,
        lse: lse
            .as_ref()
            .map_or(std::ptr::null_mut(), |c| c.addr as *mut f32),
        o_partial: std::ptr::null_mut(),
        lse_partial: std::ptr::null_mut(),
        status: std::ptr::null_mut(),
        q_stride: token_strides(&q),
        g_stride: g.as_ref().map_or(zero, token_strides),
        y_stride: token_strides(&y),
        k_stride: paged_strides(&k),
        v_stride: paged_strides(&v),
        table_batch_stride: table.strides[0],
        lse_batch_stride,
        lse_head_stride,
        batch: problem.batch as i32,
        seqlen_q: problem.seqlen_q as i32,
        total_q: problem.total_q() as i32,
        heads_q: problem.heads_q as i32,
        heads_kv: problem.heads_kv as i32,
        head_dim: problem.head_dim as i32,
        block_size: problem.block_size as i32,
        num_blocks: problem.num_blocks as i32,
        max_blocks: problem.max_blocks as i32,
        num_splits: num_splits as i32,
        causal: problem.causal as i32,
        gate_mode: problem.gate.to_ffi(),
        activation: problem.activation.to_ffi(),
        scale,
        scale_log2: scale * std::f32::consts::LOG2_E,
    })
}

/// Checks host copies of the block table, the lengths and cu_seqlens_q: every length in
/// `[0, capacity]`, every block id within a sequence's length in `[0, num_blocks)` (entries past the
/// length are never read and may hold anything), cu_seqlens_q non-decreasing from 0 to the packed count
/// with no sequence longer than `seqlen_q`. The table is read through its layout (`[B, max_blocks]`,
/// any row stride).
pub fn check_paged_values(
    problem: &DecodeProblem,
    block_table: &Tensor<&[i32]>,
    cache_seqlens: &[i32],
    cu_seqlens_q: Option<&[i32]>,
) -> Result<()> {
    let bad = |tensor: &'static str, reason: String| GsdpaError::InvalidPagedKv { tensor, reason };
    if cache_seqlens.len() != problem.batch {
        return Err(bad(
            "cache_seqlens",
            format!(
                "{} lengths for a batch of {}",
                cache_seqlens.len(),
                problem.batch
            ),
        ));
    }
    let capacity = problem.capacity();
    for (b, &len) in cache_seqlens.iter().enumerate() {
        if len < 0 || len as usize > capacity {
            return Err(bad(
                "cache_seqlens",
                format!("sequence {b} has length {len}, outside [0, {capacity}]"),
            ));
        }
        let pages = (len as usize).div_ceil(problem.block_size);
        for page in 0..pages {
            let offset = block_table.layout.offset(&[b, page]);
            let id = *block_table
                .data
                .get(offset)
                .ok_or_else(|| bad("block_table", "the layout addresses past the buffer".into()))?;
            if id < 0 || id as usize >= problem.num_blocks {
                return Err(bad(
                    "block_table",
                    format!(
                        "sequence {b}, block {page}: id {id} outside [0, {})",
                        problem.num_blocks
                    ),
                ));
            }
        }
    }
    if let Some(cu) = cu_seqlens_q {
        let total = problem.total_q();
        if cu.len() != problem.batch + 1 || cu[0] != 0 || cu[problem.batch] as usize != total {
            return Err(bad(
                "cu_seqlens_q",
                format!(
                    "must be {} prefix sums from 0 to {total}",
                    problem.batch + 1
                ),
            ));
        }
        for (b, w) in cu.windows(2).enumerate() {
            if w[1] < w[0] || (w[1] - w[0]) as usize > problem.seqlen_q {
                return Err(bad(
                    "cu_seqlens_q",
                    format!(
                        "sequence {b} has {} queries, outside [0, seqlen_q = {}]",
                        w[1] - w[0],
                        problem.seqlen_q
                    ),
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Launches.
// ---------------------------------------------------------------------------------------------------

/// The launch sequence of a validated decode problem with `num_splits` splits: the main kernel, then
/// (several splits) the combine kernel, both taking the same `GsdpaDecodeParams`.
pub fn decode_launches(
    problem: &DecodeProblem,
    dtype: DType,
    num_splits: usize,
) -> Result<Vec<LaunchConfig>> {
    validate_decode_problem(problem)?;
    let dt = dtype.name();
    let d = problem.head_dim;
    let smem = match d {
        64 => ffi::GSDPA_DECODE_SMEM_D64,
        128 => ffi::GSDPA_DECODE_SMEM_D128,
        _ => ffi::GSDPA_DECODE_SMEM_D256,
    };
    let grid_x = u32::try_from(problem.row_blocks().saturating_mul(num_splits))
        .map_err(|_| GsdpaError::SizeOverflow("decode grid".into()))?;
    let mut launches = vec![LaunchConfig {
        kernel: format!("gsdpa_decode_{dt}_d{d}"),
        grid: [grid_x, problem.heads_kv as u32, problem.batch as u32],
        block: [ffi::GSDPA_DECODE_THREADS, 1, 1],
        shared_bytes: smem,
    }];
    if num_splits > 1 {
        let chunks = problem
            .total_q()
            .saturating_mul(problem.heads_q)
            .saturating_mul(d / 8);
        let threads = ffi::GSDPA_DECODE_COMBINE_THREADS as usize;
        launches.push(LaunchConfig {
            kernel: format!("gsdpa_decode_combine_{dt}_d{d}"),
            grid: [chunks.div_ceil(threads).clamp(1, 65536) as u32, 1, 1],
            block: [ffi::GSDPA_DECODE_COMBINE_THREADS, 1, 1],
            shared_bytes: 0,
        });
    }
    launches.retain(|l| !l.is_empty());
    Ok(launches)
}

// ---------------------------------------------------------------------------------------------------
// Appending new tokens to the cache.
// ---------------------------------------------------------------------------------------------------

/// Tensors of an append: `k_new`, `v_new` `[B, S_new, Hkv, D]` are written into the caches at key
/// positions `cache_seqlens[b] + i` (the lengths are not advanced: the caller does that).
#[derive(Debug)]
pub struct AppendKvArgs<I, X, O> {
    pub k_new: Tensor<I>,
    pub v_new: Tensor<I>,
    /// `[num_blocks, block_size, Hkv, D]`, written in place.
    pub k_cache: Tensor<O>,
    pub v_cache: Tensor<O>,
    pub block_table: Tensor<X>,
    pub cache_seqlens: Tensor<X>,
}

/// Append arguments over host slices.
pub type HostAppendKvArgs<'a, T> = AppendKvArgs<&'a [T], &'a [i32], &'a mut [T]>;

/// Validates an append of `seqlen_new` tokens per sequence (shapes, strides, sizes; not the device
/// values) and returns the kernel's parameters, without a status word. The problem's cache sizes,
/// batch and kv heads are used; its query side is not.
pub fn validate_append_kv<I, X, O>(
    problem: &DecodeProblem,
    seqlen_new: usize,
    args: &AppendKvArgs<I, X, O>,
) -> Result<ffi::GsdpaAppendKvParams>
where
    I: Memory,
    I::Elem: Element,
    X: Memory<Elem = i32>,
    O: Memory<Elem = I::Elem>,
{
    validate_decode_problem(problem)?;
    to_i32(seqlen_new, "seqlen_new")?;
    let new_shape = [
        problem.batch,
        seqlen_new,
        problem.heads_kv,
        problem.head_dim,
    ];
    let cache_shape = problem.cache_shape();
    let k_new = check_tensor("k_new", &args.k_new, &new_shape, Kind::Vector16, false)?;
    let v_new = check_tensor("v_new", &args.v_new, &new_shape, Kind::Vector16, false)?;
    let table = check_tensor(
        "block_table",
        &args.block_table,
        &problem.table_shape(),
        Kind::Rows32,
        false,
    )?;
    let seqlens = check_tensor(
        "cache_seqlens",
        &args.cache_seqlens,
        &[problem.batch],
        Kind::Rows32,
        false,
    )?;
    let k = check_tensor("k_cache", &args.k_cache, &cache_shape, Kind::Vector16, true)?;
    let v = check_tensor("v_cache", &args.v_cache, &cache_shape, Kind::Vector16, true)?;
    check_overlaps(&[&k_new, &v_new, &table, &seqlens], &[&k, &v])?;
    let strides = |c: &Checked| GsdpaStrides {
        batch: c.strides[0],
        row: c.strides[1],
        head: c.strides[2],
    };
    let paged = |c: &Checked| GsdpaPagedStrides {
        block: c.strides[0],
        slot: c.strides[1],
        head: c.strides[2],
    };
    Ok(ffi::GsdpaAppendKvParams {
        k_new: k_new.addr as *const c_void,
        v_new: v_new.addr as *const c_void,
        k_cache: k.addr as *mut c_void,
        v_cache: v.addr as *mut c_void,
        block_table: table.addr as *const i32,
        cache_seqlens: seqlens.addr as *const i32,
        status: std::ptr::null_mut(),
        k_new_stride: strides(&k_new),
        v_new_stride: strides(&v_new),
        k_stride: paged(&k),
        v_stride: paged(&v),
        table_batch_stride: table.strides[0],
        batch: problem.batch as i32,
        seqlen_new: seqlen_new as i32,
        heads_kv: problem.heads_kv as i32,
        head_dim: problem.head_dim as i32,
        block_size: problem.block_size as i32,
        num_blocks: problem.num_blocks as i32,
        max_blocks: problem.max_blocks as i32,
    })
}

/// The append kernel's launch: a grid-stride loop over 16-byte chunks, the grid capped at 65536 blocks.
pub fn append_kv_launch(problem: &DecodeProblem, dtype: DType, seqlen_new: usize) -> LaunchConfig {
    let chunks = problem
        .batch
        .saturating_mul(seqlen_new)
        .saturating_mul(problem.heads_kv)
        .saturating_mul(problem.head_dim / 8);
    let threads = ffi::GSDPA_APPEND_KV_THREADS as usize;
    LaunchConfig {
        kernel: format!("gsdpa_append_kv_{}", dtype.name()),
        grid: [chunks.div_ceil(threads).min(65536) as u32, 1, 1],
        block: [ffi::GSDPA_APPEND_KV_THREADS, 1, 1],
        shared_bytes: 0,
    }
}

/// The append on the host, for the reference backend: checks every length and the block id of every
/// written position first ([`GsdpaError::InvalidPagedKv`]), then copies.
fn append_kv_host<T: Element>(
    problem: &DecodeProblem,
    seqlen_new: usize,
    args: &mut HostAppendKvArgs<'_, T>,
) -> Result<()> {
    validate_append_kv(problem, seqlen_new, args)?;
    let bad = |tensor: &'static str, reason: String| GsdpaError::InvalidPagedKv { tensor, reason };
    let mut targets = Vec::with_capacity(problem.batch * seqlen_new);
    for b in 0..problem.batch {
        let len = args.cache_seqlens.data[args.cache_seqlens.layout.offset(&[b])];
        let end = (len as i64) + seqlen_new as i64;
        if len < 0 || end > problem.capacity() as i64 {
            return Err(bad(
                "cache_seqlens",
                format!(
                    "sequence {b}: length {len} + {seqlen_new} new tokens is outside [0, {}]",
                    problem.capacity()
                ),
            ));
        }
        for i in 0..seqlen_new {
            let pos = len as usize + i;
            let id = args.block_table.data[args
                .block_table
                .layout
                .offset(&[b, pos / problem.block_size])];
            if id < 0 || id as usize >= problem.num_blocks {
                return Err(bad(
                    "block_table",
                    format!(
                        "sequence {b}, block {}: id {id} outside [0, {})",
                        pos / problem.block_size,
                        problem.num_blocks
                    ),
                ));
            }
            targets.push((b, i, id as usize, pos % problem.block_size));
        }
    }
    for (b, i, blk, slot) in targets {
        for h in 0..problem.heads_kv {
            for e in 0..problem.head_dim {
                let dst = args.k_cache.layout.offset(&[blk, slot, h, e]);
                args.k_cache.data[dst] = args.k_new.data[args.k_new.layout.offset(&[b, i, h, e])];
                let dst = args.v_cache.layout.offset(&[blk, slot, h, e]);
                args.v_cache.data[dst] = args.v_new.data[args.v_new.layout.offset(&[b, i, h, e])];
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Reference: gathers the pages on the host, f64.
// ---------------------------------------------------------------------------------------------------

/// Y and LSE of a paged decode in f64, in the dense layouts (`q_shape`, `lse_shape`).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeResultF64 {
    pub y: Vec<f64>,
    pub lse: Vec<f64>,
}

/// The paged decode in f64 from host tensors whose values [`check_paged_values`] accepted. Rows that see
/// no key: Y = 0 and LSE = -inf.
pub fn decode_f64<T: Element>(
    problem: &DecodeProblem,
    args: &DecodeArgs<&[T], &[i32], &mut [T], &mut [f32]>,
) -> Result<DecodeResultF64> {
    validate_decode(problem, args, 1)?;
    let seqlens = args.kv.cache_seqlens.data;
    let cu = args.cu_seqlens_q.as_ref().map(|t| t.data);
    check_paged_values(problem, &args.kv.block_table, seqlens, cu)?;
    let (hq, d) = (problem.heads_q, problem.head_dim);
    let group = problem.group_size();
    let scale = problem.softmax_scale() as f64;
    let at = |t: &Tensor<&[T]>, index: &[usize]| t.data[t.layout.offset(index)].to_f64();
    let mut y = vec![0.0; problem.total_q() * hq * d];
    let mut lse = vec![f64::NEG_INFINITY; problem.total_q() * hq];
    for b in 0..problem.batch {
        let (token0, seqlen_q) = match cu {
            Some(cu) => (cu[b] as usize, (cu[b + 1] - cu[b]) as usize),
            None => (b * problem.seqlen_q, problem.seqlen_q),
        };
        let seqlen_k = seqlens[b] as usize;
        // The gathered keys: (block, slot) of key j.
        let keys: Vec<(usize, usize)> = (0..seqlen_k)
            .map(|j| {
                let page = args
                    .kv
                    .block_table
                    .layout
                    .offset(&[b, j / problem.block_size]);
                (
                    args.kv.block_table.data[page] as usize,
                    j % problem.block_size,
                )
            })
            .collect();
        for i in 0..seqlen_q {
            let t = token0 + i;
            let q_index = |h: usize, e: usize| -> Vec<usize> {
                if cu.is_some() {
                    vec![t, h, e]
                } else {
                    vec![b, i, h, e]
                }
            };
            // Bottom-right aligned: query i sees keys j <= i + seqlen_k - seqlen_q.
            let visible = if problem.causal {
                (i + seqlen_k + 1).saturating_sub(seqlen_q).min(seqlen_k)
            } else {
                seqlen_k
            };
            for h in 0..hq {
                let kvh = h / group;
                if visible == 0 {
                    continue; // Y = 0, LSE = -inf
                }
                let qv: Vec<f64> = (0..d).map(|e| at(&args.q, &q_index(h, e))).collect();
                let scores: Vec<f64> = keys[..visible]
                    .iter()
                    .map(|&(blk, slot)| {
                        (0..d)
                            .map(|e| qv[e] * at(&args.kv.k_cache, &[blk, slot, kvh, e]))
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let l: f64 = weights.iter().sum();
                let row = t * hq + h;
                lse[row] = m + l.ln();
                let head_gate = match (problem.gate, &args.g) {
                    (GateMode::Headwise, Some(g)) => {
                        let index = q_index(h, 0);
                        problem
                            .activation
                            .apply(g.data[g.layout.offset(&index[..index.len() - 1])].to_f64())
                    }
                    _ => 1.0,
                };
                for e in 0..d {
                    let o: f64 = keys[..visible]
                        .iter()
                        .zip(&weights)
                        .map(|(&(blk, slot), w)| w * at(&args.kv.v_cache, &[blk, slot, kvh, e]))
                        .sum::<f64>()
                        / l;
                    let gate = match (problem.gate, &args.g) {
                        (GateMode::Elementwise, Some(g)) => {
                            problem.activation.apply(at(g, &q_index(h, e)))
                        }
                        _ => head_gate,
                    };
                    y[row * d + e] = o * gate;
                }
            }
        }
    }
    Ok(DecodeResultF64 { y, lse })
}

/// Writes dense f64 results into the caller's (strided) y and lse.
fn store_result<T: Element>(
    problem: &DecodeProblem,
    result: &DecodeResultF64,
    y: &mut Tensor<&mut [T]>,
    lse: Option<&mut Tensor<&mut [f32]>>,
) {
    let (hq, d) = (problem.heads_q, problem.head_dim);
    let varlen = problem.varlen_total_q.is_some();
    let sq = problem.seqlen_q.max(1);
    for t in 0..problem.total_q() {
        for h in 0..hq {
            for e in 0..d {
                let index = if varlen {
                    vec![t, h, e]
                } else {
                    vec![t / sq, t % sq, h, e]
                };
                let offset = y.layout.offset(&index);
                y.data[offset] = T::from_f64(result.y[(t * hq + h) * d + e]);
            }
        }
    }
    if let Some(lse) = lse {
        for t in 0..problem.total_q() {
            for h in 0..hq {
                let index = if varlen {
                    vec![h, t]
                } else {
                    vec![t / sq, h, t % sq]
                };
                let offset = lse.layout.offset(&index);
                lse.data[offset] = result.lse[t * hq + h] as f32;
            }
        }
    }
}

impl Reference {
    /// The paged decode on the CPU in f64 (pages gathered on the host). Invalid table or length values
    /// are [`GsdpaError::InvalidPagedKv`] errors; nothing is written on error.
    pub fn forward_paged<T: Element>(
        &self,
        problem: &DecodeProblem,
        args: &mut HostDecodeArgs<'_, T>,
    ) -> Result<()> {
        let result = decode_f64(problem, args)?;
        store_result(problem, &result, &mut args.y, args.lse.as_mut());
        Ok(())
    }

    /// Appends `k_new`, `v_new` to the cache on the host. Invalid lengths or block ids are
    /// [`GsdpaError::InvalidPagedKv`] errors; nothing is written on error.
    pub fn append_kv<T: Element>(
        &self,
        problem: &DecodeProblem,
        seqlen_new: usize,
        args: &mut HostAppendKvArgs<'_, T>,
    ) -> Result<()> {
        append_kv_host(problem, seqlen_new, args)
    }
}

// ---------------------------------------------------------------------------------------------------
// Emulator: the kernels on the CPU; the host copies of the table and lengths play the device's.
// ---------------------------------------------------------------------------------------------------

#[cfg(feature = "emulator")]
mod emulator_backend {
    use super::*;
    use crate::emulator::{Emulator, GuardedBuffer};

    impl Emulator {
        /// The paged decode kernels on the emulator. Like the CUDA path, only shapes, strides and sizes
        /// are validated on the host: the table, the lengths and cu_seqlens_q are what the kernel reads
        /// (as guarded copies), so hostile values exercise the kernels' own checks. Returns the status
        /// word (`GSDPA_DECODE_STATUS_OK` or `GSDPA_DECODE_STATUS_INVALID_INPUT`). `NumSplits::Auto`
        /// assumes [`HOST_NOMINAL_SM_COUNT`] SMs.
        pub fn forward_paged<T: Element>(
            &self,
            problem: &DecodeProblem,
            args: &mut HostDecodeArgs<'_, T>,
            splits: NumSplits,
        ) -> Result<i32> {
            let num_splits = resolve_num_splits(problem, splits, HOST_NOMINAL_SM_COUNT)?;
            let mut params = validate_decode(problem, args, num_splits)?;
            let launches = decode_launches(problem, T::DTYPE, num_splits)?;
            let q = GuardedBuffer::copy_of(args.q.data)?;
            let k = GuardedBuffer::copy_of(args.kv.k_cache.data)?;
            let v = GuardedBuffer::copy_of(args.kv.v_cache.data)?;
            let table = GuardedBuffer::copy_of(args.kv.block_table.data)?;
            let seqlens = GuardedBuffer::copy_of(args.kv.cache_seqlens.data)?;
            let cu = args
                .cu_seqlens_q
                .as_ref()
                .map(|t| GuardedBuffer::copy_of(t.data))
                .transpose()?;
            let g = args
                .g
                .as_ref()
                .map(|t| GuardedBuffer::copy_of(t.data))
                .transpose()?;
            let y = GuardedBuffer::poisoned_output(args.y.data, &args.y.layout)?;
            let lse = args
                .lse
                .as_ref()
                .map(|t| GuardedBuffer::poisoned_output(t.data, &t.layout))
                .transpose()?;
            let status = GuardedBuffer::copy_of(&[ffi::GSDPA_DECODE_STATUS_OK as i32])?;
            let workspace_bytes = decode_workspace_bytes(problem, num_splits)?;
            let workspace = GuardedBuffer::workspace(workspace_bytes)?;
            params.q = q.ptr();
            params.k_cache = k.ptr();
            params.v_cache = v.ptr();
            params.block_table = table.ptr().cast();
            params.cache_seqlens = seqlens.ptr().cast();
            params.cu_seqlens_q = cu.as_ref().map_or(std::ptr::null(), |c| c.ptr().cast());
            params.g = g.as_ref().map_or(std::ptr::null(), |c| c.ptr());
            params.y = y.ptr();
            params.lse = lse
                .as_ref()
                .map_or(std::ptr::null_mut(), |c| c.ptr().cast());
            params.status = status.ptr().cast();
            set_decode_workspace(
                &mut params,
                problem,
                workspace.ptr() as usize,
                workspace_bytes,
            )?;
            for config in &launches {
                // SAFETY: every pointer in params refers to a guarded buffer alive until the end of this
                // function, sized like the validated tensor it copies (the workspace as the layout says).
                unsafe { self.launch::<GsdpaDecodeParams>(config, &params)? };
            }
            y.copy_to(args.y.data);
            if let (Some(buffer), Some(tensor)) = (&lse, &mut args.lse) {
                buffer.copy_to(tensor.data);
            }
            let mut word = [0i32];
            status.copy_to(&mut word);
            Ok(word[0])
        }

        /// The append kernel on the emulator. Only shapes, strides and sizes are validated on the host;
        /// tokens whose length, position or block id is invalid are skipped by the kernel, which then
        /// reports `GSDPA_DECODE_STATUS_INVALID_INPUT` (the returned status word).
        pub fn append_kv<T: Element>(
            &self,
            problem: &DecodeProblem,
            seqlen_new: usize,
            args: &mut HostAppendKvArgs<'_, T>,
        ) -> Result<i32> {
            let mut params = validate_append_kv(problem, seqlen_new, args)?;
            let k_new = GuardedBuffer::copy_of(args.k_new.data)?;
            let v_new = GuardedBuffer::copy_of(args.v_new.data)?;
            let k = GuardedBuffer::copy_of(&*args.k_cache.data)?;
            let v = GuardedBuffer::copy_of(&*args.v_cache.data)?;
            let table = GuardedBuffer::copy_of(args.block_table.data)?;
            let seqlens = GuardedBuffer::copy_of(args.cache_seqlens.data)?;
            let status = GuardedBuffer::copy_of(&[ffi::GSDPA_DECODE_STATUS_OK as i32])?;
            params.k_new = k_new.ptr();
            params.v_new = v_new.ptr();
            params.k_cache = k.ptr();
            params.v_cache = v.ptr();
            params.block_table = table.ptr().cast();
            params.cache_seqlens = seqlens.ptr().cast();
            params.status = status.ptr().cast();
            let config = append_kv_launch(problem, T::DTYPE, seqlen_new);
            // SAFETY: every pointer refers to a guarded copy alive until the end of this function, sized
            // like the validated tensor it copies.
            unsafe { self.launch::<ffi::GsdpaAppendKvParams>(&config, &params)? };
            k.copy_to(args.k_cache.data);
            v.copy_to(args.v_cache.data);
            let mut word = [0i32];
            status.copy_to(&mut word);
            Ok(word[0])
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// CUDA: device table and lengths, caller's stream and workspace.
// ---------------------------------------------------------------------------------------------------

mod cuda_backend {
    use super::*;
    use crate::cuda::{input, output, CudaBackend};
    use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DevicePtrMut, DeviceRepr};

    // SAFETY: #[repr(C)], mirror the C structs the kernels take by value, Copy, no references.
    unsafe impl DeviceRepr for GsdpaDecodeParams {}
    unsafe impl DeviceRepr for ffi::GsdpaAppendKvParams {}

    /// Append arguments on the device.
    pub type CudaAppendKvArgs<'a, T> =
        AppendKvArgs<CudaView<'a, T>, CudaView<'a, i32>, CudaViewMut<'a, T>>;

    /// Decode arguments on the device.
    pub type CudaDecodeArgs<'a, T> =
        DecodeArgs<CudaView<'a, T>, CudaView<'a, i32>, CudaViewMut<'a, T>, CudaViewMut<'a, f32>>;

    impl CudaBackend {
        /// The paged decode on `stream`: no allocation, no synchronization, capturable. `num_splits`
        /// from [`resolve_num_splits`] (with the device's SM count); `workspace` of
        /// [`decode_workspace_bytes`] bytes, 256-byte aligned (unused for one split); `status`, when
        /// given, is set to `GSDPA_DECODE_STATUS_INVALID_INPUT` by a launch that met invalid device
        /// values (the kernels only ever store that value: zero it beforehand).
        pub fn forward_paged<T: Element + DeviceRepr>(
            &self,
            stream: &CudaStream,
            problem: &DecodeProblem,
            args: &mut CudaDecodeArgs<'_, T>,
            num_splits: usize,
            workspace: Option<&mut CudaViewMut<'_, u8>>,
            status: Option<&mut CudaViewMut<'_, i32>>,
        ) -> Result<()> {
            let mut guards = Vec::new();
            let dev = DecodeArgs {
                q: input(&args.q, stream, &mut guards),
                kv: PagedKv {
                    k_cache: input(&args.kv.k_cache, stream, &mut guards),
                    v_cache: input(&args.kv.v_cache, stream, &mut guards),
                    block_table: input(&args.kv.block_table, stream, &mut guards),
                    cache_seqlens: input(&args.kv.cache_seqlens, stream, &mut guards),
                },
                cu_seqlens_q: args
                    .cu_seqlens_q
                    .as_ref()
                    .map(|t| input(t, stream, &mut guards)),
                g: args.g.as_ref().map(|t| input(t, stream, &mut guards)),
                y: output(&mut args.y, stream, &mut guards),
                lse: args.lse.as_mut().map(|t| output(t, stream, &mut guards)),
            };
            let mut params = validate_decode(problem, &dev, num_splits)?;
            let (ws_addr, ws_len) = match workspace {
                Some(ws) => {
                    let len = ws.len();
                    let (addr, guard) = ws.device_ptr_mut(stream);
                    guards.push(guard);
                    (addr as usize, len)
                }
                None => (0, 0),
            };
            set_decode_workspace(&mut params, problem, ws_addr, ws_len)?;
            if let Some(status) = status {
                if status.is_empty() {
                    return Err(GsdpaError::ShapeMismatch {
                        tensor: "status",
                        expected: vec![1],
                        actual: vec![0],
                    });
                }
                let (addr, guard) = status.device_ptr_mut(stream);
                guards.push(guard);
                params.status = addr as *mut i32;
            }
            for config in decode_launches(problem, T::DTYPE, num_splits)? {
                self.launch(stream, &config, &params)?;
            }
            Ok(())
        }

        /// Appends `k_new`, `v_new` to the cache on `stream` (no allocation, no synchronization).
        /// Invalid device lengths or block ids leave those tokens unwritten and set `status`.
        pub fn append_kv<T: Element + DeviceRepr>(
            &self,
            stream: &CudaStream,
            problem: &DecodeProblem,
            seqlen_new: usize,
            args: &mut CudaAppendKvArgs<'_, T>,
            status: Option<&mut CudaViewMut<'_, i32>>,
        ) -> Result<()> {
            let mut guards = Vec::new();
            let dev = AppendKvArgs {
                k_new: input(&args.k_new, stream, &mut guards),
                v_new: input(&args.v_new, stream, &mut guards),
                k_cache: output(&mut args.k_cache, stream, &mut guards),
                v_cache: output(&mut args.v_cache, stream, &mut guards),
                block_table: input(&args.block_table, stream, &mut guards),
                cache_seqlens: input(&args.cache_seqlens, stream, &mut guards),
            };
            let mut params = validate_append_kv(problem, seqlen_new, &dev)?;
            if let Some(status) = status {
                if status.is_empty() {
                    return Err(GsdpaError::ShapeMismatch {
                        tensor: "status",
                        expected: vec![1],
                        actual: vec![0],
                    });
                }
                let (addr, guard) = status.device_ptr_mut(stream);
                guards.push(guard);
                params.status = addr as *mut i32;
            }
            self.launch(
                stream,
                &append_kv_launch(problem, T::DTYPE, seqlen_new),
                &params,
            )
        }
    }
}

pub use cuda_backend::{CudaAppendKvArgs, CudaDecodeArgs};
