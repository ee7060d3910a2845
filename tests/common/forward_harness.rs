//! The forward test grid's harness, shared by the grids of the mma.sync kernel (tests/forward.rs) and
//! of the Hopper kernel (tests/forward_sm90.rs): random inputs rounded to the dtype, the kernel run on
//! an emulator with its tensors in the layouts a case asks for (outputs poisoned with NaN, a sentinel
//! around strided views), and the checks against the f64 reference:
//! - Y and O: relative error in Frobenius norm <= 1e-2 (bf16) or 2e-3 (f16), and no NaN anywhere;
//! - LSE: `|lse - ref| <= 1e-4 * max(1, |ref|)` where the reference is finite, exactly `-inf` where the
//!   row sees no key (then Y and O must be exactly 0);
//! - optionally, which kernel the emulator launched.

use gated_sdpa::emulator::Emulator;
use gated_sdpa::reference::{forward_f64, ForwardResultF64};
use gated_sdpa::{
    split_q_proj, AttentionProblem, DType, Element, ForwardArgs, GateMode, HostBackend, HostBuffer,
    Layout, Tensor,
};
use half::{bf16, f16};
use rand::{rngs::StdRng, SeedableRng};

use super::{
    forward_tolerance, gather, numel, random_values, rel_frobenius, round_to, to_elements,
    HEAD_DIMS,
};

/// How the test lays out the kernel's tensors.
#[derive(Debug, Clone, Copy, Default)]
pub struct LayoutOptions {
    /// q and g as the two halves of each head of one `[.., Hq, 2D]` buffer (Qwen3-Next `q_proj`).
    pub q_proj: bool,
    /// Request the ungated output O.
    pub with_o: bool,
    /// Y and O as the first half of each head of a `[.., Hq, 2D]` buffer whose other half must stay
    /// untouched, and LSE with padded rows.
    pub strided_outputs: bool,
    /// Leave LSE out (inference): the kernel must skip its store and still write all of Y.
    pub no_lse: bool,
    /// Hopper kernel only: store Y and O from registers (the fallback for layouts TMA cannot express)
    /// instead of the TMA store.
    pub register_store: bool,
    /// Run the grid's blocks last to first (`Emulator::with_reverse_block_order`): a block that writes
    /// rows of another block's (a varlen sequence's neighbour's) is then not overwritten by it.
    pub reverse_blocks: bool,
}

/// What a run produced, converted to f64 (Y, O) in the problem's dense layouts.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelOutputs {
    pub y: Vec<f64>,
    pub o: Option<Vec<f64>>,
    /// `None` when the run did not ask for LSE.
    pub lse: Option<Vec<f64>>,
}

impl KernelOutputs {
    /// Bit patterns of every output, for exact comparisons across runs.
    pub fn bits(&self) -> Vec<u64> {
        let o = self.o.iter().flatten();
        self.y
            .iter()
            .chain(o)
            .chain(self.lse.iter().flatten())
            .map(|x| x.to_bits())
            .collect()
    }
}

/// Random inputs of a problem, already rounded to the dtype (as f64, dense layouts).
pub struct Inputs {
    pub q: Vec<f64>,
    pub k: Vec<f64>,
    pub v: Vec<f64>,
    pub g: Option<Vec<f64>>,
}

impl Inputs {
    pub fn new(p: &AttentionProblem, dtype: DType, seed: u64) -> Inputs {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut random = |n: usize, amplitude: f64| -> Vec<f64> {
            let mut x = random_values(&mut rng, n, amplitude);
            x.iter_mut().for_each(|v| *v = round_to(dtype, *v));
            x
        };
        // Amplitude 2 for q and k makes the softmax far from uniform at scale 1/sqrt(D).
        Inputs {
            q: random(numel(&p.q_shape()), 2.0),
            k: random(numel(&p.kv_shape()), 2.0),
            v: random(numel(&p.kv_shape()), 1.0),
            g: p.gate_shape().map(|s| random(numel(&s), 3.0)),
        }
    }

    /// Inputs whose scores grow toward key 0, by one unit every 32 keys, so that key tiles visited late
    /// (the kernels go from the last tile to the first) raise the row max. Each 16-row group of queries
    /// reacts differently: a unit is 12 (in log2 of p) in groups 0 and 3, so every tile raises the max
    /// by far more than 2^8 and O, already accumulated, must be rescaled; 1.5 in groups 1 and 4, so
    /// tiles of 64 or 128 keys are taken against a stale max (p up to 2^8) until the rise adds up past
    /// 8; negative in group 2, whose max is set by the first tile. Entries of Q and K are of one sign
    /// and in [0.5, 1), so a score is about 0.81 sqrt(D) amplitude growth in log2 units.
    pub fn rising_scores(p: &AttentionProblem, dtype: DType, seed: u64) -> Inputs {
        let mut x = Inputs::new(p, dtype, seed);
        let d = p.head_dim;
        let unit =
            |log2_units: f64| log2_units / (0.5625 * std::f64::consts::LOG2_E * (d as f64).sqrt());
        // Inputs::new's q and k are in (-2, 2): |v| / 4 + 0.5 is in [0.5, 1).
        for (i, row) in x.q.chunks_mut(d).enumerate() {
            let amplitude = match (i / 16) % 3 {
                0 => unit(12.0),
                1 => unit(1.5),
                _ => -unit(12.0),
            };
            for v in row {
                *v = round_to(dtype, amplitude * (0.5 + v.abs() / 4.0));
            }
        }
        let sk = p.seqlen_k;
        for (j, row) in x.k.chunks_mut(d).enumerate() {
            let growth = 1.0 + (sk - 1 - j % sk) as f64 / 32.0;
            for v in row {
                *v = round_to(dtype, growth * (0.5 + v.abs() / 4.0));
            }
        }
        x
    }
}

/// The `[.., H, 2D]` buffer whose heads are `[a_h | b_h]` (b = None: zeros).
fn interleave_heads(a: &[f64], b: Option<&[f64]>, head_dim: usize) -> Vec<f64> {
    let mut out = vec![0.0; 2 * a.len()];
    for (i, chunk) in a.chunks(head_dim).enumerate() {
        out[2 * i * head_dim..(2 * i + 1) * head_dim].copy_from_slice(chunk);
        if let Some(b) = b {
            out[(2 * i + 1) * head_dim..(2 * i + 2) * head_dim]
                .copy_from_slice(&b[i * head_dim..(i + 1) * head_dim]);
        }
    }
    out
}

/// The emulator a grid runs on and the forward kernel it must launch.
pub struct Harness {
    emulator: Emulator,
    /// The kernel name a problem of a dtype must launch (`None`: not checked).
    expected_kernel: Option<fn(&AttentionProblem, DType) -> String>,
}

impl Harness {
    /// The grid on `emulator` (its seed is set per run).
    pub fn new(emulator: Emulator) -> Harness {
        Harness {
            emulator,
            expected_kernel: None,
        }
    }

    /// Every run with keys must launch the kernel `expected` names.
    pub fn expecting(self, expected: fn(&AttentionProblem, DType) -> String) -> Harness {
        Harness {
            expected_kernel: Some(expected),
            ..self
        }
    }

    /// Runs the forward kernel on the emulator with thread-order seed `emu_seed`.
    pub fn run_kernel<T: Element>(
        &self,
        p: &AttentionProblem,
        x: &Inputs,
        options: LayoutOptions,
        emu_seed: u64,
    ) -> KernelOutputs {
        let q_shape = p.q_shape();
        let kv_shape = p.kv_shape();
        let lse_shape = p.lse_shape();
        let d = p.head_dim;

        // Inputs. In the q_proj layout q and g are views of one buffer (elementwise gate only).
        let q_proj = options
            .q_proj
            .then(|| to_elements::<T>(&interleave_heads(&x.q, x.g.as_deref(), d)));
        let q_dense = to_elements::<T>(&x.q);
        let g_dense = x.g.as_ref().map(|g| to_elements::<T>(g));
        let k = to_elements::<T>(&x.k);
        let v = to_elements::<T>(&x.v);
        let (q_tensor, g_tensor) = match &q_proj {
            Some(buffer) => {
                assert_eq!(
                    p.gate,
                    GateMode::Elementwise,
                    "the q_proj layout carries an elementwise gate"
                );
                let views = split_q_proj(buffer.as_slice(), &q_shape).unwrap();
                (views.q, Some(views.g))
            }
            None => (
                Tensor::contiguous(q_dense.as_slice(), &q_shape),
                g_dense
                    .as_ref()
                    .map(|g| Tensor::contiguous(g.as_slice(), &p.gate_shape().unwrap())),
            ),
        };

        // Outputs start as NaN; with strided outputs the storage around the views holds a sentinel.
        let sentinel = T::from_f64(-7.0);
        let (out_len, out_layout) = if options.strided_outputs {
            (2 * numel(&q_shape), Layout::q_proj_view(&q_shape))
        } else {
            (numel(&q_shape), Layout::contiguous(&q_shape))
        };
        let fill_output = || {
            let mut buffer = HostBuffer::filled(out_len, sentinel);
            out_layout
                .for_each_offset(|_, offset| buffer.as_mut_slice()[offset] = T::from_f64(f64::NAN));
            buffer
        };
        let mut y = fill_output();
        let mut o = options.with_o.then(fill_output);
        let lse_layout = if options.strided_outputs {
            // Rows of 3 extra floats: lse[.., h, i] at h * (Sq + 3) + i.
            let mut strides = vec![0; lse_shape.len()];
            let row = lse_shape[lse_shape.len() - 1] + 3;
            strides[lse_shape.len() - 1] = 1;
            strides[lse_shape.len() - 2] = row;
            if lse_shape.len() == 3 {
                strides[0] = row * lse_shape[1];
            }
            Layout::strided(&lse_shape, &strides).unwrap()
        } else {
            Layout::contiguous(&lse_shape)
        };
        let lse_len = lse_layout.max_offset().unwrap().map_or(0, |m| m + 1);
        let mut lse = HostBuffer::filled(lse_len, f32::NAN);

        let mut args = ForwardArgs {
            q: q_tensor,
            k: Tensor::contiguous(k.as_slice(), &kv_shape),
            v: Tensor::contiguous(v.as_slice(), &kv_shape),
            g: g_tensor,
            y: Tensor::new(y.as_mut_slice(), out_layout.clone()),
            o: o.as_mut()
                .map(|o| Tensor::new(o.as_mut_slice(), out_layout.clone())),
            lse: (!options.no_lse).then(|| Tensor::new(lse.as_mut_slice(), lse_layout.clone())),
            diagnostics: None,
        };
        let emulator = self
            .emulator
            .clone()
            .with_seed(emu_seed)
            .with_sm90_register_store(options.register_store)
            .with_reverse_block_order(options.reverse_blocks);
        emulator
            .forward(p, &mut args)
            .unwrap_or_else(|e| panic!("emulated forward failed for {p:?}: {e}"));
        if let Some(expected) = self.expected_kernel {
            if !p.is_empty() {
                let kernel = emulator.last_forward_kernel().unwrap_or_default();
                assert_eq!(kernel, expected(p, T::DTYPE), "kernel launched for {p:?}");
            }
        }

        // Storage outside the output views is untouched.
        if options.strided_outputs {
            let check = |buffer: &HostBuffer<T>, name: &str| {
                let mut inside = vec![false; out_len];
                out_layout.for_each_offset(|_, offset| inside[offset] = true);
                for (i, value) in buffer.as_slice().iter().enumerate() {
                    if !inside[i] {
                        assert_eq!(
                            value.to_f64(),
                            -7.0,
                            "{name}: element {i} outside the view was written"
                        );
                    }
                }
            };
            check(&y, "y");
            if let Some(o) = &o {
                check(o, "o");
            }
        }
        let mut lse_dense = vec![0.0; numel(&lse_shape)];
        lse_layout
            .for_each_offset(|linear, offset| lse_dense[linear] = lse.as_slice()[offset] as f64);
        if options.no_lse {
            // Not passed to the kernel, so the buffer keeps its NaN fill.
            assert!(
                lse.as_slice().iter().all(|x| x.is_nan()),
                "lse written when not given"
            );
        }
        KernelOutputs {
            y: gather(y.as_slice(), &out_layout),
            o: o.as_ref().map(|o| gather(o.as_slice(), &out_layout)),
            lse: (!options.no_lse).then_some(lse_dense),
        }
    }

    /// Runs one case in `dtype` and checks every output. Returns what the kernel produced.
    pub fn check_case(
        &self,
        p: &AttentionProblem,
        dtype: DType,
        options: LayoutOptions,
        input_seed: u64,
    ) -> KernelOutputs {
        let x = Inputs::new(p, dtype, input_seed);
        self.check_inputs(p, dtype, options, &x, 1 + input_seed)
    }

    /// [`Self::check_inputs`] on [`Inputs::rising_scores`] for every head dim and dtype (one head,
    /// `seqlen_q` queries, 300 keys, elementwise gate; seeds from `first_seed` on): the kernels rescale O
    /// only when a row max rises by more than 2^8 in p, which random inputs do only in the first tile
    /// visited, where O is still 0, so a missing O rescale would pass them.
    pub fn check_rising_scores(&self, seqlen_q: usize, first_seed: u64) {
        let mut seed = first_seed;
        for d in HEAD_DIMS {
            for dtype in [DType::BF16, DType::F16] {
                seed += 1;
                let p =
                    AttentionProblem::new(1, seqlen_q, 300, 1, 1, d).gate(GateMode::Elementwise);
                let x = Inputs::rising_scores(&p, dtype, seed);
                self.check_inputs(&p, dtype, with_o(), &x, seed);
            }
        }
    }

    /// [`Self::check_case`] on given inputs (already rounded to `dtype`), with emulator seed `emu_seed`.
    pub fn check_inputs(
        &self,
        p: &AttentionProblem,
        dtype: DType,
        options: LayoutOptions,
        x: &Inputs,
        emu_seed: u64,
    ) -> KernelOutputs {
        let reference = forward_f64(p, &x.q, &x.k, &x.v, x.g.as_deref()).unwrap();
        let out = match dtype {
            DType::BF16 => self.run_kernel::<bf16>(p, x, options, emu_seed),
            DType::F16 => self.run_kernel::<f16>(p, x, options, emu_seed),
        };
        check_output("y", p, dtype, &out.y, &reference.y, &reference);
        if let Some(o) = &out.o {
            check_output("o", p, dtype, o, &reference.o, &reference);
        }
        if let Some(lse) = &out.lse {
            check_lse(p, lse, &reference.lse);
        }
        out
    }
}

/// Checks one output tensor (Y or O) against the reference; rows with an infinite reference LSE must
/// be exactly zero.
fn check_output(
    what: &str,
    p: &AttentionProblem,
    dtype: DType,
    got: &[f64],
    want: &[f64],
    reference: &ForwardResultF64,
) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().position(|x| x.is_nan()) {
        panic!("{what}: element {i} is NaN (never written?) for {p:?}");
    }
    // Rows that see no key: exactly 0. Row (token t, head h) of a [.., H, D] tensor is chunk t * H + h;
    // its LSE sits at [b, h, i] (dense) or [h, t] (varlen).
    let d = p.head_dim;
    for (row, values) in got.chunks(d).enumerate() {
        let (token, head) = (row / p.heads_q, row % p.heads_q);
        if reference.lse[lse_index(p, token, head)] == f64::NEG_INFINITY {
            assert!(
                values.iter().all(|&x| x == 0.0),
                "{what}: token {token} head {head} sees no key but is not 0 for {p:?}"
            );
        }
    }
    let all_zero = want.iter().all(|&w| w == 0.0);
    if all_zero {
        assert!(
            got.iter().all(|&x| x == 0.0),
            "{what}: expected all zeros for {p:?}"
        );
        return;
    }
    let err = rel_frobenius(got, want);
    let tol = forward_tolerance(dtype);
    assert!(
        err <= tol,
        "{what}: relative error {err:.3e} > {tol:e} for {p:?}"
    );
}

/// Index in the dense LSE of packed token `token` and head `head`.
fn lse_index(p: &AttentionProblem, token: usize, head: usize) -> usize {
    match &p.varlen {
        Some(v) => head * v.total_q() + token,
        None => {
            let (b, i) = (token / p.seqlen_q, token % p.seqlen_q);
            (b * p.heads_q + head) * p.seqlen_q + i
        }
    }
}

fn check_lse(p: &AttentionProblem, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w == f64::NEG_INFINITY {
            assert!(
                g == f64::NEG_INFINITY,
                "lse[{i}] = {g}, expected -inf for {p:?}"
            );
        } else {
            let bound = 1e-4 * w.abs().max(1.0);
            assert!(
                (g - w).abs() <= bound,
                "lse[{i}] = {g}, expected {w} (bound {bound:e}) for {p:?}"
            );
        }
    }
}

/// Layout options asking for the ungated O too.
pub fn with_o() -> LayoutOptions {
    LayoutOptions {
        with_o: true,
        ..LayoutOptions::default()
    }
}
