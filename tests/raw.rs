//! The raw entry point's validation (`gated_sdpa::raw::check_*`, which `raw::forward` / `raw::backward`
//! run before launching): the same typed errors as the safe API for the same tensors, on any host.

use gated_sdpa::half::bf16;
use gated_sdpa::raw::{self, RawForwardArgs, RawMemory, RawSeqlens};
use gated_sdpa::{
    backward_workspace_bytes, AttentionProblem, BackwardArgs, BackwardOptions, ForwardArgs,
    GateMode, GsdpaError, HostBuffer, Layout, Reference, Tensor, Varlen,
};

fn problem() -> AttentionProblem {
    AttentionProblem::builder()
        .batch(2)
        .seqlen_q(5)
        .seqlen_k(7)
        .heads_q(4)
        .heads_kv(2)
        .head_dim(64)
        .causal(true)
        .gate(GateMode::Elementwise)
        .build()
        .unwrap()
}

fn n(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Raw tensors at made-up, well-aligned device addresses, far enough apart not to overlap; `q_proj`
/// holds q and g as the two halves of each head.
fn raw_args(p: &AttentionProblem) -> RawForwardArgs<bf16> {
    let (qs, kvs, ls) = (p.q_shape(), p.kv_shape(), p.lse_shape());
    let base = 1u64 << 32;
    let region = 1u64 << 24;
    let q_proj = RawMemory::<bf16>::new(base, 2 * n(&qs));
    let view = Layout::q_proj_view(&qs);
    ForwardArgs {
        q: Tensor::new(q_proj, view.clone()),
        g: Some(Tensor::new(
            RawMemory::new(base + 2 * p.head_dim as u64, 2 * n(&qs) - p.head_dim),
            view,
        )),
        k: Tensor::contiguous(RawMemory::new(base + region, n(&kvs)), &kvs),
        v: Tensor::contiguous(RawMemory::new(base + 2 * region, n(&kvs)), &kvs),
        y: Tensor::contiguous(RawMemory::new(base + 3 * region, n(&qs)), &qs),
        o: None,
        lse: Some(Tensor::contiguous(
            RawMemory::new(base + 4 * region, n(&ls)),
            &ls,
        )),
        diagnostics: None,
    }
}

#[test]
fn valid_raw_arguments_pass_the_check() {
    let p = problem();
    raw::check_forward(&p, &raw_args(&p), None).unwrap();
}

#[test]
fn raw_errors_are_the_safe_apis_errors() {
    let p = problem();
    let (qs, kvs, ls) = (p.q_shape(), p.kv_shape(), p.lse_shape());
    // A v one row short, through the raw check and through the reference on host buffers.
    let mut args = raw_args(&p);
    let short = vec![2, 6, 2, 64];
    args.v = Tensor::contiguous(args.v.data, &short);
    let raw_err = raw::check_forward(&p, &args, None).unwrap_err();
    let q = HostBuffer::<bf16>::new(n(&qs));
    let g = HostBuffer::<bf16>::new(n(&qs));
    let k = HostBuffer::<bf16>::new(n(&kvs));
    let v = HostBuffer::<bf16>::new(n(&short));
    let mut y = HostBuffer::<bf16>::new(n(&qs));
    let mut lse = HostBuffer::<f32>::new(n(&ls));
    let mut host = ForwardArgs {
        q: Tensor::contiguous(q.as_slice(), &qs),
        g: Some(Tensor::contiguous(g.as_slice(), &qs)),
        k: Tensor::contiguous(k.as_slice(), &kvs),
        v: Tensor::contiguous(v.as_slice(), &short),
        y: Tensor::contiguous(y.as_mut_slice(), &qs),
        o: None,
        lse: Some(Tensor::contiguous(lse.as_mut_slice(), &ls)),
        diagnostics: None,
    };
    let host_err = gated_sdpa::HostBackend::forward(&Reference, &p, &mut host).unwrap_err();
    assert_eq!(raw_err, host_err);
    assert!(matches!(
        raw_err,
        GsdpaError::ShapeMismatch { tensor: "v", .. }
    ));
}

#[test]
fn addresses_are_checked_for_alignment_and_overlap() {
    let p = problem();
    // k two bytes off a 16-byte boundary.
    let mut args = raw_args(&p);
    let kvs = p.kv_shape();
    args.k = Tensor::contiguous(RawMemory::new(args.k.data.device_addr() + 2, n(&kvs)), &kvs);
    assert!(matches!(
        raw::check_forward(&p, &args, None),
        Err(GsdpaError::Misaligned { tensor: "k", .. })
    ));
    // y written over v.
    let mut args = raw_args(&p);
    let qs = p.q_shape();
    args.y = Tensor::contiguous(RawMemory::new(args.v.data.device_addr(), n(&qs)), &qs);
    assert!(matches!(
        raw::check_forward(&p, &args, None),
        Err(GsdpaError::Overlap {
            output: "y",
            other: "v"
        })
    ));
    // A buffer shorter than its layout reaches.
    let mut args = raw_args(&p);
    args.k = Tensor::contiguous(RawMemory::new(args.k.data.device_addr(), n(&kvs) - 1), &kvs);
    assert!(matches!(
        raw::check_forward(&p, &args, None),
        Err(GsdpaError::BadStrides { tensor: "k", .. })
    ));
}

#[test]
fn varlen_needs_device_prefix_sums_and_others_refuse_them() {
    let p = problem();
    let some = Some(RawSeqlens {
        q: 1 << 20,
        k: 2 << 20,
    });
    assert!(matches!(
        raw::check_forward(&p, &raw_args(&p), some),
        Err(GsdpaError::InvalidArgument(_))
    ));
    let varlen = Varlen::new(vec![0, 3, 5], vec![0, 4, 7]).unwrap();
    let pv = AttentionProblem::new_varlen(varlen, 4, 2, 64).gate(GateMode::Elementwise);
    let (qs, kvs, ls) = (pv.q_shape(), pv.kv_shape(), pv.lse_shape());
    let base = 1u64 << 32;
    let region = 1u64 << 24;
    let args: RawForwardArgs<bf16> = ForwardArgs {
        q: Tensor::contiguous(RawMemory::new(base, n(&qs)), &qs),
        g: Some(Tensor::contiguous(
            RawMemory::new(base + region, n(&qs)),
            &qs,
        )),
        k: Tensor::contiguous(RawMemory::new(base + 2 * region, n(&kvs)), &kvs),
        v: Tensor::contiguous(RawMemory::new(base + 3 * region, n(&kvs)), &kvs),
        y: Tensor::contiguous(RawMemory::new(base + 4 * region, n(&qs)), &qs),
        o: None,
        lse: Some(Tensor::contiguous(
            RawMemory::new(base + 5 * region, n(&ls)),
            &ls,
        )),
        diagnostics: None,
    };
    raw::check_forward(&pv, &args, some).unwrap();
    assert!(matches!(
        raw::check_forward(&pv, &args, None),
        Err(GsdpaError::InvalidArgument(m)) if m.contains("cu_seqlens")
    ));
}

#[test]
fn backward_check_covers_the_workspace() {
    let p = problem();
    let f = raw_args(&p);
    let (qs, kvs) = (p.q_shape(), p.kv_shape());
    let base = 1u64 << 40;
    let region = 1u64 << 24;
    let at = |i: u64, shape: &[usize]| {
        Tensor::contiguous(RawMemory::new(base + i * region, n(shape)), shape)
    };
    let args = BackwardArgs {
        q: f.q,
        k: f.k,
        v: f.v,
        g: f.g,
        y: f.y,
        o: None,
        dy: at(0, &qs),
        lse: f.lse.unwrap(),
        dq: at(1, &qs),
        dk: at(2, &kvs),
        dv: at(3, &kvs),
        dg: Some(at(4, &qs)),
    };
    let bytes = backward_workspace_bytes(&p).unwrap();
    let ws = RawMemory::<u8>::new(base + 8 * region, bytes);
    raw::check_backward(&p, &args, ws, None, BackwardOptions::default()).unwrap();
    let small = RawMemory::<u8>::new(base + 8 * region, bytes - 1);
    assert!(matches!(
        raw::check_backward(&p, &args, small, None, BackwardOptions::default()),
        Err(GsdpaError::WorkspaceTooSmall { .. })
    ));
    let unaligned = RawMemory::<u8>::new(base + 8 * region + 16, bytes);
    assert!(matches!(
        raw::check_backward(&p, &args, unaligned, None, BackwardOptions::default()),
        Err(GsdpaError::Misaligned {
            tensor: "workspace",
            ..
        })
    ));
}
