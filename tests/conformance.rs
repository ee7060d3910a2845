//! The primitives' per-lane results, checked against the PTX ISA's formulas.
//!
//! `kernels/conformance.cu` runs each primitive once on structured inputs and dumps every lane's
//! registers. The expected dump is computed here, directly from the PTX layouts
//! (`docs/ptx-primitives.md`), without using the emulator's code. The emulator must match it exactly; on a GPU
//! (tests/gpu.rs) the hardware's dump must match the emulator's, which ties the emulator to real silicon.
#![cfg(feature = "emulator")]

use gated_sdpa::emulator::Emulator;
use gated_sdpa::ffi::GSDPA_CONFORMANCE_SLOTS;
use gated_sdpa::testing::conformance::{inputs, run_on_emulator, special_pairs, DUMP_WORDS};

const SLOTS: usize = GSDPA_CONFORMANCE_SLOTS as usize;

/// X[r][c] = 16 r + c, as 16-bit bits of the given encoding (0: bf16, 1: f16).
fn x_bits(input: &[u16], encoding: usize, r: usize, c: usize) -> u16 {
    input[encoding * 256 + r * 16 + c]
}

/// ldmatrix: row r of matrix j comes from the address of lane 8j + r. `row_address(lane)` gives the
/// (row, first column) of X that lane points at. Returns each lane's `num` registers.
fn ldmatrix_expected(
    input: &[u16],
    num: usize,
    trans: bool,
    row_address: impl Fn(usize) -> (usize, usize),
) -> Vec<Vec<u32>> {
    let m = |j: usize, r: usize, c: usize| {
        let (row, col0) = row_address(8 * j + r);
        x_bits(input, 0, row, col0 + c) as u32
    };
    (0..32)
        .map(|lane| {
            (0..num)
                .map(|j| {
                    let (a, b) = (lane / 4, 2 * (lane % 4));
                    if trans {
                        m(j, b, a) | (m(j, b + 1, a) << 16)
                    } else {
                        m(j, a, b) | (m(j, a, b + 1) << 16)
                    }
                })
                .collect()
        })
        .collect()
}

/// shfl.sync as the PTX ISA defines it, with CUDA's `c` operand for a width: segmask = 32 - width.
fn shuffle_source(mode: &str, lane: usize, b: usize, width: usize) -> usize {
    let segmask = 32 - width;
    let min_lane = lane & segmask;
    let max_lane = min_lane | (31 & !segmask);
    let (j, valid) = match mode {
        "up" => {
            let j = lane as isize - b as isize;
            (j, j >= min_lane as isize)
        }
        "down" => {
            let j = lane + b;
            (j as isize, j <= max_lane)
        }
        "bfly" => {
            let j = lane ^ b;
            (j as isize, j <= max_lane)
        }
        "idx" => {
            let j = min_lane | (b & !segmask & 31);
            (j as isize, j <= max_lane)
        }
        _ => unreachable!(),
    };
    if valid {
        j as usize
    } else {
        lane
    }
}

fn expected_dump() -> Vec<u32> {
    let (input, _) = inputs();
    let mut out = vec![0u32; DUMP_WORDS];
    let a_addr = |l: usize| (l % 16, (l / 16) * 8);
    let b_addr = |l: usize| (l % 8, ((l / 8) % 2) * 8);
    let a = ldmatrix_expected(&input, 4, false, a_addr);
    let a_t = ldmatrix_expected(&input, 4, true, a_addr);
    let b = ldmatrix_expected(&input, 2, false, b_addr);
    let b_t = ldmatrix_expected(&input, 2, true, |l| (l % 16, 0));
    let x1 = ldmatrix_expected(&input, 1, false, |l| (l % 8, 0));
    let x1_t = ldmatrix_expected(&input, 1, true, |l| (l % 8, 8));
    for lane in 0..32 {
        let o = &mut out[lane * SLOTS..(lane + 1) * SLOTS];
        o[0..4].copy_from_slice(&a[lane]);
        o[4..8].copy_from_slice(&a_t[lane]);
        o[8..10].copy_from_slice(&b[lane]);
        o[10..12].copy_from_slice(&b_t[lane]);
        o[12] = x1[lane][0];
        o[13] = x1_t[lane][0];

        // mma: D = A B + C with A = X, B[k][n] = X[n][k], C[g + 8(i>>1)][2t + (i&1)] = 4 lane + i (from the
        // lane that holds it). All values are integers far below 2^24: exact in f32 in any order.
        let (g, t) = (lane / 4, lane % 4);
        for i in 0..4 {
            let (m, n) = (g + 8 * (i >> 1), 2 * t + (i & 1));
            let dot: f64 = (0..16).map(|k| ((16 * m + k) * (16 * n + k)) as f64).sum();
            let c = (lane * 4 + i) as f64;
            let d = ((dot + c) as f32).to_bits();
            o[14 + i] = d;
            o[18 + i] = d;
        }

        let value = |l: usize| (l + 100) as u32;
        let shuffles: [(usize, &str, usize, usize); 13] = [
            (22, "bfly", 1, 32),
            (23, "bfly", 2, 32),
            (24, "bfly", 4, 32),
            (25, "bfly", 16, 32),
            (26, "bfly", 1, 8),
            (27, "bfly", 4, 8),
            (28, "bfly", 8, 8),
            (29, "idx", (7 * lane) % 32, 32),
            (30, "idx", 3, 8),
            (31, "up", 1, 32),
            (32, "up", 3, 8),
            (33, "down", 2, 32),
            (34, "down", 5, 16),
        ];
        for (slot, mode, b, width) in shuffles {
            o[slot] = value(shuffle_source(mode, lane, b, width));
        }

        // cp.async area (lane % 4): src-size {0, 4, 12, 16} bytes copied from input + 16 * area, rest zero.
        let area = lane % 4;
        let src_bytes = [0usize, 4, 12, 16][area];
        let input_bytes: Vec<u8> = input.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut bytes = [0u8; 16];
        bytes[..src_bytes].copy_from_slice(&input_bytes[16 * area..16 * area + src_bytes]);
        for w in 0..4 {
            o[35 + w] = u32::from_le_bytes(bytes[4 * w..4 * w + 4].try_into().unwrap());
        }

        let (lo, hi) = special_pairs()[lane];
        let pack_bf16 = |x: f32| half::bf16::from_f32(x).to_bits() as u32;
        let pack_f16 = |x: f32| half::f16::from_f32(x).to_bits() as u32;
        o[39] = pack_bf16(lo) | (pack_bf16(hi) << 16);
        o[40] = pack_f16(lo) | (pack_f16(hi) << 16);

        // vote.sync.any: one lane true, none, every other lane.
        o[41] = 1;
        o[42] = 0;
        o[43] = 1;
    }
    out
}

/// True when the 16-bit halves are both equal, or both NaN in the given encoding (NaN payloads differ
/// between conversion routines and are not part of the contract).
fn same_packed(got: u32, want: u32, is_nan: impl Fn(u16) -> bool) -> bool {
    [0, 16].iter().all(|&s| {
        let (g, w) = ((got >> s) as u16, (want >> s) as u16);
        g == w || (is_nan(g) && is_nan(w))
    })
}

fn compare(got: &[u32], want: &[u32]) -> Vec<String> {
    let mut problems = Vec::new();
    for lane in 0..32 {
        for slot in 0..SLOTS {
            let (g, w) = (got[lane * SLOTS + slot], want[lane * SLOTS + slot]);
            let ok = match slot {
                39 => same_packed(g, w, |b| half::bf16::from_bits(b).is_nan()),
                40 => same_packed(g, w, |b| half::f16::from_bits(b).is_nan()),
                _ => g == w,
            };
            if !ok {
                problems.push(format!(
                    "lane {lane} slot {slot}: got {g:#010x}, want {w:#010x}"
                ));
            }
        }
    }
    problems
}

#[test]
fn emulator_matches_the_ptx_layouts() {
    let got = run_on_emulator(&Emulator::new()).expect("conformance kernel runs on the emulator");
    let problems = compare(&got, &expected_dump());
    assert!(
        problems.is_empty(),
        "{} mismatches:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn ldmatrix_feeds_mma_fragments_exactly() {
    // The corollary the kernels rely on: ldmatrix_x4 at &A[l % 16][(l / 16) * 8] yields the mma A
    // fragment of a row-major 16x16 A: a_i = A[g + 8((i >> 1) & 1)][2t + (i & 1) + 8(i >> 2)].
    let (input, _) = inputs();
    let got = run_on_emulator(&Emulator::new()).unwrap();
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        for reg in 0..4 {
            let element = |i: usize| {
                x_bits(
                    &input,
                    0,
                    g + 8 * ((i >> 1) & 1),
                    2 * t + (i & 1) + 8 * (i >> 2),
                ) as u32
            };
            let want = element(2 * reg) | (element(2 * reg + 1) << 16);
            assert_eq!(got[lane * SLOTS + reg], want, "lane {lane} reg {reg}");
        }
    }
}

#[test]
fn dump_is_the_same_for_every_thread_order() {
    let natural = run_on_emulator(&Emulator::new().with_seed(0)).unwrap();
    for seed in [1, 7, 12345] {
        assert_eq!(
            run_on_emulator(&Emulator::new().with_seed(seed)).unwrap(),
            natural,
            "seed {seed}"
        );
    }
}
