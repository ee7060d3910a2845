//! `gsdpa decode`: gated attention over a paged KV cache from `.npy` inputs.
//!
//! ```text
//! gsdpa decode --backend B --dtype bf16|f16 --q q.npy --k-cache kc.npy --v-cache vc.npy
//!     --block-table bt.npy --cache-seqlens 17,5,300 [--g g.npy] --gate none|elementwise|headwise
//!     --act sigmoid|silu [--causal] [--scale F] [--num-splits N] --out y.npy [--lse lse.npy]
//! ```
//! q `[B, Sq, Hq, D]`, caches `[num_blocks, block_size, Hkv, D]` float32, the block table int32
//! `[B, max_blocks]`. The table and the lengths are checked on the host here whatever the backend (a
//! CLI has them on the host): bad values are bad input (exit 2), not NaN rows. The cuda backend
//! uploads everything, runs on the default stream with a device status word, and downloads Y and LSE.

use std::path::Path;

use cudarc::driver::sys::CUdevice_attribute;
use gated_sdpa::cuda::CudaBackend;
use gated_sdpa::paged::{
    check_paged_values, resolve_num_splits, DecodeArgs, DecodeProblem, NumSplits, PagedKv,
};
use gated_sdpa::{DType, Element, GateMode, HostBuffer, Reference, Tensor};
use half::{bf16, f16};

use crate::args::{parse_i32_list, Flags};
use crate::attention::{parse_activation, parse_dtype, parse_gate};
use crate::backends::{download, upload, AnyElement, Backend};
use crate::npy::{self, Array};
use crate::outputs::OutputPlan;
use crate::CliError;

const VALUE_FLAGS: [&str; 14] = [
    "backend",
    "dtype",
    "q",
    "k-cache",
    "v-cache",
    "block-table",
    "cache-seqlens",
    "g",
    "gate",
    "act",
    "scale",
    "num-splits",
    "out",
    "lse",
];

/// An int32 array (the block table) and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct IntArray {
    pub shape: Vec<usize>,
    pub data: Vec<i32>,
}

/// Parses an integer `.npy` (`<i4`, or `<i8` with every value in i32 range), C order. The header is
/// the one npy.rs documents; only the dtype differs.
pub fn parse_int_npy(bytes: &[u8]) -> Result<IntArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let data_start = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(&bytes[start..data_start]).map_err(|_| "bad .npy header")?;
    let field = |key: &str| -> Result<&str, String> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or_else(|| format!("the .npy header has no '{key}'"))?;
        let rest = &header[at + key.len() + 2..];
        Ok(rest.trim_start().trim_start_matches(':').trim_start())
    };
    let descr = field("descr")?;
    let width = if descr.starts_with("'<i4'") {
        4
    } else if descr.starts_with("'<i8'") {
        8
    } else {
        return Err(format!(
            "dtype {} is not int32 or int64 (little-endian)",
            descr.split(',').next().unwrap_or("")
        ));
    };
    if !field("fortran_order")?.starts_with("False") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_text = field("shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split_once(')'))
        .map(|(s, _)| s)
        .ok_or("bad shape in the .npy header")?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("bad dimension '{s}'"))
        })
        .collect::<Result<_, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("the .npy shape overflows")?;
    let body = &bytes[data_start..];
    if body.len() != count * width {
        return Err(format!(
            "the .npy data holds {} bytes, its shape needs {}",
            body.len(),
            count * width
        ));
    }
    let data = body
        .chunks_exact(width)
        .map(|c| {
            if width == 4 {
                Ok(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            } else {
                let v = i64::from_le_bytes(c.try_into().unwrap());
                i32::try_from(v).map_err(|_| format!("value {v} does not fit in int32"))
            }
        })
        .collect::<Result<_, String>>()?;
    Ok(IntArray { shape, data })
}

fn read_float(flag: &str, path: &str) -> Result<Array, String> {
    npy::read(Path::new(path)).map_err(|e| format!("--{flag} {e}"))
}

fn read_int(flag: &str, path: &str) -> Result<IntArray, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("--{flag} {path}: cannot read: {e}"))?;
    parse_int_npy(&bytes).map_err(|e| format!("--{flag} {path}: {e}"))
}

fn expect_rank(flag: &str, shape: &[usize], rank: usize, what: &str) -> Result<(), String> {
    if shape.len() != rank {
        return Err(format!("--{flag}: expected {what}, got shape {shape:?}"));
    }
    Ok(())
}

/// Everything `decode` needs, loaded and checked before any backend runs.
struct Request {
    problem: DecodeProblem,
    splits: NumSplits,
    q: Array,
    k: Array,
    v: Array,
    g: Option<Array>,
    table: Vec<i32>,
    seqlens: Vec<i32>,
}

fn load(flags: &Flags) -> Result<Request, CliError> {
    let q = read_float("q", flags.required("q")?)?;
    let k = read_float("k-cache", flags.required("k-cache")?)?;
    let v = read_float("v-cache", flags.required("v-cache")?)?;
    let table = read_int("block-table", flags.required("block-table")?)?;
    let seqlens = parse_i32_list("cache-seqlens", flags.required("cache-seqlens")?)?;
    let g = flags
        .value("g")
        .map(|path| read_float("g", path))
        .transpose()?;
    expect_rank("q", &q.shape, 4, "[B, Sq, Hq, D]")?;
    expect_rank("k-cache", &k.shape, 4, "[num_blocks, block_size, Hkv, D]")?;
    expect_rank("block-table", &table.shape, 2, "[B, max_blocks]")?;
    if v.shape != k.shape {
        return Err(format!(
            "--v-cache: shape {:?} differs from --k-cache {:?}",
            v.shape, k.shape
        )
        .into());
    }
    let (batch, sq, hq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let (nb, bs, hkv, dk) = (k.shape[0], k.shape[1], k.shape[2], k.shape[3]);
    if dk != d {
        return Err(format!("--k-cache: head dim {dk} differs from q's {d}").into());
    }
    if table.shape[0] != batch {
        return Err(format!(
            "--block-table: {} rows for a batch of {batch}",
            table.shape[0]
        )
        .into());
    }
    let gate = match flags.value("gate") {
        Some(text) => parse_gate(text)?,
        None => match g.as_ref().map(|g| g.shape.len()) {
            None => GateMode::None,
            Some(3) => GateMode::Headwise,
            Some(_) => GateMode::Elementwise,
        },
    };
    let activation = parse_activation(flags.value("act").unwrap_or("sigmoid"))?;
    let mut problem = DecodeProblem::new(batch, sq, hq, hkv, d, bs, nb, table.shape[1])
        .causal(flags.switch("causal"))
        .gate(gate)
        .activation(activation);
    if let Some(scale) = flags.parsed::<f32>("scale")? {
        problem.softmax_scale = Some(scale);
    }
    let splits = match flags.parsed::<usize>("num-splits")? {
        None => NumSplits::Auto,
        Some(n) => NumSplits::Fixed(n),
    };
    if let (Some(g), Some(shape)) = (&g, problem.gate_shape()) {
        if g.shape != shape {
            return Err(format!("--g: expected shape {shape:?}, got {:?}", g.shape).into());
        }
    }
    gated_sdpa::paged::validate_decode_problem(&problem)?;
    let table_tensor = Tensor::contiguous(table.data.as_slice(), &table.shape);
    check_paged_values(&problem, &table_tensor, &seqlens, None)?;
    gated_sdpa::paged::resolve_num_splits(&problem, splits, 1)?;
    Ok(Request {
        problem,
        splits,
        q,
        k,
        v,
        g,
        table: table.data,
        seqlens,
    })
}

/// The values rounded to `T`; a finite value beyond `T`'s range is an error (docs/cli.md).
fn rounded<T: Element>(a: &Array) -> Result<HostBuffer<T>, CliError> {
    a.round_to::<T>().map_err(CliError::usage)
}

/// Y (dtype) and LSE of one run.
struct DecodeOut<T: Copy + Default> {
    y: HostBuffer<T>,
    lse: HostBuffer<f32>,
}

fn run_host<T: AnyElement>(request: &Request, backend: &Backend) -> Result<DecodeOut<T>, CliError> {
    let p = &request.problem;
    let (q, k, v) = (
        rounded::<T>(&request.q)?,
        rounded::<T>(&request.k)?,
        rounded::<T>(&request.v)?,
    );
    let g = request.g.as_ref().map(rounded::<T>).transpose()?;
    let q_shape = p.q_shape();
    let mut y = HostBuffer::<T>::new(q_shape.iter().product());
    let mut lse = HostBuffer::<f32>::new(p.lse_shape().iter().product());
    let mut args = DecodeArgs {
        q: Tensor::contiguous(q.as_slice(), &q_shape),
        kv: PagedKv {
            k_cache: Tensor::contiguous(k.as_slice(), &p.cache_shape()),
            v_cache: Tensor::contiguous(v.as_slice(), &p.cache_shape()),
            block_table: Tensor::contiguous(request.table.as_slice(), &p.table_shape()),
            cache_seqlens: Tensor::contiguous(request.seqlens.as_slice(), &[p.batch]),
        },
        cu_seqlens_q: None,
        g: match (&g, p.gate_shape()) {
            (Some(g), Some(shape)) => Some(Tensor::contiguous(g.as_slice(), &shape)),
            _ => None,
        },
        y: Tensor::contiguous(y.as_mut_slice(), &q_shape),
        lse: Some(Tensor::contiguous(lse.as_mut_slice(), &p.lse_shape())),
    };
    match backend {
        Backend::Reference(_) => Reference.forward_paged(p, &mut args)?,
        #[cfg(feature = "emulator")]
        Backend::Emulator(e) => {
            let status = e.forward_paged(p, &mut args, request.splits)?;
            if status != 0 {
                // The host checked the values: a status here is a kernel bug, not bad input.
                return Err(CliError {
                    code: 1,
                    message: format!("the decode kernel reported status {status}"),
                });
            }
        }
        Backend::Cuda(cuda) => {
            drop(args);
            return run_cuda(cuda, request, [&q, &k, &v], g.as_ref());
        }
    }
    drop(args);
    Ok(DecodeOut { y, lse })
}

fn driver(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> CliError {
    move |e| CliError {
        code: 1,
        message: format!("{what}: {e:?}"),
    }
}

/// Uploads the rounded inputs, runs the decode on the default stream with a device status word and
/// the workspace the split count needs, downloads Y and the LSE.
fn run_cuda<T: AnyElement>(
    backend: &CudaBackend,
    request: &Request,
    [q, k, v]: [&HostBuffer<T>; 3],
    g: Option<&HostBuffer<T>>,
) -> Result<DecodeOut<T>, CliError> {
    let p = &request.problem;
    let stream = backend.context().default_stream();
    let sm_count = backend
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(driver("SM count"))?;
    let num_splits = resolve_num_splits(p, request.splits, sm_count.max(1) as usize)?;
    let (dq, dk, dv) = (
        upload(&stream, q.as_slice())?,
        upload(&stream, k.as_slice())?,
        upload(&stream, v.as_slice())?,
    );
    let dg = g.map(|g| upload(&stream, g.as_slice())).transpose()?;
    let table = upload(&stream, &request.table)?;
    let seqlens = upload(&stream, &request.seqlens)?;
    let q_shape = p.q_shape();
    let q_len: usize = q_shape.iter().product();
    let lse_len: usize = p.lse_shape().iter().product();
    let mut y = upload(&stream, &vec![T::default(); q_len])?;
    let mut lse = upload(&stream, &vec![0f32; lse_len])?;
    let mut status = upload(&stream, &[0i32])?;
    let ws_bytes = gated_sdpa::decode_workspace_bytes(p, num_splits)?;
    let mut workspace = upload(&stream, &vec![0u8; ws_bytes])?;
    let cache = p.cache_shape();
    let mut args = DecodeArgs {
        q: Tensor::contiguous(dq.slice(0..dq.len()), &q_shape),
        kv: PagedKv {
            k_cache: Tensor::contiguous(dk.slice(0..dk.len()), &cache),
            v_cache: Tensor::contiguous(dv.slice(0..dv.len()), &cache),
            block_table: Tensor::contiguous(table.slice(0..table.len()), &p.table_shape()),
            cache_seqlens: Tensor::contiguous(seqlens.slice(0..seqlens.len()), &[p.batch]),
        },
        cu_seqlens_q: None,
        g: match (&dg, p.gate_shape()) {
            (Some(g), Some(shape)) => Some(Tensor::contiguous(g.slice(0..g.len()), &shape)),
            _ => None,
        },
        y: Tensor::contiguous(y.slice_mut(0..q_len.max(1)), &q_shape),
        lse: Some(Tensor::contiguous(
            lse.slice_mut(0..lse_len.max(1)),
            &p.lse_shape(),
        )),
    };
    let mut ws_view = workspace.slice_mut(0..ws_bytes.max(1));
    let mut status_view = status.slice_mut(0..1);
    backend.forward_paged(
        &stream,
        p,
        &mut args,
        num_splits,
        Some(&mut ws_view),
        Some(&mut status_view),
    )?;
    drop((args, ws_view, status_view));
    stream.synchronize().map_err(driver("synchronize"))?;
    let out = DecodeOut {
        y: download(&stream, &y, q_len)?,
        lse: download(&stream, &lse, lse_len)?,
    };
    let word = download(&stream, &status, 1)?.as_slice()[0];
    if word != 0 {
        // The host checked the values: a status here is a kernel bug, not bad input.
        return Err(CliError {
            code: 1,
            message: format!("the decode kernel reported status {word}"),
        });
    }
    Ok(out)
}

pub fn run(args: &[String]) -> Result<(), CliError> {
    let flags = Flags::parse(args, &VALUE_FLAGS, &["causal"])?;
    // Destinations first: a run whose outputs cannot be written reads and computes nothing.
    let mut plan = OutputPlan::default();
    plan.add("y", "out", Path::new(flags.required("out")?))?;
    if let Some(path) = flags.value("lse") {
        plan.add("lse", "lse", Path::new(path))?;
    }
    let dtype = parse_dtype(flags.value("dtype").unwrap_or("bf16"))?;
    let request = load(&flags)?;
    let name = flags.value("backend").unwrap_or("reference");
    let backend = Backend::open(name)
        .map_err(|e| CliError::usage(format!("backend {name} not available: {e}")))?;
    match dtype {
        DType::BF16 => write::<bf16>(&flags, &request, &backend, plan),
        DType::F16 => write::<f16>(&flags, &request, &backend, plan),
    }
}

fn write<T: AnyElement>(
    flags: &Flags,
    request: &Request,
    backend: &Backend,
    plan: OutputPlan,
) -> Result<(), CliError> {
    // Every destination is reserved (created empty) before computing, and all appear together at the
    // end; a failure on the way removes what this run created (outputs.rs).
    let mut outputs = plan.reserve()?;
    let result = run_host::<T>(request, backend)?;
    let p = &request.problem;
    outputs.write(
        "y",
        &p.q_shape(),
        result.y.as_slice().iter().map(|x| x.to_f32()),
    )?;
    if flags.value("lse").is_some() {
        outputs.write("lse", &p.lse_shape(), result.lse.as_slice().iter().copied())?;
    }
    outputs.commit()?;
    Ok(())
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod decode_tests;
