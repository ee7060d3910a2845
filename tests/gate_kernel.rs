//! The standalone gate kernels (`kernels/gate.cu`: `Y = O * act(G)` and its backward `dO = dY * act(G)`,
//! `dG = dY * O * act'(G)`) through the public API ([`Emulator::gate`], [`Emulator::gate_backward`],
//! [`validate_gate`], [`validate_gate_backward`]):
//! - on the emulator against f64 references: both dtypes, elementwise / headwise / no gate, sigmoid and
//!   silu, strided views (the gate as the second half of a Qwen3-Next `q_proj` row, padded rows
//!   elsewhere), head dims whose row does not split evenly over a block or a warp, and grids smaller
//!   than the problem (the grid-stride loop, through the emulator's testing knob
//!   [`Emulator::gate_on_grid`]). The emulator places every tensor against a guard page and poisons
//!   the outputs, so an out-of-bounds access fails the call and an unwritten element is NaN; the storage
//!   around each output view holds a sentinel that must survive;
//! - the validation: typed errors for every input the kernels cannot take, on made-up addresses.
#![cfg(feature = "emulator")]

use gated_sdpa::emulator::GateGrid;
use gated_sdpa::{
    validate_gate, validate_gate_backward, Activation, DType, Element, Emulator, GateArgs,
    GateBackwardArgs, GateMode, GsdpaError, HostBuffer, Layout, Memory, Tensor,
};
use half::{bf16, f16};
use rand::{rngs::StdRng, RngExt, SeedableRng};

/// What the storage around an output view holds before the call: finite, so that it cannot be mistaken
/// for the emulator's NaN poison, and exact in both 16-bit formats.
const SENTINEL: f32 = 768.0;

/// One unit in the last place, relative: the kernels compute in f32 and round once.
fn ulp<T: Element>() -> f64 {
    match T::DTYPE {
        DType::BF16 => 2f64.powi(-7),
        DType::F16 => 2f64.powi(-10),
    }
}

/// act(g), written out from the definitions (sigmoid, or silu = g * sigmoid(g)).
fn act(g: f64, activation: Activation) -> f64 {
    let s = 1.0 / (1.0 + (-g).exp());
    match activation {
        Activation::Sigmoid => s,
        Activation::Silu => g * s,
    }
}

/// d act / d g from the definitions: sigmoid' = s (1 - s); silu' = s + g s (1 - s).
fn act_grad(g: f64, activation: Activation) -> f64 {
    let s = 1.0 / (1.0 + (-g).exp());
    match activation {
        Activation::Sigmoid => s * (1.0 - s),
        Activation::Silu => s + g * s * (1.0 - s),
    }
}

#[derive(Debug, Clone, Copy)]
struct Case {
    rows: usize,
    heads: usize,
    head_dim: usize,
    gate: GateMode,
    activation: Activation,
    /// Q-proj layout for the gate tensors and padded rows for the others, instead of dense tensors.
    strided: bool,
    /// Threads per block, instead of the launcher's (then with the grid that covers the problem once).
    block: Option<u32>,
    /// Blocks, instead of covering the problem once (the grid-stride loop walks the rest).
    blocks: Option<u32>,
}

fn base(head_dim: usize) -> Case {
    Case {
        rows: 10,
        heads: 3,
        head_dim,
        gate: GateMode::Elementwise,
        activation: Activation::Sigmoid,
        strided: false,
        block: None,
        blocks: None,
    }
}

/// One tensor of a case: its storage, and a view starting `base` elements into it.
struct View<T> {
    buffer: HostBuffer<T>,
    base: usize,
    layout: Layout,
}

impl<T: Element> View<T> {
    /// A `shape` view with the given strides, `base` elements into a storage that ends right after its
    /// last element, every element of the storage `fill(index)`.
    fn new(shape: &[usize], strides: &[usize], base: usize, fill: impl FnMut() -> f32) -> Self {
        let layout = Layout::strided(shape, strides).expect("layout");
        let len = base + layout.max_offset().expect("offsets").map_or(0, |m| m + 1);
        let mut fill = fill;
        let data: Vec<T> = (0..len).map(|_| T::from_f32(fill())).collect();
        View {
            buffer: HostBuffer::from_slice(&data),
            base,
            layout,
        }
    }

    fn tensor(&self) -> Tensor<&[T]> {
        Tensor::new(&self.buffer.as_slice()[self.base..], self.layout.clone())
    }

    fn tensor_mut(&mut self) -> Tensor<&mut [T]> {
        Tensor::new(
            &mut self.buffer.as_mut_slice()[self.base..],
            self.layout.clone(),
        )
    }

    /// Element `index` of the view, in f64.
    fn at(&self, index: &[usize]) -> f64 {
        self.buffer.as_slice()[self.base + self.layout.offset(index)].to_f64()
    }

    /// Marks the storage offset of `index` as part of the view in `seen`.
    fn mark(&self, seen: &mut [bool], index: &[usize]) {
        seen[self.base + self.layout.offset(index)] = true;
    }

    /// Asserts that every storage element outside the view (not in `seen`) still holds the sentinel.
    fn assert_outside_untouched(&self, name: &str, case: &Case, seen: &[bool]) {
        for (index, value) in self.buffer.as_slice().iter().enumerate() {
            if !seen[index] {
                assert_eq!(
                    value.to_f32(),
                    SENTINEL,
                    "{case:?}: {name} storage element {index} outside the view was written"
                );
            }
        }
    }
}

/// The activation-shaped `[rows, heads, D]` view: dense, or rows padded by `pad` elements.
fn activation_view<T: Element>(case: &Case, pad: usize, fill: impl FnMut() -> f32) -> View<T> {
    let (h, d) = (case.heads, case.head_dim);
    let pad = if case.strided { pad } else { 0 };
    View::new(&[case.rows, h, d], &[h * d + pad, d, 1], 0, fill)
}

/// The gate-shaped view (`[rows, heads, D]`, or `[rows, heads]` headwise): dense, or the `half`-th half
/// of each head of a q_proj-like `[rows, heads, 2D]` buffer (headwise: element 1 of every
/// `headwise_stride`, so that the view starts off any 16-byte boundary).
fn gate_view<T: Element>(
    case: &Case,
    half: usize,
    headwise_stride: usize,
    fill: impl FnMut() -> f32,
) -> View<T> {
    let (r, h, d) = (case.rows, case.heads, case.head_dim);
    match (case.gate == GateMode::Headwise, case.strided) {
        (false, false) => View::new(&[r, h, d], &[h * d, d, 1], 0, fill),
        (false, true) => View::new(&[r, h, d], &[h * 2 * d, 2 * d, 1], half * d, fill),
        (true, false) => View::new(&[r, h], &[h, 1], 0, fill),
        (true, true) => View::new(&[r, h], &[h * headwise_stride, headwise_stride], 1, fill),
    }
}

/// The emulator's testing knob for the case: `None` when the case uses the launcher's grid.
fn grid(case: &Case, rows_per_thread_group: impl Fn(u32) -> usize) -> Option<GateGrid> {
    if case.block.is_none() && case.blocks.is_none() {
        return None;
    }
    let threads = case.block.unwrap_or(256);
    let natural = (case.rows * case.heads)
        .div_ceil(rows_per_thread_group(threads))
        .max(1) as u32;
    Some(GateGrid {
        blocks: case.blocks.unwrap_or(natural),
        threads,
    })
}

fn emulator(seed: u64) -> Emulator {
    Emulator::new().with_seed(seed).with_worker_threads(2)
}

/// Runs the gate forward of `case` with the given emulator seed and checks Y against the f64 reference
/// and the storage around Y; returns Y's whole storage.
fn run<T: Element>(case: &Case, seed: u64) -> Vec<T> {
    let mut rng = StdRng::seed_from_u64(0x6a7e + case.head_dim as u64);
    let o = activation_view::<T>(case, 8, || rng.random_range(-3.0..3.0));
    let g = gate_view::<T>(case, 1, 3, || rng.random_range(-6.0..6.0));
    let mut y = activation_view::<T>(case, 16, || SENTINEL);
    let gated = case.gate != GateMode::None;

    let mut args = GateArgs {
        o: o.tensor(),
        g: gated.then(|| g.tensor()),
        y: y.tensor_mut(),
    };
    // Forward blocks: ceil(D / 8) threads per row, as many rows as fit in the block.
    let vectors = case.head_dim.div_ceil(8);
    let launch = grid(case, |threads| {
        (threads as usize / vectors.clamp(1, threads as usize)).max(1)
    });
    emulator(seed)
        .gate_on_grid(case.gate, case.activation, &mut args, launch)
        .unwrap_or_else(|e| panic!("{case:?}: {e}"));
    drop(args);

    let mut seen = vec![false; y.buffer.len()];
    for i in 0..case.rows {
        for h in 0..case.heads {
            for e in 0..case.head_dim {
                let index = [i, h, e];
                y.mark(&mut seen, &index);
                let ov = o.at(&index);
                let gate = match case.gate {
                    GateMode::None => 1.0,
                    GateMode::Headwise => act(g.at(&[i, h]), case.activation),
                    GateMode::Elementwise => act(g.at(&index), case.activation),
                };
                let (expected, got) = (ov * gate, y.at(&index));
                // One ulp for the final rounding; the f32 sigmoid adds a few f32 ulps at most. NaN fails.
                let tolerance = ulp::<T>() * expected.abs() + 1e-7;
                assert!(
                    (got - expected).abs() <= tolerance,
                    "{case:?}: y[{i},{h},{e}] = {got}, expected {expected} (o {ov}, act {gate})"
                );
            }
        }
    }
    y.assert_outside_untouched("y", case, &seen);
    y.buffer.to_vec()
}

/// Runs the gate backward of `case` with the given emulator seed and checks dO and dG against the f64
/// reference and the storage around them; returns their whole storages.
fn run_backward<T: Element>(case: &Case, seed: u64) -> (Vec<T>, Vec<T>) {
    let mut rng = StdRng::seed_from_u64(0xbac4 + case.head_dim as u64);
    // O rows padded by 8 elements, dY by 24, dO by 16; G the gate half of a q_proj-like buffer and dG
    // the first half of another (headwise: every third and every other element).
    let o = activation_view::<T>(case, 8, || rng.random_range(-3.0..3.0));
    let g = gate_view::<T>(case, 1, 3, || rng.random_range(-6.0..6.0));
    let dy = activation_view::<T>(case, 24, || rng.random_range(-2.0..2.0));
    let mut d_o = activation_view::<T>(case, 16, || SENTINEL);
    let mut dg = gate_view::<T>(case, 0, 2, || SENTINEL);
    let gated = case.gate != GateMode::None;

    let mut args = GateBackwardArgs {
        o: o.tensor(),
        g: gated.then(|| g.tensor()),
        dy: dy.tensor(),
        d_o: d_o.tensor_mut(),
        dg: if gated { Some(dg.tensor_mut()) } else { None },
    };
    // Backward rows: a power-of-two group of lanes (at most a warp) per row.
    let lanes_per_row = (case.head_dim / 8).clamp(1, 32).next_power_of_two();
    let launch = grid(case, |threads| (threads as usize / lanes_per_row).max(1));
    emulator(seed)
        .gate_backward_on_grid(case.gate, case.activation, &mut args, launch)
        .unwrap_or_else(|e| panic!("{case:?}: {e}"));
    drop(args);

    if case.block.is_some_and(|threads| threads % 32 != 0) {
        // Outside the launch contract (the headwise sum shuffles across whole warps): no writes at all,
        // so the views still hold the emulator's poison (all-ones bits, NaN).
        for (name, view, shape) in [
            ("dO", &d_o, vec![case.rows, case.heads, case.head_dim]),
            ("dG", &dg, dg.layout.shape().to_vec()),
        ] {
            view.layout.for_each_offset(|_, offset| {
                assert!(
                    view.buffer.as_slice()[view.base + offset].to_f64().is_nan(),
                    "{case:?}: a block of {:?} threads wrote {name} {shape:?}",
                    case.block
                );
            });
        }
        return (d_o.buffer.to_vec(), dg.buffer.to_vec());
    }

    let mut d_o_seen = vec![false; d_o.buffer.len()];
    let mut dg_seen = vec![false; dg.buffer.len()];
    for i in 0..case.rows {
        for h in 0..case.heads {
            let mut dy_o_sum = 0.0; // headwise: sum_d dY * O
            let mut dy_o_abs = 0.0; // and sum_d |dY * O|, for the f32 summation error bound
            for e in 0..case.head_dim {
                let index = [i, h, e];
                let (dyv, ov) = (dy.at(&index), o.at(&index));
                dy_o_sum += dyv * ov;
                dy_o_abs += (dyv * ov).abs();
                let gate = match case.gate {
                    GateMode::None => 1.0,
                    GateMode::Headwise => act(g.at(&[i, h]), case.activation),
                    GateMode::Elementwise => act(g.at(&index), case.activation),
                };
                d_o.mark(&mut d_o_seen, &index);
                let (expected, got) = (dyv * gate, d_o.at(&index));
                // One ulp for the final rounding; the f32 sigmoid adds a few f32 ulps at most.
                assert!(
                    (got - expected).abs() <= ulp::<T>() * expected.abs() + 1e-7,
                    "{case:?}: dO[{i},{h},{e}] = {got}, expected {expected} (dY {dyv}, act {gate})"
                );
                if case.gate == GateMode::Elementwise {
                    dg.mark(&mut dg_seen, &index);
                    let grad = act_grad(g.at(&index), case.activation);
                    let (expected, got) = (dyv * ov * grad, dg.at(&index));
                    // silu' = s (1 + g (1 - s)) cancels near g = -1.28: allow f32 rounding of the
                    // terms, relative to |dY * O|.
                    let tolerance = ulp::<T>() * expected.abs() + 1e-6 * (dyv * ov).abs() + 1e-7;
                    assert!(
                        (got - expected).abs() <= tolerance,
                        "{case:?}: dG[{i},{h},{e}] = {got}, expected {expected} (dY {dyv}, O {ov}, act' {grad})"
                    );
                }
            }
            if case.gate == GateMode::Headwise {
                dg.mark(&mut dg_seen, &[i, h]);
                let grad = act_grad(g.at(&[i, h]), case.activation);
                let (expected, got) = (grad * dy_o_sum, dg.at(&[i, h]));
                // The f32 sum of D products is off by at most ~D f32 ulps of sum |dY * O|.
                let tolerance = ulp::<T>() * expected.abs()
                    + (case.head_dim as f64 * 2f64.powi(-24) + 1e-6) * dy_o_abs * grad.abs()
                    + 1e-7;
                assert!(
                    (got - expected).abs() <= tolerance,
                    "{case:?}: dG[{i},{h}] = {got}, expected {expected} (sum dY*O {dy_o_sum}, act' {grad})"
                );
            }
        }
    }
    d_o.assert_outside_untouched("dO", case, &d_o_seen);
    dg.assert_outside_untouched("dG", case, &dg_seen);
    (d_o.buffer.to_vec(), dg.buffer.to_vec())
}

/// Both dtypes x every gate mode x both activations x dense and strided layouts, at head dim 64.
fn for_every_mode_activation_and_layout(check: impl Fn(&Case, bool)) {
    for bf16 in [true, false] {
        for gate in [GateMode::Elementwise, GateMode::Headwise, GateMode::None] {
            for activation in [Activation::Sigmoid, Activation::Silu] {
                for strided in [false, true] {
                    let case = Case {
                        gate,
                        activation,
                        strided,
                        ..base(64)
                    };
                    check(&case, bf16);
                }
            }
        }
    }
}

#[test]
fn gate_kernels_are_registered_with_the_emulator() {
    for dtype in [DType::BF16, DType::F16] {
        for config in [
            gated_sdpa::launch::gate(dtype, 1, 1, 64).unwrap(),
            gated_sdpa::launch::gate_backward(dtype, 1, 1, 64).unwrap(),
        ] {
            assert!(
                Emulator::has_kernel(&config.kernel),
                "{} not registered",
                config.kernel
            );
        }
    }
}

#[test]
fn every_mode_activation_and_layout_matches_the_reference() {
    for_every_mode_activation_and_layout(|case, bf16| {
        if bf16 {
            run::<bf16>(case, 0);
        } else {
            run::<f16>(case, 0);
        }
    });
}

#[test]
fn head_dims_that_do_not_split_evenly_over_the_block() {
    // 8: 256 rows per block; 136: 17 threads per row, 15 rows per block, one idle thread;
    // 264 with a 32-thread block: 33 vectors per row, one thread loops twice.
    for (head_dim, block) in [(8, None), (136, None), (256, None), (264, Some(32))] {
        for strided in [false, true] {
            for gate in [GateMode::Elementwise, GateMode::Headwise] {
                let case = Case {
                    strided,
                    block,
                    gate,
                    ..base(head_dim)
                };
                run::<bf16>(&case, 0);
                run::<f16>(&case, 0);
            }
        }
    }
}

#[test]
fn small_grids_cover_every_row_and_results_do_not_depend_on_thread_order() {
    for blocks in [1, 3] {
        let case = Case {
            blocks: Some(blocks),
            strided: true,
            ..base(128)
        };
        let reference = run::<bf16>(&case, 0);
        for seed in [1, 0x9e37_79b9] {
            assert_eq!(
                run::<bf16>(&case, seed),
                reference,
                "{blocks} blocks: seed {seed} changed the result"
            );
        }
    }
}

#[test]
fn backward_every_mode_activation_and_layout_matches_the_reference() {
    for_every_mode_activation_and_layout(|case, bf16| {
        if bf16 {
            run_backward::<bf16>(case, 0);
        } else {
            run_backward::<f16>(case, 0);
        }
    });
}

#[test]
fn backward_head_dims_that_do_not_fill_a_lane_group() {
    // 8: one lane per row, 32 rows per warp; 136: 17 vectors on a 32-lane group (15 lanes idle);
    // 256: a warp per row; 264: 33 vectors, lane 0 loops twice; 40 with a 32-thread block: 5 vectors
    // on 8 lanes, 4 rows per warp.
    for (head_dim, block) in [
        (8, None),
        (136, None),
        (256, None),
        (264, None),
        (40, Some(32)),
    ] {
        for gate in [GateMode::Elementwise, GateMode::Headwise] {
            for strided in [false, true] {
                let case = Case {
                    strided,
                    block,
                    gate,
                    activation: Activation::Silu,
                    ..base(head_dim)
                };
                run_backward::<bf16>(&case, 0);
                run_backward::<f16>(&case, 0);
            }
        }
    }
}

#[test]
fn backward_blocks_with_a_partial_warp_write_nothing() {
    for gate in [GateMode::Elementwise, GateMode::Headwise] {
        run_backward::<f16>(
            &Case {
                block: Some(48),
                blocks: Some(2),
                gate,
                ..base(64)
            },
            0,
        );
    }
}

#[test]
fn backward_small_grids_cover_every_row_and_results_do_not_depend_on_thread_order() {
    for gate in [GateMode::Elementwise, GateMode::Headwise] {
        // 14 * 3 = 42 rows of 16 lanes: the last warp step of each block is part-filled.
        for blocks in [1, 3] {
            let case = Case {
                blocks: Some(blocks),
                strided: true,
                rows: 14,
                gate,
                ..base(128)
            };
            let reference = run_backward::<bf16>(&case, 0);
            for seed in [1, 0x9e37_79b9] {
                assert_eq!(
                    run_backward::<bf16>(&case, seed),
                    reference,
                    "{gate:?}, {blocks} blocks: seed {seed} changed the result"
                );
            }
        }
    }
}

#[test]
fn an_empty_problem_launches_nothing_and_a_bad_grid_is_a_typed_error() {
    let empty = Layout::contiguous(&[0, 3, 64]);
    let (o, mut y) = (Vec::<bf16>::new(), Vec::<bf16>::new());
    let mut args = GateArgs {
        o: Tensor::new(&o[..], empty.clone()),
        g: None,
        y: Tensor::new(&mut y[..], empty),
    };
    Emulator::new()
        .gate(GateMode::None, Activation::Sigmoid, &mut args)
        .expect("an empty gate is a no-op");

    let shape = [2, 1, 64];
    let o = HostBuffer::<bf16>::filled(128, bf16::ONE);
    let mut y = HostBuffer::<bf16>::new(128);
    for grid in [
        GateGrid {
            blocks: 0,
            threads: 256,
        },
        GateGrid {
            blocks: 1,
            threads: 0,
        },
        GateGrid {
            blocks: 1,
            threads: 512,
        },
    ] {
        let mut args = GateArgs {
            o: Tensor::contiguous(o.as_slice(), &shape),
            g: None,
            y: Tensor::contiguous(y.as_mut_slice(), &shape),
        };
        let err = Emulator::new()
            .gate_on_grid(GateMode::None, Activation::Sigmoid, &mut args, Some(grid))
            .unwrap_err();
        assert!(
            matches!(err, GsdpaError::InvalidArgument(_)),
            "{grid:?}: {err:?}"
        );
    }
    assert!(y.as_slice().iter().all(|&v| v == bf16::ZERO));
}

// ---------------------------------------------------------------------------------------------------
// Validation, on made-up device addresses (nothing is launched).
// ---------------------------------------------------------------------------------------------------

/// Storage at a made-up address, as a device buffer would be: validation reads only the address and
/// the length.
#[derive(Debug, Clone, Copy)]
struct Fake<T> {
    addr: usize,
    len: usize,
    _elem: std::marker::PhantomData<T>,
}

impl<T> Memory for Fake<T> {
    type Elem = T;
    fn addr(&self) -> usize {
        self.addr
    }
    fn len(&self) -> usize {
        self.len
    }
}

const ROWS: usize = 6;
const HEADS: usize = 3;
const D: usize = 64;
const N: usize = ROWS * HEADS * D;

/// A tensor of `layout` over `len` elements at the well-separated, 16-byte aligned address of slot `i`.
fn fake<T>(i: usize, len: usize, layout: &Layout) -> Tensor<Fake<T>> {
    Tensor::new(
        Fake {
            addr: 0x10_0000 * (i + 1),
            len,
            _elem: std::marker::PhantomData,
        },
        layout.clone(),
    )
}

fn dense() -> Layout {
    Layout::contiguous(&[ROWS, HEADS, D])
}

fn scalar() -> Layout {
    Layout::contiguous(&[ROWS, HEADS])
}

type FakeBackwardArgs = GateBackwardArgs<Fake<bf16>, Fake<bf16>>;

/// Backward arguments over o, g, dy, d_o, dg in slots 0 to 4.
fn backward_args(layouts: [Layout; 5], lens: [usize; 5]) -> FakeBackwardArgs {
    GateBackwardArgs {
        o: fake(0, lens[0], &layouts[0]),
        g: Some(fake(1, lens[1], &layouts[1])),
        dy: fake(2, lens[2], &layouts[2]),
        d_o: fake(3, lens[3], &layouts[3]),
        dg: Some(fake(4, lens[4], &layouts[4])),
    }
}

fn dense_backward() -> FakeBackwardArgs {
    backward_args([dense(), dense(), dense(), dense(), dense()], [N; 5])
}

fn backward_err(gate: GateMode, args: &FakeBackwardArgs) -> GsdpaError {
    validate_gate_backward(gate, Activation::Silu, args).unwrap_err()
}

#[test]
fn gate_params_carry_the_views() {
    // g is the gate half of a q_proj buffer [rows, heads, 2D]: head stride 2D, row stride 2HD.
    let q_proj = Layout::q_proj_view(&[ROWS, HEADS, D]);
    let mut args = backward_args(
        [dense(), q_proj, dense(), dense(), dense()],
        [N, 2 * N, N, N, N],
    );
    args.g.as_mut().unwrap().data.addr += 2 * D;
    let p = validate_gate_backward(GateMode::Elementwise, Activation::Silu, &args).unwrap();
    assert_eq!((p.batch, p.seqlen, p.heads, p.head_dim), (1, 6, 3, 64));
    assert_eq!(
        (p.g_stride.batch, p.g_stride.row, p.g_stride.head),
        (0, 2 * (HEADS * D) as i64, 2 * D as i64)
    );
    assert_eq!(
        (p.dy_stride.row, p.dy_stride.head),
        ((HEADS * D) as i64, D as i64)
    );
    assert_eq!(p.o as usize, 0x10_0000);
    assert_eq!(p.g as usize, 0x20_0000 + 2 * D);
    assert_eq!(p.dy as usize, 0x30_0000);
    assert_eq!(p.d_o as usize, 0x40_0000);
    assert_eq!(p.dg as usize, 0x50_0000);
    assert_eq!(p.gate_mode, GateMode::Elementwise.to_ffi());
    assert_eq!(p.activation, Activation::Silu.to_ffi());

    // Headwise: g and dg are [rows, heads], any alignment of a 16-bit scalar.
    let mut args = backward_args(
        [dense(), scalar(), dense(), dense(), scalar()],
        [N, ROWS * HEADS, N, N, ROWS * HEADS],
    );
    args.dg.as_mut().unwrap().data.addr += 2;
    let p = validate_gate_backward(GateMode::Headwise, Activation::Sigmoid, &args).unwrap();
    assert_eq!((p.dg_stride.row, p.dg_stride.head), (HEADS as i64, 1));
    assert_eq!(p.dg as usize, 0x50_0002);
    assert_eq!(p.activation, Activation::Sigmoid.to_ffi());

    // No gate: no g and dg, and o is not handed to the kernel (it does not read it).
    let mut args = dense_backward();
    (args.g, args.dg) = (None, None);
    let p = validate_gate_backward(GateMode::None, Activation::Sigmoid, &args).unwrap();
    assert!(p.o.is_null() && p.g.is_null() && p.dg.is_null());
    assert_eq!(p.dy as usize, 0x30_0000);

    // Forward: o, g, y.
    let args = GateArgs {
        o: fake::<bf16>(0, N, &dense()),
        g: Some(fake(1, ROWS * HEADS, &scalar())),
        y: fake::<bf16>(2, N, &dense()),
    };
    let p = validate_gate(GateMode::Headwise, Activation::Silu, &args).unwrap();
    assert_eq!((p.batch, p.seqlen, p.heads, p.head_dim), (1, 6, 3, 64));
    assert_eq!((p.g as usize, p.y as usize), (0x20_0000, 0x30_0000));
    assert_eq!((p.g_stride.row, p.g_stride.head), (HEADS as i64, 1));
    assert_eq!(p.gate_mode, GateMode::Headwise.to_ffi());
}

#[test]
fn gate_backward_rejects_what_the_kernel_cannot_take() {
    // Gate tensors present exactly when there is a gate.
    let mut args = dense_backward();
    assert!(matches!(
        backward_err(GateMode::None, &args),
        GsdpaError::GateUnexpected { tensor: "g" }
    ));
    args.dg = None;
    assert!(matches!(
        backward_err(GateMode::Elementwise, &args),
        GsdpaError::GateMissing {
            tensor: "dg",
            gate: "elementwise"
        }
    ));
    // A headwise gradient for an elementwise gate.
    let args = backward_args([dense(), dense(), dense(), dense(), scalar()], [N; 5]);
    assert!(matches!(
        backward_err(GateMode::Elementwise, &args),
        GsdpaError::ShapeMismatch { tensor: "dg", .. }
    ));
    // An elementwise g is read in 16-byte vectors: it must be 16-byte aligned.
    let mut args = dense_backward();
    args.g.as_mut().unwrap().data.addr += 2;
    assert!(matches!(
        backward_err(GateMode::Elementwise, &args),
        GsdpaError::Misaligned { tensor: "g", .. }
    ));
    // A row stride that breaks the 16-byte vectors of dY.
    let padded = Layout::strided(&[ROWS, HEADS, D], &[HEADS * D + 4, D, 1]).unwrap();
    let args = backward_args([dense(), dense(), padded, dense(), dense()], [2 * N; 5]);
    assert!(matches!(
        backward_err(GateMode::Elementwise, &args),
        GsdpaError::Misaligned { tensor: "dy", .. }
    ));
    // dY's storage is one element short.
    let args = backward_args(
        [dense(), dense(), dense(), dense(), dense()],
        [N, N, N - 1, N, N],
    );
    assert!(matches!(
        backward_err(GateMode::Elementwise, &args),
        GsdpaError::BadStrides { tensor: "dy", .. }
    ));
    // d_o written over dY; dg over d_o.
    let mut args = dense_backward();
    args.d_o.data.addr = args.dy.data.addr + 16;
    assert!(matches!(
        backward_err(GateMode::Elementwise, &args),
        GsdpaError::Overlap {
            output: "d_o",
            other: "dy"
        }
    ));
    let mut args = dense_backward();
    args.dg.as_mut().unwrap().data.addr = args.d_o.data.addr + 2 * N - 16;
    assert!(matches!(
        backward_err(GateMode::Elementwise, &args),
        GsdpaError::Overlap {
            output: "dg",
            other: "d_o"
        }
    ));
    // An output whose strides map two elements to one address (head stride 0).
    let aliased = Layout::strided(&[ROWS, HEADS, D], &[HEADS * D, 0, 1]).unwrap();
    let args = backward_args([dense(), dense(), dense(), aliased, dense()], [N; 5]);
    assert!(matches!(
        backward_err(GateMode::Elementwise, &args),
        GsdpaError::BadStrides { tensor: "d_o", .. }
    ));
    // A head dim that does not split into 16-byte vectors (any multiple of 8 does, not just 64/128/256).
    let odd = Layout::contiguous(&[ROWS, HEADS, 12]);
    let args = backward_args([odd.clone(), scalar(), odd.clone(), odd, scalar()], [N; 5]);
    assert!(matches!(
        backward_err(GateMode::Headwise, &args),
        GsdpaError::InvalidArgument(ref m) if m.contains("multiple of 8")
    ));
    // The activations are [rows, heads, D].
    let args = backward_args([scalar(), scalar(), scalar(), scalar(), scalar()], [N; 5]);
    assert!(matches!(
        backward_err(GateMode::Headwise, &args),
        GsdpaError::InvalidArgument(_)
    ));
}

#[test]
fn gate_forward_rejects_what_the_kernel_cannot_take() {
    let forward = |g: Option<Tensor<Fake<bf16>>>, y: Tensor<Fake<bf16>>, gate| {
        let args = GateArgs {
            o: fake::<bf16>(0, N, &dense()),
            g,
            y,
        };
        validate_gate(gate, Activation::Sigmoid, &args).unwrap_err()
    };
    let y = || fake::<bf16>(2, N, &dense());
    let mut g = fake::<bf16>(1, N, &dense());
    g.data.addr += 8;
    assert!(matches!(
        forward(Some(g), y(), GateMode::Elementwise),
        GsdpaError::Misaligned { tensor: "g", .. }
    ));
    assert!(matches!(
        forward(None, y(), GateMode::Headwise),
        GsdpaError::GateMissing {
            tensor: "g",
            gate: "headwise"
        }
    ));
    let g = fake::<bf16>(1, ROWS * HEADS, &scalar());
    assert!(matches!(
        forward(Some(g), y(), GateMode::None),
        GsdpaError::GateUnexpected { tensor: "g" }
    ));
    let mut y_over_o = y();
    y_over_o.data.addr = 0x10_0000 + 64;
    assert!(matches!(
        forward(None, y_over_o, GateMode::None),
        GsdpaError::Overlap {
            output: "y",
            other: "o"
        }
    ));
}

#[test]
fn gate_sizes_beyond_the_kernels_row_index_are_typed_errors() {
    // rows * heads = 2^32 rows of 8 elements: the kernels number rows in 32 bits.
    let huge = Layout::contiguous(&[1 << 22, 1 << 10, 8]);
    let err = |layout: &Layout| {
        let args = GateArgs {
            o: fake::<bf16>(0, usize::MAX, layout),
            g: None,
            y: fake::<bf16>(1, usize::MAX, layout),
        };
        validate_gate(GateMode::None, Activation::Sigmoid, &args).unwrap_err()
    };
    assert!(matches!(err(&huge), GsdpaError::SizeOverflow(_)));
    // One row short of 2^32 passes the row check (and is then judged on its storage, here ample).
    let just_fits = Layout::contiguous(&[(1 << 22) - 1, 1 << 10, 8]);
    let args = GateArgs {
        o: fake::<bf16>(0, usize::MAX / 4, &just_fits),
        g: None,
        y: Tensor::new(
            Fake::<bf16> {
                addr: 1 << 60,
                len: usize::MAX / 4,
                _elem: std::marker::PhantomData,
            },
            just_fits.clone(),
        ),
    };
    assert!(validate_gate(GateMode::None, Activation::Sigmoid, &args).is_ok());
    // More rows than i32 holds.
    let rows = Layout::contiguous(&[1 << 31, 1, 8]);
    assert!(matches!(err(&rows), GsdpaError::SizeOverflow(ref m) if m.contains("rows")));
}

#[test]
fn the_emulator_validates_before_writing_anything() {
    let shape = [ROWS, HEADS, D];
    let o = HostBuffer::<bf16>::filled(N, bf16::ONE);
    let g = HostBuffer::<bf16>::filled(N + 1, bf16::ONE);
    let mut y = HostBuffer::<bf16>::filled(N, bf16::from_f32(SENTINEL));
    // g one element into an aligned buffer: misaligned for an elementwise gate.
    let mut args = GateArgs {
        o: Tensor::contiguous(o.as_slice(), &shape),
        g: Some(Tensor::contiguous(&g.as_slice()[1..], &shape)),
        y: Tensor::contiguous(y.as_mut_slice(), &shape),
    };
    let err = Emulator::new()
        .gate(GateMode::Elementwise, Activation::Sigmoid, &mut args)
        .unwrap_err();
    assert!(matches!(err, GsdpaError::Misaligned { tensor: "g", .. }));
    assert!(y.as_slice().iter().all(|v| v.to_f32() == SENTINEL));

    let dy = HostBuffer::<bf16>::filled(N, bf16::ONE);
    let mut d_o = HostBuffer::<bf16>::filled(N, bf16::from_f32(SENTINEL));
    let mut args = GateBackwardArgs {
        o: Tensor::contiguous(o.as_slice(), &shape),
        g: Some(Tensor::contiguous(&g.as_slice()[..N], &shape)),
        dy: Tensor::contiguous(dy.as_slice(), &shape),
        d_o: Tensor::contiguous(d_o.as_mut_slice(), &shape),
        dg: None,
    };
    let err = Emulator::new()
        .gate_backward(GateMode::Elementwise, Activation::Silu, &mut args)
        .unwrap_err();
    assert!(matches!(
        err,
        GsdpaError::GateMissing {
            tensor: "dg",
            gate: "elementwise"
        }
    ));
    assert!(d_o.as_slice().iter().all(|v| v.to_f32() == SENTINEL));
}
