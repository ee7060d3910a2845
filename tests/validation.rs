//! Every validation error triggered by a real bad input, matched by variant; zero-sized problems pass.

use gated_sdpa::validate::{backward_workspace_layout, WORKSPACE_ALIGN};
use gated_sdpa::{
    backward_workspace_bytes, set_backward_workspace, split_q_proj, validate_backward,
    validate_forward, Activation, AttentionProblem, BackwardArgs, BackwardOptions, ForwardArgs,
    GateMode, GsdpaError, HostBackend, HostBackwardArgs, HostBuffer, HostForwardArgs, Layout,
    Reference, Tensor, Varlen, MAX_SOFTMAX_SCALE,
};
use half::bf16;

mod common;
use common::numel;

/// Aligned, correctly sized buffers for a problem (values irrelevant to validation).
struct Buffers<T: Copy + Default> {
    q: HostBuffer<T>,
    k: HostBuffer<T>,
    v: HostBuffer<T>,
    g: HostBuffer<T>,
    y: HostBuffer<T>,
    o: HostBuffer<T>,
    dy: HostBuffer<T>,
    lse: HostBuffer<f32>,
    dq: HostBuffer<T>,
    dk: HostBuffer<T>,
    dv: HostBuffer<T>,
    dg: HostBuffer<T>,
}

impl<T: Copy + Default> Buffers<T> {
    fn new(p: &AttentionProblem) -> Self {
        let qn = numel(&p.q_shape());
        let kvn = numel(&p.kv_shape());
        let gn = p.gate_shape().map_or(0, |s| numel(&s));
        Buffers {
            q: HostBuffer::new(qn),
            k: HostBuffer::new(kvn),
            v: HostBuffer::new(kvn),
            g: HostBuffer::new(gn),
            y: HostBuffer::new(qn),
            o: HostBuffer::new(qn),
            dy: HostBuffer::new(qn),
            lse: HostBuffer::new(numel(&p.lse_shape())),
            dq: HostBuffer::new(qn),
            dk: HostBuffer::new(kvn),
            dv: HostBuffer::new(kvn),
            dg: HostBuffer::new(gn),
        }
    }

    fn forward(&mut self, p: &AttentionProblem) -> HostForwardArgs<'_, T> {
        let (qs, kvs) = (p.q_shape(), p.kv_shape());
        ForwardArgs {
            q: Tensor::contiguous(self.q.as_slice(), &qs),
            k: Tensor::contiguous(self.k.as_slice(), &kvs),
            v: Tensor::contiguous(self.v.as_slice(), &kvs),
            g: p.gate_shape()
                .map(|s| Tensor::contiguous(self.g.as_slice(), &s)),
            y: Tensor::contiguous(self.y.as_mut_slice(), &qs),
            o: Some(Tensor::contiguous(self.o.as_mut_slice(), &qs)),
            lse: Some(Tensor::contiguous(self.lse.as_mut_slice(), &p.lse_shape())),
            diagnostics: None,
        }
    }

    fn backward(&mut self, p: &AttentionProblem) -> HostBackwardArgs<'_, T> {
        let (qs, kvs) = (p.q_shape(), p.kv_shape());
        BackwardArgs {
            q: Tensor::contiguous(self.q.as_slice(), &qs),
            k: Tensor::contiguous(self.k.as_slice(), &kvs),
            v: Tensor::contiguous(self.v.as_slice(), &kvs),
            g: p.gate_shape()
                .map(|s| Tensor::contiguous(self.g.as_slice(), &s)),
            y: Tensor::contiguous(self.y.as_slice(), &qs),
            o: Some(Tensor::contiguous(self.o.as_slice(), &qs)),
            dy: Tensor::contiguous(self.dy.as_slice(), &qs),
            lse: Tensor::contiguous(self.lse.as_slice(), &p.lse_shape()),
            dq: Tensor::contiguous(self.dq.as_mut_slice(), &qs),
            dk: Tensor::contiguous(self.dk.as_mut_slice(), &kvs),
            dv: Tensor::contiguous(self.dv.as_mut_slice(), &kvs),
            dg: p
                .gate_shape()
                .map(|s| Tensor::contiguous(self.dg.as_mut_slice(), &s)),
        }
    }
}

fn gated() -> AttentionProblem {
    AttentionProblem::new(2, 16, 24, 4, 2, 64)
        .gate(GateMode::Elementwise)
        .activation(Activation::Silu)
}

/// Runs validation (forward) after `edit` changes the arguments; returns the error.
fn forward_error<'a>(
    p: &AttentionProblem,
    buffers: &'a mut Buffers<bf16>,
    edit: impl FnOnce(&mut HostForwardArgs<'a, bf16>),
) -> GsdpaError {
    let mut args = buffers.forward(p);
    edit(&mut args);
    let err = validate_forward(p, &args).expect_err("validation should fail");
    // The backend reports the same error and writes nothing.
    assert_eq!(Reference.forward(p, &mut args).unwrap_err(), err);
    err
}

fn backward_error<'a>(
    p: &AttentionProblem,
    buffers: &'a mut Buffers<bf16>,
    edit: impl FnOnce(&mut HostBackwardArgs<'a, bf16>),
) -> GsdpaError {
    let mut args = buffers.backward(p);
    edit(&mut args);
    let err = validate_backward(p, &args, false).expect_err("validation should fail");
    assert_eq!(
        Reference
            .backward(p, &mut args, BackwardOptions::default())
            .unwrap_err(),
        err
    );
    err
}

#[test]
fn valid_arguments_pass_and_fill_the_params() {
    let mut p = gated().causal(true);
    p.softmax_scale = Some(0.25);
    let mut buffers = Buffers::<bf16>::new(&p);
    let args = buffers.forward(&p);
    let params = validate_forward(&p, &args).unwrap();
    assert_eq!(params.q as usize, args.q.data.as_ptr() as usize);
    assert_eq!(params.y as usize, args.y.data.as_ptr() as usize);
    assert_eq!(
        params.lse as usize,
        args.lse.as_ref().unwrap().data.as_ptr() as usize
    );
    assert_eq!(
        (
            params.q_stride.batch,
            params.q_stride.row,
            params.q_stride.head
        ),
        (16 * 4 * 64, 4 * 64, 64)
    );
    assert_eq!(params.k_stride.row, 2 * 64);
    assert_eq!(
        (params.lse_batch_stride, params.lse_head_stride),
        (4 * 16, 16)
    );
    assert_eq!(
        (
            params.batch,
            params.seqlen_q,
            params.seqlen_k,
            params.heads_q,
            params.heads_kv
        ),
        (2, 16, 24, 4, 2)
    );
    assert_eq!(
        (params.causal, params.gate_mode, params.activation),
        (1, 1, 1)
    );
    assert_eq!(params.scale, 0.25);
    assert!((params.scale_log2 - 0.25 * std::f32::consts::LOG2_E).abs() < 1e-7);
    assert!(params.cu_seqlens_q.is_null());

    let args = buffers.backward(&p);
    let mut params = validate_backward(&p, &args, true).unwrap();
    assert_eq!(params.deterministic, 1);
    assert!(params.delta.is_null());
    let layout = backward_workspace_layout(&p).unwrap();
    let bytes = backward_workspace_bytes(&p).unwrap();
    assert_eq!(bytes, layout.total_bytes);
    // delta: B*Hq*Sq f32; d_o: B*Sq*Hq*D bf16; dq_accum: same elements in f32; each 256-aligned.
    assert_eq!(
        layout.d_o_offset,
        (2 * 4 * 16 * 4usize).next_multiple_of(256)
    );
    assert_eq!(
        layout.dq_accum_offset,
        layout.d_o_offset + (2 * 16 * 4 * 64 * 2usize).next_multiple_of(256)
    );
    assert_eq!(bytes, layout.dq_accum_offset + 2 * 16 * 4 * 64 * 4);
    let base = 4096 * WORKSPACE_ALIGN;
    set_backward_workspace(&mut params, &p, base, bytes).unwrap();
    assert_eq!(params.delta as usize, base);
    assert_eq!(params.d_o as usize, base + layout.d_o_offset);
    assert_eq!(params.dq_accum as usize, base + layout.dq_accum_offset);
    assert_eq!(
        (
            params.ws_stride.batch,
            params.ws_stride.row,
            params.ws_stride.head
        ),
        (16 * 4 * 64, 4 * 64, 64)
    );
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let p = gated();
    let err = forward_error(&p, &mut Buffers::new(&p), |a| {
        a.k.layout = Layout::contiguous(&[2, 24, 4, 64])
    });
    assert!(
        matches!(err, GsdpaError::ShapeMismatch { tensor: "k", .. }),
        "{err}"
    );
    let err = forward_error(&p, &mut Buffers::new(&p), |a| {
        a.lse.as_mut().unwrap().layout = Layout::contiguous(&[2, 16, 4])
    });
    assert!(
        matches!(err, GsdpaError::ShapeMismatch { tensor: "lse", .. }),
        "{err}"
    );
    // A headwise-shaped gate for an elementwise problem.
    let err = forward_error(&p, &mut Buffers::new(&p), |a| {
        a.g.as_mut().unwrap().layout = Layout::contiguous(&[2, 16, 4]);
    });
    assert!(
        matches!(err, GsdpaError::ShapeMismatch { tensor: "g", .. }),
        "{err}"
    );
    let err = backward_error(&p, &mut Buffers::new(&p), |a| {
        a.dv.layout = Layout::contiguous(&[2, 24, 2])
    });
    assert!(
        matches!(err, GsdpaError::ShapeMismatch { tensor: "dv", .. }),
        "{err}"
    );
}

#[test]
fn bad_strides() {
    let p = gated();
    // Last dimension not contiguous.
    let err = forward_error(&p, &mut Buffers::new(&p), |a| {
        a.q.layout = Layout::strided(&[2, 16, 4, 64], &[8192, 512, 128, 2]).unwrap();
    });
    assert!(
        matches!(err, GsdpaError::BadStrides { tensor: "q", .. }),
        "{err}"
    );
    // Largest offset beyond the buffer: a padded head stride over a dense-sized buffer.
    let err = forward_error(&p, &mut Buffers::new(&p), |a| {
        a.v.layout = Layout::strided(&[2, 24, 2, 64], &[24 * 2 * 72, 2 * 72, 72, 1]).unwrap();
    });
    assert!(
        matches!(err, GsdpaError::BadStrides { tensor: "v", .. }),
        "{err}"
    );
    // An output whose rows alias each other (row stride 0).
    let err = forward_error(&p, &mut Buffers::new(&p), |a| {
        a.y.layout = Layout::strided(&[2, 16, 4, 64], &[4 * 64, 0, 64, 1]).unwrap();
    });
    assert!(
        matches!(err, GsdpaError::BadStrides { tensor: "y", .. }),
        "{err}"
    );
    // The backward needs a dense lse (its delta workspace shares lse's layout).
    let p = AttentionProblem::new(2, 16, 24, 4, 2, 64);
    let mut buffers = Buffers::<bf16>::new(&p);
    let padded_lse = vec![0f32; 2 * 4 * 32];
    let mut args = buffers.backward(&p);
    args.lse = Tensor::new(
        &padded_lse[..],
        Layout::strided(&[2, 4, 16], &[4 * 32, 32, 1]).unwrap(),
    );
    let err = validate_backward(&p, &args, false).unwrap_err();
    assert!(
        matches!(err, GsdpaError::BadStrides { tensor: "lse", .. }),
        "{err}"
    );
    // Mismatched shape and stride lengths are refused when building the layout.
    assert!(matches!(
        Layout::strided(&[2, 3], &[1]),
        Err(GsdpaError::BadStrides { .. })
    ));
}

#[test]
fn misaligned_pointers_and_strides() {
    let p = gated();
    let q_shape = p.q_shape();
    // A base 2 bytes past a 16-byte boundary.
    let shifted = HostBuffer::<bf16>::new(numel(&q_shape) + 1);
    let err = forward_error(&p, &mut Buffers::new(&p), |a| {
        a.q = Tensor::contiguous(&shifted.as_slice()[1..], &q_shape)
    });
    assert!(
        matches!(err, GsdpaError::Misaligned { tensor: "q", .. }),
        "{err}"
    );
    // A head stride of 68 elements (136 bytes) is not a multiple of 16 bytes.
    let padded = HostBuffer::<bf16>::new(2 * 16 * 4 * 68);
    let err = forward_error(&p, &mut Buffers::new(&p), |a| {
        a.q = Tensor::new(
            padded.as_slice(),
            Layout::strided(&q_shape, &[16 * 4 * 68, 4 * 68, 68, 1]).unwrap(),
        );
    });
    assert!(
        matches!(err, GsdpaError::Misaligned { tensor: "q", .. }),
        "{err}"
    );
    // The same holds for outputs.
    let mut shifted_out = HostBuffer::<bf16>::new(numel(&q_shape) + 1);
    let err = backward_error(&p, &mut Buffers::new(&p), |a| {
        a.dq = Tensor::contiguous(&mut shifted_out.as_mut_slice()[1..], &q_shape);
    });
    assert!(
        matches!(err, GsdpaError::Misaligned { tensor: "dq", .. }),
        "{err}"
    );
    // A headwise gate only needs element alignment: an odd head stride is fine.
    let p = gated().gate(GateMode::Headwise);
    let gate = HostBuffer::<bf16>::new(2 * 16 * 5);
    let mut buffers = Buffers::<bf16>::new(&p);
    let mut args = buffers.forward(&p);
    args.g = Some(Tensor::new(
        gate.as_slice(),
        Layout::strided(&[2, 16, 4], &[80, 5, 1]).unwrap(),
    ));
    validate_forward(&p, &args).unwrap();
}

#[test]
fn workspace_errors() {
    let p = gated();
    let mut buffers = Buffers::<bf16>::new(&p);
    let args = buffers.backward(&p);
    let mut params = validate_backward(&p, &args, false).unwrap();
    let bytes = backward_workspace_bytes(&p).unwrap();
    let err = set_backward_workspace(&mut params, &p, 0x10000, bytes - 1).unwrap_err();
    assert_eq!(
        err,
        GsdpaError::WorkspaceTooSmall {
            needed: bytes,
            got: bytes - 1
        }
    );
    let err = set_backward_workspace(&mut params, &p, 0x10010, bytes).unwrap_err();
    assert!(
        matches!(
            err,
            GsdpaError::Misaligned {
                tensor: "workspace",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn unsupported_head_dim() {
    for d in [0, 32, 96, 512] {
        let p = AttentionProblem::new(1, 4, 4, 1, 1, d);
        let err = forward_error(&p, &mut Buffers::new(&p), |_| {});
        assert_eq!(err, GsdpaError::UnsupportedHeadDim { head_dim: d });
    }
}

/// Device-like storage: an address and a length, as the CUDA backend's buffers are.
#[derive(Debug, Clone, Copy)]
struct RawMemory<T> {
    addr: usize,
    len: usize,
    _elem: std::marker::PhantomData<T>,
}

impl<T> gated_sdpa::Memory for RawMemory<T> {
    type Elem = T;
    fn addr(&self) -> usize {
        self.addr
    }
    fn len(&self) -> usize {
        self.len
    }
}

fn raw<T>(addr: usize, len: usize, shape: &[usize]) -> Tensor<RawMemory<T>> {
    Tensor::contiguous(
        RawMemory {
            addr,
            len,
            _elem: std::marker::PhantomData,
        },
        shape,
    )
}

#[test]
fn overlap_between_outputs_and_inputs() {
    let p = gated();
    let (qs, kvs, ls) = (p.q_shape(), p.kv_shape(), p.lse_shape());
    let (qn, kvn, ln) = (numel(&qs), numel(&kvs), numel(&ls));
    let mb = 1 << 20;
    let forward = |y_addr: usize, o_addr: usize, lse_addr: usize| {
        let args = ForwardArgs {
            q: raw::<bf16>(mb, qn, &qs),
            k: raw::<bf16>(2 * mb, kvn, &kvs),
            v: raw::<bf16>(3 * mb, kvn, &kvs),
            g: Some(raw::<bf16>(4 * mb, qn, &qs)),
            y: raw::<bf16>(y_addr, qn, &qs),
            o: Some(raw::<bf16>(o_addr, qn, &qs)),
            lse: Some(raw::<f32>(lse_addr, ln, &ls)),
            diagnostics: None,
        };
        validate_forward(&p, &args)
    };
    forward(5 * mb, 6 * mb, 7 * mb).unwrap();
    // y over the last row of q.
    let err = forward(mb + (qn - 64) * 2, 6 * mb, 7 * mb).unwrap_err();
    assert_eq!(
        err,
        GsdpaError::Overlap {
            output: "y",
            other: "q"
        }
    );
    // o over y.
    let err = forward(5 * mb, 5 * mb + 1024, 7 * mb).unwrap_err();
    assert_eq!(
        err,
        GsdpaError::Overlap {
            output: "o",
            other: "y"
        }
    );
    // lse inside the gate.
    let err = forward(5 * mb, 6 * mb, 4 * mb + 64).unwrap_err();
    assert_eq!(
        err,
        GsdpaError::Overlap {
            output: "lse",
            other: "g"
        }
    );
    // Adjacent but disjoint spans are fine: y starts right after q's last byte.
    forward(mb + qn * 2, 6 * mb, 7 * mb).unwrap();

    // The diagnostics outputs are outputs too: sink_mass over lse, the gate statistics inside their
    // own workspace.
    let ws_len = gated_sdpa::gate_stats_workspace_len(&p).unwrap();
    let stats_shape = [p.batch, p.heads_q];
    let diagnosed = |sink_addr: usize, stats_addr: usize| {
        let args = ForwardArgs {
            q: raw::<bf16>(mb, qn, &qs),
            k: raw::<bf16>(2 * mb, kvn, &kvs),
            v: raw::<bf16>(3 * mb, kvn, &kvs),
            g: Some(raw::<bf16>(4 * mb, qn, &qs)),
            y: raw::<bf16>(5 * mb, qn, &qs),
            o: None,
            lse: Some(raw::<f32>(7 * mb, ln, &ls)),
            diagnostics: Some(gated_sdpa::ForwardDiagnostics {
                sink_mass: Some(raw::<f32>(sink_addr, ln, &ls)),
                n_sink: 1,
                gate_stats: Some(raw::<f32>(stats_addr, numel(&stats_shape), &stats_shape)),
                gate_workspace: Some(raw::<f32>(9 * mb, ws_len, &[ws_len])),
            }),
        };
        validate_forward(&p, &args)
    };
    diagnosed(8 * mb, 10 * mb).unwrap();
    assert_eq!(
        diagnosed(7 * mb + 4, 10 * mb).unwrap_err(),
        GsdpaError::Overlap {
            output: "sink_mass",
            other: "lse"
        }
    );
    assert_eq!(
        diagnosed(8 * mb, 9 * mb).unwrap_err(),
        GsdpaError::Overlap {
            output: "gate_workspace",
            other: "gate_stats"
        }
    );

    // Backward: dk over dq, dg over dy.
    let backward = |dk_addr: usize, dg_addr: usize| {
        let args = BackwardArgs {
            q: raw::<bf16>(mb, qn, &qs),
            k: raw::<bf16>(2 * mb, kvn, &kvs),
            v: raw::<bf16>(3 * mb, kvn, &kvs),
            g: Some(raw::<bf16>(4 * mb, qn, &qs)),
            y: raw::<bf16>(5 * mb, qn, &qs),
            o: Some(raw::<bf16>(6 * mb, qn, &qs)),
            dy: raw::<bf16>(7 * mb, qn, &qs),
            lse: raw::<f32>(8 * mb, ln, &ls),
            dq: raw::<bf16>(9 * mb, qn, &qs),
            dk: raw::<bf16>(dk_addr, kvn, &kvs),
            dv: raw::<bf16>(11 * mb, kvn, &kvs),
            dg: Some(raw::<bf16>(dg_addr, qn, &qs)),
        };
        validate_backward(&p, &args, false)
    };
    backward(10 * mb, 12 * mb).unwrap();
    let err = backward(9 * mb + 256, 12 * mb).unwrap_err();
    assert_eq!(
        err,
        GsdpaError::Overlap {
            output: "dk",
            other: "dq"
        }
    );
    let err = backward(10 * mb, 7 * mb).unwrap_err();
    assert_eq!(
        err,
        GsdpaError::Overlap {
            output: "dg",
            other: "dy"
        }
    );
}

#[test]
fn qwen3_next_views_share_a_buffer_legally() {
    // q and g overlap (interleaved halves of one buffer): inputs may alias each other.
    let p = gated();
    let q_proj = HostBuffer::<bf16>::new(2 * numel(&p.q_shape()));
    let views = split_q_proj(q_proj.as_slice(), &p.q_shape()).unwrap();
    let mut buffers = Buffers::<bf16>::new(&p);
    let mut args = buffers.forward(&p);
    args.q = views.q;
    args.g = Some(views.g);
    let params = validate_forward(&p, &args).unwrap();
    assert_eq!(params.g as usize - params.q as usize, 64 * 2);
    assert_eq!(params.q_stride.head, 128);
    assert_eq!(params.g_stride.row, 4 * 128);
    // A q_proj buffer of the wrong size is refused.
    let short = vec![bf16::ZERO; 10];
    assert!(matches!(
        split_q_proj(&short, &p.q_shape()),
        Err(GsdpaError::ShapeMismatch {
            tensor: "q_proj",
            ..
        })
    ));
}

#[test]
fn heads_not_divisible() {
    for (hq, hkv) in [(6, 4), (4, 0), (2, 4)] {
        let p = AttentionProblem::new(1, 4, 4, hq, hkv, 64);
        let err = forward_error(&p, &mut Buffers::new(&p), |_| {});
        assert_eq!(
            err,
            GsdpaError::HeadsNotDivisible {
                heads_q: hq,
                heads_kv: hkv
            }
        );
    }
}

#[test]
fn invalid_cu_seqlens() {
    let cases: [(Vec<i32>, Vec<i32>); 5] = [
        (vec![0, 5, 3], vec![0, 2, 4]), // decreasing
        (vec![1, 5, 7], vec![0, 2, 4]), // does not start at 0
        (vec![0, 5, 7], vec![0, 2]),    // lengths differ
        (vec![], vec![]),               // no entries
        (vec![0, -2, 3], vec![0, 2, 4]),
    ];
    for (cu_q, cu_k) in cases {
        let err = Varlen::new(cu_q.clone(), cu_k.clone()).unwrap_err();
        assert!(
            matches!(err, GsdpaError::InvalidCuSeqlens { .. }),
            "{cu_q:?} {cu_k:?}: {err}"
        );
    }
    // A valid packing whose recorded maximum is too small (fields are public).
    let mut varlen = Varlen::new(vec![0, 5, 7], vec![0, 2, 4]).unwrap();
    varlen.max_seqlen_q = 4;
    let p = AttentionProblem::new_varlen(varlen, 2, 1, 64);
    let err = forward_error(&p, &mut Buffers::new(&p), |_| {});
    assert!(
        matches!(
            err,
            GsdpaError::InvalidCuSeqlens {
                which: "cu_seqlens_q",
                ..
            }
        ),
        "{err}"
    );
    // A problem whose batch disagrees with the packing.
    let mut p =
        AttentionProblem::new_varlen(Varlen::new(vec![0, 5, 7], vec![0, 2, 4]).unwrap(), 2, 1, 64);
    p.batch = 3;
    let err = forward_error(&p, &mut Buffers::new(&p), |_| {});
    assert!(matches!(err, GsdpaError::InvalidCuSeqlens { .. }), "{err}");
    // The packed tensors must hold exactly cu_seqlens[batch] tokens.
    let p =
        AttentionProblem::new_varlen(Varlen::new(vec![0, 5, 7], vec![0, 2, 4]).unwrap(), 2, 1, 64);
    let err = forward_error(&p, &mut Buffers::new(&p), |a| {
        a.q.layout = Layout::contiguous(&[8, 2, 64])
    });
    assert!(
        matches!(err, GsdpaError::ShapeMismatch { tensor: "q", .. }),
        "{err}"
    );
}

#[test]
fn sizes_that_overflow_the_kernels_index_arithmetic() {
    // No tensor is needed to reject these: the problem alone fails.
    let too_many_heads = AttentionProblem::new(1, 1, 1, 70_000, 70_000, 64);
    let too_many_sequences = AttentionProblem::new(70_000, 1, 1, 1, 1, 64);
    let too_long = AttentionProblem::new(1, 1 << 31, 1, 1, 1, 64);
    for p in [too_many_heads, too_many_sequences, too_long] {
        let err = gated_sdpa::validate_problem(&p).unwrap_err();
        assert!(matches!(err, GsdpaError::SizeOverflow(_)), "{err}");
        let args: ForwardArgs<RawMemory<bf16>, RawMemory<bf16>, RawMemory<f32>> = ForwardArgs {
            q: raw(1 << 20, 0, &p.q_shape()),
            k: raw(1 << 20, 0, &p.kv_shape()),
            v: raw(1 << 20, 0, &p.kv_shape()),
            g: None,
            y: raw(1 << 20, 0, &p.q_shape()),
            o: None,
            lse: Some(raw(1 << 20, 0, &p.lse_shape())),
            diagnostics: None,
        };
        assert!(matches!(
            validate_forward(&p, &args),
            Err(GsdpaError::SizeOverflow(_))
        ));
    }
    // A stride whose largest offset does not fit in i64 (the buffer "length" is irrelevant).
    let p = AttentionProblem::new(2, 4, 4, 1, 1, 64);
    let mut q = raw::<bf16>(1 << 20, usize::MAX, &p.q_shape());
    q.layout = Layout::strided(&p.q_shape(), &[1 << 63, 64, 64, 1]).unwrap();
    let args = ForwardArgs {
        q,
        k: raw::<bf16>(2 << 20, 512, &p.kv_shape()),
        v: raw::<bf16>(3 << 20, 512, &p.kv_shape()),
        g: None,
        y: raw::<bf16>(4 << 20, 512, &p.q_shape()),
        o: None,
        lse: Some(raw::<f32>(5 << 20, 8, &p.lse_shape())),
        diagnostics: None,
    };
    let err = validate_forward(&p, &args).unwrap_err();
    assert!(matches!(err, GsdpaError::SizeOverflow(_)), "{err}");
}

#[test]
fn gate_presence() {
    let p = gated();
    let err = forward_error(&p, &mut Buffers::new(&p), |a| a.g = None);
    assert_eq!(
        err,
        GsdpaError::GateMissing {
            tensor: "g",
            gate: "elementwise"
        }
    );
    let err = backward_error(&p, &mut Buffers::new(&p), |a| a.dg = None);
    assert!(
        matches!(err, GsdpaError::GateMissing { tensor: "dg", .. }),
        "{err}"
    );
    let ungated = AttentionProblem::new(2, 16, 24, 4, 2, 64);
    let spare = HostBuffer::<bf16>::new(numel(&ungated.q_shape()));
    let err = forward_error(&ungated, &mut Buffers::new(&ungated), |a| {
        a.g = Some(Tensor::contiguous(spare.as_slice(), &ungated.q_shape()))
    });
    assert_eq!(err, GsdpaError::GateUnexpected { tensor: "g" });
    let mut spare_out = HostBuffer::<bf16>::new(numel(&ungated.q_shape()));
    let err = backward_error(&ungated, &mut Buffers::new(&ungated), |a| {
        a.dg = Some(Tensor::contiguous(
            spare_out.as_mut_slice(),
            &ungated.q_shape(),
        ))
    });
    assert_eq!(err, GsdpaError::GateUnexpected { tensor: "dg" });
}

#[test]
fn silu_backward_needs_the_ungated_output() {
    let p = gated();
    let err = backward_error(&p, &mut Buffers::new(&p), |a| a.o = None);
    assert_eq!(err, GsdpaError::MissingUngatedOutput);
    // Sigmoid does not need it.
    let p = gated().activation(Activation::Sigmoid);
    let mut buffers = Buffers::<bf16>::new(&p);
    let mut args = buffers.backward(&p);
    args.o = None;
    validate_backward(&p, &args, false).unwrap();
}

#[test]
fn unsupported_scales_are_typed_errors() {
    // 3e38: scale * log2(e) is infinite; 1e37: s * scale * log2(e) overflows f32 for |s| > 24.
    let too_large = [3e38, 1e37, MAX_SOFTMAX_SCALE * 2.0, f32::MAX];
    for scale in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, -0.5]
        .into_iter()
        .chain(too_large)
    {
        let mut p = gated();
        p.softmax_scale = Some(scale);
        let expected = GsdpaError::UnsupportedScale {
            scale,
            max: MAX_SOFTMAX_SCALE,
        };
        let same = |err: GsdpaError| match err {
            GsdpaError::UnsupportedScale { scale: s, max } => {
                s.to_bits() == scale.to_bits() && max == MAX_SOFTMAX_SCALE
            }
            _ => false,
        };
        // Compared through `same`: a NaN scale makes the error unequal to itself.
        let mut buffers = Buffers::<bf16>::new(&p);
        let mut args = buffers.forward(&p);
        let err = validate_forward(&p, &args).unwrap_err();
        assert!(
            same(err.clone()),
            "scale {scale}: {err} (expected {expected})"
        );
        assert!(same(Reference.forward(&p, &mut args).unwrap_err()));
        let mut args = buffers.backward(&p);
        assert!(same(validate_backward(&p, &args, false).unwrap_err()));
        let err = Reference
            .backward(&p, &mut args, BackwardOptions::default())
            .unwrap_err();
        assert!(same(err.clone()), "scale {scale}: {err}");
        assert!(same(backward_workspace_bytes(&p).unwrap_err()));
        // The builder rejects it before any tensor exists.
        let built = AttentionProblem::builder()
            .batch(1)
            .seqlen_q(4)
            .seqlen_k(4)
            .heads_q(1)
            .head_dim(64)
            .softmax_scale(scale)
            .build();
        assert!(same(built.unwrap_err()), "builder, scale {scale}");
    }
    // The largest accepted scale and the smallest positive one pass.
    for scale in [MAX_SOFTMAX_SCALE, f32::from_bits(1)] {
        let mut p = gated();
        p.softmax_scale = Some(scale);
        let mut buffers = Buffers::<bf16>::new(&p);
        Reference.forward(&p, &mut buffers.forward(&p)).unwrap();
    }
}

#[cfg(feature = "emulator")]
#[test]
fn the_emulator_rejects_unsupported_scales_too() {
    let emulator = gated_sdpa::emulator::Emulator::new();
    for scale in [3e38, 1e37] {
        let mut p = gated();
        p.softmax_scale = Some(scale);
        let expected = GsdpaError::UnsupportedScale {
            scale,
            max: MAX_SOFTMAX_SCALE,
        };
        let mut buffers = Buffers::<bf16>::new(&p);
        let err = emulator.forward(&p, &mut buffers.forward(&p)).unwrap_err();
        assert_eq!(err, expected);
        let err = emulator
            .backward(&p, &mut buffers.backward(&p), BackwardOptions::default())
            .unwrap_err();
        assert_eq!(err, expected);
    }
}

#[test]
fn builder_names_every_size() {
    let built = AttentionProblem::builder()
        .batch(2)
        .seqlen_q(16)
        .seqlen_k(24)
        .heads_q(4)
        .heads_kv(2)
        .head_dim(64)
        .causal(true)
        .softmax_scale(0.5)
        .gate(GateMode::Elementwise)
        .activation(Activation::Silu)
        .build()
        .unwrap();
    let mut expected = gated().causal(true);
    expected.softmax_scale = Some(0.5);
    assert_eq!(built, expected);
    // heads_kv defaults to heads_q.
    let mha = AttentionProblem::builder()
        .batch(1)
        .seqlen_q(3)
        .seqlen_k(5)
        .heads_q(6)
        .head_dim(128)
        .build()
        .unwrap();
    assert_eq!((mha.heads_q, mha.heads_kv), (6, 6));
    // A missing size names itself; a bad one is the same typed error as from a backend.
    let err = AttentionProblem::builder()
        .batch(1)
        .seqlen_q(3)
        .heads_q(6)
        .head_dim(128)
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, GsdpaError::InvalidArgument(m) if m.contains("seqlen_k")),
        "{err}"
    );
    let err = AttentionProblem::builder()
        .batch(1)
        .seqlen_q(3)
        .seqlen_k(3)
        .heads_q(6)
        .heads_kv(4)
        .head_dim(128)
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        GsdpaError::HeadsNotDivisible {
            heads_q: 6,
            heads_kv: 4
        }
    );
    // Varlen takes batch and lengths from its cu_seqlens, and refuses them given twice.
    let varlen = Varlen::new(vec![0, 3, 8], vec![0, 4, 4]).unwrap();
    let p = AttentionProblem::builder()
        .heads_q(2)
        .head_dim(64)
        .varlen(varlen.clone())
        .build()
        .unwrap();
    assert_eq!((p.batch, p.seqlen_q, p.seqlen_k), (2, 5, 4));
    assert_eq!(p, AttentionProblem::new_varlen(varlen.clone(), 2, 2, 64));
    let err = AttentionProblem::builder()
        .batch(2)
        .heads_q(2)
        .head_dim(64)
        .varlen(varlen)
        .build()
        .unwrap_err();
    assert!(matches!(err, GsdpaError::InvalidArgument(_)), "{err}");
}

#[test]
fn lse_is_optional_in_the_forward() {
    let p = gated();
    let mut buffers = Buffers::<bf16>::new(&p);
    let mut args = buffers.forward(&p);
    args.lse = None;
    let params = validate_forward(&p, &args).unwrap();
    assert!(params.lse.is_null());
    assert_eq!((params.lse_batch_stride, params.lse_head_stride), (0, 0));
    Reference.forward(&p, &mut args).unwrap();
}

#[test]
fn zero_sized_problems_are_valid_no_ops() {
    let empty = [
        AttentionProblem::new(0, 16, 16, 4, 2, 64),
        AttentionProblem::new(2, 0, 16, 4, 2, 64),
        AttentionProblem::new(2, 16, 16, 0, 2, 64),
        AttentionProblem::new(2, 0, 0, 4, 2, 128),
        AttentionProblem::new_varlen(Varlen::new(vec![0, 0, 0], vec![0, 3, 3]).unwrap(), 4, 2, 64),
    ];
    for p in empty {
        let p = p.gate(GateMode::Elementwise).activation(Activation::Silu);
        assert!(p.is_empty(), "{p:?}");
        let mut buffers = Buffers::<bf16>::new(&p);
        validate_forward(&p, &buffers.forward(&p)).unwrap();
        Reference.forward(&p, &mut buffers.forward(&p)).unwrap();
        // Empty slices (whose addresses are merely element-aligned) pass too.
        let mut args = ForwardArgs {
            q: Tensor::contiguous(&[][..], &p.q_shape()),
            k: Tensor::contiguous(buffers.k.as_slice(), &p.kv_shape()),
            v: Tensor::contiguous(buffers.v.as_slice(), &p.kv_shape()),
            g: Some(Tensor::contiguous(&[][..], &p.q_shape())),
            y: Tensor::contiguous(&mut [][..], &p.q_shape()),
            o: None,
            lse: Some(Tensor::contiguous(&mut [][..], &p.lse_shape())),
            diagnostics: None,
        };
        Reference.forward::<bf16>(&p, &mut args).unwrap();
        assert!(backward_workspace_bytes(&p).is_ok());
        // With no query row, the backward writes zeros into dK and dV (which may have elements).
        buffers.dk.as_mut_slice().fill(bf16::from_f32(9.0));
        buffers.dv.as_mut_slice().fill(bf16::from_f32(9.0));
        Reference
            .backward(&p, &mut buffers.backward(&p), BackwardOptions::default())
            .unwrap();
        assert!(buffers.dk.as_slice().iter().all(|x| x.to_f32() == 0.0));
        assert!(buffers.dv.as_slice().iter().all(|x| x.to_f32() == 0.0));
    }
    // Sk = 0 with query rows is not empty: Y = 0 and LSE = -inf are written.
    let p = AttentionProblem::new(2, 3, 0, 2, 1, 64);
    assert!(!p.is_empty());
    let mut buffers = Buffers::<bf16>::new(&p);
    buffers.y.as_mut_slice().fill(bf16::from_f32(9.0));
    buffers.lse.as_mut_slice().fill(9.0);
    Reference.forward(&p, &mut buffers.forward(&p)).unwrap();
    assert!(buffers.y.as_slice().iter().all(|x| x.to_f32() == 0.0));
    assert!(buffers
        .lse
        .as_slice()
        .iter()
        .all(|&x| x == f32::NEG_INFINITY));
}
