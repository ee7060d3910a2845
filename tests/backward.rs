//! The fused gated backward kernels (`kernels/backward.cu`) on the emulator, against the f64 reference
//! gradients of the same rounded inputs: both dtypes, head dims 64/128/256, causal or not, every gate
//! mode and activation, GQA ratios 1/4/8, odd lengths with Sq != Sk both ways, varlen (with empty
//! sequences), the Qwen3-Next strided `[q_h | g_h]` layout, and both modes (fast: dQ by atomics,
//! deterministic: dQ by its own pass). Deterministic mode must be bit-identical across emulator seeds.
//! Those run the compact tiles (kernels/backward/traits.h); the large-tile kernels (D = 128 and 256, for
//! devices with more than 99 KiB of shared memory per block; at D = 256 two-stage on sm_90, one-stage on
//! sm_80) have a leaner grid of their own, and the choice between them its own tests.
//!
//! The forward outputs the backward consumes (Y, the ungated O, LSE) come from the CPU reference rounded
//! to the dtype, as a training step would store them; the reference gradients are exact (f64, forward
//! recomputed), so the error measured includes what storing Y in 16 bits costs. Every gradient buffer is
//! NaN before the run; any NaN after it fails.
//!
//! Tolerances (relative Frobenius error per gradient): bf16 2e-2, f16 5e-3. Measured errors are about
//! 3e-3 (bf16) and 4e-4 (f16). One exception, see `check_single_key_noise`: with a single key per
//! sequence the exact dQ and dK are zero, so a relative error is meaningless there.
#![cfg(feature = "emulator")]

use gated_sdpa::emulator::Emulator;
use gated_sdpa::reference::backward_f64;
use gated_sdpa::{
    Activation, AttentionProblem, BackwardArgs, BackwardOptions, BackwardTiles, DType, Element,
    ForwardArgs, GateMode, GsdpaError, HostBackend, HostBuffer, Layout, Reference, TargetArch,
    Tensor, Varlen,
};
use half::{bf16, f16};
use rand::{rngs::StdRng, SeedableRng};

mod common;
use common::{gather, norm, numel, random_buffer, GATES, HEAD_DIMS};

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 2e-2,
        DType::F16 => 5e-3,
    }
}

/// Unit roundoff of the dtype (half an ulp at 1).
fn unit_roundoff(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 2f64.powi(-8),
        DType::F16 => 2f64.powi(-11),
    }
}

/// Random inputs of one problem, rounded to T, plus the reference forward outputs.
struct Inputs<T> {
    /// q, or the whole Qwen3-Next `q_proj` buffer `[.., Hq, 2D]` holding q and g.
    q: HostBuffer<T>,
    q_layout: Layout,
    /// Gate logits: a separate buffer, or (`qg`) a view of `q` starting D elements in.
    g: Option<HostBuffer<T>>,
    g_layout: Option<Layout>,
    qg: bool,
    k: HostBuffer<T>,
    v: HostBuffer<T>,
    y: HostBuffer<T>,
    o: HostBuffer<T>,
    lse: HostBuffer<f32>,
    dy: HostBuffer<T>,
}

impl<T: Element> Inputs<T> {
    fn g_data(&self) -> Option<&[T]> {
        if self.qg {
            Some(&self.q.as_slice()[self.q_layout.shape().last().copied().unwrap_or(0)..])
        } else {
            self.g.as_ref().map(HostBuffer::as_slice)
        }
    }

    fn g_tensor(&self) -> Option<Tensor<&[T]>> {
        Some(Tensor::new(self.g_data()?, self.g_layout.clone()?))
    }
}

fn make_inputs<T: Element>(problem: &AttentionProblem, qg: bool, seed: u64) -> Inputs<T> {
    let mut rng = StdRng::seed_from_u64(seed);
    let q_shape = problem.q_shape();
    let kv_shape = problem.kv_shape();
    let (q, q_layout, g, g_layout) = if qg {
        assert_eq!(
            problem.gate,
            GateMode::Elementwise,
            "the q_proj layout carries an elementwise gate"
        );
        let buffer = random_buffer::<T>(&mut rng, 2 * numel(&q_shape), 2.0);
        let layout = Layout::q_proj_view(&q_shape);
        (buffer, layout.clone(), None, Some(layout))
    } else {
        let q = random_buffer::<T>(&mut rng, numel(&q_shape), 2.0);
        let g_shape = problem.gate_shape();
        let g = g_shape
            .as_ref()
            .map(|s| random_buffer::<T>(&mut rng, numel(s), 3.0));
        (
            q,
            Layout::contiguous(&q_shape),
            g,
            g_shape.map(|s| Layout::contiguous(&s)),
        )
    };
    let k = random_buffer::<T>(&mut rng, numel(&kv_shape), 2.0);
    let v = random_buffer::<T>(&mut rng, numel(&kv_shape), 2.0);
    let dy = random_buffer::<T>(&mut rng, numel(&q_shape), 1.0);
    let mut inputs = Inputs {
        q,
        q_layout,
        g,
        g_layout,
        qg,
        k,
        v,
        y: HostBuffer::new(numel(&q_shape)),
        o: HostBuffer::new(numel(&q_shape)),
        lse: HostBuffer::new(numel(&problem.lse_shape())),
        dy,
    };
    let take = |b: &mut HostBuffer<T>| std::mem::replace(b, HostBuffer::new(0));
    // The forward outputs, rounded as a training step stores them. They are moved out while the
    // forward borrows the inputs, then put back.
    let (mut y, mut o) = (take(&mut inputs.y), take(&mut inputs.o));
    let mut lse = std::mem::replace(&mut inputs.lse, HostBuffer::new(0));
    let mut args = ForwardArgs {
        q: Tensor::new(inputs.q.as_slice(), inputs.q_layout.clone()),
        k: Tensor::contiguous(inputs.k.as_slice(), &kv_shape),
        v: Tensor::contiguous(inputs.v.as_slice(), &kv_shape),
        g: inputs.g_tensor(),
        y: Tensor::contiguous(y.as_mut_slice(), &q_shape),
        o: Some(Tensor::contiguous(o.as_mut_slice(), &q_shape)),
        lse: Some(Tensor::contiguous(lse.as_mut_slice(), &problem.lse_shape())),
        diagnostics: None,
    };
    Reference
        .forward(problem, &mut args)
        .expect("reference forward");
    (inputs.y, inputs.o, inputs.lse) = (y, o, lse);
    inputs
}

/// Gradients as f64, dense (C order of their shapes).
#[derive(Debug, Clone, PartialEq)]
struct Grads {
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
    dg: Option<Vec<f64>>,
}

impl Grads {
    /// Every value's bits, for the bit-identity check (f64 keeps -0 and +0 apart).
    fn bits(&self) -> Vec<u64> {
        let dg = self.dg.iter().flatten();
        self.dq
            .iter()
            .chain(&self.dk)
            .chain(&self.dv)
            .chain(dg)
            .map(|x| x.to_bits())
            .collect()
    }
}

/// Runs the backward on the emulator with `options` (tiles, dQ mode), every gradient buffer NaN
/// beforehand. The large tiles run on sm_90, whose shared memory holds every head dim's two-stage ones;
/// the compact ones on the default target.
fn emulator_backward_with<T: Element>(
    problem: &AttentionProblem,
    inputs: &Inputs<T>,
    options: BackwardOptions,
    seed: u64,
) -> Grads {
    let arch = match options.tiles {
        BackwardTiles::Large => TargetArch::SM90,
        _ => Emulator::new().arch(),
    };
    emulator_backward_on(problem, inputs, options, seed, arch)
}

/// [`emulator_backward_with`] on an emulator targeting `arch` (its shared memory picks the tiles: D = 256's
/// Large is the one-stage kernels on sm_80).
fn emulator_backward_on<T: Element>(
    problem: &AttentionProblem,
    inputs: &Inputs<T>,
    options: BackwardOptions,
    seed: u64,
    arch: TargetArch,
) -> Grads {
    let q_shape = problem.q_shape();
    let kv_shape = problem.kv_shape();
    let nan = T::from_f32(f32::NAN);
    let mut dq = HostBuffer::filled(numel(&q_shape), nan);
    let mut dk = HostBuffer::filled(numel(&kv_shape), nan);
    let mut dv = HostBuffer::filled(numel(&kv_shape), nan);
    let g_shape = problem.gate_shape();
    let mut dg = g_shape.as_ref().map(|s| HostBuffer::filled(numel(s), nan));
    let needs_o = problem.gate != GateMode::None && problem.activation == Activation::Silu;
    let mut args = BackwardArgs {
        q: Tensor::new(inputs.q.as_slice(), inputs.q_layout.clone()),
        k: Tensor::contiguous(inputs.k.as_slice(), &kv_shape),
        v: Tensor::contiguous(inputs.v.as_slice(), &kv_shape),
        g: inputs.g_tensor(),
        y: Tensor::contiguous(inputs.y.as_slice(), &q_shape),
        // The sigmoid backward needs no ungated O: only pass it where the maths needs it.
        o: needs_o.then(|| Tensor::contiguous(inputs.o.as_slice(), &q_shape)),
        dy: Tensor::contiguous(inputs.dy.as_slice(), &q_shape),
        lse: Tensor::contiguous(inputs.lse.as_slice(), &problem.lse_shape()),
        dq: Tensor::contiguous(dq.as_mut_slice(), &q_shape),
        dk: Tensor::contiguous(dk.as_mut_slice(), &kv_shape),
        dv: Tensor::contiguous(dv.as_mut_slice(), &kv_shape),
        dg: match (dg.as_mut(), &g_shape) {
            (Some(buffer), Some(shape)) => Some(Tensor::contiguous(buffer.as_mut_slice(), shape)),
            _ => None,
        },
    };
    Emulator::new()
        .with_arch(arch)
        .with_seed(seed)
        .backward(problem, &mut args, options)
        .unwrap_or_else(|e| panic!("emulator backward failed for {}: {e}", describe(problem)));
    let to_f64 = |b: &HostBuffer<T>| b.as_slice().iter().map(|x| x.to_f64()).collect::<Vec<_>>();
    Grads {
        dq: to_f64(&dq),
        dk: to_f64(&dk),
        dv: to_f64(&dv),
        dg: dg.as_ref().map(to_f64),
    }
}

fn reference_backward<T: Element>(problem: &AttentionProblem, inputs: &Inputs<T>) -> Grads {
    let q = gather(inputs.q.as_slice(), &inputs.q_layout);
    let k = gather(
        inputs.k.as_slice(),
        &Layout::contiguous(&problem.kv_shape()),
    );
    let v = gather(
        inputs.v.as_slice(),
        &Layout::contiguous(&problem.kv_shape()),
    );
    let g = inputs
        .g_data()
        .map(|data| gather(data, inputs.g_layout.as_ref().expect("gate layout")));
    let dy = gather(
        inputs.dy.as_slice(),
        &Layout::contiguous(&problem.q_shape()),
    );
    let r = backward_f64(problem, &q, &k, &v, g.as_deref(), &dy).expect("reference backward");
    Grads {
        dq: r.dq,
        dk: r.dk,
        dv: r.dv,
        dg: r.dg,
    }
}

fn describe(p: &AttentionProblem) -> String {
    let shape = match &p.varlen {
        Some(v) => format!("varlen cu_q={:?} cu_k={:?}", v.cu_seqlens_q, v.cu_seqlens_k),
        None => format!("B={} Sq={} Sk={}", p.batch, p.seqlen_q, p.seqlen_k),
    };
    format!(
        "{shape} Hq={} Hkv={} D={} causal={} gate={} act={}",
        p.heads_q,
        p.heads_kv,
        p.head_dim,
        p.causal,
        p.gate.name(),
        p.activation.name()
    )
}

/// Relative Frobenius error of one gradient; an all-zero reference demands an all-zero result.
fn check_relative(what: &str, got: &[f64], want: &[f64], tol: f64, context: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length ({context})");
    if let Some(i) = got.iter().position(|x| !x.is_finite()) {
        panic!("{what}[{i}] = {} is not finite ({context})", got[i]);
    }
    let want_norm = norm(want.iter().copied());
    let err_norm = norm(got.iter().zip(want).map(|(g, w)| g - w));
    if want_norm == 0.0 {
        assert_eq!(
            err_norm, 0.0,
            "{what}: the exact gradient is zero, got norm {err_norm} ({context})"
        );
        return 0.0;
    }
    let rel = err_norm / want_norm;
    assert!(
        rel <= tol,
        "{what}: relative error {rel:.3e} > {tol:.1e} ({context})"
    );
    rel
}

/// With at most one key per sequence, P = 1 on every visible row, so dP = Delta and the exact dQ and dK
/// are zero. The kernels (like FlashAttention) compute Delta = rowsum(dY * Y) from the stored 16-bit Y,
/// so they return the rounding noise of that sum: per query row about u |dY| |Y| (u the dtype's unit
/// roundoff), times scale * |K| in dQ. Bound its RMS by 4 u scale sqrt(D) (inputs here are O(1)); a real
/// error is of order scale. dK sums that noise over the `rows_summed` query rows (of every head of the
/// group) that see the key, so its bound grows like sqrt(rows_summed).
fn check_single_key_noise(
    what: &str,
    got: &[f64],
    problem: &AttentionProblem,
    dtype: DType,
    rows_summed: usize,
    context: &str,
) {
    if let Some(i) = got.iter().position(|x| !x.is_finite()) {
        panic!("{what}[{i}] = {} is not finite ({context})", got[i]);
    }
    let rms = norm(got.iter().copied()) / (got.len().max(1) as f64).sqrt();
    let per_row = 4.0
        * unit_roundoff(dtype)
        * problem.softmax_scale() as f64
        * (problem.head_dim as f64).sqrt();
    let bound = per_row * (rows_summed.max(1) as f64).sqrt();
    assert!(
        rms <= bound,
        "{what}: RMS {rms:.3e} > {bound:.3e} where the exact value is 0 ({context})"
    );
}

fn at_most_one_key(problem: &AttentionProblem) -> bool {
    match &problem.varlen {
        Some(v) => v.cu_seqlens_k.windows(2).all(|w| w[1] - w[0] <= 1),
        None => problem.seqlen_k <= 1,
    }
}

fn compare(problem: &AttentionProblem, dtype: DType, got: &Grads, want: &Grads, context: &str) {
    let tol = tolerance(dtype);
    if at_most_one_key(problem) {
        let rows_per_key = problem.seqlen_q * problem.group_size();
        check_single_key_noise("dq", &got.dq, problem, dtype, 1, context);
        check_single_key_noise("dk", &got.dk, problem, dtype, rows_per_key, context);
    } else {
        check_relative("dq", &got.dq, &want.dq, tol, context);
        check_relative("dk", &got.dk, &want.dk, tol, context);
    }
    check_relative("dv", &got.dv, &want.dv, tol, context);
    match (&got.dg, &want.dg) {
        (Some(g), Some(w)) => {
            check_relative("dg", g, w, tol, context);
        }
        (None, None) => {}
        _ => panic!("dg present in one result only ({context})"),
    }
}

/// Runs one problem in the given modes with the given tiles against the reference, on `arch` (else as
/// [`emulator_backward_with`] chooses).
fn check_problem_as<T: Element>(
    problem: &AttentionProblem,
    qg: bool,
    modes: &[bool],
    tiles: BackwardTiles,
    seed: u64,
    arch: Option<TargetArch>,
) {
    let inputs = make_inputs::<T>(problem, qg, seed);
    let want = reference_backward(problem, &inputs);
    for &deterministic in modes {
        let options = BackwardOptions {
            deterministic,
            tiles,
        };
        let got = match arch {
            Some(arch) => emulator_backward_on(problem, &inputs, options, seed, arch),
            None => emulator_backward_with(problem, &inputs, options, seed),
        };
        let context = format!(
            "{} {} qg={qg} deterministic={deterministic} tiles={tiles:?}",
            T::DTYPE,
            describe(problem)
        );
        compare(problem, T::DTYPE, &got, &want, &context);
    }
}

/// Runs one problem in the given modes with the compact tiles against the reference.
fn check_problem(problem: &AttentionProblem, dtype: DType, qg: bool, modes: &[bool], seed: u64) {
    check_problem_tiles(problem, dtype, qg, modes, BackwardTiles::Compact, seed);
}

fn check_problem_tiles(
    problem: &AttentionProblem,
    dtype: DType,
    qg: bool,
    modes: &[bool],
    tiles: BackwardTiles,
    seed: u64,
) {
    check_problem_tiles_on(problem, dtype, qg, modes, tiles, seed, None)
}

fn check_problem_tiles_on(
    problem: &AttentionProblem,
    dtype: DType,
    qg: bool,
    modes: &[bool],
    tiles: BackwardTiles,
    seed: u64,
    arch: Option<TargetArch>,
) {
    match dtype {
        DType::BF16 => check_problem_as::<bf16>(problem, qg, modes, tiles, seed, arch),
        DType::F16 => check_problem_as::<f16>(problem, qg, modes, tiles, seed, arch),
    }
}

const BOTH_MODES: [bool; 2] = [false, true];

#[test]
fn every_dtype_head_dim_causal_gate_and_activation() {
    let mut seed = 1;
    for dtype in [DType::BF16, DType::F16] {
        for head_dim in HEAD_DIMS {
            for causal in [false, true] {
                for (gate, activation) in GATES {
                    // Sq != Sk, neither a tile multiple; GQA 2; two batch entries.
                    let problem = AttentionProblem::new(2, 45, 37, 4, 2, head_dim)
                        .causal(causal)
                        .gate(gate)
                        .activation(activation);
                    check_problem(&problem, dtype, false, &BOTH_MODES, seed);
                    seed += 1;
                }
            }
        }
    }
}

#[test]
fn gqa_ratios_1_4_8() {
    let mut seed = 100;
    for head_dim in HEAD_DIMS {
        for (heads_q, heads_kv) in [(2, 2), (4, 1), (8, 1), (8, 2)] {
            let dtype = if heads_q == 8 {
                DType::F16
            } else {
                DType::BF16
            };
            let problem = AttentionProblem::new(1, 70, 70, heads_q, heads_kv, head_dim)
                .causal(true)
                .gate(GateMode::Elementwise);
            check_problem(&problem, dtype, false, &BOTH_MODES, seed);
            seed += 1;
        }
    }
}

#[test]
fn odd_lengths_both_ways() {
    let lengths = [
        (1, 1),
        (17, 17),
        (100, 129),
        (129, 100),
        (1, 129),
        (129, 1),
        (17, 100),
        (100, 17),
    ];
    let mut seed = 200;
    for head_dim in HEAD_DIMS {
        for (i, &(sq, sk)) in lengths.iter().enumerate() {
            for causal in [false, true] {
                let (dtype, gate, activation) = if i % 2 == 0 {
                    (DType::BF16, GateMode::Elementwise, Activation::Sigmoid)
                } else {
                    (DType::F16, GateMode::Headwise, Activation::Silu)
                };
                let problem = AttentionProblem::new(1, sq, sk, 2, 1, head_dim)
                    .causal(causal)
                    .gate(gate)
                    .activation(activation);
                // Alternate the modes to keep the grid cheap; both run on every length elsewhere.
                let mode = [(i + usize::from(causal)) % 2 == 1];
                check_problem(&problem, dtype, false, &mode, seed);
                seed += 1;
            }
        }
    }
}

#[test]
fn varlen_with_empty_sequences() {
    // Sequence 1 has no query, sequence 2 no key; lengths straddle every tile size.
    let varlen =
        Varlen::new(vec![0, 5, 5, 80, 147], vec![0, 33, 40, 40, 170]).expect("valid cu_seqlens");
    let mut seed = 300;
    for head_dim in HEAD_DIMS {
        for causal in [false, true] {
            let dtype = if causal { DType::F16 } else { DType::BF16 };
            let (gate, activation) = GATES[(head_dim / 64 + usize::from(causal)) % GATES.len()];
            let problem = AttentionProblem::new_varlen(varlen.clone(), 4, 2, head_dim)
                .causal(causal)
                .gate(gate)
                .activation(activation);
            check_problem(&problem, dtype, false, &BOTH_MODES, seed);
            seed += 1;
        }
    }
}

#[test]
fn qwen3_next_strided_q_and_gate() {
    // q and g are views of one [B, S, Hq, 2D] q_proj buffer (head stride 2D); GQA 8 as in Qwen3-Next.
    for (seed, (head_dim, causal)) in (400..).zip([(256, true), (128, false), (64, true)]) {
        let problem = AttentionProblem::new(1, 40, 40, 16, 2, head_dim)
            .causal(causal)
            .gate(GateMode::Elementwise)
            .activation(Activation::Sigmoid);
        check_problem(&problem, DType::BF16, true, &BOTH_MODES, seed);
    }
}

#[test]
fn no_keys_gives_zero_gradients() {
    // Sk = 0: every row sees nothing (LSE = -inf, Y = 0), so dQ = 0 and dG = 0, never NaN.
    for head_dim in [64, 256] {
        let problem = AttentionProblem::new(2, 17, 0, 4, 2, head_dim)
            .causal(head_dim == 64)
            .gate(GateMode::Elementwise);
        check_problem(
            &problem,
            DType::BF16,
            false,
            &BOTH_MODES,
            500 + head_dim as u64,
        );
    }
}

#[test]
fn no_queries_gives_zero_key_gradients() {
    // Sq = 0 with keys: dK and dV exist and must be written as zeros.
    let problem = AttentionProblem::new(1, 0, 33, 4, 2, 128).gate(GateMode::Headwise);
    check_problem(&problem, DType::BF16, false, &BOTH_MODES, 600);
}

#[test]
fn deterministic_mode_is_bit_identical_across_seeds() {
    for head_dim in HEAD_DIMS {
        let problem = AttentionProblem::new(1, 100, 77, 4, 2, head_dim)
            .causal(true)
            .gate(GateMode::Elementwise)
            .activation(Activation::Silu);
        let inputs = make_inputs::<bf16>(&problem, false, 700);
        let options = BackwardOptions {
            deterministic: true,
            tiles: BackwardTiles::Compact,
        };
        let first = deterministic_across_seeds(&problem, &inputs, options);
        // And it is right, not merely reproducible.
        compare(
            &problem,
            DType::BF16,
            &first,
            &reference_backward(&problem, &inputs),
            &describe(&problem),
        );
    }
}

/// One large-tile case: (B, Sq, Sk, Hq, Hkv, causal, gate, activation, dtype).
type LargeCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    bool,
    GateMode,
    Activation,
    DType,
);

/// Runs `cases` at `head_dim` with the large tiles, both modes, on `arch` (`None`: the large tiles' default
/// emulator target, sm_90), seeds from `first_seed` on, against the reference.
fn check_large_tiles(
    head_dim: usize,
    arch: Option<TargetArch>,
    first_seed: u64,
    cases: &[LargeCase],
) {
    for (seed, &(b, sq, sk, hq, hkv, causal, gate, activation, dtype)) in (first_seed..).zip(cases)
    {
        let problem = AttentionProblem::new(b, sq, sk, hq, hkv, head_dim)
            .causal(causal)
            .gate(gate)
            .activation(activation);
        check_problem_tiles_on(
            &problem,
            dtype,
            false,
            &BOTH_MODES,
            BackwardTiles::Large,
            seed,
            arch,
        );
    }
}

#[test]
fn large_tiles_against_the_reference() {
    // The large kernels' tiles are 64 query rows x 128 keys (dK/dV) and 64 x 128 (dQ): lengths that cross
    // both, or fall short of one, each way.
    use {Activation::*, DType::*, GateMode::*};
    #[rustfmt::skip]
    let cases = [
        (1, 70, 150, 4, 2, true, Elementwise, Sigmoid, BF16),
        (1, 150, 70, 4, 1, false, Headwise, Silu, F16),
        (2, 130, 130, 2, 2, true, None, Sigmoid, F16),
        (1, 1, 1, 2, 1, false, Elementwise, Silu, BF16),
    ];
    check_large_tiles(128, Option::None, 800, &cases);
}

#[test]
fn large_d256_tiles_against_the_reference() {
    // D = 256's large kernels: 64 query rows x 64 keys for both (sm_90 only): lengths that cross a tile
    // or fall short of one each way, and a single key.
    use {Activation::*, DType::*, GateMode::*};
    #[rustfmt::skip]
    let cases = [
        (1, 70, 100, 2, 1, true, Elementwise, Sigmoid, BF16),
        (1, 100, 65, 2, 2, false, Headwise, Silu, F16),
        (1, 1, 1, 2, 1, false, None, Sigmoid, BF16),
    ];
    check_large_tiles(256, Option::None, 850, &cases);
}

#[test]
fn large_d64_dq_tiles_against_the_reference() {
    // D = 64's large tiles: the deterministic mode's dQ kernel at 128 query rows x 128 keys beside the
    // compact dK/dV kernel (the fast mode is the compact one's). Lengths that cross a tile or fall short
    // of one each way, several key tiles per dQ block, GQA, and a single key; on sm_80, which holds it.
    use {Activation::*, DType::*, GateMode::*};
    #[rustfmt::skip]
    let cases = [
        (1, 140, 300, 4, 2, true, Elementwise, Sigmoid, BF16),
        (2, 100, 129, 2, 1, false, Headwise, Silu, F16),
        (1, 1, 1, 2, 1, false, None, Sigmoid, BF16),
    ];
    check_large_tiles(64, Some(TargetArch::SM80), 890, &cases);
    // The kernels that run: the compact dK/dV and the large dQ.
    let problem = AttentionProblem::new(1, 140, 300, 4, 2, 64);
    let options = BackwardOptions {
        deterministic: true,
        tiles: BackwardTiles::Large,
    };
    let limit = TargetArch::SM80.max_dynamic_shared_bytes();
    let kernels: Vec<String> = gated_sdpa::launch::backward(&problem, DType::BF16, options, limit)
        .unwrap()
        .into_iter()
        .map(|l| l.kernel)
        .filter(|k| k.contains("dkdv") || k.contains("_dq_"))
        .collect();
    assert_eq!(
        kernels,
        ["gsdpa_bwd_dkdv_bf16_d64", "gsdpa_bwd_dq_bf16_d64_large"]
    );
}

#[test]
fn large_d256_one_stage_tiles_on_sm_80_against_the_reference() {
    // sm_80's 163 KiB cannot hold D = 256's two-stage large tiles: Large runs the one-stage kernels there
    // (the same 64 x 64 tiles, one Q buffer in dK/dV refilled after dK += dS^T Q, one K buffer in dQ
    // refilled after dQ += dS K). Several query tiles per dK/dV block and key tiles per dQ block (each
    // refill crossed), lengths that cross a tile or fall short of one each way, GQA, and a single key.
    use {Activation::*, DType::*, GateMode::*};
    #[rustfmt::skip]
    let cases = [
        (1, 70, 100, 2, 1, true, Elementwise, Sigmoid, BF16),
        (1, 130, 65, 2, 2, false, Headwise, Silu, F16),
        (2, 150, 130, 4, 1, true, Elementwise, Silu, F16),
        (1, 1, 1, 2, 1, false, None, Sigmoid, BF16),
    ];
    check_large_tiles(256, Some(TargetArch::SM80), 870, &cases);
}

#[test]
fn large_d256_kernels_follow_the_archs_shared_memory() {
    use gated_sdpa::launch;
    // Large (and Auto) at D = 256: the two-stage kernels on sm_90, the one-stage ones on sm_80; Auto on
    // sm_86 stays compact, a forced Large there names the one-stage kernels (which it then refuses).
    let problem = AttentionProblem::new(1, 200, 300, 2, 1, 256);
    for deterministic in [false, true] {
        for (arch, tiles, suffix) in [
            (TargetArch::SM90, BackwardTiles::Large, "_large"),
            (TargetArch::SM90, BackwardTiles::Auto, "_large"),
            (TargetArch::SM80, BackwardTiles::Large, "_large_1stage"),
            (TargetArch::SM80, BackwardTiles::Auto, "_large_1stage"),
            (TargetArch::SM86, BackwardTiles::Auto, ""),
            (TargetArch::SM86, BackwardTiles::Large, "_large_1stage"),
        ] {
            let options = BackwardOptions {
                deterministic,
                tiles,
            };
            let limit = arch.max_dynamic_shared_bytes();
            let launches = launch::backward(&problem, DType::BF16, options, limit).unwrap();
            let main: Vec<_> = launches.iter().filter(|l| l.shared_bytes > 0).collect();
            assert_eq!(main.len(), 1 + usize::from(deterministic), "{arch}");
            for l in main {
                let kind = if l.kernel.contains("dkdv") {
                    "dkdv"
                } else {
                    "dq"
                };
                assert_eq!(
                    l.kernel,
                    format!("gsdpa_bwd_{kind}_bf16_d256{suffix}"),
                    "{tiles:?} on {arch}"
                );
                let fits = l.shared_bytes <= limit;
                assert_eq!(
                    fits,
                    (arch, tiles) != (TargetArch::SM86, BackwardTiles::Large)
                );
                let want_smem = match (kind, suffix) {
                    ("dkdv", "_large") => 176 * 1024,
                    ("dq", "_large") => 168 * 1024,
                    ("dkdv", "_large_1stage") => 144 * 1024,
                    ("dq", "_large_1stage") => 136 * 1024,
                    ("dkdv", _) => 88 * 1024,
                    _ => 84 * 1024,
                };
                assert_eq!(l.shared_bytes, want_smem, "{}", l.kernel);
            }
            // dK/dV: one block per 64 keys (large, both variants) or 32 (compact).
            let dkdv = launches.iter().find(|l| l.kernel.contains("dkdv")).unwrap();
            assert_eq!(dkdv.grid[0], if suffix.is_empty() { 10 } else { 5 });
        }
    }
}

#[test]
fn large_tiles_deterministic_mode_is_bit_identical_across_seeds() {
    for (head_dim, sq, sk) in [(64, 150, 140), (128, 100, 140), (256, 70, 90)] {
        let problem = AttentionProblem::new(1, sq, sk, 4, 2, head_dim)
            .causal(true)
            .gate(GateMode::Elementwise);
        let inputs = make_inputs::<bf16>(&problem, false, 900);
        let options = BackwardOptions {
            deterministic: true,
            tiles: BackwardTiles::Large,
        };
        deterministic_across_seeds(&problem, &inputs, options);
    }
    // D = 256's one-stage kernels (sm_80).
    let problem = AttentionProblem::new(1, 130, 90, 4, 2, 256)
        .causal(true)
        .gate(GateMode::Elementwise);
    let inputs = make_inputs::<bf16>(&problem, false, 901);
    let options = BackwardOptions {
        deterministic: true,
        tiles: BackwardTiles::Large,
    };
    let on_sm80 = |seed| emulator_backward_on(&problem, &inputs, options, seed, TargetArch::SM80);
    assert!(
        on_sm80(1).bits() == on_sm80(0x9e37_79b9_7f4a_7c15).bits(),
        "deterministic backward (one-stage large tiles, sm_80) differs across seeds"
    );
}

/// Runs the backward with two emulator seeds (thread orders), asserts bit-identical gradients and
/// returns them.
fn deterministic_across_seeds(
    problem: &AttentionProblem,
    inputs: &Inputs<bf16>,
    options: BackwardOptions,
) -> Grads {
    let first = emulator_backward_with(problem, inputs, options, 1);
    let second = emulator_backward_with(problem, inputs, options, 0x9e37_79b9_7f4a_7c15);
    assert!(
        first.bits() == second.bits(),
        "deterministic backward ({:?} tiles) differs across seeds ({})",
        options.tiles,
        describe(problem)
    );
    first
}

#[test]
fn auto_tiles_follow_the_archs_shared_memory() {
    use gated_sdpa::launch;
    let limit = |arch: TargetArch| arch.max_dynamic_shared_bytes();
    for (arch, want) in [
        (TargetArch::SM80, BackwardTiles::Large),
        (TargetArch::SM90, BackwardTiles::Large),
        (TargetArch::SM86, BackwardTiles::Compact),
        (TargetArch::SM89, BackwardTiles::Compact),
    ] {
        // D = 64 (a 112 KiB dQ kernel) and D = 128 (144 KiB) alike.
        for d in [64, 128] {
            let tiles = launch::backward_tiles(d, BackwardTiles::Auto, limit(arch)).unwrap();
            assert_eq!(tiles, want, "D = {d} on {arch}");
        }
        // D = 256's large tiles fit sm_90 (two stages, 176 KiB) and sm_80 (one stage, 144 KiB).
        let want_256 = if matches!(arch, TargetArch::SM80 | TargetArch::SM90) {
            BackwardTiles::Large
        } else {
            BackwardTiles::Compact
        };
        let tiles = launch::backward_tiles(256, BackwardTiles::Auto, limit(arch)).unwrap();
        assert_eq!(tiles, want_256, "D = 256 on {arch}");
        // A forced choice is kept.
        for d in [64, 128, 256] {
            for forced in [BackwardTiles::Compact, BackwardTiles::Large] {
                assert_eq!(
                    launch::backward_tiles(d, forced, limit(arch)).unwrap(),
                    forced
                );
            }
        }
    }
    // The launches name the kernels of the choice, and their shared memory is what the arch allows.
    let problem = AttentionProblem::new(1, 200, 300, 2, 1, 128);
    for deterministic in [false, true] {
        let options = BackwardOptions {
            deterministic,
            tiles: BackwardTiles::Auto,
        };
        for arch in [TargetArch::SM80, TargetArch::SM86, TargetArch::SM90] {
            let launches = launch::backward(&problem, DType::BF16, options, limit(arch)).unwrap();
            let large = arch != TargetArch::SM86;
            let main: Vec<_> = launches.iter().filter(|l| l.shared_bytes > 0).collect();
            assert_eq!(main.len(), 1 + usize::from(deterministic), "{arch}");
            for l in main {
                assert_eq!(
                    l.kernel.ends_with("_large"),
                    large,
                    "{} on {arch}",
                    l.kernel
                );
                assert!(l.shared_bytes <= limit(arch), "{} on {arch}", l.kernel);
                assert_eq!(l.shared_bytes > 99 * 1024, large, "{} on {arch}", l.kernel);
            }
            // dK/dV: one block per 128 keys (large) or 64 (compact).
            let dkdv = launches.iter().find(|l| l.kernel.contains("dkdv")).unwrap();
            assert_eq!(dkdv.grid[0], if large { 3 } else { 5 }, "{arch}");
        }
    }
}

#[test]
fn the_emulator_chooses_by_its_arch_and_refuses_large_tiles_on_sm_86() {
    let problem = AttentionProblem::new(1, 17, 17, 2, 1, 128).gate(GateMode::Headwise);
    let inputs = make_inputs::<bf16>(&problem, false, 950);
    let want = reference_backward(&problem, &inputs);
    let run = |arch: TargetArch, tiles: BackwardTiles| {
        let q_shape = problem.q_shape();
        let kv_shape = problem.kv_shape();
        let g_shape = problem.gate_shape().unwrap();
        let mut dq = HostBuffer::<bf16>::new(numel(&q_shape));
        let mut dk = HostBuffer::<bf16>::new(numel(&kv_shape));
        let mut dv = HostBuffer::<bf16>::new(numel(&kv_shape));
        let mut dg = HostBuffer::<bf16>::new(numel(&g_shape));
        let mut args = BackwardArgs {
            q: Tensor::new(inputs.q.as_slice(), inputs.q_layout.clone()),
            k: Tensor::contiguous(inputs.k.as_slice(), &kv_shape),
            v: Tensor::contiguous(inputs.v.as_slice(), &kv_shape),
            g: inputs.g_tensor(),
            y: Tensor::contiguous(inputs.y.as_slice(), &q_shape),
            o: None,
            dy: Tensor::contiguous(inputs.dy.as_slice(), &q_shape),
            lse: Tensor::contiguous(inputs.lse.as_slice(), &problem.lse_shape()),
            dq: Tensor::contiguous(dq.as_mut_slice(), &q_shape),
            dk: Tensor::contiguous(dk.as_mut_slice(), &kv_shape),
            dv: Tensor::contiguous(dv.as_mut_slice(), &kv_shape),
            dg: Some(Tensor::contiguous(dg.as_mut_slice(), &g_shape)),
        };
        let options = BackwardOptions {
            deterministic: false,
            tiles,
        };
        Emulator::new()
            .with_arch(arch)
            .backward(&problem, &mut args, options)
            .map(|()| dq.as_slice().iter().map(|x| x.to_f64()).collect::<Vec<_>>())
    };
    // Auto on sm_86 runs the compact kernels (which fit its 99 KiB) and is right.
    let dq = run(TargetArch::SM86, BackwardTiles::Auto).expect("sm_86 auto");
    check_relative("dq", &dq, &want.dq, tolerance(DType::BF16), "sm_86 auto");
    // Forcing the large tiles there is refused as a GPU would refuse it, naming the kernel.
    match run(TargetArch::SM86, BackwardTiles::Large) {
        Err(GsdpaError::LaunchResources { kernel, .. }) => {
            assert_eq!(kernel, "gsdpa_bwd_dkdv_bf16_d128_large")
        }
        other => panic!("large tiles on sm_86: expected LaunchResources, got {other:?}"),
    }
}

#[test]
fn large_d256_tiles_run_one_stage_on_sm_80_and_are_refused_on_sm_86() {
    // sm_80 (the emulator's default target) runs Auto at D = 256 with the one-stage large kernels (the
    // two-stage ones' 176 KiB is above its 163 KiB); sm_86 (99 KiB) runs the compact ones and refuses a
    // forced Large before anything runs, naming the one-stage kernel.
    let problem = AttentionProblem::new(1, 9, 9, 1, 1, 256).gate(GateMode::None);
    let inputs = make_inputs::<bf16>(&problem, false, 960);
    let want = reference_backward(&problem, &inputs);
    let auto = BackwardOptions {
        deterministic: false,
        tiles: BackwardTiles::Auto,
    };
    assert_eq!(Emulator::new().arch(), TargetArch::SM80);
    for arch in [TargetArch::SM80, TargetArch::SM86] {
        compare(
            &problem,
            DType::BF16,
            &emulator_backward_on(&problem, &inputs, auto, 960, arch),
            &want,
            &format!("d256 auto on {arch}"),
        );
    }
    let q_shape = problem.q_shape();
    let kv_shape = problem.kv_shape();
    let mut dq = HostBuffer::<bf16>::new(numel(&q_shape));
    let mut dk = HostBuffer::<bf16>::new(numel(&kv_shape));
    let mut dv = HostBuffer::<bf16>::new(numel(&kv_shape));
    let mut args = BackwardArgs {
        q: Tensor::new(inputs.q.as_slice(), inputs.q_layout.clone()),
        k: Tensor::contiguous(inputs.k.as_slice(), &kv_shape),
        v: Tensor::contiguous(inputs.v.as_slice(), &kv_shape),
        g: inputs.g_tensor(),
        y: Tensor::contiguous(inputs.y.as_slice(), &q_shape),
        o: None,
        dy: Tensor::contiguous(inputs.dy.as_slice(), &q_shape),
        lse: Tensor::contiguous(inputs.lse.as_slice(), &problem.lse_shape()),
        dq: Tensor::contiguous(dq.as_mut_slice(), &q_shape),
        dk: Tensor::contiguous(dk.as_mut_slice(), &kv_shape),
        dv: Tensor::contiguous(dv.as_mut_slice(), &kv_shape),
        dg: None,
    };
    let large = BackwardOptions {
        deterministic: false,
        tiles: BackwardTiles::Large,
    };
    match Emulator::new()
        .with_arch(TargetArch::SM86)
        .backward(&problem, &mut args, large)
    {
        Err(GsdpaError::LaunchResources { kernel, .. }) => {
            assert_eq!(kernel, "gsdpa_bwd_dkdv_bf16_d256_large_1stage")
        }
        other => panic!("d256 large tiles on sm_86: expected LaunchResources, got {other:?}"),
    }
}
