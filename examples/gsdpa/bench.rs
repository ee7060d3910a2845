//! `gsdpa bench [--json] [--shape NAME] [--backward]`: forward (and with `--backward`, backward and
//! whole-layer fused vs unfused) throughput on the GPU (see `gated_sdpa::testing::bench`).
//! `gsdpa bench --decode [--json] [--shape NAME[,NAME...]]`: the paged decode's K/V bandwidth against
//! the HBM peak, the gate's cost and the fused speedup (see `gated_sdpa::testing::decode_bench`).

use gated_sdpa::cuda::CudaBackend;
use gated_sdpa::testing::{bench, decode_bench};

use crate::args::Flags;
use crate::info::json_string;
use crate::CliError;

pub fn run(args: &[String]) -> Result<(), CliError> {
    let flags = Flags::parse(
        args,
        &["shape", "iters", "reps", "kernel"],
        &["json", "backward", "decode"],
    )?;
    let with_backward = flags.switch("backward");
    if with_backward && flags.switch("decode") {
        return Err(CliError::usage(
            "--backward and --decode are separate benchmarks",
        ));
    }
    let iters = flags.parsed::<usize>("iters")?.unwrap_or(20).max(1);
    let reps = flags.parsed::<usize>("reps")?.unwrap_or(11).max(1);
    let kernel = flags
        .value("kernel")
        .map(gated_sdpa::ForwardKernel::parse)
        .transpose()
        .map_err(|e| CliError::usage(format!("--kernel: {e}")))?
        .unwrap_or_default();
    let backend = CudaBackend::new(0)
        .map_err(|e| CliError::usage(format!("bench needs a GPU: {e}")))?
        .with_forward_kernel(kernel);
    if flags.switch("decode") {
        return decode(&backend, &flags, iters, reps);
    }
    let device = backend.device_name().unwrap_or_else(|_| "unknown".into());
    let shapes: Vec<_> = bench::standard_shapes()
        .into_iter()
        .filter(|s| {
            flags
                .value("shape")
                .is_none_or(|wanted| s.name.contains(wanted))
        })
        .collect();
    if shapes.is_empty() {
        return Err(CliError::usage("--shape matches no benchmark shape"));
    }
    let json = flags.switch("json");
    if !json {
        println!("device: {device}; bf16 forward, elementwise sigmoid gate; median of {reps} x {iters} calls");
        println!(
            "{:<26} {:>3} {:>4} {:>4} {:>6} {:>4} {:>10} {:>10} {:>10} {:>9} {:>8}  kernel",
            "shape",
            "B",
            "Hq",
            "Hkv",
            "S",
            "D",
            "gated ms",
            "TFLOP/s",
            "ungated",
            "gate ovh",
            "fused x"
        );
    }
    let mut entries = Vec::new();
    for shape in &shapes {
        let r = bench::forward(&backend, shape, iters, reps)?;
        // Which forward kernel the fused runs launched (the mma.sync or the Hopper one).
        let kernel_ran = backend.last_forward_kernel().unwrap_or_default();
        let bwd = if with_backward {
            Some((
                bench::backward(&backend, shape, iters, reps)?,
                bench::layer(&backend, shape, iters, reps)?,
            ))
        } else {
            None
        };
        if json {
            entries.push(format!(
                "{{\"name\": {}, \"batch\": {}, \"heads_q\": {}, \"heads_kv\": {}, \"seqlen\": {}, \"head_dim\": {}, \
                 \"causal\": {}, \"gated_ms\": {:.6}, \"ungated_ms\": {:.6}, \"unfused_ms\": {:.6}, \
                 \"gated_tflops\": {:.3}, \"ungated_tflops\": {:.3}, \"gate_overhead_pct\": {:.3}, \"fused_speedup\": {:.4}, \
                 \"kernel\": {}{}}}",
                json_string(&shape.name),
                shape.batch,
                shape.heads_q,
                shape.heads_kv,
                shape.seqlen,
                shape.head_dim,
                shape.causal,
                r.gated_ms,
                r.ungated_ms,
                r.unfused_ms,
                r.gated_tflops(),
                r.ungated_tflops(),
                r.gate_overhead_pct(),
                r.fused_speedup(),
                json_string(&kernel_ran),
                bwd.as_ref().map_or(String::new(), |(b, l)| format!(
                    ", \"backward_gated_ms\": {:.6}, \"backward_ungated_ms\": {:.6}, \"backward_gated_tflops\": {:.3}, \
                     \"backward_gate_overhead_pct\": {:.3}, \"layer_fused_ms\": {:.6}, \"layer_unfused_ms\": {:.6}, \
                     \"layer_fused_tflops\": {:.3}, \"layer_fused_speedup\": {:.4}",
                    b.gated_ms,
                    b.ungated_ms,
                    b.gated_tflops(),
                    b.gate_overhead_pct(),
                    l.fused_ms,
                    l.unfused_ms,
                    l.fused_tflops(),
                    l.fused_speedup()
                ))
            ));
        } else {
            println!(
                "{:<26} {:>3} {:>4} {:>4} {:>6} {:>4} {:>10.4} {:>10.1} {:>10.1} {:>8.2}% {:>8.3}  {}",
                shape.name,
                shape.batch,
                shape.heads_q,
                shape.heads_kv,
                shape.seqlen,
                shape.head_dim,
                r.gated_ms,
                r.gated_tflops(),
                r.ungated_tflops(),
                r.gate_overhead_pct(),
                r.fused_speedup(),
                kernel_ran
            );
            if let Some((b, l)) = &bwd {
                println!(
                    "{:<26} backward: {:.4} ms, {:.1} TFLOP/s gated, {:.1} ungated, gate overhead {:.2}%",
                    "",
                    b.gated_ms,
                    b.gated_tflops(),
                    b.ungated_tflops(),
                    b.gate_overhead_pct()
                );
                println!(
                    "{:<26} layer fwd+bwd: fused {:.4} ms ({:.1} TFLOP/s), unfused {:.4} ms, fused x {:.3}",
                    "",
                    l.fused_ms,
                    l.fused_tflops(),
                    l.unfused_ms,
                    l.fused_speedup()
                );
            }
        }
    }
    if json {
        println!(
            "{{\"device\": {}, \"dtype\": \"bf16\", \"results\": [{}]}}",
            json_string(&device),
            entries.join(", ")
        );
    }
    Ok(())
}

/// `--decode`: the standard decode shapes (`--shape` filters by comma-separated name substrings); a
/// shape that does not fit the device's memory is skipped with a note.
fn decode(backend: &CudaBackend, flags: &Flags, iters: usize, reps: usize) -> Result<(), CliError> {
    let device = backend.device_name().unwrap_or_else(|_| "unknown".into());
    let shapes =
        decode_bench::filter_shapes(decode_bench::standard_decode_shapes(), flags.value("shape"));
    if shapes.is_empty() {
        return Err(CliError::usage("--shape matches no decode benchmark shape"));
    }
    let peak = decode_bench::peak_bandwidth(backend)?;
    let json = flags.switch("json");
    if !json {
        println!(
            "device: {device}; peak {:.0} GB/s ({}); bf16 paged decode, Sq 1, elementwise sigmoid gate; \
             GB/s = K and V bytes read / time; median of {reps} x {iters} calls",
            peak.bytes_per_second / 1e9,
            peak.source
        );
        println!("{}", decode_bench::DecodeBench::table_header());
    }
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    for shape in &shapes {
        if let Some(reason) = decode_bench::skip_reason(backend, shape)? {
            if !json {
                println!("{:<24} skipped: {reason}", shape.name);
            }
            skipped.push(format!(
                "{{\"name\": {}, \"reason\": {}}}",
                json_string(&shape.name),
                json_string(&reason)
            ));
            continue;
        }
        let r = decode_bench::decode(backend, shape, iters, reps)?;
        if json {
            entries.push(r.to_json());
        } else {
            println!("{}", r.table_row());
        }
    }
    if json {
        println!(
            "{{\"device\": {}, \"dtype\": \"bf16\", \"peak_bytes_per_second\": {:.6e}, \"peak_source\": {}, \
             \"results\": [{}], \"skipped\": [{}]}}",
            json_string(&device),
            peak.bytes_per_second,
            json_string(peak.source),
            entries.join(", "),
            skipped.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::run;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn decode_and_backward_together_are_a_usage_error() {
        let e = run(&args(&["--decode", "--backward"])).unwrap_err();
        assert_eq!(e.code, 2, "{}", e.message);
    }

    #[test]
    fn decode_without_a_gpu_is_one_line_and_exit_2() {
        if gated_sdpa::cuda::CudaBackend::new(0).is_ok() {
            eprintln!("skipped: a GPU is present, the bench would run");
            return;
        }
        let e = run(&args(&["--decode", "--shape", "b1-k1k"])).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.message.starts_with("bench needs a GPU"), "{}", e.message);
        assert!(!e.message.contains('\n'));
    }
}
