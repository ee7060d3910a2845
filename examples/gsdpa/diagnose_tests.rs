//! `gsdpa forward --sink-mass/--gate-stats` and `gsdpa diagnose`, in-process on temporary files.

use gated_sdpa::reference::diagnostics_f64;
use gated_sdpa::{AttentionProblem, GateMode, HostBuffer};
use half::bf16;
use rand::{rngs::StdRng, SeedableRng};

use crate::backends::{Diagnose, ForwardOut};
use crate::tests::{expect_usage_error, random, round_bf16, run, TempDir};

/// q, k, v and an elementwise g of a [2, 9, 2, 64] problem with 13 keys and one kv head.
fn inputs(dir: &TempDir) -> (AttentionProblem, [String; 4], [Vec<f64>; 3]) {
    let (b, sq, sk, hq, d) = (2, 9, 13, 2, 64);
    let p = AttentionProblem::new(b, sq, sk, hq, 1, d).gate(GateMode::Elementwise);
    let mut rng = StdRng::seed_from_u64(3);
    let q = random(&mut rng, b * sq * hq * d, 2.0);
    let k = random(&mut rng, b * sk * d, 2.0);
    let v = random(&mut rng, b * sk * d, 1.0);
    let g = random(&mut rng, b * sq * hq * d, 3.0);
    let files = [
        dir.write("q.npy", &[b, sq, hq, d], &q),
        dir.write("k.npy", &[b, sk, 1, d], &k),
        dir.write("v.npy", &[b, sk, 1, d], &v),
        dir.write("g.npy", &[b, sq, hq, d], &g),
    ];
    (p, files, [round_bf16(&q), round_bf16(&k), round_bf16(&g)])
}

fn close(got: &[f32], want: &[f64]) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(&g, &w)| (f64::from(g) - w).abs() <= 1e-4 + 1e-3 * w.abs())
}

#[test]
fn forward_writes_the_diagnostics_and_diagnose_agrees() {
    let dir = TempDir::new("diagnostics");
    let (p, [q, k, v, g], [qr, kr, gr]) = inputs(&dir);
    let want = diagnostics_f64(&p, &qr, &kr, Some(&gr), 2).unwrap();
    for backend in ["reference", "emulator"] {
        let (y, sm, gs) = (dir.path("y.npy"), dir.path("sm.npy"), dir.path("gs.npy"));
        // The flags both subcommands get; each adds its own outputs.
        let shared = [
            "--backend",
            backend,
            "--q",
            &q,
            "--k",
            &k,
            "--v",
            &v,
            "--g",
            &g,
            "--n-sink",
            "2",
        ];
        let command = |subcommand: &str, outputs: &[&str]| -> Vec<String> {
            let all = std::iter::once(&subcommand).chain(&shared).chain(outputs);
            all.map(|s| s.to_string()).collect()
        };
        let args = command(
            "forward",
            &["--out", &y, "--sink-mass", &sm, "--gate-stats", &gs],
        );
        run(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        let sink = dir.read("sm.npy");
        assert_eq!(sink.shape, p.lse_shape());
        assert!(
            close(&sink.data, &want.sink_mass),
            "{backend}: {:?}",
            sink.data
        );
        let stats = dir.read("gs.npy");
        assert_eq!(stats.shape, vec![2, 2]);
        assert!(
            close(&stats.data, &want.gate_stats),
            "{backend}: {:?}",
            stats.data
        );

        // diagnose writes the same files (y optional) and succeeds.
        let (sm2, gs2) = (dir.path("sm2.npy"), dir.path("gs2.npy"));
        let args = command("diagnose", &["--sink-mass", &sm2, "--gate-stats", &gs2]);
        run(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        assert_eq!(dir.read("sm2.npy"), sink);
        assert_eq!(dir.read("gs2.npy"), stats);
        for file in ["y.npy", "sm.npy", "gs.npy", "sm2.npy", "gs2.npy"] {
            std::fs::remove_file(dir.path(file)).unwrap();
        }
    }
}

#[test]
fn bad_diagnostics_flags_exit_2() {
    let dir = TempDir::new("diagnostics-bad");
    let (_, [q, k, v, g], _) = inputs(&dir);
    let (y, sm, gs) = (dir.path("y.npy"), dir.path("sm.npy"), dir.path("gs.npy"));
    let base = ["forward", "--q", &q, "--k", &k, "--v", &v, "--out", &y];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let cases: [(Vec<String>, &str); 4] = [
        (
            with(&["--g", &g, "--sink-mass", &sm, "--n-sink", "0"]),
            "at least 1",
        ),
        (with(&["--g", &g, "--n-sink", "3"]), "needs --sink-mass"),
        (with(&["--gate-stats", &gs]), "needs a gate"),
        (
            with(&["--g", &g, "--n-sink", "x", "--sink-mass", &sm]),
            "n-sink",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let message = expect_usage_error(&args);
        assert!(message.contains(needle), "{args:?}: {message}");
    }
    // The backward takes no diagnostics flags.
    let message = expect_usage_error(&[
        "backward",
        "--q",
        &q,
        "--k",
        &k,
        "--v",
        &v,
        "--dy",
        &q,
        "--out-dir",
        &dir.path("grads"),
        "--sink-mass",
        &sm,
    ]);
    assert!(message.contains("sink-mass"), "{message}");
    assert!(
        dir.names().iter().all(|n| n.ends_with("q.npy")
            || n.ends_with("k.npy")
            || n.ends_with("v.npy")
            || n.ends_with("g.npy")),
        "{:?}",
        dir.names()
    );
}

#[test]
fn the_report_averages_rows_that_see_keys_and_weights_sequences() {
    // Two sequences of two rows, two heads; the rows whose LSE is -inf (they see no key) are left out
    // of the sink mean.
    let p = AttentionProblem::new(2, 2, 3, 2, 1, 64).gate(GateMode::Headwise);
    let lse = vec![
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        f32::NEG_INFINITY,
        0.0,
        f32::NEG_INFINITY,
    ];
    let sink = vec![0.5, 0.25, 1.0, 0.0, 0.75, 0.9, 0.5, 0.9];
    let out = ForwardOut::<bf16> {
        y: HostBuffer::new(0),
        o: None,
        lse: HostBuffer::from_slice(&lse),
        sink_mass: Some(HostBuffer::from_slice(&sink)),
        gate_stats: Some(HostBuffer::from_slice(&[0.1, 0.2, 0.3, 0.4])),
        seconds: 0.0,
    };
    let diagnose = Diagnose {
        n_sink: Some(1),
        gate_stats: true,
    };
    let text = crate::diagnose::report(&p, &out, diagnose, "test");
    let lines: Vec<&str> = text.lines().collect();
    // head 0: rows (0,0) 0.5, (0,1) 0.25, (1,0) 0.75 -> 0.5; gate (0.1 + 0.3) / 2 = 0.2
    // head 1: rows (0,0) 1.0, (0,1) 0.0, (1,0) 0.5 -> 0.5; gate (0.2 + 0.4) / 2 = 0.3
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["0", "0.5000", "0.2000"],
        "{text}"
    );
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>(),
        ["1", "0.5000", "0.3000"],
        "{text}"
    );
    assert_eq!(
        lines[4].split_whitespace().collect::<Vec<_>>(),
        ["layer", "0.5000", "0.2500"],
        "{text}"
    );
}
