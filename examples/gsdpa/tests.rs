//! End-to-end tests of the CLI commands, run in-process on files in a temporary directory
//! (`cargo test --example gsdpa`).

use std::path::{Path, PathBuf};

use gated_sdpa::reference::{backward_f64, forward_f64};
use gated_sdpa::{AttentionProblem, GateMode, Varlen};
use half::bf16;
use rand::{rngs::StdRng, RngExt, SeedableRng};

use crate::npy;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("gsdpa-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).to_string_lossy().into_owned()
    }

    fn write(&self, file: &str, shape: &[usize], data: &[f32]) -> String {
        let path = self.path(file);
        std::fs::write(&path, npy::to_bytes(shape, data)).unwrap();
        path
    }

    fn read(&self, file: &str) -> npy::Array {
        npy::read(Path::new(&self.path(file))).unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> Result<(), crate::CliError> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    crate::run(&args)
}

fn random(rng: &mut StdRng, n: usize, amplitude: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.random_range(-amplitude..amplitude))
        .collect()
}

/// What the CLI computes: the f64 reference on inputs rounded to bf16, then rounded to bf16.
fn round_bf16(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| bf16::from_f32(v).to_f64()).collect()
}

fn as_bf16_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| bf16::from_f64(v).to_f32()).collect()
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
