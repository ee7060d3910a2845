//! Build script for gated-sdpa (`build = "build/main.rs"` in Cargo.toml). Four independent steps, one
//! module each, plus the caching they share and the file they produce:
//!
//! 1. `nvcc`: compile every top-level `kernels/*.cu` with nvcc into one fatbin (SASS per target arch plus
//!    PTX for the lowest), embedded into the crate. Without nvcc the crate still builds and the CUDA
//!    backend reports why there are no kernels; `GSDPA_REQUIRE_NVCC=1` makes that an error.
//! 2. `ptxas`: the `-Xptxas -v` output of that compile, per kernel and arch (registers, shared memory,
//!    stack frame, spills), exposed at run time through `src/build_info.rs`.
//! 3. `emulator` (feature `emulator`): the same kernel sources compiled as C++ for the host against
//!    `kernels/emu/`, linked as the static library `gsdpa_emu`.
//! 4. `bindings` (feature `regen-bindings`): bindgen over `kernels/gsdpa_params.h`. Normal builds use the
//!    committed `src/ffi/params.rs`; CI regenerates it and diffs.
//!
//! `archs` picks the target archs for step 1; `cache` holds the content keys and the shared output cache;
//! `info` writes the generated Rust file.
//! This file holds what every step reads: the paths, the kernel sources, the environment.
//!
//! Each compile is skipped when a hash of its real inputs (sources, headers, compiler
//! and flags) matches the one stored with its output. The fatbin does not depend on the cargo profile, so
//! it is cached once per target directory (`target/gsdpa-cache`) and shared by dev, test and release
//! builds (`cargo clippy` and `cargo test --release` in CI run nvcc once). docs/toolchain.md describes the
//! toolchain, the archs and the environment variables.

mod archs;
#[cfg(feature = "regen-bindings")]
mod bindings;
mod cache;
#[cfg(feature = "emulator")]
mod emulator;
mod info;
mod nvcc;
mod ptxas;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

#[cfg(feature = "regen-bindings")]
use bindings::regenerate_bindings;
#[cfg(feature = "emulator")]
use emulator::build_emulator;

/// A build step's error: a message for the person running cargo (nvcc's own output included).
type Result<T> = std::result::Result<T, String>;

fn main() {
    // A build script reports failure through its exit code; cargo then prints its stderr. Returning the
    // message (instead of panicking) keeps nvcc's own error output readable.
    if let Err(message) = run() {
        eprintln!("\nerror: {message}\n");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let paths = Paths::from_env()?;
    // One directory entry covers every kernel source and header, recursively (including new files).
    println!("cargo:rerun-if-changed={}", paths.kernels.display());
    let sources = KernelSources::scan(&paths.kernels)?;

    let require_nvcc = env_flag("GSDPA_REQUIRE_NVCC");
    // nvcc runs in the background while the emulator compiles: the two take similar time.
    let device = nvcc::start_device_build(&paths, &sources, require_nvcc)?;
    let emulator_built = match build_emulator(&paths, &sources) {
        Ok(built) => built,
        Err(message) => {
            device.abort();
            return Err(message);
        }
    };
    let device = device.finish(&paths)?;
    nvcc::warn_about_spills(&device.kernels);

    regenerate_bindings(&paths)?;
    info::write_build_info(&paths, &device, emulator_built, require_nvcc)
}

// The optional steps without their feature.

/// Without the `emulator` feature there is no host build of the kernels.
#[cfg(not(feature = "emulator"))]
fn build_emulator(_paths: &Paths, _sources: &KernelSources) -> Result<bool> {
    Ok(false)
}

/// Without the `regen-bindings` feature the committed `src/ffi/params.rs` is used as it is.
#[cfg(not(feature = "regen-bindings"))]
fn regenerate_bindings(_paths: &Paths) -> Result<()> {
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------------------

struct Paths {
    kernels: PathBuf,
    out: PathBuf,
    /// Outputs shared by every profile: `<target dir>/gsdpa-cache` when OUT_DIR has cargo's usual
    /// `<target dir>/<profile>/build/<package>/out` shape, else OUT_DIR itself.
    shared_cache: PathBuf,
}

impl Paths {
    fn from_env() -> Result<Paths> {
        let manifest = PathBuf::from(
            env::var("CARGO_MANIFEST_DIR").map_err(|e| format!("CARGO_MANIFEST_DIR: {e}"))?,
        );
        let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
        let profile_dir = out
            .ancestors()
            .nth(3)
            .filter(|_| out.ancestors().nth(2).and_then(Path::file_name) == Some("build".as_ref()));
        let shared_cache = match profile_dir.and_then(Path::parent) {
            Some(target) => target.join("gsdpa-cache"),
            None => out.join("cache"),
        };
        Ok(Paths {
            kernels: manifest.join("kernels"),
            out,
            shared_cache,
        })
    }
}

/// What the build steps read from `kernels/`.
struct KernelSources {
    /// Top-level `kernels/*.cu`, sorted: each one is a translation unit of kernels.
    kernel_units: Vec<PathBuf>,
    /// `kernels/emu/*.cpp`, sorted: the emulator runtime (host only).
    #[cfg_attr(not(feature = "emulator"), allow(dead_code))]
    emulator_units: Vec<PathBuf>,
    /// Every other file under `kernels/`: headers any unit may include.
    headers: Vec<PathBuf>,
}

impl KernelSources {
    fn scan(kernels: &Path) -> Result<KernelSources> {
        let mut all = Vec::new();
        collect_files(kernels, &mut all)?;
        all.sort();
        let emu = kernels.join("emu");
        let (mut kernel_units, mut emulator_units, mut headers) =
            (Vec::new(), Vec::new(), Vec::new());
        for path in all {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext == "cu" && path.parent() == Some(kernels) {
                kernel_units.push(path);
            } else if ext == "cpp" && path.parent() == Some(emu.as_path()) {
                emulator_units.push(path);
            } else {
                headers.push(path);
            }
        }
        Ok(KernelSources {
            kernel_units,
            emulator_units,
            headers,
        })
    }

    /// Headers the device build depends on (the emulator's own files never reach nvcc).
    fn device_headers(&self, kernels: &Path) -> Vec<&Path> {
        let emu = kernels.join("emu");
        self.headers
            .iter()
            .filter(|h| !h.starts_with(&emu))
            .map(PathBuf::as_path)
            .collect()
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads an environment variable and tells cargo to rerun this script when it changes.
fn env_var(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    env::var(name).ok()
}

fn env_flag(name: &str) -> bool {
    matches!(
        env_var(name).as_deref().map(str::trim),
        Some("1" | "true" | "yes" | "on")
    )
}

// ---------------------------------------------------------------------------------------------------------
// File helpers
// ---------------------------------------------------------------------------------------------------------

fn read_to_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// Writes only when the content differs, so an unchanged generated file keeps its timestamp.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn c_string_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
