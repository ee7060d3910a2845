//! The standalone gate kernels (`kernels/gate.cu`: `Y = O * act(G)` and its backward `dO = dY * act(G)`,
//! `dG = dY * O * act'(G)`) run on the emulator against f64 references: both dtypes, elementwise /
//! headwise / no gate, sigmoid and silu, strided views (the gate as the second half of a Qwen3-Next
//! `q_proj` row, padded rows elsewhere), head dims whose row does not split evenly over a block or a
//! warp, and grids smaller than the problem (the grid-stride loop).
//!
//! The kernel is launched through the emulator's C API directly, with every buffer against a guard page,
//! so an out-of-bounds access fails the launch.
#![cfg(feature = "emulator")]

use std::ffi::{c_char, c_void, CString};

use gated_sdpa::ffi::{
    GsdpaGateBackwardParams, GsdpaGateParams, GsdpaStrides, GSDPA_ACT_SIGMOID, GSDPA_ACT_SILU,
    GSDPA_GATE_ELEMENTWISE, GSDPA_GATE_HEADWISE, GSDPA_GATE_NONE,
};
use rand::{rngs::StdRng, RngExt, SeedableRng};

extern "C" {
    fn gsdpa_emu_launch(
        kernel: *const c_char,
        grid: *const u32,
        block: *const u32,
        dynamic_smem_bytes: usize,
        params: *const c_void,
        params_size: usize,
        seed: u64,
        worker_threads: u32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn gsdpa_emu_alloc_guarded(bytes: usize, alignment: usize) -> *mut c_void;
    fn gsdpa_emu_free_guarded(ptr: *mut c_void);
    fn gsdpa_emu_has_kernel(kernel: *const c_char) -> i32;
}

/// A 16-bit buffer whose last element touches an inaccessible page. (Every buffer here that the kernel
/// reads in 16-byte vectors is a multiple of 16 bytes long, so its start is 16-byte aligned too.)
struct Guarded {
    ptr: *mut u16,
    len: usize,
}

impl Guarded {
    fn from_bits(bits: &[u16]) -> Guarded {
        // SAFETY: plain allocation, checked for null; the copy stays inside the `len` elements mapped.
        unsafe {
            let ptr = gsdpa_emu_alloc_guarded(bits.len().max(1) * 2, 2).cast::<u16>();
            assert!(!ptr.is_null(), "guarded allocation failed");
            std::ptr::copy_nonoverlapping(bits.as_ptr(), ptr, bits.len());
            Guarded {
                ptr,
                len: bits.len(),
            }
        }
    }

    fn to_vec(&self) -> Vec<u16> {
        // SAFETY: `ptr` holds `len` initialised elements.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len).to_vec() }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: allocated by gsdpa_emu_alloc_guarded, freed once.
        unsafe { gsdpa_emu_free_guarded(self.ptr.cast()) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum DType {
    BF16,
    F16,
}

impl DType {
    fn to_bits(self, x: f32) -> u16 {
        match self {
            DType::BF16 => half::bf16::from_f32(x).to_bits(),
            DType::F16 => half::f16::from_f32(x).to_bits(),
        }
    }
    fn to_f64(self, bits: u16) -> f64 {
        match self {
            DType::BF16 => half::bf16::from_bits(bits).to_f64(),
            DType::F16 => half::f16::from_bits(bits).to_f64(),
        }
    }
    /// One unit in the last place, relative: the kernel computes in f32 and rounds once.
    fn ulp(self) -> f64 {
        match self {
            DType::BF16 => 2f64.powi(-7),
            DType::F16 => 2f64.powi(-10),
        }
    }
    fn kernel(self) -> &'static str {
        match self {
            DType::BF16 => "gsdpa_gate_bf16",
            DType::F16 => "gsdpa_gate_f16",
        }
    }
    fn backward_kernel(self) -> &'static str {
        match self {
            DType::BF16 => "gsdpa_gate_backward_bf16",
            DType::F16 => "gsdpa_gate_backward_f16",
        }
    }
    fn public(self) -> gated_sdpa::DType {
        match self {
            DType::BF16 => gated_sdpa::DType::BF16,
            DType::F16 => gated_sdpa::DType::F16,
        }
    }
}

/// NaN in both 16-bit formats: what an element the kernel did not write still holds.
const POISON: u16 = 0xffff;

#[derive(Debug, Clone, Copy)]
struct Case {
    dtype: DType,
    batch: usize,
    seqlen: usize,
    heads: usize,
    head_dim: usize,
    gate_mode: u32,
    activation: u32,
    /// Q-proj layout for the gate and padded rows for O and Y, instead of dense tensors.
    strided: bool,
    block: u32,
    /// None: one thread per 16-byte vector, as the launcher does; Some(n): n blocks (grid-stride loop).
    grid: Option<u32>,
}

/// Element strides of a [B, S, H, D] view: (batch, row, head).
fn strides(seqlen: usize, row: usize, head: usize) -> GsdpaStrides {
    GsdpaStrides {
        batch: (seqlen * row) as i64,
        row: row as i64,
        head: head as i64,
    }
}

fn offset(s: &GsdpaStrides, b: usize, i: usize, h: usize) -> usize {
    (b as i64 * s.batch + i as i64 * s.row + h as i64 * s.head) as usize
}

fn activation(g: f64, act: u32) -> f64 {
    let s = 1.0 / (1.0 + (-g).exp());
    if act == GSDPA_ACT_SILU {
        g * s
    } else {
        s
    }
}

/// d act / d g, written out from the definitions: sigmoid' = s (1 - s); silu' = s + g s (1 - s).
fn activation_grad(g: f64, act: u32) -> f64 {
    let s = 1.0 / (1.0 + (-g).exp());
    if act == GSDPA_ACT_SILU {
        s + g * s * (1.0 - s)
    } else {
        s * (1.0 - s)
    }
}

/// Launches `kernel` on the emulator with `params`; panics with the emulator's message on failure.
fn launch<P>(case: &Case, kernel: &str, grid: u32, params: &P, seed: u64) {
    let grid = [grid, 1, 1];
    let block = [case.block, 1, 1];
    let name = CString::new(kernel).unwrap();
    let mut err = vec![0 as c_char; 1024];
    // SAFETY: every pointer in params covers every element the views address; buffers outlive the call.
    let rc = unsafe {
        gsdpa_emu_launch(
            name.as_ptr(),
            grid.as_ptr(),
            block.as_ptr(),
            0,
            (params as *const P).cast(),
            std::mem::size_of::<P>(),
            seed,
            2,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    let message: Vec<u8> = err
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    assert_eq!(
        rc,
        0,
        "{case:?}: {kernel} failed: {}",
        String::from_utf8_lossy(&message)
    );
}

/// Runs the case with the given emulator seed; returns the whole Y buffer.
fn run(case: &Case, seed: u64) -> Vec<u16> {
    let Case {
        dtype,
        batch,
        seqlen,
        heads,
        head_dim: d,
        ..
    } = *case;
    let mut rng = StdRng::seed_from_u64(0x6a7e + d as u64);
    // Dense, or: O rows padded by 8 elements, Y rows by 16, the gate inside a [B, S, H, 2D] buffer.
    let pad = |n: usize| if case.strided { n } else { 0 };
    let o_stride = strides(seqlen, heads * d + pad(8), d);
    let y_stride = strides(seqlen, heads * d + pad(16), d);
    let headwise = case.gate_mode == GSDPA_GATE_HEADWISE;
    let (g_stride, g_base, g_len) = match (headwise, case.strided) {
        (false, false) => (strides(seqlen, heads * d, d), 0, batch * seqlen * heads * d),
        (false, true) => (
            strides(seqlen, heads * 2 * d, 2 * d),
            d,
            batch * seqlen * heads * 2 * d,
        ),
        (true, false) => (strides(seqlen, heads, 1), 0, batch * seqlen * heads),
        (true, true) => (strides(seqlen, heads * 3, 3), 1, batch * seqlen * heads * 3),
    };
    let o_len = batch * seqlen * o_stride.row as usize;
    let y_len = batch * seqlen * y_stride.row as usize;

    let o: Vec<u16> = (0..o_len)
        .map(|_| dtype.to_bits(rng.random_range(-3.0..3.0)))
        .collect();
    let g: Vec<u16> = (0..g_len)
        .map(|_| dtype.to_bits(rng.random_range(-6.0..6.0)))
        .collect();
    let (o_buf, g_buf, y_buf) = (
        Guarded::from_bits(&o),
        Guarded::from_bits(&g),
        Guarded::from_bits(&vec![POISON; y_len]),
    );

    let params = GsdpaGateParams {
        o: o_buf.ptr.cast_const().cast(),
        // A view starting `g_base` elements into the buffer (the gate half of each q_proj head).
        g: if case.gate_mode == GSDPA_GATE_NONE {
            std::ptr::null()
        } else {
            // SAFETY: g_base < g_len, inside the allocation.
            unsafe { g_buf.ptr.add(g_base).cast_const().cast() }
        },
        y: y_buf.ptr.cast(),
        o_stride,
        g_stride,
        y_stride,
        batch: batch as i32,
        seqlen: seqlen as i32,
        heads: heads as i32,
        head_dim: d as i32,
        gate_mode: case.gate_mode as i32,
        activation: case.activation as i32,
    };
    let vectors = (batch * seqlen * heads * d / 8) as u32;
    let grid = case.grid.unwrap_or(vectors.div_ceil(case.block).max(1));
    launch(case, dtype.kernel(), grid, &params, seed);
    let y = y_buf.to_vec();

    // Check against the f64 reference, and that the padding between rows was left alone.
    let mut written = vec![false; y_len];
    for b in 0..batch {
        for i in 0..seqlen {
            for h in 0..heads {
                for e in 0..d {
                    let yo = offset(&y_stride, b, i, h) + e;
                    written[yo] = true;
                    let ov = dtype.to_f64(o[offset(&o_stride, b, i, h) + e]);
                    let gate = match case.gate_mode {
                        GSDPA_GATE_NONE => 1.0,
                        GSDPA_GATE_HEADWISE => activation(
                            dtype.to_f64(g[g_base + offset(&g_stride, b, i, h)]),
                            case.activation,
                        ),
                        _ => activation(
                            dtype.to_f64(g[g_base + offset(&g_stride, b, i, h) + e]),
                            case.activation,
                        ),
                    };
                    let expected = ov * gate;
                    let got = dtype.to_f64(y[yo]);
                    // One ulp for the final rounding; the f32 sigmoid adds a few f32 ulps at most.
                    let tolerance = dtype.ulp() * expected.abs() + 1e-7;
                    assert!(
                        (got - expected).abs() <= tolerance,
                        "{case:?}: y[{b},{i},{h},{e}] = {got}, expected {expected} (o {ov}, act {gate})"
                    );
                }
            }
        }
    }
    for (index, &bits) in y.iter().enumerate() {
        if !written[index] {
            assert_eq!(
                bits, POISON,
                "{case:?}: padding element {index} of Y was overwritten"
            );
        }
    }
    y
}

/// The grid the crate's launcher picks for the backward of `case` with its block size (the launcher
/// assumes GSDPA_GATE_THREADS; other blocks keep its rows-per-lane-group rule), or `case.grid`.
fn backward_grid(case: &Case) -> u32 {
    let rows = case.batch * case.seqlen;
    let config =
        gated_sdpa::launch::gate_backward(case.dtype.public(), rows, case.heads, case.head_dim)
            .expect("launch config");
    assert_eq!(config.kernel, case.dtype.backward_kernel());
    assert_eq!(config.block, [256, 1, 1]);
    if let Some(grid) = case.grid {
        return grid;
    }
    if case.block == 256 {
        return config.grid[0];
    }
    let lanes_per_row = (case.head_dim / 8).clamp(1, 32).next_power_of_two();
    let rows_per_block = (case.block as usize / lanes_per_row).max(1);
    ((rows * case.heads).div_ceil(rows_per_block).max(1)) as u32
}

/// Runs the gate backward for the case with the given emulator seed and checks dO and dG against the
/// f64 reference (and that no padding element was written); returns the whole dO and dG buffers.
fn run_backward(case: &Case, seed: u64) -> (Vec<u16>, Vec<u16>) {
    let Case {
        dtype,
        batch,
        seqlen,
        heads,
        head_dim: d,
        ..
    } = *case;
    let mut rng = StdRng::seed_from_u64(0xbac4 + d as u64);
    // Dense, or: O rows padded by 8 elements, dY by 24, dO by 16; G the gate half of a [B, S, H, 2D]
    // q_proj buffer and dG the first half of another (headwise: every third and every other element).
    let pad = |n: usize| if case.strided { n } else { 0 };
    let o_stride = strides(seqlen, heads * d + pad(8), d);
    let dy_stride = strides(seqlen, heads * d + pad(24), d);
    let d_o_stride = strides(seqlen, heads * d + pad(16), d);
    let headwise = case.gate_mode == GSDPA_GATE_HEADWISE;
    let gated = case.gate_mode != GSDPA_GATE_NONE;
    let rows = batch * seqlen * heads;
    let ((g_stride, g_base, g_len), (dg_stride, dg_base, dg_len)) = match (headwise, case.strided) {
        (false, false) => {
            let dense = (strides(seqlen, heads * d, d), 0, rows * d);
            (dense, dense)
        }
        (false, true) => (
            (strides(seqlen, heads * 2 * d, 2 * d), d, rows * 2 * d),
            (strides(seqlen, heads * 2 * d, 2 * d), 0, rows * 2 * d),
        ),
        (true, false) => {
            let dense = (strides(seqlen, heads, 1), 0, rows);
            (dense, dense)
        }
        (true, true) => (
            (strides(seqlen, heads * 3, 3), 1, rows * 3),
            (strides(seqlen, heads * 2, 2), 1, rows * 2),
        ),
    };
    let o_len = batch * seqlen * o_stride.row as usize;
    let dy_len = batch * seqlen * dy_stride.row as usize;
    let d_o_len = batch * seqlen * d_o_stride.row as usize;

    let mut random = |len: usize, range: f32| -> Vec<u16> {
        (0..len)
            .map(|_| dtype.to_bits(rng.random_range(-range..range)))
            .collect()
    };
    let (o, g, dy) = (random(o_len, 3.0), random(g_len, 6.0), random(dy_len, 2.0));
    let (o_buf, g_buf, dy_buf) = (
        Guarded::from_bits(&o),
        Guarded::from_bits(&g),
        Guarded::from_bits(&dy),
    );
    let (d_o_buf, dg_buf) = (
        Guarded::from_bits(&vec![POISON; d_o_len]),
        Guarded::from_bits(&vec![POISON; dg_len]),
    );

    // Without a gate the kernel must not touch O, G or dG: they are null then.
    let params = GsdpaGateBackwardParams {
        o: if gated {
            o_buf.ptr.cast_const().cast()
        } else {
            std::ptr::null()
        },
        // SAFETY (both views): the base offset is inside the allocation.
        g: if gated {
            unsafe { g_buf.ptr.add(g_base).cast_const().cast() }
        } else {
            std::ptr::null()
        },
        dy: dy_buf.ptr.cast_const().cast(),
        d_o: d_o_buf.ptr.cast(),
        dg: if gated {
            unsafe { dg_buf.ptr.add(dg_base).cast() }
        } else {
            std::ptr::null_mut()
        },
        o_stride,
        g_stride,
        dy_stride,
        d_o_stride,
        dg_stride,
        batch: batch as i32,
        seqlen: seqlen as i32,
        heads: heads as i32,
        head_dim: d as i32,
        gate_mode: case.gate_mode as i32,
        activation: case.activation as i32,
    };
    launch(
        case,
        dtype.backward_kernel(),
        backward_grid(case),
        &params,
        seed,
    );
    let (d_o, dg) = (d_o_buf.to_vec(), dg_buf.to_vec());
    if case.block % 32 != 0 {
        // Outside the launch contract (the headwise sum shuffles across whole warps): no writes at all.
        assert!(
            d_o.iter().chain(&dg).all(|&bits| bits == POISON),
            "{case:?}: a block of {} threads wrote outputs",
            case.block
        );
        return (d_o, dg);
    }

    let mut d_o_written = vec![false; d_o_len];
    let mut dg_written = vec![false; dg_len];
    for b in 0..batch {
        for i in 0..seqlen {
            for h in 0..heads {
                let logit = |e: usize| dtype.to_f64(g[g_base + offset(&g_stride, b, i, h) + e]);
                let mut dy_o_sum = 0.0; // headwise: sum_d dY * O
                let mut dy_o_abs = 0.0; // and sum_d |dY * O|, for the f32 summation error bound
                for e in 0..d {
                    let dyv = dtype.to_f64(dy[offset(&dy_stride, b, i, h) + e]);
                    let ov = dtype.to_f64(o[offset(&o_stride, b, i, h) + e]);
                    dy_o_sum += dyv * ov;
                    dy_o_abs += (dyv * ov).abs();
                    let act = match case.gate_mode {
                        GSDPA_GATE_NONE => 1.0,
                        GSDPA_GATE_HEADWISE => activation(logit(0), case.activation),
                        _ => activation(logit(e), case.activation),
                    };
                    let at = offset(&d_o_stride, b, i, h) + e;
                    d_o_written[at] = true;
                    let (expected, got) = (dyv * act, dtype.to_f64(d_o[at]));
                    // One ulp for the final rounding; the f32 sigmoid adds a few f32 ulps at most.
                    assert!(
                        (got - expected).abs() <= dtype.ulp() * expected.abs() + 1e-7,
                        "{case:?}: dO[{b},{i},{h},{e}] = {got}, expected {expected} (dY {dyv}, act {act})"
                    );
                    if case.gate_mode == GSDPA_GATE_ELEMENTWISE {
                        let at = dg_base + offset(&dg_stride, b, i, h) + e;
                        dg_written[at] = true;
                        let grad = activation_grad(logit(e), case.activation);
                        let (expected, got) = (dyv * ov * grad, dtype.to_f64(dg[at]));
                        // silu' = s (1 + g (1 - s)) cancels near g = -1.28: allow f32 rounding of the
                        // terms, relative to |dY * O|.
                        let tolerance =
                            dtype.ulp() * expected.abs() + 1e-6 * (dyv * ov).abs() + 1e-7;
                        assert!(
                            (got - expected).abs() <= tolerance,
                            "{case:?}: dG[{b},{i},{h},{e}] = {got}, expected {expected} (dY {dyv}, O {ov}, act' {grad})"
                        );
                    }
                }
                if headwise {
                    let at = dg_base + offset(&dg_stride, b, i, h);
                    dg_written[at] = true;
                    let grad = activation_grad(logit(0), case.activation);
                    let (expected, got) = (grad * dy_o_sum, dtype.to_f64(dg[at]));
                    // The f32 sum of D products is off by at most ~D f32 ulps of sum |dY * O|.
                    let tolerance = dtype.ulp() * expected.abs()
                        + (d as f64 * 2f64.powi(-24) + 1e-6) * dy_o_abs * grad.abs()
                        + 1e-7;
                    assert!(
                        (got - expected).abs() <= tolerance,
                        "{case:?}: dG[{b},{i},{h}] = {got}, expected {expected} (sum dY*O {dy_o_sum}, act' {grad})"
                    );
                }
            }
        }
    }
    for (name, buffer, written) in [("dO", &d_o, &d_o_written), ("dG", &dg, &dg_written)] {
        for (index, &bits) in buffer.iter().enumerate() {
            if !written[index] {
                assert_eq!(
                    bits, POISON,
                    "{case:?}: element {index} of {name} was written but is not part of the view"
                );
            }
        }
    }
    (d_o, dg)
}

fn base(dtype: DType, head_dim: usize) -> Case {
    Case {
        dtype,
        batch: 2,
        seqlen: 5,
        heads: 3,
        head_dim,
        gate_mode: GSDPA_GATE_ELEMENTWISE,
        activation: GSDPA_ACT_SIGMOID,
        strided: false,
        block: 256,
        grid: None,
    }
}

#[test]
fn gate_kernels_are_registered_with_the_emulator() {
    for dtype in [DType::BF16, DType::F16] {
        for kernel in [dtype.kernel(), dtype.backward_kernel()] {
            let name = CString::new(kernel).unwrap();
            // SAFETY: NUL-terminated name.
            assert_eq!(
                unsafe { gsdpa_emu_has_kernel(name.as_ptr()) },
                1,
                "{kernel} not registered"
            );
        }
    }
}

/// Both dtypes x every gate mode x both activations x dense and strided layouts, at head dim 64.
fn every_mode_activation_and_layout() -> Vec<Case> {
    let mut cases = Vec::new();
    for dtype in [DType::BF16, DType::F16] {
        for gate_mode in [GSDPA_GATE_ELEMENTWISE, GSDPA_GATE_HEADWISE, GSDPA_GATE_NONE] {
            for activation in [GSDPA_ACT_SIGMOID, GSDPA_ACT_SILU] {
                for strided in [false, true] {
                    cases.push(Case {
                        gate_mode,
                        activation,
                        strided,
                        ..base(dtype, 64)
                    });
                }
            }
        }
    }
    cases
}

#[test]
fn every_mode_activation_and_layout_matches_the_reference() {
    for case in every_mode_activation_and_layout() {
        run(&case, 0);
    }
}

#[test]
fn head_dims_that_do_not_split_evenly_over_the_block() {
    for dtype in [DType::BF16, DType::F16] {
        // 8: 256 rows per block; 136: 17 threads per row, 15 rows per block, one idle thread;
        // 264 with a 32-thread block: 33 vectors per row, one thread loops twice.
        for (head_dim, block) in [(8, 256), (136, 256), (256, 256), (264, 32)] {
            for strided in [false, true] {
                run(
                    &Case {
                        strided,
                        block,
                        ..base(dtype, head_dim)
                    },
                    0,
                );
                run(
                    &Case {
                        strided,
                        block,
                        gate_mode: GSDPA_GATE_HEADWISE,
                        ..base(dtype, head_dim)
                    },
                    0,
                );
            }
        }
    }
}

#[test]
fn small_grids_cover_every_row_and_results_do_not_depend_on_thread_order() {
    for grid in [1, 3] {
        let case = Case {
            grid: Some(grid),
            strided: true,
            ..base(DType::BF16, 128)
        };
        let reference = run(&case, 0);
        for seed in [1, 0x9e37_79b9] {
            assert_eq!(
                run(&case, seed),
                reference,
                "grid {grid}: seed {seed} changed the result"
            );
        }
    }
}

#[test]
fn backward_every_mode_activation_and_layout_matches_the_reference() {
    for case in every_mode_activation_and_layout() {
        run_backward(&case, 0);
    }
}

#[test]
fn backward_head_dims_that_do_not_fill_a_lane_group() {
    for dtype in [DType::BF16, DType::F16] {
        // 8: one lane per row, 32 rows per warp; 136: 17 vectors on a 32-lane group (15 lanes idle);
        // 256: a warp per row; 264: 33 vectors, lane 0 loops twice; 40 with a 32-thread block: 5
        // vectors on 8 lanes, 4 rows per warp.
        for (head_dim, block) in [(8, 256), (136, 256), (256, 256), (264, 256), (40, 32)] {
            for gate_mode in [GSDPA_GATE_ELEMENTWISE, GSDPA_GATE_HEADWISE] {
                for strided in [false, true] {
                    run_backward(
                        &Case {
                            strided,
                            block,
                            gate_mode,
                            activation: GSDPA_ACT_SILU,
                            ..base(dtype, head_dim)
                        },
                        0,
                    );
                }
            }
        }
    }
}

#[test]
fn backward_blocks_with_a_partial_warp_write_nothing() {
    for gate_mode in [GSDPA_GATE_ELEMENTWISE, GSDPA_GATE_HEADWISE] {
        run_backward(
            &Case {
                block: 48,
                grid: Some(2),
                gate_mode,
                ..base(DType::F16, 64)
            },
            0,
        );
    }
}

#[test]
fn backward_small_grids_cover_every_row_and_results_do_not_depend_on_thread_order() {
    for gate_mode in [GSDPA_GATE_ELEMENTWISE, GSDPA_GATE_HEADWISE] {
        // 2 * 7 * 3 = 42 rows of 16 lanes: the last warp step of each block is part-filled.
        for grid in [1, 3] {
            let case = Case {
                grid: Some(grid),
                strided: true,
                seqlen: 7,
                gate_mode,
                ..base(DType::BF16, 128)
            };
            let reference = run_backward(&case, 0);
            for seed in [1, 0x9e37_79b9] {
                assert_eq!(
                    run_backward(&case, seed),
                    reference,
                    "gate mode {gate_mode}, grid {grid}: seed {seed} changed the result"
                );
            }
        }
    }
}
