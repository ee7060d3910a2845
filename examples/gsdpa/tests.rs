//! End-to-end tests of the CLI commands, run in-process on files in a temporary directory
//! (`cargo test --example gsdpa`).

use std::path::{Path, PathBuf};

use gated_sdpa::reference::{backward_f64, forward_f64};
use gated_sdpa::{AttentionProblem, GateMode, Varlen};
use half::bf16;
use rand::{rngs::StdRng, RngExt, SeedableRng};

use crate::npy;

/// A fresh directory under the system's temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("gsdpa-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(crate) fn path(&self, file: &str) -> String {
        self.0.join(file).to_string_lossy().into_owned()
    }

    pub(crate) fn write(&self, file: &str, shape: &[usize], data: &[f32]) -> String {
        let path = self.path(file);
        std::fs::write(&path, npy::to_bytes(shape, data)).unwrap();
        path
    }

    /// Reads an output (the CLI writes float32).
    pub(crate) fn read(&self, file: &str) -> Output {
        let array = npy::read(Path::new(&self.path(file))).unwrap();
        match array.data {
            npy::Data::F32(data) => Output {
                shape: array.shape,
                data,
            },
            npy::Data::F64(_) => panic!("{file}: the CLI wrote float64"),
        }
    }

    /// Writes a float64 `.npy`.
    fn write_f64(&self, file: &str, shape: &[usize], data: &[f64]) -> String {
        let path = self.path(file);
        let mut bytes = npy::header_with_descr("<f8", shape);
        for x in data {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// The names in the directory, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// A float32 output file.
#[derive(Debug, PartialEq)]
pub(crate) struct Output {
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Vec<f32>,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn run(args: &[&str]) -> Result<(), crate::CliError> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    crate::run(&args)
}

pub(crate) fn random(rng: &mut StdRng, n: usize, amplitude: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.random_range(-amplitude..amplitude))
        .collect()
}

/// What the CLI computes: the f64 reference on inputs rounded to bf16, then rounded to bf16.
pub(crate) fn round_bf16(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| bf16::from_f32(v).to_f64()).collect()
}

fn as_bf16_f32(x: &[f64]) -> Vec<f32> {
    x.iter()
        .map(|&v| <bf16 as gated_sdpa::Element>::from_f64(v).to_f32())
        .collect()
}

#[test]
fn forward_and_backward_match_the_reference() {
    let dir = TempDir::new("fwd-bwd");
    let (b, sq, sk, hq, hkv, d) = (2, 5, 3, 4, 2, 64);
    let mut rng = StdRng::seed_from_u64(1);
    let (q, k, v, g, dy) = (
        random(&mut rng, b * sq * hq * d, 2.0),
        random(&mut rng, b * sk * hkv * d, 2.0),
        random(&mut rng, b * sk * hkv * d, 1.0),
        random(&mut rng, b * sq * hq, 3.0),
        random(&mut rng, b * sq * hq * d, 1.0),
    );
    let qp = dir.write("q.npy", &[b, sq, hq, d], &q);
    let kp = dir.write("k.npy", &[b, sk, hkv, d], &k);
    let vp = dir.write("v.npy", &[b, sk, hkv, d], &v);
    let gp = dir.write("g.npy", &[b, sq, hq], &g);
    let dyp = dir.write("dy.npy", &[b, sq, hq, d], &dy);
    let (yp, lsep, grads) = (dir.path("y.npy"), dir.path("lse.npy"), dir.path("grads"));
    let common = [
        "--q", &qp, "--k", &kp, "--v", &vp, "--g", &gp, "--causal", "--act", "silu",
    ];
    let mut forward = vec!["forward", "--backend", "reference"];
    forward.extend(common);
    forward.extend(["--out", &yp, "--lse", &lsep]);
    run(&forward).unwrap();
    let mut backward = vec!["backward"];
    backward.extend(common);
    backward.extend(["--dy", &dyp, "--out-dir", &grads]);
    run(&backward).unwrap();

    // The gate mode was inferred from g's rank: headwise.
    let p = AttentionProblem::new(b, sq, sk, hq, hkv, d)
        .causal(true)
        .gate(GateMode::Headwise)
        .activation(gated_sdpa::Activation::Silu);
    let (q, k, v, g, dy) = (
        round_bf16(&q),
        round_bf16(&k),
        round_bf16(&v),
        round_bf16(&g),
        round_bf16(&dy),
    );
    let exact = forward_f64(&p, &q, &k, &v, Some(&g)).unwrap();
    let y = dir.read("y.npy");
    assert_eq!(y.shape, vec![b, sq, hq, d]);
    assert_eq!(y.data, as_bf16_f32(&exact.y));
    let lse = dir.read("lse.npy");
    assert_eq!(lse.shape, vec![b, hq, sq]);
    let expected_lse: Vec<f32> = exact.lse.iter().map(|&x| x as f32).collect();
    assert_eq!(lse.data, expected_lse);
    // Sq > Sk with a bottom-right causal mask: the first two rows see nothing.
    assert_eq!(lse.data[0], f32::NEG_INFINITY);

    let exact = backward_f64(&p, &q, &k, &v, Some(&g), &dy).unwrap();
    assert_eq!(dir.read("grads/dq.npy").data, as_bf16_f32(&exact.dq));
    assert_eq!(dir.read("grads/dk.npy").data, as_bf16_f32(&exact.dk));
    assert_eq!(dir.read("grads/dv.npy").data, as_bf16_f32(&exact.dv));
    let dg = dir.read("grads/dg.npy");
    assert_eq!(dg.shape, vec![b, sq, hq]);
    assert_eq!(dg.data, as_bf16_f32(&exact.dg.unwrap()));
}

#[test]
fn qg_views_equal_separate_q_and_g() {
    let dir = TempDir::new("qg");
    let (b, s, h, d) = (1, 4, 2, 64);
    let mut rng = StdRng::seed_from_u64(2);
    let qg = random(&mut rng, b * s * h * 2 * d, 2.0);
    let (mut q, mut g) = (Vec::new(), Vec::new());
    for head in qg.chunks(2 * d) {
        q.extend_from_slice(&head[..d]);
        g.extend_from_slice(&head[d..]);
    }
    let kv = random(&mut rng, b * s * h * d, 1.0);
    let qgp = dir.write("qg.npy", &[b, s, h, 2 * d], &qg);
    let qp = dir.write("q.npy", &[b, s, h, d], &q);
    let gp = dir.write("g.npy", &[b, s, h, d], &g);
    let kp = dir.write("k.npy", &[b, s, h, d], &kv);
    let (y1, y2) = (dir.path("y1.npy"), dir.path("y2.npy"));
    run(&[
        "forward", "--qg", &qgp, "--k", &kp, "--v", &kp, "--dtype", "f16", "--out", &y1,
    ])
    .unwrap();
    run(&[
        "forward",
        "--q",
        &qp,
        "--g",
        &gp,
        "--k",
        &kp,
        "--v",
        &kp,
        "--gate",
        "elementwise",
        "--dtype",
        "f16",
        "--out",
        &y2,
    ])
    .unwrap();
    assert_eq!(dir.read("y1.npy"), dir.read("y2.npy"));
}

#[test]
fn varlen_equals_separate_runs() {
    let dir = TempDir::new("varlen");
    let (hq, hkv, d) = (2, 1, 64);
    let (cu_q, cu_k) = ([0usize, 3, 3, 5], [0usize, 2, 4, 4]);
    let mut rng = StdRng::seed_from_u64(3);
    let q = random(&mut rng, 5 * hq * d, 2.0);
    let k = random(&mut rng, 4 * hkv * d, 2.0);
    let v = random(&mut rng, 4 * hkv * d, 1.0);
    let qp = dir.write("q.npy", &[5, hq, d], &q);
    let kp = dir.write("k.npy", &[4, hkv, d], &k);
    let vp = dir.write("v.npy", &[4, hkv, d], &v);
    let (yp, lp) = (dir.path("y.npy"), dir.path("lse.npy"));
    run(&[
        "forward",
        "--q",
        &qp,
        "--k",
        &kp,
        "--v",
        &vp,
        "--cu-seqlens-q",
        "0,3,3,5",
        "--cu-seqlens-k",
        "0,2,4,4",
        "--causal",
        "--out",
        &yp,
        "--lse",
        &lp,
    ])
    .unwrap();
    let (y, lse) = (dir.read("y.npy"), dir.read("lse.npy"));
    assert_eq!(lse.shape, vec![hq, 5]);
    for seq in 0..3 {
        let (q0, q1, k0, k1) = (cu_q[seq], cu_q[seq + 1], cu_k[seq], cu_k[seq + 1]);
        let sqp = dir.write("sq.npy", &[1, q1 - q0, hq, d], &q[q0 * hq * d..q1 * hq * d]);
        let skp = dir.write(
            "sk.npy",
            &[1, k1 - k0, hkv, d],
            &k[k0 * hkv * d..k1 * hkv * d],
        );
        let svp = dir.write(
            "sv.npy",
            &[1, k1 - k0, hkv, d],
            &v[k0 * hkv * d..k1 * hkv * d],
        );
        let (syp, slp) = (dir.path("sy.npy"), dir.path("slse.npy"));
        run(&[
            "forward", "--q", &sqp, "--k", &skp, "--v", &svp, "--causal", "--out", &syp, "--lse",
            &slp,
        ])
        .unwrap();
        assert_eq!(dir.read("sy.npy").data, y.data[q0 * hq * d..q1 * hq * d]);
        let slse = dir.read("slse.npy").data;
        for h in 0..hq {
            assert_eq!(
                slse[h * (q1 - q0)..(h + 1) * (q1 - q0)],
                lse.data[h * 5 + q0..h * 5 + q1]
            );
        }
    }
    // Sequence 2 has no keys: its rows are 0 with LSE -inf.
    assert!(y.data[3 * hq * d..].iter().all(|&x| x == 0.0));
    assert!(lse.data[3..5].iter().all(|&x| x == f32::NEG_INFINITY));
    let varlen = Varlen::new(vec![0, 3, 3, 5], vec![0, 2, 4, 4]).unwrap();
    assert_eq!(varlen.max_seqlen_q, 3);
}

#[test]
fn bad_input_exits_2_and_writes_nothing() {
    let dir = TempDir::new("bad");
    let (b, s, h, d) = (1, 4, 2, 64);
    let ones = vec![1.0f32; b * s * h * d];
    let qp = dir.write("q.npy", &[b, s, h, d], &ones);
    let short = dir.write("short.npy", &[b, s, h, 32], &ones[..b * s * h * 32]);
    let out = dir.path("y.npy");
    let lse = dir.path("lse.npy");
    let not_npy = dir.path("not.npy");
    std::fs::write(&not_npy, b"hello").unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "forward", "--q", &qp, "--k", &qp, "--v", &short, "--out", &out, "--lse", &lse,
        ],
        vec![
            "forward", "--q", &short, "--k", &short, "--v", &short, "--out", &out,
        ],
        vec![
            "forward", "--q", &qp, "--k", &qp, "--v", &not_npy, "--out", &out,
        ],
        vec![
            "forward", "--q", &qp, "--k", &qp, "--v", &qp, "--out", &out, "--dtype", "f32",
        ],
        vec![
            "forward", "--q", &qp, "--k", &qp, "--v", &qp, "--out", &out, "--gate", "headwise",
        ],
        vec![
            "forward", "--q", &qp, "--k", &qp, "--v", &qp, "--out", &out, "--scale", "inf",
        ],
        vec![
            "forward",
            "--q",
            &qp,
            "--k",
            &qp,
            "--v",
            &qp,
            "--out",
            &out,
            "--cu-seqlens-q",
            "0,4",
        ],
        vec!["forward", "--q", &qp, "--k", &qp, "--v", &qp],
        vec![
            "forward",
            "--q",
            &qp,
            "--k",
            &qp,
            "--v",
            &qp,
            "--out",
            &out,
            "--backend",
            "tpu",
        ],
        vec![
            "backward",
            "--q",
            &qp,
            "--k",
            &qp,
            "--v",
            &qp,
            "--out-dir",
            &out,
        ],
        vec!["sideways"],
        vec![],
    ];
    for case in cases {
        let err = run(&case).expect_err("should fail");
        assert_eq!(err.code, 2, "{case:?}: {}", err.message);
        assert!(!err.message.contains('\n'), "{}", err.message);
        assert!(
            !Path::new(&out).exists() && !Path::new(&lse).exists(),
            "{case:?}"
        );
    }
    // No temporary file is left behind either.
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
}

/// Small forward inputs in `dir`: q, k, v [1, 4, 2, 64] and a headwise g, returning their paths.
fn small_inputs(dir: &TempDir) -> [String; 4] {
    let (b, s, h, d) = (1, 4, 2, 64);
    let mut rng = StdRng::seed_from_u64(7);
    [
        dir.write(
            "q.npy",
            &[b, s, h, d],
            &random(&mut rng, b * s * h * d, 2.0),
        ),
        dir.write(
            "k.npy",
            &[b, s, h, d],
            &random(&mut rng, b * s * h * d, 2.0),
        ),
        dir.write(
            "v.npy",
            &[b, s, h, d],
            &random(&mut rng, b * s * h * d, 1.0),
        ),
        dir.write("g.npy", &[b, s, h], &random(&mut rng, b * s * h, 3.0)),
    ]
}

pub(crate) fn expect_usage_error(args: &[&str]) -> String {
    let err = run(args).expect_err("should fail");
    assert_eq!(err.code, 2, "{args:?}: {}", err.message);
    assert!(!err.message.contains('\n'), "{}", err.message);
    err.message
}

#[test]
fn two_outputs_naming_one_file_are_rejected_up_front() {
    let dir = TempDir::new("dup");
    let [q, k, v, g] = small_inputs(&dir);
    let a = dir.path("a.npy");
    let a_again = dir.path("./a.npy");
    let forward = ["forward", "--q", &q, "--k", &k, "--v", &v, "--g", &g];
    // Given twice, literally or through another spelling: rejected, and nothing is written.
    for lse in [&a, &a_again] {
        let mut args = forward.to_vec();
        args.extend(["--out", &a, "--lse", lse]);
        assert!(expect_usage_error(&args).contains("same file"));
        assert!(!Path::new(&a).exists());
    }
    // A file the user had stays as it was.
    std::fs::write(&a, b"mine").unwrap();
    let mut args = forward.to_vec();
    args.extend(["--out", &a, "--o", &a_again]);
    assert!(expect_usage_error(&args).contains("same file"));
    assert_eq!(std::fs::read(&a).unwrap(), b"mine");
    // The backward's --out-dir files collide with --out / --lse / --o as well.
    let dy = dir.write("dy.npy", &[1, 4, 2, 64], &[0.5; 512]);
    let grads = dir.path("grads");
    let dq = dir.path("grads/dq.npy");
    for flag in ["--out", "--lse", "--o"] {
        let mut args = vec!["backward", "--q", &q, "--k", &k, "--v", &v, "--g", &g];
        args.extend(["--dy", &dy, "--out-dir", &grads, flag, &dq]);
        assert!(expect_usage_error(&args).contains("same file"), "{flag}");
        assert!(!Path::new(&grads).exists(), "{flag}");
    }
    assert_eq!(
        dir.names(),
        ["a.npy", "dy.npy", "g.npy", "k.npy", "q.npy", "v.npy"]
    );
}

#[test]
fn an_unusable_destination_fails_before_computing_and_leaves_nothing() {
    let dir = TempDir::new("unusable");
    let [q, k, v, g] = small_inputs(&dir);
    let dy = dir.write("dy.npy", &[1, 4, 2, 64], &[0.5; 512]);
    let grads = dir.path("grads");
    std::fs::create_dir_all(dir.path("grads/dk.npy")).unwrap();
    let y = dir.path("y.npy");
    let backward = [
        "backward",
        "--q",
        &q,
        "--k",
        &k,
        "--v",
        &v,
        "--g",
        &g,
        "--dy",
        &dy,
        "--out-dir",
        &grads,
        "--out",
        &y,
    ];
    assert!(expect_usage_error(&backward).contains("dk.npy: is a directory"));
    // Neither dq.npy nor y.npy nor a temporary was written.
    assert_eq!(
        std::fs::read_dir(&grads).unwrap().count(),
        1,
        "only dk.npy/ is in grads"
    );
    assert!(!Path::new(&y).exists());
    assert!(dir.names().iter().all(|n| !n.contains(".tmp-")));
    // An --out whose directory is missing, and an --out that is a directory.
    let missing = dir.path("nowhere/y.npy");
    for out in [&missing, &grads] {
        expect_usage_error(&[
            "forward", "--q", &q, "--k", &k, "--v", &v, "--g", &g, "--out", out,
        ]);
    }
    assert!(!Path::new(&dir.path("nowhere")).exists());
    // A fresh --out-dir is created (with its parents); the gate's dg.npy is among its files.
    let fresh = dir.path("fresh/deep");
    run(&[
        "backward",
        "--q",
        &q,
        "--k",
        &k,
        "--v",
        &v,
        "--g",
        &g,
        "--dy",
        &dy,
        "--out-dir",
        &fresh,
    ])
    .unwrap();
    let mut written: Vec<_> = std::fs::read_dir(&fresh)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, ["dg.npy", "dk.npy", "dq.npy", "dv.npy"]);
}

#[test]
fn float64_inputs_warn_and_round_once() {
    let dir = TempDir::new("f64");
    let [q, k, v, g] = small_inputs(&dir);
    let q32 = npy::read(Path::new(&q)).unwrap();
    let npy::Data::F32(values) = &q32.data else {
        unreachable!()
    };
    let wide: Vec<f64> = values.iter().map(|&x| f64::from(x)).collect();
    let q64 = dir.write_f64("q64.npy", &q32.shape, &wide);
    let strings = |a: &[&str]| -> Vec<String> { a.iter().map(|s| s.to_string()).collect() };
    let flags = |q: &str| {
        crate::args::Flags::parse(
            &strings(&["--q", q, "--k", &k, "--v", &v, "--g", &g]),
            &["q", "k", "v", "g"],
            &[],
        )
        .unwrap()
    };
    let request = crate::attention::load(&flags(&q64), false).unwrap();
    assert_eq!(request.warnings.len(), 1, "{:?}", request.warnings);
    assert!(request.warnings[0].contains(&q64) && request.warnings[0].contains("float64"));
    assert!(crate::attention::load(&flags(&q), false)
        .unwrap()
        .warnings
        .is_empty());
    // The same values as float32 or float64 give the same output.
    let (y32, y64) = (dir.path("y32.npy"), dir.path("y64.npy"));
    for (q, y) in [(&q, &y32), (&q64, &y64)] {
        run(&[
            "forward", "--q", q, "--k", &k, "--v", &v, "--g", &g, "--out", y,
        ])
        .unwrap();
    }
    assert_eq!(dir.read("y32.npy"), dir.read("y64.npy"));
    // Rounded once: 1 + 2^-8 + 2^-30 is above the bf16 midpoint 1 + 2^-8 (so it rounds up to
    // 1 + 2^-7), but rounding through f32 first lands on the midpoint, which rounds to even (1).
    let x = 1.0 + 2f64.powi(-8) + 2f64.powi(-30);
    let array = npy::parse(&{
        let mut bytes = npy::header_with_descr("<f8", &[1]);
        bytes.extend_from_slice(&x.to_le_bytes());
        bytes
    })
    .unwrap();
    assert_eq!(
        array.round_to::<bf16>().unwrap().as_slice()[0].to_f64(),
        1.0 + 2f64.powi(-7)
    );
}

#[test]
fn values_beyond_the_dtype_are_errors_and_non_finite_values_pass() {
    let dir = TempDir::new("range");
    let [_, k, v, g] = small_inputs(&dir);
    let mut q = vec![0.25f32; 512];
    q[64 + 3] = 70000.0; // element [0, 0, 1, 3]: fine in bf16, beyond f16's 65504
    let qp = dir.write("q.npy", &[1, 4, 2, 64], &q);
    let y = dir.path("y.npy");
    let forward = |dtype: &'static str| {
        vec![
            "forward", "--q", &qp, "--k", &k, "--v", &v, "--g", &g, "--out", &y, "--dtype", dtype,
        ]
    };
    let message = expect_usage_error(&forward("f16"));
    assert!(
        message.contains(&qp) && message.contains("[0, 0, 1, 3]") && message.contains("f16"),
        "{message}"
    );
    assert!(!Path::new(&y).exists());
    run(&forward("bf16")).unwrap();
    // f16's largest finite value rounds to itself; NaN and inf in the inputs pass through.
    q[64 + 3] = 65504.0;
    q[5] = f32::NAN;
    dir.write("q.npy", &[1, 4, 2, 64], &q);
    run(&forward("f16")).unwrap();
    let out = dir.read("y.npy");
    assert!(
        out.data[..64].iter().all(|x| x.is_nan()),
        "query row 0 saw the NaN"
    );
    assert!(out.data[64..].iter().all(|x| x.is_finite()));
    let mut vv = vec![0.5f32; 512];
    vv[0] = f32::INFINITY;
    let vp = dir.write("v.npy", &[1, 4, 2, 64], &vv);
    let q = dir.write("q.npy", &[1, 4, 2, 64], &[0.25; 512]);
    run(&[
        "forward", "--q", &q, "--k", &k, "--v", &vp, "--out", &y, "--dtype", "f16",
    ])
    .unwrap();
    assert!(dir
        .read("y.npy")
        .data
        .iter()
        .any(|x| x.is_infinite() || x.is_nan()));
}

#[test]
fn shapes_too_large_for_memory_are_errors_without_allocating() {
    let dir = TempDir::new("huge");
    let [_, k, v, _] = small_inputs(&dir);
    let y = dir.path("y.npy");
    // A header that claims ~400 TB of data the file does not hold, and one whose count overflows.
    let huge = dir.path("huge.npy");
    std::fs::write(&huge, npy::header(&[100_000_000, 16, 256, 256])).unwrap();
    let overflow = dir.path("overflow.npy");
    std::fs::write(&overflow, npy::header(&[1 << 40, 1 << 40])).unwrap();
    for q in [&huge, &overflow] {
        let message = expect_usage_error(&["forward", "--q", q, "--k", &k, "--v", &v, "--out", &y]);
        assert!(message.contains(q.as_str()), "{message}");
        let dy = &k;
        let grads = dir.path("grads");
        let args = [
            "backward",
            "--q",
            q,
            "--k",
            &k,
            "--v",
            &v,
            "--dy",
            dy,
            "--out-dir",
            &grads,
        ];
        expect_usage_error(&args);
        assert!(!Path::new(&grads).exists());
    }
    assert!(!Path::new(&y).exists());
    // The demo checks its sizes before allocating (it would need terabytes here).
    let message = expect_usage_error(&["demo", "--backend", "reference", "--seqlen", "100000000"]);
    assert!(message.contains("memory"), "{message}");
    let message = expect_usage_error(&[
        "demo",
        "--backend",
        "reference",
        "--seqlen",
        &usize::MAX.to_string(),
    ]);
    assert!(message.contains("overflow"), "{message}");
}

/// `demo --seqlen 1` and `2`: each query sees one or two keys, so the exact dq and dk are (nearly) 0
/// and only a metric relative to the cancellation-free magnitude can judge them.
#[cfg(feature = "emulator")]
#[test]
fn demo_passes_at_tiny_sequence_lengths_on_the_emulator() {
    for seqlen in ["1", "2"] {
        run(&["demo", "--backend", "emulator", "--seqlen", seqlen])
            .unwrap_or_else(|e| panic!("--seqlen {seqlen}: {}", e.message));
    }
}

#[cfg(feature = "emulator")]
#[test]
fn forward_on_the_emulator_with_arch_sm90_runs_the_hopper_kernel() {
    let dir = TempDir::new("fwd-sm90");
    let (b, sq, sk, hq, hkv, d) = (1, 70, 45, 4, 2, 128);
    let mut rng = StdRng::seed_from_u64(7);
    let (q, k, v, g) = (
        random(&mut rng, b * sq * hq * d, 2.0),
        random(&mut rng, b * sk * hkv * d, 2.0),
        random(&mut rng, b * sk * hkv * d, 1.0),
        random(&mut rng, b * sq * hq * d, 3.0),
    );
    let qp = dir.write("q.npy", &[b, sq, hq, d], &q);
    let kp = dir.write("k.npy", &[b, sk, hkv, d], &k);
    let vp = dir.write("v.npy", &[b, sk, hkv, d], &v);
    let gp = dir.write("g.npy", &[b, sq, hq, d], &g);
    let p = AttentionProblem::new(b, sq, sk, hq, hkv, d)
        .causal(true)
        .gate(GateMode::Elementwise);
    let exact = forward_f64(
        &p,
        &round_bf16(&q),
        &round_bf16(&k),
        &round_bf16(&v),
        Some(&round_bf16(&g)),
    )
    .unwrap();
    for (flags, out) in [
        (&["--arch", "sm90"][..], "y90.npy"),
        (&["--arch", "sm90", "--kernel", "hopper"][..], "y90h.npy"),
        (&["--arch", "sm90", "--kernel", "mma-sync"][..], "y80.npy"),
    ] {
        let (yp, op, lsep) = (
            dir.path(out),
            dir.path(&format!("o-{out}")),
            dir.path(&format!("lse-{out}")),
        );
        let mut args = vec!["forward", "--backend", "emulator"];
        args.extend(flags);
        args.extend([
            "--q", &qp, "--k", &kp, "--v", &vp, "--g", &gp, "--causal", "--out", &yp, "--o", &op,
            "--lse", &lsep,
        ]);
        run(&args).unwrap();
        for (file, want) in [(out.to_string(), &exact.y), (format!("o-{out}"), &exact.o)] {
            let got = dir.read(&file).data;
            let worst = got
                .iter()
                .zip(want.iter())
                .map(|(&g, &w)| (f64::from(g) - w).abs())
                .fold(0.0, f64::max);
            assert!(worst < 3e-2, "{file} ({flags:?}): max error {worst}");
        }
        let lse = dir.read(&format!("lse-{out}")).data;
        for (&got, &want) in lse.iter().zip(&exact.lse) {
            assert!(
                (f64::from(got) - want).abs() <= 1e-4 * want.abs().max(1.0)
                    || (got == f32::NEG_INFINITY && want == f64::NEG_INFINITY),
                "lse {got} vs {want} ({flags:?})"
            );
        }
    }
    // --arch and --kernel are for the emulator and CUDA backends; a bad value is a usage error.
    let yp = dir.path("bad.npy");
    for flags in [
        &["--backend", "reference", "--arch", "sm90"][..],
        &["--backend", "emulator", "--arch", "sm_70x"][..],
        &["--backend", "emulator", "--kernel", "fastest"][..],
    ] {
        let mut args = vec!["forward"];
        args.extend(flags);
        args.extend(["--q", &qp, "--k", &kp, "--v", &vp, "--g", &gp, "--out", &yp]);
        let err = run(&args).unwrap_err();
        assert_eq!(err.code, 2, "{flags:?}: {err:?}");
    }
    // Forcing the Hopper kernel on an sm_80 target fails (exit 2: the backend refuses the option).
    let mut args = vec!["forward", "--backend", "emulator", "--kernel", "hopper"];
    args.extend(["--q", &qp, "--k", &kp, "--v", &vp, "--g", &gp, "--out", &yp]);
    assert!(run(&args).is_err());
}
