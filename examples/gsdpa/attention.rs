//! `gsdpa forward` and `gsdpa backward`: attention on `.npy` inputs.

use std::path::{Path, PathBuf};

use gated_sdpa::{
    Activation, AttentionProblem, BackwardOptions, DType, Element, GateMode, HostBuffer, Varlen,
};
use half::{bf16, f16};

use crate::args::{parse_i32_list, Flags};
use crate::backends::{AnyElement, Backend, HostInputs};
use crate::npy::{self, Array, PendingWrites};
use crate::CliError;

const VALUE_FLAGS: [&str; 16] = [
    "backend",
    "dtype",
    "q",
    "k",
    "v",
    "g",
    "qg",
    "gate",
    "act",
    "scale",
    "out",
    "lse",
    "o",
    "cu-seqlens-q",
    "cu-seqlens-k",
    "dy",
];
const BACKWARD_ONLY_FLAGS: [&str; 1] = ["out-dir"];

fn parse_flags(args: &[String], backward: bool) -> Result<Flags, CliError> {
    let mut values: Vec<&str> = VALUE_FLAGS.to_vec();
    let mut switches = vec!["causal"];
    if backward {
        values.extend(BACKWARD_ONLY_FLAGS);
        switches.push("deterministic");
    } else {
        values.retain(|f| *f != "dy");
    }
    Ok(Flags::parse(args, &values, &switches)?)
}

pub fn parse_dtype(text: &str) -> Result<DType, String> {
    match text {
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(format!("--dtype: '{other}' is not bf16 or f16")),
    }
}

fn parse_gate(text: &str) -> Result<GateMode, String> {
    match text {
        "none" => Ok(GateMode::None),
        "elementwise" => Ok(GateMode::Elementwise),
        "headwise" => Ok(GateMode::Headwise),
        other => Err(format!(
            "--gate: '{other}' is not none, elementwise or headwise"
        )),
    }
}

fn parse_activation(text: &str) -> Result<Activation, String> {
    match text {
        "sigmoid" => Ok(Activation::Sigmoid),
        "silu" => Ok(Activation::Silu),
        other => Err(format!("--act: '{other}' is not sigmoid or silu")),
    }
}

/// Everything a forward or backward command needs, loaded and checked, before any backend runs.
struct Request {
    problem: AttentionProblem,
    /// The element type the inputs are rounded to (`--dtype`).
    dtype: DType,
    /// q, or the q_proj buffer with `qg`.
    q: Array,
    qg: bool,
    g: Option<Array>,
    k: Array,
    v: Array,
    dy: Option<Array>,
}

fn read_npy(flag: &str, path: &str) -> Result<Array, String> {
    npy::read(Path::new(path)).map_err(|e| format!("--{flag} {e}"))
}

fn load(flags: &Flags, backward: bool) -> Result<Request, CliError> {
    let dtype = parse_dtype(flags.value("dtype").unwrap_or("bf16"))?;
    if flags.value("q").is_some() == flags.value("qg").is_some() {
        return Err("give exactly one of --q and --qg".to_string().into());
    }
    if flags.value("g").is_some() && flags.value("qg").is_some() {
        return Err("--g and --qg both give the gate: use one"
            .to_string()
            .into());
    }
    let qg = flags.value("qg").is_some();
    let q = match flags.value("qg") {
        Some(path) => read_npy("qg", path)?,
        None => read_npy("q", flags.required("q")?)?,
    };
    let k = read_npy("k", flags.required("k")?)?;
    let v = read_npy("v", flags.required("v")?)?;
    let g = flags
        .value("g")
        .map(|path| read_npy("g", path))
        .transpose()?;
    let dy = if backward {
        Some(read_npy("dy", flags.required("dy")?)?)
    } else {
        None
    };

    let varlen = match (flags.value("cu-seqlens-q"), flags.value("cu-seqlens-k")) {
        (None, None) => None,
        (Some(cq), Some(ck)) => Some(Varlen::new(
            parse_i32_list("cu-seqlens-q", cq)?,
            parse_i32_list("cu-seqlens-k", ck)?,
        )?),
        _ => {
            return Err("--cu-seqlens-q and --cu-seqlens-k go together"
                .to_string()
                .into())
        }
    };
    // q's shape: [B, Sq, Hq, D], varlen [Tq, Hq, D]; with --qg the last dimension is 2 D.
    let q_name = if qg { "qg" } else { "q" };
    let rank = if varlen.is_some() { 3 } else { 4 };
    let layout_name = if varlen.is_some() {
        "[T, H, D] (varlen)"
    } else {
        "[B, S, H, D]"
    };
    for (name, array) in [(q_name, &q), ("k", &k)] {
        if array.shape.len() != rank {
            return Err(format!(
                "--{name}: expected a {layout_name} array, got shape {:?}",
                array.shape
            )
            .into());
        }
    }
    let mut q_shape = q.shape.clone();
    if qg {
        let last = q_shape[rank - 1];
        if last % 2 != 0 {
            return Err(format!("--qg: the last dimension ({last}) must be 2 * head_dim").into());
        }
        q_shape[rank - 1] = last / 2;
    }
    let (heads_q, head_dim, heads_kv) = (q_shape[rank - 2], q_shape[rank - 1], k.shape[rank - 2]);
    let problem = match varlen {
        Some(varlen) => AttentionProblem::new_varlen(varlen, heads_q, heads_kv, head_dim),
        None => AttentionProblem::new(
            q_shape[0], q_shape[1], k.shape[1], heads_q, heads_kv, head_dim,
        ),
    };

    let gate = match flags.value("gate") {
        Some(text) => parse_gate(text)?,
        // Inferred from the gate tensor: none, or elementwise/headwise by its rank.
        None if qg => GateMode::Elementwise,
        None => match &g {
            None => GateMode::None,
            Some(g) if g.shape.len() + 1 == rank => GateMode::Headwise,
            Some(_) => GateMode::Elementwise,
        },
    };
    if qg && gate == GateMode::Headwise {
        return Err("--qg gives an elementwise gate; a headwise gate needs --g"
            .to_string()
            .into());
    }
    if gate != GateMode::None && g.is_none() && !qg {
        return Err(format!("--gate {} needs the gate logits (--g or --qg)", gate.name()).into());
    }
    let mut problem = problem
        .causal(flags.switch("causal"))
        .gate(gate)
        .activation(parse_activation(flags.value("act").unwrap_or("sigmoid"))?);
    if let Some(scale) = flags.parsed::<f32>("scale")? {
        problem.softmax_scale = Some(scale);
    }
    gated_sdpa::validate_problem(&problem)?;

    // Shapes are checked here, naming the flag; validation checks them again with the tensors.
    let expect = |flag: &str, array: &Array, shape: &[usize]| -> Result<(), String> {
        if array.shape != shape {
            return Err(format!(
                "--{flag}: expected shape {shape:?}, got {:?}",
                array.shape
            ));
        }
        Ok(())
    };
    let kv_shape = problem.kv_shape();
    expect("k", &k, &kv_shape)?;
    expect("v", &v, &kv_shape)?;
    if !qg {
        expect("q", &q, &problem.q_shape())?;
    } else {
        let mut qg_shape = problem.q_shape();
        if let Some(last) = qg_shape.last_mut() {
            *last *= 2;
        }
        expect("qg", &q, &qg_shape)?;
    }
    match (&g, problem.gate_shape()) {
        (Some(_), None) => return Err("--g given but --gate is none".to_string().into()),
        (Some(g), Some(shape)) => expect("g", g, &shape)?,
        _ => {}
    }
    if let Some(dy) = &dy {
        expect("dy", dy, &problem.q_shape())?;
    }
    Ok(Request {
        problem,
        dtype,
        q,
        qg,
        g,
        k,
        v,
        dy,
    })
}

fn rounded<T: Element>(array: &Array) -> HostBuffer<T> {
    let data: Vec<T> = array.data.iter().map(|&x| T::from_f32(x)).collect();
    HostBuffer::from_slice(&data)
}

fn widened<T: Element>(buffer: &HostBuffer<T>) -> Vec<f32> {
    buffer.as_slice().iter().map(|x| x.to_f32()).collect()
}

fn host_inputs<T: AnyElement>(request: &Request) -> HostInputs<T> {
    HostInputs {
        problem: request.problem.clone(),
        q: rounded(&request.q),
        qg: request.qg,
        g: request.g.as_ref().map(rounded),
        k: rounded(&request.k),
        v: rounded(&request.v),
    }
}

fn open_backend(flags: &Flags) -> Result<Backend, CliError> {
    let name = flags.value("backend").unwrap_or("reference");
    Backend::open(name).map_err(|e| CliError::usage(format!("backend {name} not available: {e}")))
}

pub fn forward(args: &[String]) -> Result<(), CliError> {
    let flags = parse_flags(args, false)?;
    let out = PathBuf::from(flags.required("out")?);
    let request = load(&flags, false)?;
    let backend = open_backend(&flags)?;
    match request.dtype {
        DType::BF16 => forward_typed::<bf16>(&flags, &request, &backend, &out),
        DType::F16 => forward_typed::<f16>(&flags, &request, &backend, &out),
    }
}

fn forward_typed<T: AnyElement>(
    flags: &Flags,
    request: &Request,
    backend: &Backend,
    out: &Path,
) -> Result<(), CliError> {
    let inputs = host_inputs::<T>(request);
    let p = &inputs.problem;
    let result = backend.forward(&inputs, flags.value("o").is_some())?;
    let mut writes = PendingWrites::default();
    writes.add(out, &p.q_shape(), &widened(&result.y))?;
    if let Some(path) = flags.value("lse") {
        writes.add(Path::new(path), &p.lse_shape(), result.lse.as_slice())?;
    }
    if let (Some(path), Some(o)) = (flags.value("o"), &result.o) {
        writes.add(Path::new(path), &p.q_shape(), &widened(o))?;
    }
    writes.commit()?;
    Ok(())
}

pub fn backward(args: &[String]) -> Result<(), CliError> {
    let flags = parse_flags(args, true)?;
    let out_dir = PathBuf::from(flags.required("out-dir")?);
    let request = load(&flags, true)?;
    let backend = open_backend(&flags)?;
    match request.dtype {
        DType::BF16 => backward_typed::<bf16>(&flags, &request, &backend, &out_dir),
        DType::F16 => backward_typed::<f16>(&flags, &request, &backend, &out_dir),
    }
}

fn backward_typed<T: AnyElement>(
    flags: &Flags,
    request: &Request,
    backend: &Backend,
    out_dir: &Path,
) -> Result<(), CliError> {
    let inputs = host_inputs::<T>(request);
    let p = &inputs.problem;
    let dy = rounded::<T>(request.dy.as_ref().ok_or("--dy is required")?);
    // The backward consumes the forward's Y and LSE (and O for silu): run the forward first.
    let forward = backend.forward(&inputs, true)?;
    let options = BackwardOptions {
        deterministic: flags.switch("deterministic"),
    };
    let grads = backend.backward(&inputs, &forward, &dy, options)?;

    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("--out-dir {}: cannot create: {e}", out_dir.display()))?;
    let mut writes = PendingWrites::default();
    writes.add(&out_dir.join("dq.npy"), &p.q_shape(), &widened(&grads.dq))?;
    writes.add(&out_dir.join("dk.npy"), &p.kv_shape(), &widened(&grads.dk))?;
    writes.add(&out_dir.join("dv.npy"), &p.kv_shape(), &widened(&grads.dv))?;
    if let (Some(dg), Some(shape)) = (&grads.dg, p.gate_shape()) {
        writes.add(&out_dir.join("dg.npy"), &shape, &widened(dg))?;
    }
    // The forward's outputs, when asked for with the forward's flags.
    if let Some(path) = flags.value("out") {
        writes.add(Path::new(path), &p.q_shape(), &widened(&forward.y))?;
    }
    if let Some(path) = flags.value("lse") {
        writes.add(Path::new(path), &p.lse_shape(), forward.lse.as_slice())?;
    }
    if let (Some(path), Some(o)) = (flags.value("o"), &forward.o) {
        writes.add(Path::new(path), &p.q_shape(), &widened(o))?;
    }
    writes.commit()?;
    Ok(())
}
