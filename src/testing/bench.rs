//! GPU benchmarks of the fused kernels, shared by `benches/forward.rs` (criterion) and `gsdpa bench`
//! (the paged decode's, measured in GB/s, are in [`super::decode_bench`], on the same timing loop).
//!
//! Method: CUDA events around the launches on one stream, warm-up first, the median of many timed
//! repetitions, and inputs rotated over several copies so that shapes which fit in L2 are not flattered.
//! FLOPs: `4 * B * Hq * Sq * Sk * D` forward, halved when causal (FlashAttention's convention).
//!
//! Three forward variants per shape:
//! - `gated`: our fused kernel with an elementwise sigmoid gate (what the layer needs);
//! - `ungated`: the same kernel with gate = none: our flash-attention baseline, so `gated / ungated - 1`
//!   is what the gate costs;
//! - `unfused`: gate = none forward followed by the standalone gate kernel, the path every engine runs
//!   today; `unfused / gated` is the fused kernel's speedup.
//!
//! The backward ([`backward`]) is timed gated and with gate = none. The whole layer ([`layer`]), forward
//! plus backward, is timed fused (our gated forward and backward) and unfused (gate = none forward, the
//! gate kernel, the gate backward kernel, and a gate = none backward fed with its dO).

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream};

use crate::cuda::CudaBackend;
use crate::error::{GsdpaError, Result};
use crate::problem::{Activation, AttentionProblem, GateMode};
use crate::tensor::{Layout, Tensor};
use crate::ForwardArgs;

/// One benchmark shape: `Hq` query heads over `Hkv` kv heads, self-attention of length `seqlen`.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchShape {
    /// A short label, e.g. `d128-s8192` or `qwen3-next-s4096`.
    pub name: String,
    pub batch: usize,
    pub heads_q: usize,
    pub heads_kv: usize,
    pub seqlen: usize,
    pub head_dim: usize,
    pub causal: bool,
}

impl BenchShape {
    /// Forward FLOPs (matmuls only), halved when causal.
    pub fn forward_flops(&self) -> f64 {
        let full = 4.0
            * (self.batch * self.heads_q) as f64
            * (self.seqlen as f64).powi(2)
            * self.head_dim as f64;
        if self.causal {
            full / 2.0
        } else {
            full
        }
    }

    fn problem(&self, gate: GateMode) -> AttentionProblem {
        AttentionProblem::new(
            self.batch,
            self.seqlen,
            self.seqlen,
            self.heads_q,
            self.heads_kv,
            self.head_dim,
        )
        .causal(self.causal)
        .gate(gate)
        .activation(Activation::Sigmoid)
    }
}

/// The standard grid: head dims 64/128/256, sequence lengths 512 to 16k, causal and not, with
/// `heads * D = 2048` and `batch * seqlen = 16k` tokens (FlashAttention's benchmark setting, enough
/// work to fill an H100/H200), plus the Qwen3-Next shape (d256, 16 query heads, 2 kv heads).
pub fn standard_shapes() -> Vec<BenchShape> {
    let mut shapes = Vec::new();
    for head_dim in [64, 128, 256] {
        for seqlen in [512, 1024, 2048, 4096, 8192, 16384] {
            for causal in [false, true] {
                let heads = 2048 / head_dim;
                shapes.push(BenchShape {
                    name: format!(
                        "d{head_dim}-s{seqlen}{}",
                        if causal { "-causal" } else { "" }
                    ),
                    batch: (16384 / seqlen).max(1),
                    heads_q: heads,
                    heads_kv: heads,
                    seqlen,
                    head_dim,
                    causal,
                });
            }
        }
    }
    for seqlen in [2048, 8192] {
        shapes.push(BenchShape {
            name: format!("qwen3-next-s{seqlen}-causal"),
            batch: (16384 / seqlen).max(1),
            heads_q: 16,
            heads_kv: 2,
            seqlen,
            head_dim: 256,
            causal: true,
        });
    }
    shapes
}

/// Timings of one shape, in milliseconds per forward (medians).
#[derive(Debug, Clone)]
pub struct ForwardBench {
    pub shape: BenchShape,
    pub gated_ms: f64,
    pub ungated_ms: f64,
    pub unfused_ms: f64,
}

impl ForwardBench {
    /// Throughput of the fused gated kernel.
    pub fn gated_tflops(&self) -> f64 {
        self.shape.forward_flops() / (self.gated_ms * 1e-3) / 1e12
    }
    /// Throughput of the gate = none kernel.
    pub fn ungated_tflops(&self) -> f64 {
        self.shape.forward_flops() / (self.ungated_ms * 1e-3) / 1e12
    }
    /// What the fused gate costs, in percent of the ungated kernel's time.
    pub fn gate_overhead_pct(&self) -> f64 {
        (self.gated_ms / self.ungated_ms - 1.0) * 100.0
    }
    /// How much faster fused is than attention + separate gate kernel.
    pub fn fused_speedup(&self) -> f64 {
        self.unfused_ms / self.gated_ms
    }
}

pub(super) fn cuda(what: &str, e: cudarc::driver::DriverError) -> GsdpaError {
    GsdpaError::Cuda(format!("{what}: {e:?}"))
}

/// Device buffers for one copy of a shape's inputs and outputs.
struct Buffers {
    q: CudaSlice<half::bf16>,
    k: CudaSlice<half::bf16>,
    v: CudaSlice<half::bf16>,
    g: CudaSlice<half::bf16>,
    y: CudaSlice<half::bf16>,
    o: CudaSlice<half::bf16>,
    lse: CudaSlice<f32>,
}

pub(super) fn random_bf16(
    stream: &std::sync::Arc<CudaStream>,
    len: usize,
    seed: u64,
) -> Result<CudaSlice<half::bf16>> {
    // A cheap deterministic generator: uniform values in [-1, 1). Random data, never zeros: zeros run
    // faster than real data on tensor cores.
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let host: Vec<half::bf16> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            half::bf16::from_f32((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect();
    stream.clone_htod(&host).map_err(|e| cuda("upload", e))
}

impl Buffers {
    fn new(stream: &std::sync::Arc<CudaStream>, shape: &BenchShape, seed: u64) -> Result<Self> {
        let q_len = shape.batch * shape.seqlen * shape.heads_q * shape.head_dim;
        let kv_len = shape.batch * shape.seqlen * shape.heads_kv * shape.head_dim;
        Ok(Buffers {
            q: random_bf16(stream, q_len, seed)?,
            k: random_bf16(stream, kv_len, seed + 1)?,
            v: random_bf16(stream, kv_len, seed + 2)?,
            g: random_bf16(stream, q_len, seed + 3)?,
            y: stream.alloc_zeros(q_len).map_err(|e| cuda("alloc", e))?,
            o: stream.alloc_zeros(q_len).map_err(|e| cuda("alloc", e))?,
            lse: stream
                .alloc_zeros(shape.batch * shape.heads_q * shape.seqlen)
                .map_err(|e| cuda("alloc", e))?,
        })
    }
}

/// What is timed for a shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Fused kernel, elementwise sigmoid gate.
    Gated,
    /// Same kernel, gate = none.
    Ungated,
    /// Gate = none kernel, then the standalone gate kernel.
    Unfused,
}

impl Variant {
    /// All variants, in report order.
    pub const ALL: [Variant; 3] = [Variant::Gated, Variant::Ungated, Variant::Unfused];

    /// Lower-case label.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Gated => "gated",
            Variant::Ungated => "ungated",
            Variant::Unfused => "unfused",
        }
    }
}

fn run_variant(
    backend: &CudaBackend,
    stream: &CudaStream,
    shape: &BenchShape,
    b: &mut Buffers,
    variant: Variant,
) -> Result<()> {
    let q_shape = [shape.batch, shape.seqlen, shape.heads_q, shape.head_dim];
    let kv_shape = [shape.batch, shape.seqlen, shape.heads_kv, shape.head_dim];
    let gate = if variant == Variant::Gated {
        GateMode::Elementwise
    } else {
        GateMode::None
    };
    let problem = shape.problem(gate);
    let mut args = ForwardArgs {
        q: Tensor::new(b.q.as_view(), Layout::contiguous(&q_shape)),
        k: Tensor::new(b.k.as_view(), Layout::contiguous(&kv_shape)),
        v: Tensor::new(b.v.as_view(), Layout::contiguous(&kv_shape)),
        g: (variant == Variant::Gated)
            .then(|| Tensor::new(b.g.as_view(), Layout::contiguous(&q_shape))),
        y: Tensor::new(
            if variant == Variant::Unfused {
                b.o.as_view_mut()
            } else {
                b.y.as_view_mut()
            },
            Layout::contiguous(&q_shape),
        ),
        o: None,
        lse: Some(Tensor::new(
            b.lse.as_view_mut(),
            Layout::contiguous(&[shape.batch, shape.heads_q, shape.seqlen]),
        )),
        diagnostics: None,
    };
    backend.forward(stream, &problem, &mut args, None)?;
    drop(args);
    if variant == Variant::Unfused {
        let rows = shape.batch * shape.seqlen;
        let flat = [rows, shape.heads_q, shape.head_dim];
        let mut args = crate::GateArgs {
            o: Tensor::new(b.o.as_view(), Layout::contiguous(&flat)),
            g: Some(Tensor::new(b.g.as_view(), Layout::contiguous(&flat))),
            y: Tensor::new(b.y.as_view_mut(), Layout::contiguous(&flat)),
        };
        backend.gate(
            stream,
            GateMode::Elementwise,
            Activation::Sigmoid,
            &mut args,
        )?;
    }
    Ok(())
}

/// A shape's device buffers, allocated once (several rotated copies), ready to be timed.
pub struct ForwardSetup {
    shape: BenchShape,
    stream: std::sync::Arc<CudaStream>,
    copies: Vec<Buffers>,
    next: usize,
}

impl ForwardSetup {
    /// Allocates and fills enough input copies that one rotation exceeds ~2x a 50 MB L2.
    pub fn new(backend: &CudaBackend, shape: &BenchShape) -> Result<Self> {
        let stream = backend.context().default_stream();
        let bytes_per_copy = 2
            * shape.batch
            * shape.seqlen
            * (2 * shape.heads_q + 2 * shape.heads_kv)
            * shape.head_dim;
        let copies_needed = (100_000_000 / bytes_per_copy.max(1)).clamp(1, 8);
        let copies = (0..copies_needed)
            .map(|i| Buffers::new(&stream, shape, 17 * i as u64 + 1))
            .collect::<Result<Vec<_>>>()?;
        Ok(ForwardSetup {
            shape: shape.clone(),
            stream,
            copies,
            next: 0,
        })
    }

    /// Runs `variant` once on the next copy of the inputs.
    fn run_next(&mut self, backend: &CudaBackend, variant: Variant) -> Result<()> {
        let n = self.copies.len();
        let copy = &mut self.copies[self.next % n];
        self.next += 1;
        run_variant(backend, &self.stream, &self.shape, copy, variant)
    }

    /// Runs `variant` `iters` times (rotating inputs) between two CUDA events; returns the elapsed
    /// milliseconds of all of them.
    pub fn time(&mut self, backend: &CudaBackend, variant: Variant, iters: usize) -> Result<f64> {
        let stream = Arc::clone(&self.stream);
        elapsed_ms(&stream, iters, || self.run_next(backend, variant))
    }

    /// Median milliseconds per call over `reps` batches of `iters` calls, after a warm-up.
    pub fn median_ms(
        &mut self,
        backend: &CudaBackend,
        variant: Variant,
        iters: usize,
        reps: usize,
    ) -> Result<f64> {
        let stream = Arc::clone(&self.stream);
        median_ms(&stream, iters, reps, || self.run_next(backend, variant))
    }
}

/// Benchmarks one shape: median of `reps` batches of `iters` forwards for each variant.
pub fn forward(
    backend: &CudaBackend,
    shape: &BenchShape,
    iters: usize,
    reps: usize,
) -> Result<ForwardBench> {
    let mut setup = ForwardSetup::new(backend, shape)?;
    Ok(ForwardBench {
        shape: shape.clone(),
        gated_ms: setup.median_ms(backend, Variant::Gated, iters, reps)?,
        ungated_ms: setup.median_ms(backend, Variant::Ungated, iters, reps)?,
        unfused_ms: setup.median_ms(backend, Variant::Unfused, iters, reps)?,
    })
}

/// Backward timings of one shape, in milliseconds (medians). FLOPs: 2.5x the forward's.
#[derive(Debug, Clone)]
pub struct BackwardBench {
    pub shape: BenchShape,
    /// Backward with the elementwise sigmoid gate (dG included).
    pub gated_ms: f64,
    /// Backward with gate = none.
    pub ungated_ms: f64,
}

impl BackwardBench {
    /// Backward FLOPs: 2.5x the forward's (FlashAttention's convention).
    pub fn flops(&self) -> f64 {
        2.5 * self.shape.forward_flops()
    }
    /// Throughput of the gated backward.
    pub fn gated_tflops(&self) -> f64 {
        self.flops() / (self.gated_ms * 1e-3) / 1e12
    }
    /// Throughput of the gate = none backward.
    pub fn ungated_tflops(&self) -> f64 {
        self.flops() / (self.ungated_ms * 1e-3) / 1e12
    }
    /// What the fused gate costs in the backward, in percent.
    pub fn gate_overhead_pct(&self) -> f64 {
        (self.gated_ms / self.ungated_ms - 1.0) * 100.0
    }
}

/// Milliseconds that `iters` calls of `once` take on `stream`, between two CUDA events.
pub(super) fn elapsed_ms(
    stream: &CudaStream,
    iters: usize,
    mut once: impl FnMut() -> Result<()>,
) -> Result<f64> {
    let start = stream
        .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(|e| cuda("event", e))?;
    for _ in 0..iters {
        once()?;
    }
    let end = stream
        .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(|e| cuda("event", e))?;
    end.synchronize().map_err(|e| cuda("event sync", e))?;
    Ok(start.elapsed_ms(&end).map_err(|e| cuda("elapsed", e))? as f64)
}

/// Median milliseconds per call of `once`, over `reps` batches of `iters` calls timed with CUDA events on
/// `stream`, after a warm-up of 3 calls.
pub(super) fn median_ms(
    stream: &CudaStream,
    iters: usize,
    reps: usize,
    mut once: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..3 {
        once()?;
    }
    let mut samples = (0..reps.max(1))
        .map(|_| Ok(elapsed_ms(stream, iters, &mut once)? / iters.max(1) as f64))
        .collect::<Result<Vec<f64>>>()?;
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(samples[samples.len() / 2])
}

/// Device buffers of one shape's backward: the upstream gradient dY, the unfused path's dO, the
/// gradients and a workspace large enough for the gated and the gate = none problem.
struct Gradients {
    dy: CudaSlice<half::bf16>,
    /// The unfused layer's dO = dY * act(G), written by the gate backward kernel.
    d_o: CudaSlice<half::bf16>,
    dq: CudaSlice<half::bf16>,
    dk: CudaSlice<half::bf16>,
    dv: CudaSlice<half::bf16>,
    dg: CudaSlice<half::bf16>,
    workspace: CudaSlice<u8>,
}

impl Gradients {
    fn new(stream: &std::sync::Arc<CudaStream>, shape: &BenchShape) -> Result<Self> {
        let q_len = shape.batch * shape.seqlen * shape.heads_q * shape.head_dim;
        let kv_len = shape.batch * shape.seqlen * shape.heads_kv * shape.head_dim;
        let alloc = |n: usize| {
            stream
                .alloc_zeros::<half::bf16>(n)
                .map_err(|e| cuda("alloc", e))
        };
        let workspace_bytes =
            crate::validate::backward_workspace_bytes(&shape.problem(GateMode::Elementwise))?.max(
                crate::validate::backward_workspace_bytes(&shape.problem(GateMode::None))?,
            );
        Ok(Gradients {
            dy: random_bf16(stream, q_len, 99)?,
            d_o: alloc(q_len)?,
            dq: alloc(q_len)?,
            dk: alloc(kv_len)?,
            dv: alloc(kv_len)?,
            dg: alloc(q_len)?,
            workspace: stream
                .alloc_zeros::<u8>(workspace_bytes.max(1))
                .map_err(|e| cuda("alloc", e))?,
        })
    }
}

/// What a backward reads besides Q, K, V and the gate logits: the forward output it was given as `y`
/// and the upstream gradient.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BackwardInputs {
    /// `y` = the forward's Y, upstream gradient dY: the fused gated backward, and the gate = none
    /// backward of the ungated attention (whose Y is its O).
    YAndDy,
    /// `y` = the ungated O, upstream gradient dO from the gate backward kernel: the unfused layer's
    /// gate = none backward.
    OAndDo,
}

/// One backward (fast mode) of `shape`: with the elementwise sigmoid gate (dG included) or gate = none.
fn attention_backward(
    backend: &CudaBackend,
    stream: &CudaStream,
    shape: &BenchShape,
    gate: GateMode,
    b: &Buffers,
    inputs: BackwardInputs,
    grads: &mut Gradients,
) -> Result<()> {
    let problem = shape.problem(gate);
    let gated = gate != GateMode::None;
    let q_shape = [shape.batch, shape.seqlen, shape.heads_q, shape.head_dim];
    let kv_shape = [shape.batch, shape.seqlen, shape.heads_kv, shape.head_dim];
    let lse_shape = [shape.batch, shape.heads_q, shape.seqlen];
    let (y, dy) = match inputs {
        BackwardInputs::YAndDy => (&b.y, &grads.dy),
        BackwardInputs::OAndDo => (&b.o, &grads.d_o),
    };
    let mut args = crate::BackwardArgs {
        q: Tensor::new(b.q.as_view(), Layout::contiguous(&q_shape)),
        k: Tensor::new(b.k.as_view(), Layout::contiguous(&kv_shape)),
        v: Tensor::new(b.v.as_view(), Layout::contiguous(&kv_shape)),
        g: gated.then(|| Tensor::new(b.g.as_view(), Layout::contiguous(&q_shape))),
        y: Tensor::new(y.as_view(), Layout::contiguous(&q_shape)),
        o: None,
        dy: Tensor::new(dy.as_view(), Layout::contiguous(&q_shape)),
        lse: Tensor::new(b.lse.as_view(), Layout::contiguous(&lse_shape)),
        dq: Tensor::new(grads.dq.as_view_mut(), Layout::contiguous(&q_shape)),
        dk: Tensor::new(grads.dk.as_view_mut(), Layout::contiguous(&kv_shape)),
        dv: Tensor::new(grads.dv.as_view_mut(), Layout::contiguous(&kv_shape)),
        dg: gated.then(|| Tensor::new(grads.dg.as_view_mut(), Layout::contiguous(&q_shape))),
    };
    let mut ws = grads.workspace.as_view_mut();
    backend.backward(
        stream,
        &problem,
        &mut args,
        &mut ws,
        None,
        crate::BackwardOptions::default(),
    )
}

/// The unfused layer's gate backward: dO = dY * sigmoid(G) and dG = dY * O * sigmoid'(G) from the
/// ungated O (the gate = none forward's output), by the standalone kernel.
fn separate_gate_backward(
    backend: &CudaBackend,
    stream: &CudaStream,
    shape: &BenchShape,
    b: &Buffers,
    grads: &mut Gradients,
) -> Result<()> {
    let flat = [shape.batch * shape.seqlen, shape.heads_q, shape.head_dim];
    let mut args = crate::GateBackwardArgs {
        o: Tensor::new(b.o.as_view(), Layout::contiguous(&flat)),
        g: Some(Tensor::new(b.g.as_view(), Layout::contiguous(&flat))),
        dy: Tensor::new(grads.dy.as_view(), Layout::contiguous(&flat)),
        d_o: Tensor::new(grads.d_o.as_view_mut(), Layout::contiguous(&flat)),
        dg: Some(Tensor::new(
            grads.dg.as_view_mut(),
            Layout::contiguous(&flat),
        )),
    };
    backend.gate_backward(
        stream,
        GateMode::Elementwise,
        Activation::Sigmoid,
        &mut args,
    )
}

/// Benchmarks the backward (fast mode) of one shape, gated and ungated. The forward runs first so that
/// Y and LSE are real. One copy of the buffers (no rotation: a backward reads and writes several
/// `[B, S, H, D]` tensors, more than an L2 holds at the sizes where that matters).
pub fn backward(
    backend: &CudaBackend,
    shape: &BenchShape,
    iters: usize,
    reps: usize,
) -> Result<BackwardBench> {
    let stream = backend.context().default_stream();
    let mut b = Buffers::new(&stream, shape, 1)?;
    let mut grads = Gradients::new(&stream, shape)?;
    let mut timings = [0.0f64; 2];
    for (slot, (gate, variant)) in [
        (GateMode::Elementwise, Variant::Gated),
        (GateMode::None, Variant::Ungated),
    ]
    .into_iter()
    .enumerate()
    {
        run_variant(backend, &stream, shape, &mut b, variant)?;
        timings[slot] = median_ms(&stream, iters, reps, || {
            attention_backward(
                backend,
                &stream,
                shape,
                gate,
                &b,
                BackwardInputs::YAndDy,
                &mut grads,
            )
        })?;
    }
    Ok(BackwardBench {
        shape: shape.clone(),
        gated_ms: timings[0],
        ungated_ms: timings[1],
    })
}

/// Whole-layer timings (forward + backward, elementwise sigmoid gate) of one shape, in milliseconds
/// (medians).
#[derive(Debug, Clone)]
pub struct LayerBench {
    pub shape: BenchShape,
    /// Fused: our gated forward (Y, LSE), then our gated backward (dQ, dK, dV, dG; fast mode).
    pub fused_ms: f64,
    /// Unfused, as engines run it today: forward with gate = none (O, LSE), the gate kernel (Y); then the
    /// gate backward kernel (dO, dG) and a gate = none backward fed with dO (dQ, dK, dV).
    pub unfused_ms: f64,
}

impl LayerBench {
    /// Layer FLOPs: the forward's plus the backward's (2.5x), so 3.5x the forward's.
    pub fn flops(&self) -> f64 {
        3.5 * self.shape.forward_flops()
    }
    /// Throughput of the fused layer.
    pub fn fused_tflops(&self) -> f64 {
        self.flops() / (self.fused_ms * 1e-3) / 1e12
    }
    /// How much faster the fused layer is than attention + separate gate kernels, forward and backward.
    pub fn fused_speedup(&self) -> f64 {
        self.unfused_ms / self.fused_ms
    }
}

/// Benchmarks the whole gated layer, forward + backward, fused against unfused (see [`LayerBench`]).
/// One copy of the buffers, as [`backward`].
pub fn layer(
    backend: &CudaBackend,
    shape: &BenchShape,
    iters: usize,
    reps: usize,
) -> Result<LayerBench> {
    let stream = backend.context().default_stream();
    let mut b = Buffers::new(&stream, shape, 1)?;
    let mut grads = Gradients::new(&stream, shape)?;
    let fused_ms = median_ms(&stream, iters, reps, || {
        run_variant(backend, &stream, shape, &mut b, Variant::Gated)?;
        attention_backward(
            backend,
            &stream,
            shape,
            GateMode::Elementwise,
            &b,
            BackwardInputs::YAndDy,
            &mut grads,
        )
    })?;
    let unfused_ms = median_ms(&stream, iters, reps, || {
        // Forward: gate = none into O, then the gate kernel O -> Y.
        run_variant(backend, &stream, shape, &mut b, Variant::Unfused)?;
        separate_gate_backward(backend, &stream, shape, &b, &mut grads)?;
        // The gate = none backward sees the ungated O as its forward output and dO as its upstream
        // gradient.
        attention_backward(
            backend,
            &stream,
            shape,
            GateMode::None,
            &b,
            BackwardInputs::OAndDo,
            &mut grads,
        )
    })?;
    Ok(LayerBench {
        shape: shape.clone(),
        fused_ms,
        unfused_ms,
    })
}
