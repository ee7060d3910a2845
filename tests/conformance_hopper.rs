//! The Hopper primitives on the emulator, checked against the PTX ISA's formulas computed here, without
//! the emulator's code: wgmma (every N the kernels use, both input types, A from registers or shared
//! memory, K-major and MN-major operands, every swizzle mode and descriptor field), TMA boxes (2D-5D,
//! partial at every edge, every swizzle, zero and NaN fill, stores and reduce-adds), mbarrier phase
//! sequences, and the self-tests for the bugs the emulator must catch.
#![cfg(feature = "emulator")]

mod common;

use gated_sdpa::emulator::Emulator;
use gated_sdpa::ffi;
use gated_sdpa::testing::hopper::{
    run_hopper_selftest, run_mbarrier_on_emulator, run_mbarrier_on_gpu, run_stmatrix_on_emulator,
    run_stmatrix_on_gpu, run_tma_loads_on_gpu, run_tma_on_emulator, run_wgmma_on_emulator,
    run_wgmma_on_gpu, HopperSelfTest, TmaCase, WgmmaBatch,
};
use gated_sdpa::tma::{TensorMapParams, TmaElement, TmaSwizzle};

// ---------------------------------------------------------------------------------------------------
// Shared-memory layouts of wgmma operands (PTX ISA, "matrix descriptor" and the canonical layouts).
// ---------------------------------------------------------------------------------------------------

/// Swizzle span in bytes; 0 is none.
#[derive(Clone, Copy, Debug)]
struct Layout {
    span: u32,
    mn_major: bool,
    lbo: u32,
    sbo: u32,
}

/// The descriptor's layout-type field (bits 63-62).
fn mode_bits(span: u32) -> u64 {
    match span {
        0 => 0,
        128 => 1,
        64 => 2,
        32 => 3,
        _ => unreachable!(),
    }
}

fn descriptor(start: u32, lbo: u32, sbo: u32, span: u32) -> u64 {
    let field = |x: u32| ((x & 0x3FFFF) >> 4) as u64;
    field(start) | (field(lbo) << 16) | (field(sbo) << 32) | (mode_bits(span) << 62)
}

/// The address bits 7 and up select which 16-byte chunks of a span swap places.
fn swizzle(address: u32, span: u32) -> u32 {
    if span == 0 {
        return address;
    }
    let mask = span / 16 - 1;
    address ^ (((address >> 7) & mask) << 4)
}

/// Where element (mn, k) of an operand with `rows` rows (M or N) lives, for a tile at `base` whose K
/// extent is `k_total`; and the descriptor of k step `s` (elements 16 s .. 16 s + 15).
///
/// K-major: rows of the operand are M (or N) rows, K contiguous. Without swizzle, 8x8 core matrices
/// (8 rows of 16 bytes, contiguous) at LBO steps along K and SBO steps along M/N. With a swizzle of span
/// W, rows of W bytes (W / 2 elements of K) in 8-row groups at SBO; K beyond one row continues in another
/// "atom column" placed after all row groups.
/// MN-major: M/N contiguous. Without swizzle, core matrices of 8 k-rows of 8 M/N elements, SBO steps along
/// M/N and LBO along K; with a swizzle, k-rows of W bytes (W / 2 M/N elements), 8 k-rows per group at SBO
/// steps along K, and groups of W / 2 M/N elements at LBO steps.
fn element_address(l: &Layout, base: u32, rows: u32, mn: u32, k: u32) -> u32 {
    let a = if l.span == 0 {
        if l.mn_major {
            base + (mn / 8) * l.sbo + (k / 8) * l.lbo + (k % 8) * 16 + (mn % 8) * 2
        } else {
            base + (mn / 8) * l.sbo + (k / 8) * l.lbo + (mn % 8) * 16 + (k % 8) * 2
        }
    } else {
        let per_row = l.span / 2;
        if l.mn_major {
            base + (mn / per_row) * l.lbo + (k / 8) * l.sbo + (k % 8) * l.span + (mn % per_row) * 2
        } else {
            let atom_column = (rows / 8) * l.sbo;
            base + (k / per_row) * atom_column
                + (mn / 8) * l.sbo
                + (mn % 8) * l.span
                + (k % per_row) * 2
        }
    };
    swizzle(a, l.span)
}

fn step_descriptor(l: &Layout, base: u32, rows: u32, s: u32) -> u64 {
    let k = 16 * s;
    let start = if l.span == 0 {
        base + (k / 8) * l.lbo
    } else if l.mn_major {
        base + (k / 8) * l.sbo
    } else {
        let per_row = l.span / 2;
        base + (k / per_row) * (rows / 8) * l.sbo + (k % per_row) * 2
    };
    descriptor(start, l.lbo, l.sbo, l.span)
}

/// Strides for a tile of `rows` x `k_total`: tight, or padded by `pad` 16-byte units where the layout
/// allows (swizzled layouts keep their 8-row groups aligned to the pattern).
fn layout(span: u32, mn_major: bool, rows: u32, k_total: u32, pad: u32) -> Layout {
    let (lbo, sbo) = match (span, mn_major) {
        (0, false) => {
            let lbo = 128 + 16 * pad;
            (lbo, (k_total / 8) * lbo + 16 * pad)
        }
        (0, true) => {
            let lbo = 128 + 16 * pad;
            (lbo, (k_total / 8) * lbo + 16 * pad)
        }
        // LBO is not used by K-major swizzled layouts: a value that would show if it were.
        (w, false) => (0x1230, 8 * w * (1 + pad % 2)),
        (w, true) => {
            let sbo = 8 * w * (1 + pad % 2);
            (sbo * (k_total / 8), sbo)
        }
    };
    let _ = rows;
    Layout {
        span,
        mn_major,
        lbo,
        sbo,
    }
}

/// Bytes the operand occupies from its base (the highest element address + 2).
fn extent(l: &Layout, rows: u32, k_total: u32) -> u32 {
    let mut max = 0;
    for mn in 0..rows {
        for k in 0..k_total {
            max = max.max(element_address(l, 0, rows, mn, k) + 2);
        }
    }
    max
}

fn bits(dtype: u32, x: f32) -> u16 {
    if dtype == 0 {
        half::bf16::from_f32(x).to_bits()
    } else {
        half::f16::from_f32(x).to_bits()
    }
}

struct WgmmaSpec {
    n: u32,
    dtype: u32,
    a_regs: bool,
    a_span: u32,
    a_mn_major: bool,
    b_span: u32,
    b_mn_major: bool,
    k_steps: u32,
    accumulate: bool,
    pad: u32,
}

/// Builds the batch and the expected output (f32 bits) for the specs.
fn build_wgmma(specs: &[WgmmaSpec]) -> (WgmmaBatch, Vec<f32>) {
    let mut batch = WgmmaBatch {
        cases: Vec::new(),
        images: Vec::new(),
        a_rows: Vec::new(),
        c_init: Vec::new(),
        out_len: 0,
    };
    let mut expected = Vec::new();
    for (index, s) in specs.iter().enumerate() {
        let (n, k_total) = (s.n, 16 * s.k_steps);
        let salt = index as i64;
        let a = |m: u32, k: u32| ((m as i64 * 5 + k as i64 * 3 + salt) % 9 - 4) as f32;
        let b = |k: u32, nn: u32| ((k as i64 * 7 + nn as i64 * 2 + salt) % 7 - 3) as f32;
        let la = layout(s.a_span, s.a_mn_major, 64, k_total, s.pad);
        let lb = layout(s.b_span, s.b_mn_major, n, k_total, s.pad + 1);
        let a_bytes = if s.a_regs {
            0
        } else {
            extent(&la, 64, k_total)
        };
        let b_base = a_bytes.next_multiple_of(1024);
        let image_bytes = (b_base + extent(&lb, n, k_total)).next_multiple_of(16);
        assert!(
            image_bytes <= ffi::GSDPA_WGMMA_CONF_SMEM,
            "case {index}: image too large"
        );
        // Unused bytes hold NaN in either type, so a wrong address shows.
        let mut image = vec![0xffu8; image_bytes as usize];
        let mut put = |addr: u32, v: u16| {
            image[addr as usize..addr as usize + 2].copy_from_slice(&v.to_le_bytes())
        };
        for k in 0..k_total {
            if !s.a_regs {
                for m in 0..64 {
                    put(element_address(&la, 0, 64, m, k), bits(s.dtype, a(m, k)));
                }
            }
            for nn in 0..n {
                put(
                    element_address(&lb, b_base, n, nn, k),
                    bits(s.dtype, b(k, nn)),
                );
            }
        }
        let mut case = ffi::GsdpaWgmmaCase {
            desc_a: [0; 4],
            desc_b: [0; 4],
            n,
            dtype: s.dtype,
            a_from_registers: s.a_regs as u32,
            trans_a: s.a_mn_major as u32,
            trans_b: s.b_mn_major as u32,
            k_steps: s.k_steps,
            accumulate: s.accumulate as u32,
            image_bytes,
            image_offset: batch.images.len() as u64,
            a_offset: batch.a_rows.len() as u64,
            c_offset: batch.c_init.len() as u64,
            out_offset: batch.out_len as u64,
        };
        for step in 0..s.k_steps {
            if !s.a_regs {
                case.desc_a[step as usize] = step_descriptor(&la, 0, 64, step);
            }
            case.desc_b[step as usize] = step_descriptor(&lb, b_base, n, step);
        }
        batch.images.extend_from_slice(&image);
        batch
            .images
            .resize(batch.images.len().next_multiple_of(16), 0);
        for m in 0..64 {
            for k in 0..k_total {
                batch.a_rows.push(bits(s.dtype, a(m, k)));
            }
        }
        // Thread i, register r: D[16 (i / 32) + g + 8 ((r / 2) % 2)][8 (r / 4) + 2 t + r % 2].
        let regs = n / 2;
        for thread in 0..128u32 {
            let (warp, g, t) = (thread / 32, (thread % 32) / 4, thread % 4);
            for r in 0..regs {
                let c = ((thread * 7 + r * 3) % 11) as f32 - 5.0;
                batch.c_init.push(c);
                let m = 16 * warp + g + 8 * ((r / 2) % 2);
                let nn = 8 * (r / 4) + 2 * t + r % 2;
                let dot: f32 = (0..k_total).map(|k| a(m, k) * b(k, nn)).sum();
                expected.push(if s.accumulate { c + dot } else { dot });
            }
        }
        batch.out_len += (128 * regs) as usize;
        batch.cases.push(case);
    }
    (batch, expected)
}

fn check_wgmma(specs: &[WgmmaSpec]) {
    let (batch, expected) = build_wgmma(specs);
    let got = run_wgmma_on_emulator(&Emulator::new(), &batch).expect("wgmma conformance runs");
    compare_wgmma(&batch, &got, &expected);
}

fn compare_wgmma(batch: &WgmmaBatch, got: &[f32], expected: &[f32]) {
    let mut problems = Vec::new();
    for (i, case) in batch.cases.iter().enumerate() {
        let regs = (case.n / 2) as usize;
        let start = case.out_offset as usize;
        for e in start..start + 128 * regs {
            if got[e].to_bits() != expected[e].to_bits() {
                problems.push(format!(
                    "case {i} (n {}, dtype {}, regs {}, trans {}/{}, k steps {}): thread {} reg {}: got {}, want {}",
                    case.n,
                    case.dtype,
                    case.a_from_registers,
                    case.trans_a,
                    case.trans_b,
                    case.k_steps,
                    (e - start) / regs,
                    (e - start) % regs,
                    got[e],
                    expected[e]
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} mismatches, first:\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n")
    );
}

const SPANS: [u32; 4] = [0, 32, 64, 128];
/// The N the conformance kernel instantiates (kernels/conformance_hopper.cu).
const SHAPES: [u32; 10] = [8, 16, 24, 32, 64, 96, 128, 176, 192, 256];

/// Every N, both types, A from shared memory and from registers; the swizzle modes rotate.
fn every_shape_specs() -> Vec<WgmmaSpec> {
    SHAPES
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| {
            [false, true].map(|a_regs| WgmmaSpec {
                n,
                dtype: (i as u32 + a_regs as u32) % 2,
                a_regs,
                a_span: SPANS[i % 4],
                a_mn_major: false,
                b_span: SPANS[(i + 1 + a_regs as usize) % 4],
                b_mn_major: i % 3 == 2,
                k_steps: 1 + (i as u32 % 4),
                accumulate: i % 2 == 0,
                pad: i as u32 % 3,
            })
        })
        .collect()
}

#[test]
fn wgmma_every_shape() {
    check_wgmma(&every_shape_specs());
}

/// N = 64, K = 64 (4 k steps, so the start address walks along swizzled rows and atom columns): every
/// swizzle of A and of B, K-major and MN-major, with tight and padded strides.
fn every_layout_specs() -> Vec<WgmmaSpec> {
    let mut specs = Vec::new();
    for (i, &a_span) in SPANS.iter().enumerate() {
        for (j, &b_span) in SPANS.iter().enumerate() {
            for major in 0..4u32 {
                specs.push(WgmmaSpec {
                    n: 64,
                    dtype: (i + j) as u32 % 2,
                    a_regs: false,
                    a_span,
                    a_mn_major: major & 1 != 0,
                    b_span,
                    b_mn_major: major & 2 != 0,
                    k_steps: 4,
                    accumulate: major % 2 == 0,
                    pad: (i + j + major as usize) as u32 % 3,
                });
            }
        }
    }
    specs
}

#[test]
fn wgmma_every_layout_and_swizzle() {
    check_wgmma(&every_layout_specs());
}

#[test]
fn wgmma_register_a_with_every_b_layout() {
    let specs: Vec<WgmmaSpec> = (0..8u32)
        .map(|i| WgmmaSpec {
            n: [128, 256][i as usize % 2],
            dtype: i % 2,
            a_regs: true,
            a_span: 0,
            a_mn_major: false,
            b_span: SPANS[(i / 2) as usize],
            b_mn_major: i % 4 >= 2,
            k_steps: 2 + i % 3,
            accumulate: true,
            pad: i % 2,
        })
        .collect();
    check_wgmma(&specs);
}

fn one_case_error(edit: impl Fn(&mut ffi::GsdpaWgmmaCase)) -> String {
    let (mut batch, _) = build_wgmma(&[WgmmaSpec {
        n: 16,
        dtype: 0,
        a_regs: false,
        a_span: 128,
        a_mn_major: false,
        b_span: 0,
        b_mn_major: false,
        k_steps: 1,
        accumulate: false,
        pad: 0,
    }]);
    edit(&mut batch.cases[0]);
    run_wgmma_on_emulator(&Emulator::new(), &batch)
        .expect_err("a bad descriptor must fail the launch")
        .to_string()
}

#[test]
fn wgmma_descriptor_fields_are_checked() {
    // Reserved bits, a base offset (not modelled), an operand past the end of shared memory.
    let e = one_case_error(|c| c.desc_a[0] |= 1 << 14);
    assert!(e.contains("reserved bits"), "{e}");
    let e = one_case_error(|c| c.desc_b[0] |= 3 << 49);
    assert!(e.contains("base offset"), "{e}");
    let e = one_case_error(|c| c.desc_b[0] |= 0x3FF0);
    assert!(e.contains("outside the block"), "{e}");
    // The descriptor's start address field: moving B by 16 bytes reads other elements.
    let (mut batch, expected) = build_wgmma(&[WgmmaSpec {
        n: 16,
        dtype: 1,
        a_regs: false,
        a_span: 0,
        a_mn_major: false,
        b_span: 0,
        b_mn_major: false,
        k_steps: 1,
        accumulate: false,
        pad: 0,
    }]);
    batch.cases[0].desc_b[0] += 1;
    let got = run_wgmma_on_emulator(&Emulator::new(), &batch);
    assert!(
        got.map(|g| g != expected).unwrap_or(true),
        "a moved start address must change the result"
    );
}

// ---------------------------------------------------------------------------------------------------
// TMA
// ---------------------------------------------------------------------------------------------------

/// A tensor of `dims` (innermost first) of `element`, row pitch padded to 16 bytes; element values are
/// distinct nonzero bit patterns (raw copies are checked bit for bit). Returns (bytes, byte strides).
fn tensor(dims: &[u64], element: TmaElement) -> (Vec<u8>, Vec<u64>) {
    let eb = element.bytes() as u64;
    let mut strides = Vec::new();
    let mut pitch = (dims[0] * eb).next_multiple_of(16);
    for &d in &dims[1..] {
        strides.push(pitch);
        pitch *= d;
    }
    let mut bytes = vec![0u8; pitch as usize];
    for (i, chunk) in bytes.chunks_mut(eb as usize).enumerate() {
        let v = (i as u32 % 30000) + 1;
        let v = if eb == 2 {
            (v as u16).to_le_bytes().to_vec()
        } else {
            (v as f32).to_le_bytes().to_vec()
        };
        chunk.copy_from_slice(&v);
    }
    (bytes, strides)
}

/// Element `linear` of the box (dimension 0 fastest): whether it lies inside the tensor, and its byte
/// offset in the tensor.
fn element_of_box(map: &TensorMapParams, coords: &[i32], linear: usize) -> (bool, u64) {
    let eb = map.element.bytes() as u64;
    let mut rest = linear;
    let mut address = 0u64;
    let mut inside = true;
    for (d, (&extent, &dim)) in map.box_dims.iter().zip(&map.dims).enumerate() {
        let i = rest % extent as usize;
        rest /= extent as usize;
        let g = coords[d] as i64 + i as i64;
        inside &= g >= 0 && (g as u64) < dim;
        let stride = if d == 0 { eb } else { map.strides_bytes[d - 1] };
        address = address.wrapping_add((g as u64).wrapping_mul(stride));
    }
    (inside, address)
}

/// The box as TMA lays it in shared memory at a 1024-aligned address: element by element, dimension 0
/// innermost, each at its swizzled offset; out-of-bounds elements zero (or NaN).
fn expected_box(map: &TensorMapParams, coords: &[i32], bytes: &[u8]) -> Vec<u8> {
    let eb = map.element.bytes() as usize;
    let mut out = vec![0u8; map.box_bytes() as usize];
    let total: usize = map.box_dims.iter().map(|&b| b as usize).product();
    for linear in 0..total {
        let (inside, address) = element_of_box(map, coords, linear);
        let at = swizzle((linear * eb) as u32, map.swizzle.span_bytes()) as usize;
        if inside {
            out[at..at + eb].copy_from_slice(&bytes[address as usize..address as usize + eb]);
        } else if map.oob_nan {
            let nan: Vec<u8> = match map.element {
                TmaElement::Bf16 => 0x7fc0u16.to_le_bytes().to_vec(),
                TmaElement::F16 => 0x7e00u16.to_le_bytes().to_vec(),
                TmaElement::F32 => 0x7fc0_0000u32.to_le_bytes().to_vec(),
            };
            out[at..at + eb].copy_from_slice(&nan);
        }
    }
    out
}

fn load_case(map: TensorMapParams, coords: &[i32]) -> TmaCase {
    TmaCase {
        map,
        coords: coords.to_vec(),
        store: None,
        reduce_add: false,
    }
}

fn check_loads(dims: &[u64], element: TmaElement, cases: Vec<TmaCase>) {
    let (bytes, _) = tensor(dims, element);
    let got = run_tma_on_emulator(&Emulator::new(), &bytes, &cases).expect("TMA conformance runs");
    compare_loads(&bytes, &cases, &got);
}

fn compare_loads(bytes: &[u8], cases: &[TmaCase], got: &[Vec<u8>]) {
    for (i, case) in cases.iter().enumerate() {
        let want = expected_box(&case.map, &case.coords, bytes);
        assert!(
            got[i] == want,
            "case {i} (box {:?} at {:?}, swizzle {:?}): the box differs",
            case.map.box_dims,
            case.coords,
            case.map.swizzle
        );
    }
}

fn map(element: TmaElement, dims: &[u64], box_dims: &[u32]) -> TensorMapParams {
    let (_, strides) = tensor(dims, element);
    TensorMapParams::tiled(element, 0, dims, &strides, box_dims)
}

const DIMS_2D: [u64; 2] = [72, 37];

fn edge_cases_2d() -> Vec<TmaCase> {
    let dims = DIMS_2D;
    let mut cases = Vec::new();
    for (swizzle, inner) in [
        (TmaSwizzle::None, 16u32),
        (TmaSwizzle::B32, 16),
        (TmaSwizzle::B64, 32),
        (TmaSwizzle::B128, 64),
    ] {
        let m = map(TmaElement::Bf16, &dims, &[inner, 8]).with_swizzle(swizzle);
        let right = 72 - inner as i32 / 2;
        for coords in [
            [0, 0],
            [right, 0],
            [0, 33],
            [right, 33],
            [-(inner as i32) / 2, -3],
            [-8, 20],
            [24, -5],
            [80, 0],
            [0, 40],
        ] {
            cases.push(load_case(m.clone(), &coords));
        }
    }
    let mut nan = map(TmaElement::Bf16, &dims, &[16, 8]);
    nan.oob_nan = true;
    cases.push(load_case(nan, &[64, 32]));
    cases
}

#[test]
fn tma_2d_boxes_at_every_edge_and_swizzle() {
    check_loads(&DIMS_2D, TmaElement::Bf16, edge_cases_2d());
}

#[test]
fn tma_f16_and_f32_boxes() {
    check_loads(
        &[40, 21],
        TmaElement::F16,
        vec![
            load_case(map(TmaElement::F16, &[40, 21], &[16, 16]), &[32, 12]),
            load_case(
                map(TmaElement::F16, &[40, 21], &[64, 4]).with_swizzle(TmaSwizzle::B128),
                &[-20, 19],
            ),
        ],
    );
    let mut nan = map(TmaElement::F32, &[20, 9], &[8, 4]);
    nan.oob_nan = true;
    check_loads(
        &[20, 9],
        TmaElement::F32,
        vec![
            load_case(map(TmaElement::F32, &[20, 9], &[8, 4]), &[16, 7]),
            load_case(
                map(TmaElement::F32, &[20, 9], &[32, 2]).with_swizzle(TmaSwizzle::B128),
                &[-4, 0],
            ),
            load_case(nan, &[-4, 8]),
        ],
    );
}

#[test]
fn tma_3d_to_5d_boxes() {
    let d3 = [24u64, 5, 7];
    check_loads(
        &d3,
        TmaElement::Bf16,
        [[0, 0, 0], [16, 3, 5], [-8, -1, -2], [8, 4, 6]]
            .iter()
            .map(|c| load_case(map(TmaElement::Bf16, &d3, &[16, 3, 4]), c))
            .collect(),
    );
    let d4 = [8u64, 3, 4, 5];
    check_loads(
        &d4,
        TmaElement::Bf16,
        [[0, 0, 0, 0], [0, 2, 3, 4], [-8, -1, 1, -1]]
            .iter()
            .map(|c| load_case(map(TmaElement::Bf16, &d4, &[8, 2, 2, 3]), c))
            .collect(),
    );
    let d5 = [16u64, 3, 2, 2, 3];
    check_loads(
        &d5,
        TmaElement::Bf16,
        [[0, 0, 0, 0, 0], [8, 2, 1, 1, 2], [-8, -1, 0, 1, -1]]
            .iter()
            .map(|c| {
                load_case(
                    map(TmaElement::Bf16, &d5, &[16, 2, 2, 2, 2]).with_swizzle(TmaSwizzle::B32),
                    c,
                )
            })
            .collect(),
    );
}

/// The tensor after storing (or adding) `image` (the box as it lies in shared memory) at `coords`.
fn expected_store(
    map: &TensorMapParams,
    coords: &[i32],
    image: &[u8],
    before: &[u8],
    add: bool,
) -> Vec<u8> {
    let eb = map.element.bytes() as usize;
    let mut out = before.to_vec();
    let total: usize = map.box_dims.iter().map(|&b| b as usize).product();
    for linear in 0..total {
        let (inside, address) = element_of_box(map, coords, linear);
        if !inside {
            continue;
        }
        let at = swizzle((linear * eb) as u32, map.swizzle.span_bytes()) as usize;
        let a = address as usize;
        if add {
            let x = f32::from_le_bytes(out[a..a + 4].try_into().unwrap());
            let y = f32::from_le_bytes(image[at..at + 4].try_into().unwrap());
            out[a..a + 4].copy_from_slice(&(x + y).to_le_bytes());
        } else {
            out[a..a + eb].copy_from_slice(&image[at..at + eb]);
        }
    }
    out
}

#[test]
fn tma_stores_and_reduce_adds_clip_at_every_edge() {
    let dims = [72u64, 37];
    let (bytes, _) = tensor(&dims, TmaElement::Bf16);
    let mut cases = Vec::new();
    for (swizzle, inner) in [(TmaSwizzle::None, 16u32), (TmaSwizzle::B128, 64)] {
        let m = map(TmaElement::Bf16, &dims, &[inner, 8]).with_swizzle(swizzle);
        for coords in [[0, 0], [72 - inner as i32 / 2, 33], [-8, -3]] {
            let image: Vec<u8> = (0..m.box_bytes()).map(|i| (i * 7 + 3) as u8).collect();
            cases.push(TmaCase {
                map: m.clone(),
                coords: coords.to_vec(),
                store: Some(image),
                reduce_add: false,
            });
        }
    }
    let got = run_tma_on_emulator(&Emulator::new(), &bytes, &cases).expect("TMA stores run");
    for (i, c) in cases.iter().enumerate() {
        let want = expected_store(&c.map, &c.coords, c.store.as_ref().unwrap(), &bytes, false);
        assert!(got[i] == want, "store case {i} at {:?}", c.coords);
    }

    let dims = [20u64, 9];
    let (bytes, _) = tensor(&dims, TmaElement::F32);
    let m = map(TmaElement::F32, &dims, &[8, 4]);
    let cases: Vec<TmaCase> = [[0, 0], [16, 7], [-4, -2]]
        .iter()
        .map(|c| TmaCase {
            map: m.clone(),
            coords: c.to_vec(),
            store: Some(
                (0..32)
                    .flat_map(|i| ((i % 5) as f32 - 2.0).to_le_bytes())
                    .collect(),
            ),
            reduce_add: true,
        })
        .collect();
    let got = run_tma_on_emulator(&Emulator::new(), &bytes, &cases).expect("TMA reduce-adds run");
    for (i, c) in cases.iter().enumerate() {
        let want = expected_store(&c.map, &c.coords, c.store.as_ref().unwrap(), &bytes, true);
        assert!(got[i] == want, "reduce-add case {i} at {:?}", c.coords);
    }
}

#[test]
fn tma_parameters_are_validated() {
    let ok = map(TmaElement::Bf16, &[64, 8], &[64, 8]);
    assert!(ok.validate().is_ok());
    let mut bad = Vec::new();
    let mut m = ok.clone();
    m.box_dims[1] = 257;
    bad.push(m);
    let mut m = ok.clone();
    m.box_dims[0] = 12; // 24 bytes: not a multiple of 16
    bad.push(m);
    let mut m = ok.clone();
    m.strides_bytes[0] = 136;
    bad.push(m);
    let mut m = ok.clone();
    m.global_address = 8;
    bad.push(m);
    bad.push(ok.clone().with_swizzle(TmaSwizzle::B64)); // 128-byte rows, 64-byte swizzle
    let mut m = ok.clone();
    m.element_strides[1] = 9;
    bad.push(m);
    for m in bad {
        assert!(
            matches!(
                m.validate(),
                Err(gated_sdpa::GsdpaError::InvalidArgument(_))
            ),
            "{m:?}"
        );
        assert!(m.encode_emulator().is_err(), "{m:?}");
    }
}

// ---------------------------------------------------------------------------------------------------
// mbarrier phases
// ---------------------------------------------------------------------------------------------------

#[test]
fn mbarrier_phase_sequences() {
    let rounds = ffi::GSDPA_MBARRIER_CONF_ROUNDS;
    let words = ffi::GSDPA_MBARRIER_CONF_WORDS as usize;
    // Seeds reorder the arriving threads between the barriers that sequence them.
    for seed in [0, 7] {
        check_mbarrier_rounds(
            &run_mbarrier_on_emulator(&Emulator::new().with_seed(seed), rounds)
                .expect("mbarrier kernel runs"),
            rounds,
            words,
        );
    }
}

fn check_mbarrier_rounds(got: &[u32], rounds: u32, words: usize) {
    for r in 0..rounds as usize {
        // A phase completes when its pending arrivals reach zero; test_wait(p) is true once the phase of
        // parity p has completed, i.e. when the current phase's parity differs from p.
        let count = r % 4 + 1;
        let mut completed = 0usize;
        let mut pending = count;
        let word = |completed: usize| {
            let current = (completed % 2) as u32;
            ((current != 0) as u32) | (((current != 1) as u32) << 1)
        };
        let mut want = vec![u32::MAX; words];
        want[0] = word(completed);
        for i in 0..3 * count {
            pending -= 1;
            if pending == 0 {
                completed += 1;
                pending = count;
            }
            want[1 + i] = word(completed);
        }
        assert_eq!(&got[r * words..(r + 1) * words], &want[..], "round {r}");
    }
}

// ---------------------------------------------------------------------------------------------------
// stmatrix and elect.sync
// ---------------------------------------------------------------------------------------------------

#[test]
fn stmatrix_is_ldmatrix_inverted_and_elect_picks_one_lane() {
    let got = run_stmatrix_on_emulator(&Emulator::new()).expect("stmatrix kernel runs");
    let halves: Vec<u16> = got[..384]
        .iter()
        .flat_map(|w| [*w as u16, (*w >> 16) as u16])
        .collect();
    // Register j of lane l holds the halves 8 l + 2 j (low) and 8 l + 2 j + 1: elements
    // M_j[l / 4][2 (l % 4)] and [.. + 1] (.trans: M_j[2 (l % 4)][l / 4] and M_j[2 (l % 4) + 1][l / 4]).
    // Row r of matrix j goes to the address of lane 8 j + r.
    let mut want = vec![0xffffu16; 768];
    let mut store = |base: usize,
                     row_halves: usize,
                     num: usize,
                     trans: bool,
                     addr: &dyn Fn(usize) -> (usize, usize)| {
        for lane in 0..32 {
            for j in 0..num {
                for h in 0..2 {
                    let value = (8 * lane + 2 * j + h) as u16;
                    let (r, c) = if trans {
                        (2 * (lane % 4) + h, lane / 4)
                    } else {
                        (lane / 4, 2 * (lane % 4) + h)
                    };
                    let (row, col0) = addr(8 * j + r);
                    want[base + row * row_halves + col0 + c] = value;
                }
            }
        }
    };
    store(0, 16, 4, false, &|l| (l % 16, (l / 16) * 8));
    store(256, 16, 4, true, &|l| (l % 16, (l / 16) * 8));
    store(512, 8, 2, false, &|l| (l % 16, 0));
    store(640, 8, 1, false, &|l| (l % 8, 0));
    store(704, 8, 1, true, &|l| (l % 8, 0));
    assert_eq!(halves, want);
    let elected: Vec<u32> = got[384..].to_vec();
    assert_eq!(
        elected.iter().sum::<u32>(),
        1,
        "exactly one lane: {elected:?}"
    );
}

// ---------------------------------------------------------------------------------------------------
// Self-tests: each bug is caught.
// ---------------------------------------------------------------------------------------------------

fn selftest_tensor() -> Vec<u16> {
    (0..ffi::GSDPA_HOPPER_SELFTEST_ROWS as usize * 64)
        .map(|i| half::bf16::from_f32(((i * 7 + i / 64) % 5) as f32 - 2.0).to_bits())
        .collect()
}

#[test]
fn hopper_selftest_correct_computes_t_t_transposed() {
    let t = selftest_tensor();
    let value = |r: usize, c: usize| half::bf16::from_bits(t[r * 64 + c]).to_f32();
    for (seed, test) in [
        (0, HopperSelfTest::Correct),
        (3, HopperSelfTest::Correct),
        (0, HopperSelfTest::Pipelined),
        (5, HopperSelfTest::Pipelined),
    ] {
        let out = run_hopper_selftest(&Emulator::new().with_seed(seed), test, &t)
            .expect("the correct Hopper self-tests run");
        for thread in 0..128 {
            let (warp, g, tt) = (thread / 32, (thread % 32) / 4, thread % 4);
            for r in 0..32 {
                let m = 16 * warp + g + 8 * ((r / 2) % 2);
                let n = 8 * (r / 4) + 2 * tt + r % 2;
                let want: f32 = (0..64).map(|k| value(m, k) * value(n, k)).sum();
                assert_eq!(
                    out[thread * 32 + r],
                    want,
                    "{test:?} seed {seed} thread {thread} reg {r}"
                );
            }
        }
    }
}

fn selftest_error(test: HopperSelfTest) -> String {
    selftest_error_with(&Emulator::new(), test)
}

fn selftest_error_with(emulator: &Emulator, test: HopperSelfTest) -> String {
    match run_hopper_selftest(emulator, test, &selftest_tensor()) {
        Ok(out) => panic!(
            "{test:?} was not caught ({} NaN outputs)",
            out.iter().filter(|x| x.is_nan()).count()
        ),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_wgmma_wait_is_caught() {
    let e = selftest_error(HopperSelfTest::MissingWgmmaWait);
    assert!(
        e.contains("in flight") && e.contains("emu_selftest.cu:"),
        "{e}"
    );
}

#[test]
fn missing_wgmma_fence_is_caught() {
    let e = selftest_error(HopperSelfTest::MissingWgmmaFence);
    assert!(e.contains("no wgmma.fence"), "{e}");
}

#[test]
fn wrong_expect_tx_byte_counts_are_caught() {
    let e = selftest_error(HopperSelfTest::ShortExpectTx);
    assert!(e.contains("more bytes arrived than expect_tx"), "{e}");
    // Too many bytes expected: the phase never completes; the deadlock names the waiting consumers and
    // the barrier's outstanding transaction count.
    let e = selftest_error(HopperSelfTest::LongExpectTx);
    assert!(
        e.contains("deadlock")
            && e.contains("mbarrier wait")
            && e.contains("transaction count 128"),
        "{e}"
    );
}

#[test]
fn reading_a_tma_destination_before_its_barrier_is_caught() {
    let e = selftest_error(HopperSelfTest::ReadBeforeBarrier);
    assert!(
        e.contains("reads shared address") && e.contains("is still writing"),
        "{e}"
    );
    let e = selftest_error(HopperSelfTest::WriteInFlight);
    assert!(
        e.contains("writes shared address 1152") && e.contains("is still writing"),
        "{e}"
    );
}

#[test]
fn wgmma_sources_and_accumulators_in_flight_are_guarded() {
    let e = selftest_error(HopperSelfTest::OperandOverwritten);
    assert!(
        e.contains("operand A in shared memory")
            && e.contains("changed while the wgmma was in flight"),
        "{e}"
    );
    let e = selftest_error(HopperSelfTest::AccumulatorWritten);
    assert!(e.contains("accumulator 3 was written"), "{e}");
    // A write by another warp ordered after the wgmma's issue but not after its retirement: on the GPU
    // the operand reads may last until the wait_group, so the race detector takes them to happen there.
    for seed in [0, 1, 7] {
        let e = selftest_error_with(
            &Emulator::new().with_seed(seed),
            HopperSelfTest::ReuseAfterIssue,
        );
        assert!(
            (e.contains("shared-memory race") && e.contains("writes it") && e.contains("read it"))
                || e.contains("changed while the wgmma was in flight"),
            "seed {seed}: {e}"
        );
    }
}

#[test]
fn named_barrier_handoffs_order_exactly_their_participants() {
    let t = selftest_tensor();
    let mine = |thread: usize| thread as f32 + 0.5 * (t[thread] & 7) as f32;
    for seed in [0, 1, 7] {
        let out = run_hopper_selftest(
            &Emulator::new().with_seed(seed),
            HopperSelfTest::NamedHandoff,
            &t,
        )
        .expect("hand-offs through named barriers are no race");
        for thread in 0..128 {
            assert_eq!(
                out[thread * 32],
                mine((thread + 32) % 128),
                "seed {seed} thread {thread}"
            );
            assert_eq!(
                out[thread * 32 + 1],
                mine(128 + thread % 32),
                "seed {seed} thread {thread}"
            );
        }
    }
    for (test, second_line) in [
        (HopperSelfTest::NamedNoBarrier, "emu_selftest.cu:"),
        (HopperSelfTest::NamedOutsider, "emu_selftest.cu:"),
        (HopperSelfTest::NamedWriteAfterArrive, "emu_selftest.cu:"),
    ] {
        for seed in [0, 3] {
            let e = match run_hopper_selftest(&Emulator::new().with_seed(seed), test, &t) {
                Ok(_) => panic!("{test:?} seed {seed}: the race was not caught"),
                Err(e) => e.to_string(),
            };
            assert!(
                e.contains("shared-memory race") && e.contains(second_line),
                "{test:?} seed {seed}: {e}"
            );
        }
    }
    // The race detector off: the same kernels run (the bugs are invisible to the results here).
    assert!(run_hopper_selftest(
        &Emulator::new().with_racecheck(false),
        HopperSelfTest::NamedOutsider,
        &t
    )
    .is_ok());
}

#[test]
fn every_hopper_selftest_kernel_is_compiled() {
    for test in HopperSelfTest::ALL {
        assert!(Emulator::has_kernel(test.kernel()), "{}", test.kernel());
    }
}

// ---------------------------------------------------------------------------------------------------
// On a Hopper GPU: the hardware against the same formulas (skipped without one).
// ---------------------------------------------------------------------------------------------------

fn hopper_gpu() -> Option<gated_sdpa::CudaBackend> {
    let gpu = common::gpu()?;
    if gpu.arch() != gated_sdpa::TargetArch::SM90 {
        common::report_skip("the Hopper conformance needs an sm_90 GPU");
        return None;
    }
    Some(gpu)
}

#[test]
fn gpu_wgmma_matches_the_ptx_layouts() {
    let Some(gpu) = hopper_gpu() else { return };
    for specs in [every_shape_specs(), every_layout_specs()] {
        let (batch, expected) = build_wgmma(&specs);
        let got = run_wgmma_on_gpu(&gpu, &batch).expect("wgmma conformance on the GPU");
        compare_wgmma(&batch, &got, &expected);
    }
}

#[test]
fn gpu_tma_loads_match_the_formulas() {
    let Some(gpu) = hopper_gpu() else { return };
    let cases = edge_cases_2d();
    let (bytes, _) = tensor(&DIMS_2D, TmaElement::Bf16);
    let got = run_tma_loads_on_gpu(&gpu, &bytes, &cases).expect("TMA conformance on the GPU");
    compare_loads(&bytes, &cases, &got);
}

#[test]
fn gpu_mbarrier_and_stmatrix_match_the_emulator() {
    let Some(gpu) = hopper_gpu() else { return };
    let rounds = ffi::GSDPA_MBARRIER_CONF_ROUNDS;
    assert_eq!(
        run_mbarrier_on_gpu(&gpu, rounds).unwrap(),
        run_mbarrier_on_emulator(&Emulator::new(), rounds).unwrap()
    );
    let (on_gpu, emulated) = (
        run_stmatrix_on_gpu(&gpu).unwrap(),
        run_stmatrix_on_emulator(&Emulator::new()).unwrap(),
    );
    // Which lane elect.sync picks is the hardware's choice: only the stores must agree.
    assert_eq!(on_gpu[..384], emulated[..384]);
    assert_eq!(on_gpu[384..].iter().sum::<u32>(), 1);
}
