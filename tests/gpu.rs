//! The GPU suite: the kernels on a real device against the f64 reference, and the emulator against the
//! hardware. Every test skips when there is no usable GPU (no driver, no device, or a build without
//! nvcc), printing `SKIPPED <test>: <reason>` past libtest's output capture so that the skip shows in
//! `cargo test`'s output, and fails instead when `GSDPA_REQUIRE_GPU=1`.
//!
//! Run on a GPU machine: `GSDPA_REQUIRE_GPU=1 cargo test --release --test gpu`.

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use gated_sdpa::cuda::{CudaBackend, CudaSeqlens};
use gated_sdpa::reference;
use gated_sdpa::{
    Activation, AttentionProblem, BackwardArgs, BackwardOptions, BackwardTiles, DType, Element,
    ForwardArgs, ForwardKernel, GateArgs, GateBackwardArgs, GateMode, GsdpaError, Layout,
    TargetArch, Tensor, Varlen,
};
use rand::{rngs::StdRng, SeedableRng};

mod common;
use common::{forward_tolerance, gpu, numel, random_values, rel_frobenius};

/// Rounds to T and back, so the reference sees exactly the kernel's inputs.
fn round<T: Element>(x: &[f64]) -> (Vec<T>, Vec<f64>) {
    let t: Vec<T> = x.iter().map(|&v| T::from_f64(v)).collect();
    let back = t.iter().map(|v| v.to_f64()).collect();
    (t, back)
}

fn upload<T: DeviceRepr>(stream: &std::sync::Arc<CudaStream>, x: &[T]) -> CudaSlice<T> {
    stream.clone_htod(x).expect("upload")
}

fn download<T: DeviceRepr + Element>(
    stream: &std::sync::Arc<CudaStream>,
    x: &CudaSlice<T>,
) -> Vec<f64> {
    stream
        .clone_dtoh(x)
        .expect("download")
        .iter()
        .map(|v| v.to_f64())
        .collect()
}

/// Random inputs rounded to T (`q`, ...) and the same values in f64 (`qf`, ...) for the reference.
struct Inputs<T> {
    q: Vec<T>,
    qf: Vec<f64>,
    k: Vec<T>,
    kf: Vec<f64>,
    v: Vec<T>,
    vf: Vec<f64>,
    g: Option<Vec<T>>,
    gf: Option<Vec<f64>>,
}

impl<T: Element> Inputs<T> {
    fn random(problem: &AttentionProblem, rng: &mut StdRng) -> Self {
        let (q, qf) = round::<T>(&random_values(rng, numel(&problem.q_shape()), 1.0));
        let (k, kf) = round::<T>(&random_values(rng, numel(&problem.kv_shape()), 1.0));
        let (v, vf) = round::<T>(&random_values(rng, numel(&problem.kv_shape()), 1.0));
        // Gate logits over [-3, 3]: the sigmoid's whole useful range.
        let (g, gf) = match problem.gate_shape() {
            Some(s) => {
                let (g, gf) = round::<T>(&random_values(rng, numel(&s), 3.0));
                (Some(g), Some(gf))
            }
            None => (None, None),
        };
        Inputs {
            q,
            qf,
            k,
            kf,
            v,
            vf,
            g,
            gf,
        }
    }
}

/// Runs one forward problem on the GPU and checks Y, O and LSE against the f64 reference.
fn check_forward<T: Element + DeviceRepr>(
    backend: &CudaBackend,
    problem: &AttentionProblem,
    seed: u64,
) {
    let stream = backend.context().default_stream();
    let mut rng = StdRng::seed_from_u64(seed);
    let q_shape = problem.q_shape();
    let kv_shape = problem.kv_shape();
    let g_shape = problem.gate_shape();
    let Inputs {
        q,
        qf,
        k,
        kf,
        v,
        vf,
        g,
        gf,
    } = Inputs::<T>::random(problem, &mut rng);
    let want = reference::forward_f64(problem, &qf, &kf, &vf, gf.as_deref()).expect("reference");

    let (dq, dk, dv) = (
        upload(&stream, &q),
        upload(&stream, &k),
        upload(&stream, &v),
    );
    let dg = g.as_ref().map(|g| upload(&stream, g));
    let poison = vec![T::from_f64(f64::NAN); numel(&q_shape)];
    let mut dy = upload(&stream, &poison);
    let mut d_o = upload(&stream, &poison);
    let lse_shape = problem.lse_shape();
    let mut dlse = upload(&stream, &vec![f32::NAN; numel(&lse_shape)]);
    // Odd seeds also ask for the diagnostics (docs/diagnostics.md), even seeds run without them.
    let diagnose = seed % 2 == 1;
    let n_sink = 1 + (seed as usize / 2) % 3;
    let stats_shape = [problem.batch, problem.heads_q];
    let gate_stats = diagnose && problem.gate != GateMode::None;
    let mut dsink = upload(&stream, &vec![f32::NAN; numel(&lse_shape).max(1)]);
    let mut dstats = upload(&stream, &vec![f32::NAN; numel(&stats_shape).max(1)]);
    let ws_len = gated_sdpa::gate_stats_workspace_len(problem).expect("workspace length");
    let mut dws = upload(&stream, &vec![f32::NAN; ws_len.max(1)]);
    let seqlens_host = problem.varlen.clone();
    let cu = seqlens_host.as_ref().map(|v| {
        (
            upload(&stream, &v.cu_seqlens_q),
            upload(&stream, &v.cu_seqlens_k),
        )
    });
    let seqlens = cu.as_ref().map(|(q, k)| CudaSeqlens {
        q: q.as_view(),
        k: k.as_view(),
    });
    let mut args = ForwardArgs {
        q: Tensor::new(dq.as_view(), Layout::contiguous(&q_shape)),
        k: Tensor::new(dk.as_view(), Layout::contiguous(&kv_shape)),
        v: Tensor::new(dv.as_view(), Layout::contiguous(&kv_shape)),
        g: dg
            .as_ref()
            .map(|g| Tensor::new(g.as_view(), Layout::contiguous(g_shape.as_ref().unwrap()))),
        y: Tensor::new(dy.as_view_mut(), Layout::contiguous(&q_shape)),
        o: Some(Tensor::new(d_o.as_view_mut(), Layout::contiguous(&q_shape))),
        lse: Some(Tensor::new(
            dlse.as_view_mut(),
            Layout::contiguous(&lse_shape),
        )),
        diagnostics: diagnose.then(|| gated_sdpa::ForwardDiagnostics {
            sink_mass: Some(Tensor::new(
                dsink.as_view_mut(),
                Layout::contiguous(&lse_shape),
            )),
            n_sink,
            gate_stats: gate_stats
                .then(|| Tensor::new(dstats.as_view_mut(), Layout::contiguous(&stats_shape))),
            gate_workspace: gate_stats
                .then(|| Tensor::new(dws.as_view_mut(), Layout::contiguous(&[ws_len]))),
        }),
    };
    backend
        .forward(&stream, problem, &mut args, seqlens.as_ref())
        .expect("forward launches");
    drop(args);
    stream.synchronize().expect("forward completes");
    let y = download(&stream, &dy);
    let o = download(&stream, &d_o);
    let lse: Vec<f64> = stream
        .clone_dtoh(&dlse)
        .unwrap()
        .iter()
        .map(|&x| x as f64)
        .collect();
    let tol = forward_tolerance(T::DTYPE);
    let label = format!("{problem:?}");
    if diagnose {
        let want = reference::diagnostics_f64(problem, &qf, &kf, gf.as_deref(), n_sink).unwrap();
        let sink = stream.clone_dtoh(&dsink).unwrap();
        let stats = stream.clone_dtoh(&dstats).unwrap();
        let mut pairs: Vec<(&str, f32, f64)> = want
            .sink_mass
            .iter()
            .zip(&sink)
            .map(|(&w, &g)| ("sink_mass", g, w))
            .collect();
        if gate_stats {
            pairs.extend(
                want.gate_stats
                    .iter()
                    .zip(&stats)
                    .map(|(&w, &g)| ("gate_stats", g, w)),
            );
        }
        for (what, got, w) in pairs {
            let got = f64::from(got);
            assert!(
                (got - w).abs() <= 1e-4 + 1e-3 * w.abs(),
                "{what} {got} vs {w}: {label}"
            );
        }
    }
    assert!(
        rel_frobenius(&y, &want.y) <= tol,
        "Y error {} > {tol}: {label}",
        rel_frobenius(&y, &want.y)
    );
    assert!(
        rel_frobenius(&o, &want.o) <= tol,
        "O error {} > {tol}: {label}",
        rel_frobenius(&o, &want.o)
    );
    for (i, (&got, &w)) in lse.iter().zip(&want.lse).enumerate() {
        if w == f64::NEG_INFINITY {
            assert_eq!(got, f64::NEG_INFINITY, "lse[{i}] must be -inf: {label}");
        } else {
            assert!(
                (got - w).abs() <= 1e-4 * w.abs().max(1.0),
                "lse[{i}] {got} vs {w}: {label}"
            );
        }
    }
}

#[test]
fn conformance_gpu_matches_emulator() {
    let Some(backend) = gpu() else { return };
    let on_gpu = gated_sdpa::testing::conformance::run_on_gpu(&backend)
        .expect("conformance kernel on the GPU");
    #[cfg(not(feature = "emulator"))]
    eprintln!(
        "conformance ran on the GPU ({} words); build with the emulator feature to compare",
        on_gpu.len()
    );
    #[cfg(feature = "emulator")]
    {
        let emulated = gated_sdpa::testing::conformance::run_on_emulator(
            &gated_sdpa::emulator::Emulator::new(),
        )
        .unwrap();
        let slots = gated_sdpa::ffi::GSDPA_CONFORMANCE_SLOTS as usize;
        let mut mismatches = Vec::new();
        for (i, (&g, &e)) in on_gpu.iter().zip(&emulated).enumerate() {
            let (lane, slot) = (i / slots, i % slots);
            let nan_pair = |w: u32, f16: bool| {
                [w as u16, (w >> 16) as u16].map(|h| {
                    if f16 {
                        half::f16::from_bits(h).is_nan()
                    } else {
                        half::bf16::from_bits(h).is_nan()
                    }
                })
            };
            let same = match slot {
                39 | 40 => {
                    let f16 = slot == 40;
                    let (gn, en) = (nan_pair(g, f16), nan_pair(e, f16));
                    (0..2).all(|h| {
                        let (gh, eh) = ((g >> (16 * h)) as u16, (e >> (16 * h)) as u16);
                        gh == eh || (gn[h] && en[h])
                    })
                }
                _ => g == e,
            };
            if !same {
                mismatches.push(format!(
                    "lane {lane} slot {slot}: gpu {g:#010x} emulator {e:#010x}"
                ));
            }
        }
        assert!(
            mismatches.is_empty(),
            "GPU and emulator differ:\n{}",
            mismatches.join("\n")
        );
        eprintln!(
            "conformance: the GPU ({}) matches the emulator in all {} words",
            backend.device_name().unwrap_or_default(),
            on_gpu.len()
        );
    }
}

#[test]
fn forward_grid_matches_reference() {
    let Some(backend) = gpu() else { return };
    // On an sm_90 device both forward kernels run the grid: the mma.sync one, then the Hopper one
    // (docs/hopper-forward.md), each checked to be the kernel that ran.
    let mut kernels = vec![ForwardKernel::MmaSync];
    if backend.arch() == TargetArch::SM90 {
        kernels.push(ForwardKernel::Hopper);
    }
    drop(backend);
    for kernel in kernels {
        let backend = CudaBackend::new(0)
            .expect("the backend was created above")
            .with_forward_kernel(kernel);
        forward_grid_on(&backend, kernel);
    }
}

fn forward_grid_on(backend: &CudaBackend, kernel: ForwardKernel) {
    // The Hopper kernel's entry points are gsdpa_fwd90_*, the mma.sync kernel's gsdpa_fwd_*. The odd
    // seeds ask for the diagnostics, which the Hopper kernel computes too.
    let expected_prefix = |_seed: u64| match kernel {
        ForwardKernel::Hopper => "gsdpa_fwd90_",
        _ => "gsdpa_fwd_",
    };
    let mut seed = 0;
    for dtype in [DType::BF16, DType::F16] {
        for head_dim in [64, 128, 256] {
            for causal in [false, true] {
                for gate in [GateMode::None, GateMode::Elementwise, GateMode::Headwise] {
                    for activation in [Activation::Sigmoid, Activation::Silu] {
                        for &(sq, sk, hq, hkv) in &[
                            (129, 129, 4, 4),
                            (100, 300, 8, 2),
                            (300, 17, 8, 1),
                            (1, 1, 4, 4),
                        ] {
                            seed += 1;
                            let p = AttentionProblem::new(2, sq, sk, hq, hkv, head_dim)
                                .causal(causal)
                                .gate(gate)
                                .activation(activation);
                            match dtype {
                                DType::BF16 => check_forward::<half::bf16>(backend, &p, seed),
                                DType::F16 => check_forward::<half::f16>(backend, &p, seed),
                            }
                            let ran = backend.last_forward_kernel().unwrap_or_default();
                            assert!(
                                ran.starts_with(expected_prefix(seed)),
                                "{kernel:?}, seed {seed}: {ran} ran"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn forward_varlen_and_long_sequences() {
    let Some(backend) = gpu() else { return };
    let varlen = Varlen::new(vec![0, 5, 5, 300, 1300], vec![0, 17, 40, 40, 1100]).unwrap();
    for causal in [false, true] {
        let p = AttentionProblem::new_varlen(varlen.clone(), 8, 2, 128)
            .causal(causal)
            .gate(GateMode::Elementwise);
        check_forward::<half::bf16>(&backend, &p, 99);
    }
    // The Hopper kernel's varlen (docs/hopper-forward.md) on an sm_90 device, odd seed: with the
    // diagnostics.
    if backend.arch() == TargetArch::SM90 {
        let hopper = CudaBackend::new(0)
            .expect("the backend was created above")
            .with_forward_kernel(ForwardKernel::Hopper);
        for causal in [false, true] {
            let p = AttentionProblem::new_varlen(varlen.clone(), 8, 2, 128)
                .causal(causal)
                .gate(GateMode::Headwise);
            check_forward::<half::bf16>(&hopper, &p, 101);
            let ran = hopper.last_forward_kernel().unwrap_or_default();
            assert!(ran.starts_with("gsdpa_fwd90_"), "varlen: {ran} ran");
        }
    }
    let p = AttentionProblem::new(1, 2048, 2048, 16, 2, 256)
        .causal(true)
        .gate(GateMode::Elementwise);
    check_forward::<half::bf16>(&backend, &p, 100);
}

#[test]
fn backward_matches_reference() {
    let Some(backend) = gpu() else { return };
    let stream = backend.context().default_stream();
    // The device's opt-in limit, as the driver reports it, chooses the large tiles on A100 and H100.
    let arch = backend.arch();
    let auto = gated_sdpa::launch::backward_tiles(
        128,
        BackwardTiles::Auto,
        backend.max_dynamic_shared_bytes(),
    )
    .unwrap();
    if arch == TargetArch::SM80 || arch == TargetArch::SM90 {
        assert_eq!(
            auto,
            BackwardTiles::Large,
            "{arch}: {} bytes",
            backend.max_dynamic_shared_bytes()
        );
    }
    // D = 256's large tiles on H100 / H200 (two stages, 176 KiB) and A100 (one stage, 144 KiB): the
    // launch names the kernels of each.
    if arch == TargetArch::SM80 || arch == TargetArch::SM90 {
        let auto_256 = gated_sdpa::launch::backward_tiles(
            256,
            BackwardTiles::Auto,
            backend.max_dynamic_shared_bytes(),
        )
        .unwrap();
        assert_eq!(auto_256, BackwardTiles::Large, "{arch}: D = 256");
        let launches = gated_sdpa::launch::backward(
            &AttentionProblem::new(1, 128, 128, 1, 1, 256),
            DType::BF16,
            BackwardOptions {
                deterministic: true,
                tiles: BackwardTiles::Auto,
            },
            backend.max_dynamic_shared_bytes(),
        )
        .unwrap();
        let suffix = if arch == TargetArch::SM80 {
            "_d256_large_1stage"
        } else {
            "_d256_large"
        };
        for l in launches.iter().filter(|l| l.shared_bytes > 0) {
            assert!(l.kernel.ends_with(suffix), "{arch}: {}", l.kernel);
        }
    }
    for head_dim in [64, 128, 256] {
        for (gate, activation) in [
            (GateMode::Elementwise, Activation::Sigmoid),
            (GateMode::Headwise, Activation::Sigmoid),
            (GateMode::Elementwise, Activation::Silu),
            (GateMode::None, Activation::Sigmoid),
        ] {
            // Compact tiles, and Auto's choice (the large tiles at D = 128 and 256 on A100 and H100,
            // one-stage at D = 256 on A100; at D = 64 the large dQ kernel of the deterministic mode).
            for tiles in [BackwardTiles::Compact, BackwardTiles::Auto] {
                for deterministic in [false, true] {
                    let p = AttentionProblem::new(2, 129, 100, 8, 2, head_dim)
                        .causal(true)
                        .gate(gate)
                        .activation(activation);
                    let options = BackwardOptions {
                        deterministic,
                        tiles,
                    };
                    check_backward::<half::bf16>(&backend, &stream, &p, options, head_dim as u64);
                }
            }
        }
    }
}

/// Runs the backward on the GPU with inputs from the emulator-independent reference forward and compares
/// the gradients with the f64 reference.
fn check_backward<T: Element + DeviceRepr>(
    backend: &CudaBackend,
    stream: &std::sync::Arc<CudaStream>,
    problem: &AttentionProblem,
    options: BackwardOptions,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (q_shape, kv_shape, lse_shape) =
        (problem.q_shape(), problem.kv_shape(), problem.lse_shape());
    let g_shape = problem.gate_shape();
    let Inputs {
        q,
        qf,
        k,
        kf,
        v,
        vf,
        g,
        gf,
    } = Inputs::<T>::random(problem, &mut rng);
    let (dy, dyf) = round::<T>(&random_values(&mut rng, numel(&q_shape), 1.0));
    let fwd = reference::forward_f64(problem, &qf, &kf, &vf, gf.as_deref()).unwrap();
    let want = reference::backward_f64(problem, &qf, &kf, &vf, gf.as_deref(), &dyf).unwrap();
    let (y, _) = round::<T>(&fwd.y);
    let (o, _) = round::<T>(&fwd.o);
    let lse: Vec<f32> = fwd.lse.iter().map(|&x| x as f32).collect();

    let up = |x: &[T]| upload(stream, x);
    let (dq_in, dk_in, dv_in, dy_in, y_in, o_in) =
        (up(&q), up(&k), up(&v), up(&dy), up(&y), up(&o));
    let g_in = g.as_ref().map(|g| up(g));
    let lse_in = upload(stream, &lse);
    let nan = |n: usize| vec![T::from_f64(f64::NAN); n];
    let mut grad_q = up(&nan(numel(&q_shape)));
    let mut grad_k = up(&nan(numel(&kv_shape)));
    let mut grad_v = up(&nan(numel(&kv_shape)));
    let mut grad_g = g_shape.as_ref().map(|s| up(&nan(numel(s))));
    let ws_bytes = gated_sdpa::backward_workspace_bytes(problem).unwrap();
    let mut workspace = stream.alloc_zeros::<u8>(ws_bytes.max(1)).unwrap();
    let mut args = BackwardArgs {
        q: Tensor::new(dq_in.as_view(), Layout::contiguous(&q_shape)),
        k: Tensor::new(dk_in.as_view(), Layout::contiguous(&kv_shape)),
        v: Tensor::new(dv_in.as_view(), Layout::contiguous(&kv_shape)),
        g: g_in
            .as_ref()
            .map(|g| Tensor::new(g.as_view(), Layout::contiguous(g_shape.as_ref().unwrap()))),
        y: Tensor::new(y_in.as_view(), Layout::contiguous(&q_shape)),
        o: (problem.gate != GateMode::None && problem.activation == Activation::Silu)
            .then(|| Tensor::new(o_in.as_view(), Layout::contiguous(&q_shape))),
        dy: Tensor::new(dy_in.as_view(), Layout::contiguous(&q_shape)),
        lse: Tensor::new(lse_in.as_view(), Layout::contiguous(&lse_shape)),
        dq: Tensor::new(grad_q.as_view_mut(), Layout::contiguous(&q_shape)),
        dk: Tensor::new(grad_k.as_view_mut(), Layout::contiguous(&kv_shape)),
        dv: Tensor::new(grad_v.as_view_mut(), Layout::contiguous(&kv_shape)),
        dg: grad_g.as_mut().map(|dg| {
            Tensor::new(
                dg.as_view_mut(),
                Layout::contiguous(g_shape.as_ref().unwrap()),
            )
        }),
    };
    let mut ws_view = workspace.as_view_mut();
    backend
        .backward(stream, problem, &mut args, &mut ws_view, None, options)
        .expect("backward launches");
    drop(args);
    stream.synchronize().unwrap();
    // Gradients carry the rounding of Y, O and LSE (as FlashAttention's do): twice the forward bound.
    let tol = 2.0 * forward_tolerance(T::DTYPE);
    let label = format!("{problem:?} {options:?}");
    for (name, got, want) in [
        ("dq", download(stream, &grad_q), &want.dq),
        ("dk", download(stream, &grad_k), &want.dk),
        ("dv", download(stream, &grad_v), &want.dv),
    ] {
        let e = rel_frobenius(&got, want);
        assert!(e <= tol, "{name} error {e} > {tol}: {label}");
    }
    if let (Some(dg), Some(want_dg)) = (&grad_g, &want.dg) {
        let e = rel_frobenius(&download(stream, dg), want_dg);
        assert!(e <= tol, "dg error {e} > {tol}: {label}");
    }
}

/// The standalone gate kernels (the unfused baseline of the benches) against the formulas in f64:
/// `Y = O * act(G)`, `dO = dY * act(G)`, `dG = dY * O * act'(G)` (headwise: summed over D).
#[test]
fn standalone_gate_kernels_match_the_formulas() {
    let Some(backend) = gpu() else { return };
    let stream = backend.context().default_stream();
    let (rows, heads, dim) = (300, 4, 128);
    let mut rng = StdRng::seed_from_u64(7);
    let act = |g: f64, silu: bool| {
        let s = 1.0 / (1.0 + (-g).exp());
        if silu {
            g * s
        } else {
            s
        }
    };
    let act_grad = |g: f64, silu: bool| {
        let s = 1.0 / (1.0 + (-g).exp());
        if silu {
            s * (1.0 + g * (1.0 - s))
        } else {
            s * (1.0 - s)
        }
    };
    for gate in [GateMode::Elementwise, GateMode::Headwise] {
        for activation in [Activation::Sigmoid, Activation::Silu] {
            let silu = activation == Activation::Silu;
            let full = [rows, heads, dim];
            let g_shape: Vec<usize> = if gate == GateMode::Headwise {
                vec![rows, heads]
            } else {
                full.to_vec()
            };
            let (o, of) = round::<half::bf16>(&random_values(&mut rng, rows * heads * dim, 1.0));
            let (dy, dyf) = round::<half::bf16>(&random_values(&mut rng, rows * heads * dim, 1.0));
            let (g, gf) =
                round::<half::bf16>(&random_values(&mut rng, g_shape.iter().product(), 3.0));
            let logit = |i: usize| {
                if gate == GateMode::Headwise {
                    gf[i / dim]
                } else {
                    gf[i]
                }
            };
            let want_y: Vec<f64> = (0..of.len()).map(|i| of[i] * act(logit(i), silu)).collect();
            let want_do: Vec<f64> = (0..of.len())
                .map(|i| dyf[i] * act(logit(i), silu))
                .collect();
            let per_element: Vec<f64> = (0..of.len())
                .map(|i| dyf[i] * of[i] * act_grad(logit(i), silu))
                .collect();
            let want_dg: Vec<f64> = if gate == GateMode::Headwise {
                per_element.chunks(dim).map(|c| c.iter().sum()).collect()
            } else {
                per_element
            };

            let (o_dev, g_dev, dy_dev) = (
                upload(&stream, &o),
                upload(&stream, &g),
                upload(&stream, &dy),
            );
            let nan = |n: usize| vec![half::bf16::NAN; n];
            let mut y_dev = upload(&stream, &nan(o.len()));
            let mut do_dev = upload(&stream, &nan(o.len()));
            let mut dg_dev = upload(&stream, &nan(g.len()));
            let o_t = || Tensor::new(o_dev.as_view(), Layout::contiguous(&full));
            let g_t = || Some(Tensor::new(g_dev.as_view(), Layout::contiguous(&g_shape)));
            let mut args = GateArgs {
                o: o_t(),
                g: g_t(),
                y: Tensor::new(y_dev.as_view_mut(), Layout::contiguous(&full)),
            };
            backend
                .gate(&stream, gate, activation, &mut args)
                .expect("gate kernel");
            drop(args);
            let mut args = GateBackwardArgs {
                o: o_t(),
                g: g_t(),
                dy: Tensor::new(dy_dev.as_view(), Layout::contiguous(&full)),
                d_o: Tensor::new(do_dev.as_view_mut(), Layout::contiguous(&full)),
                dg: Some(Tensor::new(
                    dg_dev.as_view_mut(),
                    Layout::contiguous(&g_shape),
                )),
            };
            backend
                .gate_backward(&stream, gate, activation, &mut args)
                .expect("gate backward kernel");
            drop(args);
            stream.synchronize().unwrap();
            for (name, got, want) in [
                ("y", download(&stream, &y_dev), &want_y),
                ("dO", download(&stream, &do_dev), &want_do),
                ("dG", download(&stream, &dg_dev), &want_dg),
            ] {
                let e = rel_frobenius(&got, want);
                assert!(e <= 1e-2, "{name} error {e} ({gate:?}, {activation:?})");
            }
        }
    }
}

/// Creating the backend never panics: on a host without the driver library (this is what CI without a
/// GPU sees) it is `NoDriver`, on one whose driver cannot reach a device `NoDevice`, without kernels in
/// the build `KernelsNotBuilt`. Runs everywhere.
#[test]
fn creating_the_backend_without_a_gpu_is_a_typed_error() {
    // The crate's probe, which works in cudarc's loading and linking modes alike.
    let driver_present = gated_sdpa::cuda::driver_library_present();
    match CudaBackend::new(0) {
        Ok(_) => assert!(driver_present),
        Err(GsdpaError::NoDriver(reason)) => {
            assert!(!driver_present, "NoDriver with libcuda present: {reason}")
        }
        Err(GsdpaError::NoDevice { reason }) => assert!(driver_present && !reason.is_empty()),
        Err(GsdpaError::KernelsNotBuilt(_)) => assert!(gated_sdpa::build_info::fatbin().is_none()),
        Err(other) => panic!("unexpected error creating the backend: {other:?}"),
    }
    // No device 2^20 on any host.
    if driver_present {
        match CudaBackend::new(1 << 20) {
            Err(GsdpaError::NoDevice { .. }) | Err(GsdpaError::KernelsNotBuilt(_)) => {}
            other => panic!("device 2^20: {other:?}"),
        }
    }
}
