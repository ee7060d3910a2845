//! `gsdpa`: the crate's command line. Run `cargo run --release --example gsdpa -- help`.
//!
//! The interface is stable (external checks drive it):
//! ```text
//! gsdpa info [--json]
//! gsdpa forward --backend reference|emulator|cuda --dtype bf16|f16 --q q.npy --k k.npy --v v.npy
//!     [--g g.npy | --qg qg.npy] --gate none|elementwise|headwise --act sigmoid|silu [--causal]
//!     [--scale F] [--cu-seqlens-q 0,5,12 --cu-seqlens-k 0,7,9] --out y.npy [--lse lse.npy] [--o o.npy]
//!     [--sink-mass sm.npy] [--n-sink N] [--gate-stats gs.npy]
//! gsdpa diagnose <forward flags, --out optional>
//! gsdpa backward <forward flags without the diagnostics> --dy dy.npy --out-dir DIR [--deterministic]
//! gsdpa decode --backend B --dtype bf16|f16 --q q.npy --k-cache kc.npy --v-cache vc.npy
//!     --block-table bt.npy --cache-seqlens 17,5,300 [--g g.npy] --gate none|elementwise|headwise
//!     --act sigmoid|silu [--causal] [--scale F] [--num-splits N] --out y.npy [--lse lse.npy]
//! gsdpa demo [--backend NAME] [--seqlen N]
//! gsdpa bench [--json] [--shape NAME] [--backward | --decode]
//! gsdpa sass [--json] [--arch sm_80] [--kernel PATTERN] [--fatbin FILE]
//! ```
//! Bad input: one line on stderr naming the problem, exit code 2, no output file touched. Outputs are
//! all-or-nothing: every destination is checked before computing and the files appear together at the
//! end, or not at all (see `outputs.rs` and docs/cli.md).

mod args;
mod attention;
mod backends;
mod bench;
mod decode;
mod demo;
mod diagnose;
mod info;
mod npy;
mod outputs;
mod sass;
#[cfg(test)]
mod tests;

use gated_sdpa::GsdpaError;

const USAGE: &str = "\
gsdpa: fused gated scaled-dot-product attention, Y = softmax(scale Q K^T + mask) V * act(G)

usage:
  gsdpa info [--json]
      version, nvcc, target archs, usable backends, per-kernel registers/shared memory/spills
  gsdpa forward --q q.npy --k k.npy --v v.npy [--g g.npy | --qg qg.npy] --out y.npy [options]
      --backend reference|emulator|cuda   (default reference)
      --dtype bf16|f16                    inputs are rounded to it on load (default bf16)
      --gate none|elementwise|headwise    (default: from the gate tensor's rank, none without one)
      --act sigmoid|silu                  (default sigmoid)
      --causal                            bottom-right aligned causal mask
      --scale F                           softmax scale (default 1/sqrt(D))
      --cu-seqlens-q 0,5,12 --cu-seqlens-k 0,7,9
                                          varlen: packed [T, H, D] inputs
      --lse lse.npy                       also write LSE [B, Hq, Sq] (varlen [Hq, Tq])
      --o o.npy                           also write the ungated output O
      --sink-mass sm.npy [--n-sink N]     also write each row's attention on the first N keys (default
                                          1), f32 like LSE
      --gate-stats gs.npy                 also write the mean gate score act(G) per [B, Hq] (needs a gate)
  gsdpa diagnose <forward flags>
      the forward with both diagnostics: per head, the mean sink mass over rows and the mean gate
      score, and the layer means (--out and the other outputs optional)
  gsdpa backward <forward flags> --dy dy.npy --out-dir DIR [--deterministic]
      writes DIR/dq.npy, dk.npy, dv.npy and, with a gate, dg.npy
  gsdpa decode --q q.npy --k-cache kc.npy --v-cache vc.npy --block-table bt.npy
      --cache-seqlens 17,5,300 --out y.npy [--g g.npy --gate M --act A --causal --scale F
      --num-splits N --lse lse.npy --backend B --dtype T]
      paged-KV decode: caches [num_blocks,block_size,Hkv,D], block table int32 [B,max_blocks]
  gsdpa demo [--backend NAME] [--seqlen N]
      Qwen3-Next-shaped gated attention (D 256, 16 q heads, 2 kv heads), forward and backward on the
      best backend here, checked against the CPU reference
  gsdpa bench [--json] [--shape NAME] [--backward | --decode]
      forward TFLOP/s, gate overhead and fused-vs-unfused speedup (needs a GPU); --backward adds the
      backward and the whole layer; --decode: paged decode GB/s against the HBM peak, gate overhead
  gsdpa sass [--json] [--arch sm_80] [--kernel PATTERN] [--fatbin FILE]
      static SASS analysis (needs cuobjdump): main-loop instruction mix, occupancy, budgets

Arrays are little-endian float32 or float64 .npy in C order: q [B,Sq,Hq,D], k/v [B,Sk,Hkv,D],
g [B,Sq,Hq,D] or [B,Sq,Hq], qg [B,Sq,Hq,2D] (each head [q_h | g_h], as Qwen3-Next's q_proj output).
Inputs are rounded to --dtype (float64 with a warning); a finite value beyond its range is an error;
NaN and inf pass through. Outputs are float32 .npy, written all-or-nothing: no two outputs may name
the same file, and on any failure no output of the run is left behind.
Exit codes: 0 success, 1 a backend failed at run time (or demo: a check failed), 2 bad input, too
large for memory, or backend unavailable.";

/// An error to report: one line, and the process exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    /// Bad input or an unavailable backend: exit code 2.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: 2,
            message: message.into(),
        }
    }
}

impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError::usage(message)
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> Self {
        CliError::usage(message)
    }
}

impl From<GsdpaError> for CliError {
    fn from(e: GsdpaError) -> Self {
        // Failures while running (a driver call, an emulated kernel fault) are not the input's fault.
        let code = match e {
            GsdpaError::Cuda(_) | GsdpaError::Emulator(_) => 1,
            _ => 2,
        };
        CliError {
            code,
            message: e.to_string(),
        }
    }
}

fn run(args: &[String]) -> Result<(), CliError> {
    let Some((command, rest)) = args.split_first() else {
        return Err(CliError::usage("no command given (try `gsdpa help`)"));
    };
    match command.as_str() {
        "info" => info::run(rest),
        "forward" => attention::forward(rest),
        "diagnose" => attention::diagnose(rest),
        "backward" => attention::backward(rest),
        "decode" => decode::run(rest),
        "demo" => demo::run(rest),
        "bench" => bench::run(rest),
        "sass" => sass::run(rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(CliError::usage(format!(
            "unknown command '{other}' (try `gsdpa help`)"
        ))),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        // One line, whatever the error carries.
        eprintln!("gsdpa: error: {}", e.message.replace('\n', " "));
        std::process::exit(e.code);
    }
}
