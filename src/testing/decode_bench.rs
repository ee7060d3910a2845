//! GPU benchmark of the paged decode (`src/paged.rs`), shared by `benches/decode.rs` (criterion) and
//! `gsdpa bench --decode`.
//!
//! Decode reads every K and V byte of the cache once per step and does little math on it, so it is
//! memory-bound and measured in GB/s against the device's HBM peak, not in FLOP/s. Timing is the forward
//! harness's ([`super::bench`]: CUDA events on one stream, warm-up, the median of several batches of
//! calls).
//!
//! Three variants per shape, bf16, one query per sequence, every sequence `context` keys long,
//! `num_splits` from the heuristic for the device's SM count:
//! - `gated`: the fused decode with an elementwise sigmoid gate;
//! - `ungated`: the same decode with gate = none, so `gated / ungated - 1` is what the gate costs;
//! - `unfused`: the gate = none decode, then the standalone gate kernel (`CudaBackend::gate`), the path
//!   an engine without the fused kernel runs; `unfused / gated` is the fused speedup.
//!
//! Bandwidth: [`DecodeShape::kv_bytes`] counts the K and V bytes the kernel has to read (the sum of the
//! lengths times `Hkv * D * 2` bytes, for K and for V): the headline GB/s. [`DecodeShape::io_bytes`]
//! adds Q, G and Y, a second figure. Neither counts the block table, the workspace round trip of the
//! splits, or re-reads. The peak comes from the device ([`peak_bandwidth`]).
//!
//! Pages are scattered: every sequence's blocks come from a shuffled pool, as in a serving engine after
//! some churn. Small caches would sit in L2 between calls, so the pool holds several disjoint copies of
//! the cache (at least [`ROTATION_BYTES`] in all) and each call uses the next copy's block table.

use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaSlice, CudaStream};

use super::bench::{cuda, median_ms, random_bf16};
use crate::cuda::CudaBackend;
use crate::error::{GsdpaError, Result};
use crate::paged::{
    decode_workspace_bytes, resolve_num_splits, DecodeArgs, DecodeProblem, NumSplits, PagedKv,
};
use crate::problem::{Activation, GateMode};
use crate::tensor::{Layout, Tensor};

/// Bytes of K and V that the rotated cache copies of a shape span at least, about twice the L2 of an
/// H100 / H200 (50 / 60 MB), so that no call finds its cache in L2.
pub const ROTATION_BYTES: usize = 128 << 20;

/// Bytes per element of the benchmarked dtype (bf16).
const ELEM_BYTES: usize = 2;

/// One decode benchmark shape: `batch` sequences of `context` keys each, one query (`seqlen_q`) per
/// sequence, `Hq` query heads over `Hkv` kv heads, pages of `block_size` slots.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeShape {
    /// A short label, e.g. `qwen3-next-b8-k32k`.
    pub name: String,
    pub batch: usize,
    pub context: usize,
    pub heads_q: usize,
    pub heads_kv: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub seqlen_q: usize,
}

impl DecodeShape {
    /// The Qwen3-Next attention layer (d256, 16 query heads over 2 kv heads), one query per sequence,
    /// 16-slot pages (vLLM's default page size).
    pub fn qwen3_next(batch: usize, context: usize) -> Self {
        DecodeShape {
            name: format!("qwen3-next-b{batch}-k{}", context_label(context)),
            batch,
            context,
            heads_q: 16,
            heads_kv: 2,
            head_dim: 256,
            block_size: 16,
            seqlen_q: 1,
        }
    }

    /// Cache blocks one copy of the cache takes: every sequence's full length, in whole pages.
    pub fn blocks_per_copy(&self) -> usize {
        self.batch * self.context.div_ceil(self.block_size)
    }

    /// Bytes of K and V the decode must read: `sum(lengths) * Hkv * D * 2 bytes`, for K and for V.
    pub fn kv_bytes(&self) -> f64 {
        2.0 * (self.batch * self.context * self.heads_kv * self.head_dim * ELEM_BYTES) as f64
    }

    /// Bytes of one query-side tensor (Q, G or Y): `B * Sq * Hq * D * 2`.
    fn query_tensor_bytes(&self) -> usize {
        self.batch * self.seqlen_q * self.heads_q * self.head_dim * ELEM_BYTES
    }

    /// [`Self::kv_bytes`] plus Q and G read and Y written (the elementwise-gated call's compulsory
    /// traffic).
    pub fn io_bytes(&self) -> f64 {
        self.kv_bytes() + 3.0 * self.query_tensor_bytes() as f64
    }

    /// How many disjoint copies of the cache the benchmark rotates over ([`ROTATION_BYTES`]), at most 64.
    pub fn copies(&self) -> usize {
        (ROTATION_BYTES as f64 / self.kv_bytes().max(1.0))
            .ceil()
            .clamp(1.0, 64.0) as usize
    }

    /// Device bytes the benchmark allocates: the rotated caches, the tables, Q, G, Y, the unfused
    /// path's O, the lengths and a workspace for up to `num_splits` splits.
    pub fn device_bytes(&self, num_splits: usize) -> Result<usize> {
        let blocks = self.copies() * self.blocks_per_copy();
        let cache = 2 * blocks * self.block_size * self.heads_kv * self.head_dim * ELEM_BYTES;
        let tables = self.copies() * blocks * 4;
        let workspace =
            decode_workspace_bytes(&self.problem(GateMode::Elementwise, 1), num_splits)?;
        Ok(cache + tables + 4 * self.query_tensor_bytes() + 4 * self.batch + workspace)
    }

    /// The decode problem of one call over a pool of `copies` cache copies.
    pub fn problem(&self, gate: GateMode, copies: usize) -> DecodeProblem {
        DecodeProblem::new(
            self.batch,
            self.seqlen_q,
            self.heads_q,
            self.heads_kv,
            self.head_dim,
            self.block_size,
            copies * self.blocks_per_copy(),
            self.context.div_ceil(self.block_size),
        )
        .gate(gate)
        .activation(Activation::Sigmoid)
    }
}

/// `1k`, `128k`, or the plain number when not a multiple of 1024.
fn context_label(context: usize) -> String {
    if context % 1024 == 0 {
        format!("{}k", context / 1024)
    } else {
        context.to_string()
    }
}

/// The standard grid at the Qwen3-Next shape: batch 1, 8, 64, 256 by context 1k, 8k, 32k, 128k.
pub fn standard_decode_shapes() -> Vec<DecodeShape> {
    let mut shapes = Vec::new();
    for batch in [1, 8, 64, 256] {
        for context in [1024, 8192, 32768, 131072] {
            shapes.push(DecodeShape::qwen3_next(batch, context));
        }
    }
    shapes
}

/// The shapes whose name contains one of the comma-separated substrings of `filter` (all of them for
/// `None`), e.g. `b8-k8k,b64-` picks batch 8 at 8k and every context at batch 64.
pub fn filter_shapes(shapes: Vec<DecodeShape>, filter: Option<&str>) -> Vec<DecodeShape> {
    shapes
        .into_iter()
        .filter(|s| filter.is_none_or(|f| f.split(',').any(|part| s.name.contains(part.trim()))))
        .collect()
}

/// A device's peak memory bandwidth and where the figure comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct PeakBandwidth {
    pub bytes_per_second: f64,
    /// `"device attributes"` (memory clock and bus width) or `"table"` ([`PEAK_TABLE`]).
    pub source: &'static str,
}

/// Peak bandwidth from the driver's attributes: memory clock (kHz) * 2 (double data rate) * bus width
/// (bits) / 8. `None` when either is not positive.
pub fn peak_from_attributes(memory_clock_khz: i32, bus_width_bits: i32) -> Option<f64> {
    (memory_clock_khz > 0 && bus_width_bits > 0)
        .then(|| f64::from(memory_clock_khz) * 1e3 * 2.0 * f64::from(bus_width_bits) / 8.0)
}

/// NVIDIA's published HBM bandwidths, for drivers that report no memory clock: (a substring of the
/// device name, bytes per second). The first match wins, so the longer names come first.
pub const PEAK_TABLE: &[(&str, f64)] = &[
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("H800", 3.35e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
];

/// The bandwidth [`PEAK_TABLE`] lists for `device_name`.
pub fn peak_from_table(device_name: &str) -> Option<f64> {
    PEAK_TABLE
        .iter()
        .find(|(name, _)| device_name.contains(name))
        .map(|&(_, bw)| bw)
}

/// The device's peak bandwidth: from its attributes, else from [`PEAK_TABLE`]; an error when neither
/// knows it.
pub fn peak_bandwidth(backend: &CudaBackend) -> Result<PeakBandwidth> {
    let ctx = backend.context();
    let clock = ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE);
    let bus = ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH);
    if let (Ok(clock), Ok(bus)) = (clock, bus) {
        if let Some(bw) = peak_from_attributes(clock, bus) {
            return Ok(PeakBandwidth {
                bytes_per_second: bw,
                source: "device attributes",
            });
        }
    }
    let name = backend.device_name()?;
    peak_from_table(&name)
        .map(|bw| PeakBandwidth {
            bytes_per_second: bw,
            source: "table",
        })
        .ok_or_else(|| {
            GsdpaError::Cuda(format!(
                "{name}: the driver reports no memory clock and the bandwidth table has no entry"
            ))
        })
}

/// What is timed for a shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeVariant {
    /// Fused decode, elementwise sigmoid gate.
    Gated,
    /// Same decode, gate = none.
    Ungated,
    /// Gate = none decode, then the standalone gate kernel.
    Unfused,
}

impl DecodeVariant {
    /// All variants, in report order.
    pub const ALL: [DecodeVariant; 3] = [
        DecodeVariant::Gated,
        DecodeVariant::Ungated,
        DecodeVariant::Unfused,
    ];

    /// Lower-case label.
    pub fn name(self) -> &'static str {
        match self {
            DecodeVariant::Gated => "gated",
            DecodeVariant::Ungated => "ungated",
            DecodeVariant::Unfused => "unfused",
        }
    }
}

/// Timings of one shape, milliseconds per decode step (medians), with what they are measured against.
#[derive(Debug, Clone)]
pub struct DecodeBench {
    pub shape: DecodeShape,
    pub num_splits: usize,
    pub peak: PeakBandwidth,
    pub gated_ms: f64,
    pub ungated_ms: f64,
    pub unfused_ms: f64,
}

impl DecodeBench {
    /// K/V bytes read per second by the fused gated decode, in GB/s (1e9).
    pub fn gated_gbps(&self) -> f64 {
        self.shape.kv_bytes() / (self.gated_ms * 1e-3) / 1e9
    }
    /// K/V bytes read per second by the gate = none decode, in GB/s.
    pub fn ungated_gbps(&self) -> f64 {
        self.shape.kv_bytes() / (self.ungated_ms * 1e-3) / 1e9
    }
    /// K/V plus Q, G, Y bytes per second of the fused gated decode, in GB/s.
    pub fn gated_io_gbps(&self) -> f64 {
        self.shape.io_bytes() / (self.gated_ms * 1e-3) / 1e9
    }
    /// The fused gated decode's K/V bandwidth as a fraction of the peak.
    pub fn gated_fraction_of_peak(&self) -> f64 {
        self.gated_gbps() * 1e9 / self.peak.bytes_per_second
    }
    /// What the fused gate costs, in percent of the gate = none decode's time.
    pub fn gate_overhead_pct(&self) -> f64 {
        (self.gated_ms / self.ungated_ms - 1.0) * 100.0
    }
    /// How much faster the fused decode is than decode + separate gate kernel.
    pub fn fused_speedup(&self) -> f64 {
        self.unfused_ms / self.gated_ms
    }

    /// The header of [`Self::table_row`].
    pub fn table_header() -> String {
        format!(
            "{:<24} {:>4} {:>7} {:>6} {:>10} {:>9} {:>7} {:>10} {:>9} {:>8}",
            "shape",
            "B",
            "context",
            "splits",
            "gated ms",
            "KV GB/s",
            "% peak",
            "ungated ms",
            "gate ovh",
            "fused x"
        )
    }

    /// One line of the text table.
    pub fn table_row(&self) -> String {
        format!(
            "{:<24} {:>4} {:>7} {:>6} {:>10.4} {:>9.1} {:>6.1}% {:>10.4} {:>8.2}% {:>8.3}",
            self.shape.name,
            self.shape.batch,
            self.shape.context,
            self.num_splits,
            self.gated_ms,
            self.gated_gbps(),
            100.0 * self.gated_fraction_of_peak(),
            self.ungated_ms,
            self.gate_overhead_pct(),
            self.fused_speedup()
        )
    }

    /// One JSON object (the shape, the timings and every derived figure).
    pub fn to_json(&self) -> String {
        let s = &self.shape;
        format!(
            "{{\"name\": \"{}\", \"batch\": {}, \"context\": {}, \"heads_q\": {}, \"heads_kv\": {}, \
             \"head_dim\": {}, \"block_size\": {}, \"seqlen_q\": {}, \"num_splits\": {}, \
             \"kv_bytes\": {}, \"io_bytes\": {}, \"gated_ms\": {:.6}, \"ungated_ms\": {:.6}, \
             \"unfused_ms\": {:.6}, \"gated_kv_gbps\": {:.2}, \"ungated_kv_gbps\": {:.2}, \
             \"gated_io_gbps\": {:.2}, \"gated_fraction_of_peak\": {:.4}, \"gate_overhead_pct\": {:.3}, \
             \"fused_speedup\": {:.4}}}",
            s.name.replace(['"', '\\'], ""),
            s.batch,
            s.context,
            s.heads_q,
            s.heads_kv,
            s.head_dim,
            s.block_size,
            s.seqlen_q,
            self.num_splits,
            s.kv_bytes(),
            s.io_bytes(),
            self.gated_ms,
            self.ungated_ms,
            self.unfused_ms,
            self.gated_gbps(),
            self.ungated_gbps(),
            self.gated_io_gbps(),
            self.gated_fraction_of_peak(),
            self.gate_overhead_pct(),
            self.fused_speedup()
        )
    }
}

/// A block table for `copies` disjoint copies of the cache: copy `c`'s table `[B, max_blocks]` uses the
/// blocks `perm[c * blocks_per_copy ..][.. blocks_per_copy]` of a shuffled pool, so pages are scattered
/// and no two copies share a page. Deterministic (xorshift from `seed`).
pub fn scattered_tables(shape: &DecodeShape, copies: usize, seed: u64) -> Vec<Vec<i32>> {
    let per_copy = shape.blocks_per_copy();
    let mut pool: Vec<i32> = (0..(copies * per_copy) as i32).collect();
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    for i in (1..pool.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        pool.swap(i, (state % (i as u64 + 1)) as usize);
    }
    pool.chunks(per_copy.max(1))
        .take(copies)
        .map(<[i32]>::to_vec)
        .collect()
}

/// A shape's device buffers, allocated once, ready to be timed.
pub struct DecodeSetup {
    shape: DecodeShape,
    stream: Arc<CudaStream>,
    copies: usize,
    num_splits: usize,
    k_cache: CudaSlice<half::bf16>,
    v_cache: CudaSlice<half::bf16>,
    /// One `[B, max_blocks]` table per cache copy.
    tables: Vec<CudaSlice<i32>>,
    seqlens: CudaSlice<i32>,
    q: CudaSlice<half::bf16>,
    g: CudaSlice<half::bf16>,
    y: CudaSlice<half::bf16>,
    /// The unfused path's ungated decode output.
    o: CudaSlice<half::bf16>,
    workspace: CudaSlice<u8>,
    status: CudaSlice<i32>,
    next: usize,
}

/// Fills `dst` with copies of `pattern` by device-to-device copies (a cache of tens of GB is not
/// generated on the host).
fn fill_from_pattern(
    stream: &Arc<CudaStream>,
    pattern: &CudaSlice<half::bf16>,
    dst: &mut CudaSlice<half::bf16>,
) -> Result<()> {
    let step = pattern.len();
    let mut start = 0;
    while start < dst.len() {
        let n = step.min(dst.len() - start);
        stream
            .memcpy_dtod(&pattern.slice(0..n), &mut dst.slice_mut(start..start + n))
            .map_err(|e| cuda("fill", e))?;
        start += n;
    }
    Ok(())
}

/// The split count [`NumSplits::Auto`] gives `shape` on this device.
fn auto_num_splits(backend: &CudaBackend, shape: &DecodeShape) -> Result<usize> {
    let sm_count = backend
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| cuda("SM count", e))?
        .max(1) as usize;
    resolve_num_splits(
        &shape.problem(GateMode::Elementwise, shape.copies()),
        NumSplits::Auto,
        sm_count,
    )
}

/// Why `shape` cannot run on this device, if it cannot: its buffers ([`DecodeShape::device_bytes`])
/// need more than 90% of the free device memory.
pub fn skip_reason(backend: &CudaBackend, shape: &DecodeShape) -> Result<Option<String>> {
    let needed = shape.device_bytes(auto_num_splits(backend, shape)?)?;
    let (free, _total) = backend
        .context()
        .mem_get_info()
        .map_err(|e| cuda("mem_get_info", e))?;
    Ok((needed as f64 > 0.9 * free as f64).then(|| {
        format!(
            "needs {:.1} GB of device memory, {:.1} GB free",
            needed as f64 / 1e9,
            free as f64 / 1e9
        )
    }))
}

impl DecodeSetup {
    /// Allocates and fills the buffers. A shape that does not fit ([`skip_reason`]) is
    /// [`GsdpaError::InvalidArgument`], before anything is allocated.
    pub fn new(backend: &CudaBackend, shape: &DecodeShape) -> Result<Self> {
        if let Some(reason) = skip_reason(backend, shape)? {
            return Err(GsdpaError::InvalidArgument(format!(
                "{}: {reason}",
                shape.name
            )));
        }
        let stream = backend.context().default_stream();
        let copies = shape.copies();
        let num_splits = auto_num_splits(backend, shape)?;

        let cache_len =
            copies * shape.blocks_per_copy() * shape.block_size * shape.heads_kv * shape.head_dim;
        // Random values, never zeros (zeros would flatter the tensor cores): a 16 MiB random pattern
        // repeated over the caches, K and V from different patterns.
        let pattern_len = (8usize << 20).min(cache_len);
        let mut k_cache = stream
            .alloc_zeros::<half::bf16>(cache_len)
            .map_err(|e| cuda("alloc", e))?;
        let mut v_cache = stream
            .alloc_zeros::<half::bf16>(cache_len)
            .map_err(|e| cuda("alloc", e))?;
        fill_from_pattern(
            &stream,
            &random_bf16(&stream, pattern_len, 11)?,
            &mut k_cache,
        )?;
        fill_from_pattern(
            &stream,
            &random_bf16(&stream, pattern_len, 12)?,
            &mut v_cache,
        )?;

        let tables = scattered_tables(shape, copies, 5)
            .iter()
            .map(|t| stream.clone_htod(t).map_err(|e| cuda("upload", e)))
            .collect::<Result<Vec<_>>>()?;
        let seqlens = stream
            .clone_htod(&vec![shape.context as i32; shape.batch])
            .map_err(|e| cuda("upload", e))?;
        let q_len = shape.batch * shape.seqlen_q * shape.heads_q * shape.head_dim;
        let workspace_bytes =
            decode_workspace_bytes(&shape.problem(GateMode::Elementwise, copies), num_splits)?;
        Ok(DecodeSetup {
            shape: shape.clone(),
            copies,
            num_splits,
            k_cache,
            v_cache,
            tables,
            seqlens,
            q: random_bf16(&stream, q_len, 13)?,
            g: random_bf16(&stream, q_len, 14)?,
            y: stream.alloc_zeros(q_len).map_err(|e| cuda("alloc", e))?,
            o: stream.alloc_zeros(q_len).map_err(|e| cuda("alloc", e))?,
            workspace: stream
                .alloc_zeros(workspace_bytes.max(1))
                .map_err(|e| cuda("alloc", e))?,
            status: stream.alloc_zeros(1).map_err(|e| cuda("alloc", e))?,
            stream,
            next: 0,
        })
    }

    /// The split count every call of this setup runs.
    pub fn num_splits(&self) -> usize {
        self.num_splits
    }

    /// Runs `variant` once on the next cache copy.
    fn run_next(&mut self, backend: &CudaBackend, variant: DecodeVariant) -> Result<()> {
        let copy = self.next % self.copies;
        self.next += 1;
        let shape = &self.shape;
        let gate = if variant == DecodeVariant::Gated {
            GateMode::Elementwise
        } else {
            GateMode::None
        };
        let problem = shape.problem(gate, self.copies);
        let q_shape = problem.q_shape();
        let out = if variant == DecodeVariant::Unfused {
            &mut self.o
        } else {
            &mut self.y
        };
        let mut args = DecodeArgs {
            q: Tensor::new(self.q.as_view(), Layout::contiguous(&q_shape)),
            kv: PagedKv {
                k_cache: Tensor::new(
                    self.k_cache.as_view(),
                    Layout::contiguous(&problem.cache_shape()),
                ),
                v_cache: Tensor::new(
                    self.v_cache.as_view(),
                    Layout::contiguous(&problem.cache_shape()),
                ),
                block_table: Tensor::new(
                    self.tables[copy].as_view(),
                    Layout::contiguous(&problem.table_shape()),
                ),
                cache_seqlens: Tensor::new(
                    self.seqlens.as_view(),
                    Layout::contiguous(&[shape.batch]),
                ),
            },
            cu_seqlens_q: None,
            g: (gate == GateMode::Elementwise)
                .then(|| Tensor::new(self.g.as_view(), Layout::contiguous(&q_shape))),
            y: Tensor::new(out.as_view_mut(), Layout::contiguous(&q_shape)),
            lse: None,
        };
        let mut workspace = self.workspace.as_view_mut();
        let mut status = self.status.as_view_mut();
        backend.forward_paged(
            &self.stream,
            &problem,
            &mut args,
            self.num_splits,
            Some(&mut workspace),
            Some(&mut status),
        )?;
        drop(args);
        if variant == DecodeVariant::Unfused {
            let flat = [shape.batch * shape.seqlen_q, shape.heads_q, shape.head_dim];
            let mut args = crate::GateArgs {
                o: Tensor::new(self.o.as_view(), Layout::contiguous(&flat)),
                g: Some(Tensor::new(self.g.as_view(), Layout::contiguous(&flat))),
                y: Tensor::new(self.y.as_view_mut(), Layout::contiguous(&flat)),
            };
            backend.gate(
                &self.stream,
                GateMode::Elementwise,
                Activation::Sigmoid,
                &mut args,
            )?;
        }
        Ok(())
    }

    /// Runs `variant` `iters` times (rotating the cache copies) between two CUDA events; returns the
    /// elapsed milliseconds of all of them.
    pub fn time(
        &mut self,
        backend: &CudaBackend,
        variant: DecodeVariant,
        iters: usize,
    ) -> Result<f64> {
        let stream = Arc::clone(&self.stream);
        super::bench::elapsed_ms(&stream, iters, || self.run_next(backend, variant))
    }

    /// Median milliseconds per call over `reps` batches of `iters` calls, after a warm-up.
    pub fn median_ms(
        &mut self,
        backend: &CudaBackend,
        variant: DecodeVariant,
        iters: usize,
        reps: usize,
    ) -> Result<f64> {
        let stream = Arc::clone(&self.stream);
        median_ms(&stream, iters, reps, || self.run_next(backend, variant))
    }

    /// Checks what the timed calls left: the status word clear (every length and block id was valid)
    /// and Y finite, so that a broken launch cannot pass as a fast one.
    pub fn check_outputs(&self) -> Result<()> {
        let status = self
            .stream
            .clone_dtoh(&self.status)
            .map_err(|e| cuda("download", e))?;
        let y = self
            .stream
            .clone_dtoh(&self.y)
            .map_err(|e| cuda("download", e))?;
        if status[0] != 0 {
            return Err(GsdpaError::Cuda(format!(
                "{}: the decode reported invalid paged values (status {})",
                self.shape.name, status[0]
            )));
        }
        if let Some(i) = y.iter().position(|v| !v.to_f32().is_finite()) {
            return Err(GsdpaError::Cuda(format!(
                "{}: Y[{i}] = {} after the benchmark",
                self.shape.name, y[i]
            )));
        }
        Ok(())
    }
}

/// Benchmarks one shape: median of `reps` batches of `iters` decode steps for each variant, then the
/// output check ([`DecodeSetup::check_outputs`]).
pub fn decode(
    backend: &CudaBackend,
    shape: &DecodeShape,
    iters: usize,
    reps: usize,
) -> Result<DecodeBench> {
    let peak = peak_bandwidth(backend)?;
    let mut setup = DecodeSetup::new(backend, shape)?;
    let ungated_ms = setup.median_ms(backend, DecodeVariant::Ungated, iters, reps)?;
    let unfused_ms = setup.median_ms(backend, DecodeVariant::Unfused, iters, reps)?;
    // Gated last: Y then holds the fused kernel's output for the check.
    let gated_ms = setup.median_ms(backend, DecodeVariant::Gated, iters, reps)?;
    setup.check_outputs()?;
    Ok(DecodeBench {
        shape: shape.clone(),
        num_splits: setup.num_splits(),
        peak,
        gated_ms,
        ungated_ms,
        unfused_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_grid_is_batch_by_context_at_the_qwen3_next_shape() {
        let shapes = standard_decode_shapes();
        assert_eq!(shapes.len(), 16);
        assert_eq!(shapes[0].name, "qwen3-next-b1-k1k");
        assert_eq!(shapes[15].name, "qwen3-next-b256-k128k");
        for s in &shapes {
            assert_eq!(
                (s.heads_q, s.heads_kv, s.head_dim, s.seqlen_q),
                (16, 2, 256, 1)
            );
            assert_eq!(s.block_size % crate::paged::BLOCK_SIZE_MULTIPLE, 0);
            crate::paged::validate_decode_problem(&s.problem(GateMode::Elementwise, s.copies()))
                .unwrap();
        }
        let names: std::collections::BTreeSet<_> = shapes.iter().map(|s| &s.name).collect();
        assert_eq!(names.len(), shapes.len(), "names are unique");
        let picked = filter_shapes(shapes.clone(), Some("-k8k"));
        assert_eq!(picked.len(), 4);
        assert!(picked.iter().all(|s| s.context == 8192));
        let picked = filter_shapes(shapes.clone(), Some("b1-k8k, b256-"));
        let names: Vec<&str> = picked.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "qwen3-next-b1-k8k",
                "qwen3-next-b256-k1k",
                "qwen3-next-b256-k8k",
                "qwen3-next-b256-k32k",
                "qwen3-next-b256-k128k"
            ]
        );
        assert!(filter_shapes(shapes, Some("nothing")).is_empty());
    }

    #[test]
    fn bytes_are_the_k_and_v_of_every_key() {
        let s = DecodeShape::qwen3_next(8, 8192);
        // 8 sequences * 8192 keys * 2 kv heads * 256 dims * 2 bytes, for K and for V.
        assert_eq!(s.kv_bytes(), (2 * 8 * 8192 * 2 * 256 * 2) as f64);
        // Q, G and Y: 8 * 16 * 256 * 2 bytes each.
        assert_eq!(s.io_bytes() - s.kv_bytes(), (3 * 8 * 16 * 256 * 2) as f64);
        assert_eq!(s.blocks_per_copy(), 8 * 512);
        // 128 MiB of K/V: one copy spans the rotation; 64 MiB needs two.
        assert_eq!(s.copies(), 1);
        assert_eq!(DecodeShape::qwen3_next(1, 32768).copies(), 2);
        assert_eq!(DecodeShape::qwen3_next(1, 1024).copies(), 64);
        assert_eq!(DecodeShape::qwen3_next(256, 131072).copies(), 1);
        // A partial last page is allocated whole.
        let mut odd = DecodeShape::qwen3_next(2, 1000);
        odd.block_size = 16;
        assert_eq!(odd.blocks_per_copy(), 2 * 63);
        assert_eq!(odd.name, "qwen3-next-b2-k1000");
    }

    #[test]
    fn device_bytes_count_the_caches_and_the_rotation() {
        // 256 * 128k keys * 2 kv heads * 256 dims * 2 bytes, K and V: 68.7 GB, plus 8 MB of table.
        let big = DecodeShape::qwen3_next(256, 131072)
            .device_bytes(1)
            .unwrap() as f64;
        assert!(big > 68.7e9 && big < 68.8e9, "{big}");
        // A 1 MB cache is rotated over 64 copies.
        let small = DecodeShape::qwen3_next(1, 1024);
        assert!(small.device_bytes(8).unwrap() >= 64 * small.kv_bytes() as usize);
    }

    #[test]
    fn peak_bandwidth_from_attributes_and_table() {
        // H100 SXM: 2619 MHz HBM3, 5120-bit bus.
        let h100 = peak_from_attributes(2_619_000, 5120).unwrap();
        assert!((h100 - 3.352e12).abs() < 1e9, "{h100}");
        assert_eq!(peak_from_attributes(0, 5120), None);
        assert_eq!(peak_from_attributes(2_619_000, -1), None);
        assert_eq!(peak_from_table("NVIDIA H200"), Some(4.8e12));
        assert_eq!(peak_from_table("NVIDIA H100 80GB HBM3"), Some(3.35e12));
        assert_eq!(peak_from_table("NVIDIA H100 PCIe"), Some(2.0e12));
        assert_eq!(peak_from_table("NVIDIA GeForce RTX 4090"), None);
    }

    #[test]
    fn tables_scatter_disjoint_pages() {
        let s = DecodeShape::qwen3_next(3, 100);
        let tables = scattered_tables(&s, 4, 5);
        assert_eq!(tables.len(), 4);
        let mut all: Vec<i32> = tables.iter().flatten().copied().collect();
        assert!(tables.iter().all(|t| t.len() == s.blocks_per_copy()));
        assert_ne!(
            tables[0],
            (0..s.blocks_per_copy() as i32).collect::<Vec<_>>()
        );
        all.sort_unstable();
        assert_eq!(
            all,
            (0..(4 * s.blocks_per_copy()) as i32).collect::<Vec<_>>()
        );
    }

    fn example() -> DecodeBench {
        // Made-up timings, only to check the arithmetic and the formatting.
        DecodeBench {
            shape: DecodeShape::qwen3_next(8, 8192),
            num_splits: 4,
            peak: PeakBandwidth {
                bytes_per_second: 4.8e12,
                source: "table",
            },
            gated_ms: 0.05,
            ungated_ms: 0.04,
            unfused_ms: 0.1,
        }
    }

    #[test]
    fn derived_figures() {
        let r = example();
        let kv = r.shape.kv_bytes();
        assert!((r.gated_gbps() - kv / 0.05e-3 / 1e9).abs() < 1e-9);
        assert!((r.gated_fraction_of_peak() - kv / 0.05e-3 / 4.8e12).abs() < 1e-12);
        assert!((r.gate_overhead_pct() - 25.0).abs() < 1e-9);
        assert!((r.fused_speedup() - 2.0).abs() < 1e-12);
        assert!(r.gated_io_gbps() > r.gated_gbps());
    }

    #[test]
    fn table_and_json_formats() {
        let r = example();
        let row = r.table_row();
        assert!(row.starts_with("qwen3-next-b8-k8k"), "{row}");
        assert!(row.contains("25.00%") && row.contains("2.000"), "{row}");
        assert_eq!(
            DecodeBench::table_header().split_whitespace().next(),
            Some("shape")
        );
        let json = r.to_json();
        for key in [
            "\"name\": \"qwen3-next-b8-k8k\"",
            "\"batch\": 8",
            "\"context\": 8192",
            "\"num_splits\": 4",
            "\"gated_ms\": 0.050000",
            "\"gate_overhead_pct\": 25.000",
            "\"fused_speedup\": 2.0000",
        ] {
            assert!(json.contains(key), "{key} missing from {json}");
        }
        assert!(json.starts_with('{') && json.ends_with('}'));
        assert_eq!(json.matches('{').count(), json.matches('}').count());
    }
}
