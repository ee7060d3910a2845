//! The paged decode kernels (`kernels/decode.cu`) on the emulator against the f64 reference, which
//! gathers the pages on the host.
//!
//! Every case rounds random inputs to the dtype, shuffles the block table, plants NaN in every cache
//! slot no sequence may read (slots past a length, unused blocks) and garbage in the unused table
//! entries, runs the real kernels through the [`Emulator`] (guarded buffers, outputs poisoned) and
//! compares with [`decode_f64`]: Y by relative Frobenius error (1e-2 bf16, 2e-3 f16) with no NaN
//! anywhere, LSE to 1e-4 relative, rows that see no key exactly Y = 0 and LSE = -inf.
//!
//! The grid is a covering subset, not a product (CI has 2 cores): block sizes 16, 32, 64, 256 once
//! each; GQA 1, 2, 4, 8, 16; d 64, 128, 256; every gate mode and activation; num_splits 1, 2, odd,
//! more splits than tiles, auto; lengths 0, 1, a block multiple, the capacity; Sq 1 to 16; varlen
//! queries; a FlashInfer-layout (strided) cache. Then hostile device tables (ids -1, num_blocks,
//! i32::MAX, i32::MIN; lengths negative and above capacity): no fault, the status word set, NaN rows for
//! exactly the affected sequences. And bit-identical results across emulator seeds. The append kernel
//! against the host copy, with hostile lengths and ids too.
#![cfg(feature = "emulator")]

use gated_sdpa::emulator::Emulator;
use gated_sdpa::ffi;
use gated_sdpa::paged::{
    check_paged_values, decode_f64, decode_workspace_bytes, num_splits_heuristic, DecodeArgs,
    DecodeProblem, NumSplits, PagedKv,
};
use gated_sdpa::{
    Activation, Element, GateMode, GsdpaError, HostBuffer, Layout, Reference, Tensor,
};
use half::{bf16, f16};
use rand::{rngs::StdRng, seq::SliceRandom, RngExt, SeedableRng};

/// One test problem plus how its inputs are laid out.
#[derive(Debug, Clone)]
struct Case {
    problem: DecodeProblem,
    seqlens: Vec<i32>,
    cu_seqlens_q: Option<Vec<i32>>,
    splits: NumSplits,
    /// Cache as a strided view of a FlashInfer-style `[num_blocks, Hkv, block_size, D]` buffer.
    flashinfer_layout: bool,
}

/// Host inputs of a case (already rounded to T), and the table with its hostile unused entries.
struct Inputs<T> {
    q: HostBuffer<T>,
    k: HostBuffer<T>,
    v: HostBuffer<T>,
    g: Option<HostBuffer<T>>,
    table: Vec<i32>,
    cache_layout: Layout,
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn cache_layout(p: &DecodeProblem, flashinfer: bool) -> Layout {
    let shape = p.cache_shape();
    if !flashinfer {
        return Layout::contiguous(&shape);
    }
    let (bs, hkv, d) = (p.block_size, p.heads_kv, p.head_dim);
    Layout::strided(&shape, &[hkv * bs * d, d, bs * d, 1]).unwrap()
}

fn make_inputs<T: Element>(case: &Case, seed: u64) -> Inputs<T> {
    let p = &case.problem;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut random = |n: usize, scale: f32| -> Vec<T> {
        (0..n)
            .map(|_| T::from_f32((rng.random::<f32>() * 2.0 - 1.0) * scale))
            .collect()
    };
    let q = random(numel(&p.q_shape()), 1.0);
    let mut k = random(numel(&p.cache_shape()), 1.0);
    let mut v = random(numel(&p.cache_shape()), 1.0);
    let g = p.gate_shape().map(|s| random(numel(&s), 3.0));

    // A shuffled table: sequence b's pages are distinct random blocks; entries past its length hold
    // garbage a kernel must never follow.
    let mut ids: Vec<i32> = (0..p.num_blocks as i32).collect();
    ids.shuffle(&mut rng);
    let mut table = vec![0i32; p.batch * p.max_blocks];
    let mut next = 0;
    for (b, &len) in case.seqlens.iter().enumerate() {
        for page in 0..p.max_blocks {
            let entry = &mut table[b * p.max_blocks + page];
            if page * p.block_size < len as usize {
                *entry = ids[next];
                next += 1;
            } else {
                *entry = [-1, p.num_blocks as i32, i32::MAX, i32::MIN][page % 4];
            }
        }
    }
    // NaN in every slot no sequence may read.
    let layout = cache_layout(p, case.flashinfer_layout);
    let nan = T::from_f32(f32::NAN);
    for blk in 0..p.num_blocks {
        for slot in 0..p.block_size {
            let live = case.seqlens.iter().enumerate().any(|(b, &len)| {
                (0..p.max_blocks).any(|page| {
                    table[b * p.max_blocks + page] == blk as i32
                        && page * p.block_size + slot < len as usize
                })
            });
            if live {
                continue;
            }
            for h in 0..p.heads_kv {
                for e in 0..p.head_dim {
                    let o = layout.offset(&[blk, slot, h, e]);
                    k[o] = nan;
                    v[o] = nan;
                }
            }
        }
    }
    Inputs {
        q: HostBuffer::from_slice(&q),
        k: HostBuffer::from_slice(&k),
        v: HostBuffer::from_slice(&v),
        g: g.map(|g| HostBuffer::from_slice(&g)),
        table,
        cache_layout: layout,
    }
}

/// Y (as f64, dense) and LSE of one backend run, and the emulator's status word.
struct Outputs {
    y: Vec<f64>,
    lse: Vec<f64>,
    status: i32,
}

enum Backend {
    Emulator(u64),
    Reference,
}

fn run<T: Element>(
    case: &Case,
    inputs: &Inputs<T>,
    table: &[i32],
    seqlens: &[i32],
    backend: Backend,
) -> gated_sdpa::Result<Outputs> {
    let p = &case.problem;
    let q_shape = p.q_shape();
    let mut y = HostBuffer::<T>::new(numel(&q_shape));
    let mut lse = HostBuffer::<f32>::new(numel(&p.lse_shape()));
    let mut args = DecodeArgs {
        q: Tensor::contiguous(inputs.q.as_slice(), &q_shape),
        kv: PagedKv {
            k_cache: Tensor::new(inputs.k.as_slice(), inputs.cache_layout.clone()),
            v_cache: Tensor::new(inputs.v.as_slice(), inputs.cache_layout.clone()),
            block_table: Tensor::contiguous(table, &p.table_shape()),
            cache_seqlens: Tensor::contiguous(seqlens, &[p.batch]),
        },
        cu_seqlens_q: case
            .cu_seqlens_q
            .as_ref()
            .map(|c| Tensor::contiguous(c.as_slice(), &[p.batch + 1])),
        g: inputs
            .g
            .as_ref()
            .map(|g| Tensor::contiguous(g.as_slice(), &p.gate_shape().unwrap())),
        y: Tensor::contiguous(y.as_mut_slice(), &q_shape),
        lse: Some(Tensor::contiguous(lse.as_mut_slice(), &p.lse_shape())),
    };
    let status = match backend {
        Backend::Emulator(seed) => {
            Emulator::new()
                .with_seed(seed)
                .forward_paged(p, &mut args, case.splits)?
        }
        Backend::Reference => {
            Reference.forward_paged(p, &mut args)?;
            0
        }
    };
    drop(args);
    Ok(Outputs {
        y: y.as_slice().iter().map(|x| x.to_f64()).collect(),
        lse: lse.as_slice().iter().map(|&x| x as f64).collect(),
        status,
    })
}

/// Indices of the (token, head) rows of sequence b, in the dense `[Tq, Hq]` row order (lse order
/// differs: see `lse_index`).
fn tokens_of(case: &Case, b: usize) -> std::ops::Range<usize> {
    let p = &case.problem;
    match &case.cu_seqlens_q {
        Some(cu) => cu[b] as usize..cu[b + 1] as usize,
        None => b * p.seqlen_q..(b + 1) * p.seqlen_q,
    }
}

/// Position of (token t, head h) in the dense lse (`[B, Hq, Sq]`, varlen `[Hq, Tq]`).
fn lse_index(case: &Case, t: usize, h: usize) -> usize {
    let p = &case.problem;
    match case.cu_seqlens_q {
        Some(_) => h * p.total_q() + t,
        None => (t / p.seqlen_q * p.heads_q + h) * p.seqlen_q + t % p.seqlen_q,
    }
}

fn tolerance<T: Element>() -> f64 {
    match T::DTYPE {
        gated_sdpa::DType::BF16 => 1e-2,
        gated_sdpa::DType::F16 => 2e-3,
    }
}

/// Compares the rows of sequences `batches` of `got` with the reference `want`.
fn assert_close<T: Element>(
    case: &Case,
    got: &Outputs,
    want: &gated_sdpa::paged::DecodeResultF64,
    batches: &[usize],
) {
    let p = &case.problem;
    let (hq, d) = (p.heads_q, p.head_dim);
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for &b in batches {
        for t in tokens_of(case, b) {
            for h in 0..hq {
                let row = t * hq + h;
                let (l_got, l_want) = (got.lse[lse_index(case, t, h)], want.lse[row]);
                if l_want == f64::NEG_INFINITY {
                    assert_eq!(
                        l_got,
                        f64::NEG_INFINITY,
                        "{case:?}: lse of empty row t {t} h {h}"
                    );
                    for e in 0..d {
                        assert_eq!(
                            got.y[row * d + e],
                            0.0,
                            "{case:?}: y of empty row t {t} h {h}"
                        );
                    }
                    continue;
                }
                assert!(
                    (l_got - l_want).abs() <= 1e-4 * l_want.abs().max(1.0),
                    "{case:?}: lse t {t} h {h}: {l_got} vs {l_want}"
                );
                for e in 0..d {
                    let (yg, yw) = (got.y[row * d + e], want.y[row * d + e]);
                    assert!(!yg.is_nan(), "{case:?}: NaN in y at t {t} h {h} e {e}");
                    err += (yg - yw) * (yg - yw);
                    norm += yw * yw;
                }
            }
        }
    }
    let rel = (err / norm.max(1e-30)).sqrt();
    assert!(rel <= tolerance::<T>(), "{case:?}: relative error {rel}");
}

/// The reference's result on the case's (valid) table.
fn reference<T: Element>(case: &Case, inputs: &Inputs<T>) -> gated_sdpa::paged::DecodeResultF64 {
    let p = &case.problem;
    let q_shape = p.q_shape();
    let mut y = HostBuffer::<T>::new(numel(&q_shape));
    let args = DecodeArgs {
        q: Tensor::contiguous(inputs.q.as_slice(), &q_shape),
        kv: PagedKv {
            k_cache: Tensor::new(inputs.k.as_slice(), inputs.cache_layout.clone()),
            v_cache: Tensor::new(inputs.v.as_slice(), inputs.cache_layout.clone()),
            block_table: Tensor::contiguous(inputs.table.as_slice(), &p.table_shape()),
            cache_seqlens: Tensor::contiguous(case.seqlens.as_slice(), &[p.batch]),
        },
        cu_seqlens_q: case
            .cu_seqlens_q
            .as_ref()
            .map(|c| Tensor::contiguous(c.as_slice(), &[p.batch + 1])),
        g: inputs
            .g
            .as_ref()
            .map(|g| Tensor::contiguous(g.as_slice(), &p.gate_shape().unwrap())),
        y: Tensor::contiguous(y.as_mut_slice(), &q_shape),
        lse: None::<Tensor<&mut [f32]>>,
    };
    decode_f64(p, &args).unwrap()
}

fn check_case<T: Element>(case: &Case, seed: u64) {
    let inputs = make_inputs::<T>(case, seed);
    let want = reference(case, &inputs);
    let got = run(
        case,
        &inputs,
        &inputs.table,
        &case.seqlens,
        Backend::Emulator(0),
    )
    .unwrap();
    assert_eq!(got.status, 0, "{case:?}: status");
    let all: Vec<usize> = (0..case.problem.batch).collect();
    assert_close::<T>(case, &got, &want, &all);
    // The reference backend's own outputs agree with decode_f64 (it only rounds).
    let reference_run = run(
        case,
        &inputs,
        &inputs.table,
        &case.seqlens,
        Backend::Reference,
    )
    .unwrap();
    assert_close::<T>(case, &reference_run, &want, &all);
}

/// A case whose table has room for its lengths: max_blocks columns, blocks for every page plus spares.
fn case(
    sizes: (usize, usize, usize, usize, usize), // batch, seqlen_q, heads_q, heads_kv, head_dim
    block_size: usize,
    max_blocks: usize,
    seqlens: &[i32],
) -> Case {
    let (batch, sq, hq, hkv, d) = sizes;
    assert_eq!(seqlens.len(), batch);
    let pages: usize = seqlens
        .iter()
        .map(|&l| (l as usize).div_ceil(block_size))
        .sum();
    Case {
        problem: DecodeProblem::new(batch, sq, hq, hkv, d, block_size, pages + 3, max_blocks),
        seqlens: seqlens.to_vec(),
        cu_seqlens_q: None,
        splits: NumSplits::Fixed(1),
        flashinfer_layout: false,
    }
}

#[test]
fn lengths_zero_one_block_multiple_capacity_one_split() {
    // bs 16, GQA 4, d 64, elementwise sigmoid, Sq 1.
    let mut c = case((4, 1, 4, 1, 64), 16, 4, &[0, 1, 32, 64]);
    c.problem = c.problem.gate(GateMode::Elementwise);
    check_case::<bf16>(&c, 1);
}

#[test]
fn causal_speculative_odd_splits_flashinfer_layout() {
    // bs 32, GQA 8, d 128, headwise silu, Sq 4 causal, 3 splits, strided cache.
    let mut c = case((2, 4, 8, 1, 128), 32, 3, &[37, 96]);
    c.problem = c
        .problem
        .causal(true)
        .gate(GateMode::Headwise)
        .activation(Activation::Silu);
    c.splits = NumSplits::Fixed(3);
    c.flashinfer_layout = true;
    check_case::<f16>(&c, 2);
}

#[test]
fn head_dim_256_two_splits_no_gate() {
    // bs 64, GQA 1 (2 kv heads), d 256, causal Sq 2, 2 splits.
    let mut c = case((1, 2, 2, 2, 256), 64, 2, &[100]);
    c.problem = c.problem.causal(true);
    c.splits = NumSplits::Fixed(2);
    check_case::<bf16>(&c, 3);
}

#[test]
fn sixteen_queries_gqa_16_block_256_auto_splits() {
    // bs 256, GQA 16, Sq 16 (256 rows: four row blocks), causal, elementwise silu, auto splits.
    let mut c = case((2, 16, 16, 1, 64), 256, 2, &[300, 20]);
    c.problem = c
        .problem
        .causal(true)
        .gate(GateMode::Elementwise)
        .activation(Activation::Silu);
    c.splits = NumSplits::Auto;
    check_case::<f16>(&c, 4);
}

#[test]
fn more_splits_than_tiles_headwise_sigmoid() {
    // 5 splits over 3 and 4 key tiles: the trailing splits are empty and must merge as -inf.
    let mut c = case((2, 1, 2, 2, 64), 16, 8, &[70, 128]);
    c.problem = c.problem.gate(GateMode::Headwise);
    c.splits = NumSplits::Fixed(5);
    check_case::<bf16>(&c, 5);
}

#[test]
fn block_sizes_not_powers_of_two_tiles_straddle_pages() {
    // A tile's 32 keys start at slot j0 % block_size and wrap once onto the next page: bs 48 puts
    // tiles 1 and 4 across two pages (slots 32..47 then 0..15), bs 80 tile 2 (slots 64..79, 0..15);
    // the lengths end inside a second page (150: 22 keys of tile 4) and inside a first (77).
    for (bs, seed) in [(48, 12), (80, 13)] {
        let mut c = case((2, 1, 4, 1, 64), bs, 4, &[150, 77]);
        c.problem = c.problem.gate(GateMode::Headwise);
        c.splits = NumSplits::Fixed(2);
        check_case::<bf16>(&c, seed);
    }
}

#[test]
fn varlen_chunked_prefill_over_pages() {
    // Packed queries 3, 0, 4 (chunked prefill), causal, GQA 2, two splits.
    let mut c = case((3, 4, 4, 2, 64), 16, 6, &[40, 9, 90]);
    c.cu_seqlens_q = Some(vec![0, 3, 3, 7]);
    c.problem = c.problem.varlen(7).causal(true).gate(GateMode::Elementwise);
    c.splits = NumSplits::Fixed(2);
    check_case::<bf16>(&c, 6);
}

/// Hostile device values: the kernels must not fault (the guarded copies would trap a read past the
/// table or the caches), must set the status word, and must turn exactly the affected sequences' rows
/// into NaN while the others stay right.
fn check_hostile(splits: usize) {
    let mut c = case((5, 2, 2, 1, 64), 16, 4, &[20, 33, 40, 64, 17]);
    c.problem = c.problem.causal(true).gate(GateMode::Elementwise);
    c.splits = NumSplits::Fixed(splits);
    let inputs = make_inputs::<bf16>(&c, 7);
    let want = reference(&c, &inputs);
    let mb = c.problem.max_blocks;
    let nb = c.problem.num_blocks as i32;
    let mut table = inputs.table.clone();
    let mut seqlens = c.seqlens.clone();
    table[mb + 1] = -1; // sequence 0 is fine; sequence 1's second page: id -1
    table[2 * mb + 2] = nb; // sequence 2's last page: id num_blocks
    seqlens[3] = -5; // sequence 3: negative length
    seqlens[4] = (c.problem.capacity() + 1) as i32; // sequence 4: above capacity
    let got = run(&c, &inputs, &table, &seqlens, Backend::Emulator(0)).unwrap();
    assert_eq!(got.status, ffi::GSDPA_DECODE_STATUS_INVALID_INPUT as i32);
    assert_close::<bf16>(&c, &got, &want, &[0]);
    let d = c.problem.head_dim;
    for b in 1..5 {
        for t in tokens_of(&c, b) {
            for h in 0..c.problem.heads_q {
                let row = t * c.problem.heads_q + h;
                assert!(
                    got.lse[lse_index(&c, t, h)].is_nan(),
                    "splits {splits}: lse of sequence {b}"
                );
                assert!(
                    got.y[row * d..(row + 1) * d].iter().all(|x| x.is_nan()),
                    "splits {splits}: y of sequence {b}"
                );
            }
        }
    }
    // Huge ids in both directions, and a bad id past a length (never read: no error).
    let mut table = inputs.table.clone();
    table[1] = i32::MAX; // sequence 0, page 1 (keys 16..20)
    table[mb + 2] = i32::MIN; // sequence 1, page 2 (keys 32)
    table[2 * mb + 3] = -1; // sequence 2, page 3: past its length 40, never read
    let got = run(&c, &inputs, &table, &c.seqlens, Backend::Emulator(0)).unwrap();
    assert_eq!(got.status, ffi::GSDPA_DECODE_STATUS_INVALID_INPUT as i32);
    assert_close::<bf16>(&c, &got, &want, &[2, 3, 4]);
    for b in 0..2 {
        for t in tokens_of(&c, b) {
            assert!(got.lse[lse_index(&c, t, 0)].is_nan(), "sequence {b}");
        }
    }
    // The reference, which sees host values, rejects them with a typed error.
    let err = run(&c, &inputs, &table, &c.seqlens, Backend::Reference)
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            GsdpaError::InvalidPagedKv {
                tensor: "block_table",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn hostile_tables_one_split() {
    check_hostile(1);
}

#[test]
fn hostile_tables_three_splits() {
    check_hostile(3);
}

#[test]
fn bit_identical_across_seeds() {
    let mut c = case((2, 3, 4, 2, 64), 32, 3, &[70, 33]);
    c.problem = c.problem.causal(true).gate(GateMode::Headwise);
    c.splits = NumSplits::Fixed(2);
    let inputs = make_inputs::<f16>(&c, 8);
    let bits = |seed| {
        let out = run(
            &c,
            &inputs,
            &inputs.table,
            &c.seqlens,
            Backend::Emulator(seed),
        )
        .unwrap();
        out.y
            .iter()
            .chain(&out.lse)
            .map(|x| x.to_bits())
            .collect::<Vec<u64>>()
    };
    assert_eq!(bits(1), bits(2));
}

#[test]
fn host_validation_is_typed() {
    let p = DecodeProblem::new(1, 1, 2, 1, 64, 24, 4, 2);
    let table = [0i32, 1];
    let t = Tensor::contiguous(&table[..], &[1, 2]);
    // A block size that is not a multiple of 16.
    assert!(matches!(
        gated_sdpa::paged::validate_decode_problem(&p),
        Err(GsdpaError::InvalidArgument(_))
    ));
    let p = DecodeProblem::new(1, 1, 2, 1, 64, 16, 4, 2);
    // Softmax scales: the same bound as the forward (the decode runs the same online softmax).
    for scale in [
        1e37f32,
        f32::INFINITY,
        0.0,
        -1.0,
        gated_sdpa::MAX_SOFTMAX_SCALE * 2.0,
    ] {
        let mut bad = p.clone();
        bad.softmax_scale = Some(scale);
        assert!(matches!(
            gated_sdpa::paged::validate_decode_problem(&bad),
            Err(GsdpaError::UnsupportedScale { .. })
        ));
    }
    let mut largest = p.clone();
    largest.softmax_scale = Some(gated_sdpa::MAX_SOFTMAX_SCALE);
    assert!(gated_sdpa::paged::validate_decode_problem(&largest).is_ok());
    assert!(check_paged_values(&p, &t, &[32], None).is_ok());
    assert!(matches!(
        check_paged_values(&p, &t, &[33], None),
        Err(GsdpaError::InvalidPagedKv {
            tensor: "cache_seqlens",
            ..
        })
    ));
    let bad = [0i32, 4];
    let t = Tensor::contiguous(&bad[..], &[1, 2]);
    assert!(
        check_paged_values(&p, &t, &[16], None).is_ok(),
        "page 1 is past the length"
    );
    assert!(check_paged_values(&p, &t, &[17], None).is_err());
    // Workspace: none for one split; the heuristic splits a lone long sequence and not a full batch.
    assert_eq!(decode_workspace_bytes(&p, 1), Ok(0));
    assert!(decode_workspace_bytes(&p, 4).unwrap() >= 4 * 2 * 64 * 4 + 4 * 2 * 4);
    let long = DecodeProblem::new(1, 1, 16, 2, 256, 16, 8192, 8192);
    assert!(num_splits_heuristic(&long, 132, long.capacity()) > 1);
    let full = DecodeProblem::new(256, 1, 16, 2, 256, 16, 8192, 32);
    assert_eq!(num_splits_heuristic(&full, 132, full.capacity()), 1);
}

#[test]
fn every_decode_kernel_is_built() {
    use gated_sdpa::paged::decode_launches;
    use gated_sdpa::DType;
    for dtype in [DType::BF16, DType::F16] {
        for d in [64, 128, 256] {
            let p = DecodeProblem::new(1, 1, 2, 1, d, 16, 4, 2);
            for config in decode_launches(&p, dtype, 2).unwrap() {
                assert!(
                    Emulator::has_kernel(&config.kernel),
                    "{} not in the emulator",
                    config.kernel
                );
                if gated_sdpa::build_info::fatbin().is_some() {
                    let report = gated_sdpa::build_info::kernels();
                    assert!(
                        report.iter().any(|k| k.name == config.kernel),
                        "{} missing from the ptxas report",
                        config.kernel
                    );
                }
            }
        }
    }
}

/// The append kernel against the host copy, then with hostile lengths and ids: the valid tokens are
/// written, the others skipped with the status word set, and nothing outside the caches is touched.
#[test]
fn append_kv_writes_at_the_lengths_and_skips_hostile_tokens() {
    use gated_sdpa::paged::AppendKvArgs;
    let (batch, hkv, d, bs, mb, nb, s_new) = (3, 2, 64, 16, 3, 9, 3);
    let p = DecodeProblem::new(batch, 1, hkv, hkv, d, bs, nb, mb);
    let mut rng = StdRng::seed_from_u64(11);
    let mut random = |n: usize| -> Vec<bf16> {
        (0..n)
            .map(|_| bf16::from_f32(rng.random::<f32>() * 2.0 - 1.0))
            .collect()
    };
    let cache_len = numel(&p.cache_shape());
    let (k0, v0) = (random(cache_len), random(cache_len));
    let new_len = batch * s_new * hkv * d;
    let (k_new, v_new) = (
        HostBuffer::from_slice(&random(new_len)),
        HostBuffer::from_slice(&random(new_len)),
    );
    let mut table: Vec<i32> = (0..nb as i32).collect();
    table.shuffle(&mut StdRng::seed_from_u64(12));
    let new_shape = [batch, s_new, hkv, d];
    // Runs one append on both caches; returns (k, v, status) (status None: the reference's error).
    let append = |table: &[i32], seqlens: &[i32], emulator: bool| {
        let mut k = HostBuffer::from_slice(&k0);
        let mut v = HostBuffer::from_slice(&v0);
        let mut args = AppendKvArgs {
            k_new: Tensor::contiguous(k_new.as_slice(), &new_shape),
            v_new: Tensor::contiguous(v_new.as_slice(), &new_shape),
            k_cache: Tensor::contiguous(k.as_mut_slice(), &p.cache_shape()),
            v_cache: Tensor::contiguous(v.as_mut_slice(), &p.cache_shape()),
            block_table: Tensor::contiguous(table, &p.table_shape()),
            cache_seqlens: Tensor::contiguous(seqlens, &[batch]),
        };
        let status = if emulator {
            Some(Emulator::new().append_kv(&p, s_new, &mut args).unwrap())
        } else {
            Reference.append_kv(&p, s_new, &mut args).ok().map(|_| 0)
        };
        drop(args);
        (k.to_vec(), v.to_vec(), status)
    };
    let bits = |x: &[bf16]| x.iter().map(|v| v.to_bits()).collect::<Vec<u16>>();

    let seqlens = [0, 15, 30];
    let (k_emu, v_emu, status) = append(&table[..batch * mb], &seqlens, true);
    assert_eq!(status, Some(0));
    let (k_ref, v_ref, ok) = append(&table[..batch * mb], &seqlens, false);
    assert_eq!(ok, Some(0));
    assert_eq!(bits(&k_emu), bits(&k_ref));
    assert_eq!(bits(&v_emu), bits(&v_ref));
    assert_ne!(bits(&k_emu), bits(&k0), "the append wrote something");

    // Hostile: sequence 0 has a negative length, sequence 1 overflows its capacity after two tokens,
    // sequence 2's second page has id num_blocks (its first token still fits in page 0).
    let mut hostile = table[..batch * mb].to_vec();
    hostile[2 * mb + 1] = nb as i32;
    let seqlens = [-1, (mb * bs - 2) as i32, 15];
    let (k_emu, v_emu, status) = append(&hostile, &seqlens, true);
    assert_eq!(status, Some(ffi::GSDPA_DECODE_STATUS_INVALID_INPUT as i32));
    let (_, _, rejected) = append(&hostile, &seqlens, false);
    assert_eq!(
        rejected, None,
        "the reference rejects host values it cannot follow"
    );
    // What must have happened: exactly tokens (1, 0), (1, 1) and (2, 0) written.
    let (mut k_want, mut v_want) = (k0.clone(), v0.clone());
    let layout = Layout::contiguous(&p.cache_shape());
    let new_layout = Layout::contiguous(&new_shape);
    for (b, i) in [(1usize, 0usize), (1, 1), (2, 0)] {
        let pos = seqlens[b] as usize + i;
        let blk = hostile[b * mb + pos / bs] as usize;
        for h in 0..hkv {
            for e in 0..d {
                let dst = layout.offset(&[blk, pos % bs, h, e]);
                let src = new_layout.offset(&[b, i, h, e]);
                k_want[dst] = k_new.as_slice()[src];
                v_want[dst] = v_new.as_slice()[src];
            }
        }
    }
    assert_eq!(bits(&k_emu), bits(&k_want));
    assert_eq!(bits(&v_emu), bits(&v_want));
}

/// The Qwen3-Next decode shape (d256, 16 query / 2 kv heads, elementwise gate) with a strided table
/// (row stride above max_blocks), y as the first half of each head of a wider buffer whose other half
/// must stay untouched, a padded lse, and NaN gate logits on the rows of an empty sequence (which must
/// give Y = 0 without reading them), for one and four splits.
#[test]
fn qwen3_next_shape_strided_table_and_outputs() {
    let (batch, hq, hkv, d, bs, mb) = (2, 16, 2, 256, 16, 8);
    let mut c = case((batch, 1, hq, hkv, d), bs, mb, &[100, 0]);
    c.problem = c.problem.gate(GateMode::Elementwise);
    let p = c.problem.clone();
    let inputs = make_inputs::<bf16>(&c, 9);
    let mut g = inputs.g.as_ref().unwrap().to_vec();
    for x in &mut g[hq * d..] {
        *x = bf16::NAN; // sequence 1 (length 0) only
    }
    let g = HostBuffer::from_slice(&g);
    let table_stride = mb + 3;
    let mut wide_table = vec![i32::MIN; batch * table_stride];
    for b in 0..batch {
        wide_table[b * table_stride..b * table_stride + mb]
            .copy_from_slice(&inputs.table[b * mb..(b + 1) * mb]);
    }
    let table_layout = Layout::strided(&[batch, mb], &[table_stride, 1]).unwrap();
    let y_layout =
        Layout::strided(&[batch, 1, hq, d], &[hq * 2 * d, hq * 2 * d, 2 * d, 1]).unwrap();
    let lse_layout = Layout::strided(&[batch, hq, 1], &[hq * 4, 4, 1]).unwrap();
    let sentinel = bf16::from_f32(7.0);
    let q_shape = p.q_shape();
    let mut want = None;
    for splits in [1, 4] {
        let mut y = HostBuffer::filled(batch * hq * 2 * d, sentinel);
        let mut lse = HostBuffer::filled(batch * hq * 4, 5.0f32);
        let mut args = DecodeArgs {
            q: Tensor::contiguous(inputs.q.as_slice(), &q_shape),
            kv: PagedKv {
                k_cache: Tensor::new(inputs.k.as_slice(), inputs.cache_layout.clone()),
                v_cache: Tensor::new(inputs.v.as_slice(), inputs.cache_layout.clone()),
                block_table: Tensor::new(&wide_table[..], table_layout.clone()),
                cache_seqlens: Tensor::contiguous(&c.seqlens[..], &[batch]),
            },
            cu_seqlens_q: None,
            g: Some(Tensor::contiguous(g.as_slice(), &q_shape)),
            y: Tensor::new(y.as_mut_slice(), y_layout.clone()),
            lse: Some(Tensor::new(lse.as_mut_slice(), lse_layout.clone())),
        };
        if want.is_none() {
            want = Some(decode_f64(&p, &args).unwrap());
        }
        let status = Emulator::new()
            .forward_paged(&p, &mut args, NumSplits::Fixed(splits))
            .unwrap();
        drop(args);
        assert_eq!(status, 0);
        let want = want.as_ref().unwrap();
        let (y, lse) = (y.to_vec(), lse.to_vec());
        let (mut err, mut norm) = (0.0f64, 0.0f64);
        for b in 0..batch {
            for h in 0..hq {
                let row = b * hq + h;
                let l = lse[lse_layout.offset(&[b, h, 0])] as f64;
                if b == 1 {
                    assert_eq!(l, f64::NEG_INFINITY);
                } else {
                    assert!((l - want.lse[row]).abs() <= 1e-4 * want.lse[row].abs().max(1.0));
                }
                for k in 1..4 {
                    assert_eq!(lse[lse_layout.offset(&[b, h, 0]) + k], 5.0, "lse padding");
                }
                for e in 0..d {
                    let at = y_layout.offset(&[b, 0, h, e]);
                    let got = y[at].to_f64();
                    if b == 1 {
                        assert_eq!(got, 0.0, "empty row: Y = 0 without reading the NaN gate");
                    }
                    assert!(!got.is_nan());
                    err += (got - want.y[row * d + e]).powi(2);
                    norm += want.y[row * d + e].powi(2);
                    assert_eq!(y[at + d], sentinel, "the other half of the wide buffer");
                }
            }
        }
        assert!(
            (err / norm).sqrt() < 1e-2,
            "splits {splits}: {}",
            (err / norm).sqrt()
        );
    }
}
