//! `gsdpa forward`, `gsdpa backward` and `gsdpa diagnose`: attention on `.npy` inputs.

use std::path::{Path, PathBuf};

use gated_sdpa::{
    Activation, AttentionProblem, BackwardOptions, DType, Element, GateMode, HostBuffer, Varlen,
};
use half::{bf16, f16};

use crate::args::{parse_i32_list, Flags};
use crate::backends::{AnyElement, Backend, Diagnose, HostInputs};
use crate::npy::{self, Array};
use crate::outputs::{OutputPlan, Transaction};
use crate::CliError;

const VALUE_FLAGS: [&str; 18] = [
    "backend",
    "arch",
    "kernel",
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
const BACKWARD_ONLY_FLAGS: [&str; 2] = ["out-dir", "backward-tiles"];
/// The forward's (and diagnose's) diagnostics outputs and their parameter (docs/diagnostics.md).
const DIAGNOSTICS_FLAGS: [&str; 3] = ["sink-mass", "n-sink", "gate-stats"];

fn parse_flags(args: &[String], backward: bool) -> Result<Flags, CliError> {
    let mut values: Vec<&str> = VALUE_FLAGS.to_vec();
    let mut switches = vec!["causal"];
    if backward {
        values.extend(BACKWARD_ONLY_FLAGS);
        switches.push("deterministic");
    } else {
        values.retain(|f| *f != "dy");
        values.extend(DIAGNOSTICS_FLAGS);
    }
    Ok(Flags::parse(args, &values, &switches)?)
}

/// The diagnostics the flags ask for; `all` (diagnose) asks for every one the problem has.
fn diagnose_request(
    flags: &Flags,
    problem: &AttentionProblem,
    all: bool,
) -> Result<Diagnose, String> {
    let n_sink = flags.parsed::<usize>("n-sink")?;
    if n_sink == Some(0) {
        return Err("--n-sink must be at least 1".into());
    }
    let sink = all || flags.value("sink-mass").is_some();
    if n_sink.is_some() && !sink {
        return Err("--n-sink needs --sink-mass".into());
    }
    let gate_stats = flags.value("gate-stats").is_some() || (all && problem.gate != GateMode::None);
    if gate_stats && problem.gate == GateMode::None {
        return Err("--gate-stats needs a gate (--gate is none)".into());
    }
    Ok(Diagnose {
        n_sink: sink.then(|| n_sink.unwrap_or(1)),
        gate_stats,
    })
}

pub fn parse_dtype(text: &str) -> Result<DType, String> {
    match text {
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(format!("--dtype: '{other}' is not bf16 or f16")),
    }
}

pub fn parse_gate(text: &str) -> Result<GateMode, String> {
    match text {
        "none" => Ok(GateMode::None),
        "elementwise" => Ok(GateMode::Elementwise),
        "headwise" => Ok(GateMode::Headwise),
        other => Err(format!(
            "--gate: '{other}' is not none, elementwise or headwise"
        )),
    }
}

pub fn parse_activation(text: &str) -> Result<Activation, String> {
    match text {
        "sigmoid" => Ok(Activation::Sigmoid),
        "silu" => Ok(Activation::Silu),
        other => Err(format!("--act: '{other}' is not sigmoid or silu")),
    }
}

/// Everything a forward or backward command needs, loaded and checked, before any backend runs.
pub struct Request {
    problem: AttentionProblem,
    /// The element type the inputs are rounded to and the kernels run in.
    dtype: DType,
    /// q, or the q_proj buffer with `qg`.
    q: Array,
    qg: bool,
    g: Option<Array>,
    k: Array,
    v: Array,
    dy: Option<Array>,
    /// Things the user should know that do not stop the run (printed on stderr).
    pub warnings: Vec<String>,
}

fn read_npy(flag: &str, path: &str) -> Result<Array, String> {
    npy::read(Path::new(path)).map_err(|e| format!("--{flag} {e}"))
}

/// Reads and checks the inputs of a forward (`backward` false) or backward command.
pub fn load(flags: &Flags, backward: bool) -> Result<Request, CliError> {
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
    let mut warnings = Vec::new();
    let inputs = [
        (q_name, Some(&q)),
        ("k", Some(&k)),
        ("v", Some(&v)),
        ("g", g.as_ref()),
        ("dy", dy.as_ref()),
    ];
    for (name, array) in inputs {
        if array.is_some_and(Array::is_f64) {
            let path = flags.value(name).unwrap_or_default();
            warnings.push(format!(
                "--{name} {path} holds float64 values; they are rounded to {dtype}"
            ));
        }
    }
    Ok(Request {
        problem,
        dtype,
        warnings,
        q,
        qg,
        g,
        k,
        v,
        dy,
    })
}

/// An input rounded to `T`; a finite value that overflows `T` is an error naming the flag and file.
fn rounded<T: Element>(flags: &Flags, name: &str, array: &Array) -> Result<HostBuffer<T>, String> {
    array
        .round_to::<T>()
        .map_err(|e| format!("--{name} {}: {e}", flags.value(name).unwrap_or_default()))
}

/// The output values as f32, as they are written.
fn widened<T: Element>(buffer: &HostBuffer<T>) -> impl ExactSizeIterator<Item = f32> + '_ {
    buffer.as_slice().iter().map(|x| x.to_f32())
}

fn host_inputs<T: AnyElement>(flags: &Flags, request: &Request) -> Result<HostInputs<T>, String> {
    let q_name = if request.qg { "qg" } else { "q" };
    Ok(HostInputs {
        problem: request.problem.clone(),
        q: rounded(flags, q_name, &request.q)?,
        qg: request.qg,
        g: request
            .g
            .as_ref()
            .map(|g| rounded(flags, "g", g))
            .transpose()?,
        k: rounded(flags, "k", &request.k)?,
        v: rounded(flags, "v", &request.v)?,
    })
}

fn open_backend(flags: &Flags) -> Result<Backend, CliError> {
    let name = flags.value("backend").unwrap_or("reference");
    let backend = Backend::open(name)
        .map_err(|e| CliError::usage(format!("backend {name} not available: {e}")))?;
    // `sm90` as well as `sm_90`, `sm_90a`, `90` and `9.0`.
    let arch = flags
        .value("arch")
        .map(|text| match text.strip_prefix("sm") {
            Some(rest) if !rest.starts_with('_') => gated_sdpa::TargetArch::parse(rest),
            _ => gated_sdpa::TargetArch::parse(text),
        })
        .transpose()
        .map_err(|e| CliError::usage(format!("--arch: {e}")))?;
    let kernel = flags
        .value("kernel")
        .map(gated_sdpa::ForwardKernel::parse)
        .transpose()
        .map_err(|e| CliError::usage(format!("--kernel: {e}")))?;
    backend
        .configure(arch, kernel)
        .map_err(|e| CliError::usage(e.to_string()))
}

fn print_warnings(request: &Request) {
    for warning in &request.warnings {
        eprintln!("gsdpa: warning: {warning}");
    }
}

/// The forward's optional outputs, `(output name, flag)`: the backward writes them too when asked
/// (it does not take the diagnostics flags).
const FORWARD_EXTRA_OUTPUTS: [(&str, &str); 4] = [
    ("lse", "lse"),
    ("o", "o"),
    ("sink_mass", "sink-mass"),
    ("gate_stats", "gate-stats"),
];

fn plan_forward_extras(flags: &Flags, plan: &mut OutputPlan) -> Result<(), String> {
    for (output, flag) in FORWARD_EXTRA_OUTPUTS {
        if let Some(path) = flags.value(flag) {
            plan.add(output, flag, Path::new(path))?;
        }
    }
    Ok(())
}

pub fn forward(args: &[String]) -> Result<(), CliError> {
    let flags = parse_flags(args, false)?;
    // Destinations first: a run whose outputs cannot be written reads and computes nothing.
    let mut plan = OutputPlan::default();
    plan.add("y", "out", Path::new(flags.required("out")?))?;
    plan_forward_extras(&flags, &mut plan)?;
    let request = load(&flags, false)?;
    let diagnose = diagnose_request(&flags, &request.problem, false)?;
    print_warnings(&request);
    let backend = open_backend(&flags)?;
    match request.dtype {
        DType::BF16 => forward_typed::<bf16>(&flags, &request, &backend, plan, diagnose, false),
        DType::F16 => forward_typed::<f16>(&flags, &request, &backend, plan, diagnose, false),
    }
}

/// `gsdpa diagnose <forward flags>`: the forward with every diagnostic, and the per-head report
/// (diagnose.rs). `--out` and the other outputs are optional here.
pub fn diagnose(args: &[String]) -> Result<(), CliError> {
    let flags = parse_flags(args, false)?;
    let mut plan = OutputPlan::default();
    if let Some(path) = flags.value("out") {
        plan.add("y", "out", Path::new(path))?;
    }
    plan_forward_extras(&flags, &mut plan)?;
    let request = load(&flags, false)?;
    let diagnose = diagnose_request(&flags, &request.problem, true)?;
    print_warnings(&request);
    let backend = open_backend(&flags)?;
    match request.dtype {
        DType::BF16 => forward_typed::<bf16>(&flags, &request, &backend, plan, diagnose, true),
        DType::F16 => forward_typed::<f16>(&flags, &request, &backend, plan, diagnose, true),
    }
}

/// Writes the forward's outputs named in `flags` (y only when `with_y`).
fn write_forward<T: AnyElement>(
    flags: &Flags,
    p: &AttentionProblem,
    forward: &crate::backends::ForwardOut<T>,
    with_y: bool,
    outputs: &mut Transaction,
) -> Result<(), String> {
    if with_y {
        outputs.write("y", &p.q_shape(), widened(&forward.y))?;
    }
    if flags.value("lse").is_some() {
        outputs.write(
            "lse",
            &p.lse_shape(),
            forward.lse.as_slice().iter().copied(),
        )?;
    }
    if let (Some(_), Some(o)) = (flags.value("o"), &forward.o) {
        outputs.write("o", &p.q_shape(), widened(o))?;
    }
    if let (Some(_), Some(sink)) = (flags.value("sink-mass"), &forward.sink_mass) {
        outputs.write("sink_mass", &p.lse_shape(), sink.as_slice().iter().copied())?;
    }
    if let (Some(_), Some(stats)) = (flags.value("gate-stats"), &forward.gate_stats) {
        let shape = [p.batch, p.heads_q];
        outputs.write("gate_stats", &shape, stats.as_slice().iter().copied())?;
    }
    Ok(())
}

/// The forward; with `report` (diagnose) also the per-head diagnostics table on stdout, and y only
/// when `--out` names it.
fn forward_typed<T: AnyElement>(
    flags: &Flags,
    request: &Request,
    backend: &Backend,
    plan: OutputPlan,
    diagnose: Diagnose,
    report: bool,
) -> Result<(), CliError> {
    let inputs = host_inputs::<T>(flags, request)?;
    let mut outputs = plan.reserve()?;
    let result = backend.forward_diagnosed(&inputs, flags.value("o").is_some(), diagnose)?;
    if flags.value("arch").is_some() || flags.value("kernel").is_some() {
        if let Some(kernel) = backend.last_forward_kernel() {
            eprintln!("gsdpa: forward kernel: {kernel}");
        }
    }
    let with_y = !report || flags.value("out").is_some();
    write_forward(flags, &inputs.problem, &result, with_y, &mut outputs)?;
    outputs.commit()?;
    if report {
        print!(
            "{}",
            crate::diagnose::report(&inputs.problem, &result, diagnose, backend.name())
        );
    }
    Ok(())
}

/// The gradient files written into `--out-dir`, (output name, file name); `dg.npy` too with a gate.
const GRADIENT_FILES: [(&str, &str); 3] = [("dq", "dq.npy"), ("dk", "dk.npy"), ("dv", "dv.npy")];

pub fn backward(args: &[String]) -> Result<(), CliError> {
    let flags = parse_flags(args, true)?;
    let out_dir = PathBuf::from(flags.required("out-dir")?);
    let mut plan = OutputPlan::default();
    for (output, file) in GRADIENT_FILES {
        plan.add_in_dir(output, "out-dir", &out_dir, file)?;
    }
    if let Some(path) = flags.value("out") {
        plan.add("y", "out", Path::new(path))?;
    }
    plan_forward_extras(&flags, &mut plan)?;
    let request = load(&flags, true)?;
    print_warnings(&request);
    if request.problem.gate != GateMode::None {
        plan.add_in_dir("dg", "out-dir", &out_dir, "dg.npy")?;
    }
    let backend = open_backend(&flags)?;
    match request.dtype {
        DType::BF16 => backward_typed::<bf16>(&flags, &request, &backend, plan),
        DType::F16 => backward_typed::<f16>(&flags, &request, &backend, plan),
    }
}

fn backward_typed<T: AnyElement>(
    flags: &Flags,
    request: &Request,
    backend: &Backend,
    plan: OutputPlan,
) -> Result<(), CliError> {
    let inputs = host_inputs::<T>(flags, request)?;
    let p = &inputs.problem;
    let dy = rounded::<T>(flags, "dy", request.dy.as_ref().ok_or("--dy is required")?)?;
    let mut outputs = plan.reserve()?;
    // The backward consumes the forward's Y and LSE (and O for silu): run the forward first.
    let forward = backend.forward(&inputs, true)?;
    let tiles = flags
        .value("backward-tiles")
        .map(gated_sdpa::BackwardTiles::parse)
        .transpose()
        .map_err(|e| CliError::usage(format!("--backward-tiles: {e}")))?
        .unwrap_or_default();
    let options = BackwardOptions {
        deterministic: flags.switch("deterministic"),
        tiles,
    };
    let grads = backend.backward(&inputs, &forward, &dy, options)?;
    outputs.write("dq", &p.q_shape(), widened(&grads.dq))?;
    outputs.write("dk", &p.kv_shape(), widened(&grads.dk))?;
    outputs.write("dv", &p.kv_shape(), widened(&grads.dv))?;
    if let (Some(dg), Some(shape)) = (&grads.dg, p.gate_shape()) {
        outputs.write("dg", &shape, widened(dg))?;
    }
    // The forward's outputs, when asked for with the forward's flags.
    write_forward(
        flags,
        p,
        &forward,
        flags.value("out").is_some(),
        &mut outputs,
    )?;
    outputs.commit()?;
    Ok(())
}
