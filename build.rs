//! Build script for gated-sdpa. Four independent steps, each in its own function:
//!
//! 1. `start_device_build`: compile every top-level `kernels/*.cu` with nvcc into one fatbin (SASS per target
//!    arch plus PTX for the lowest), embedded into the crate. Without nvcc the crate still builds and the
//!    CUDA backend reports why there are no kernels; `GSDPA_REQUIRE_NVCC=1` makes that an error.
//! 2. `parse_ptxas_report`: the `-Xptxas -v` output of that compile, per kernel and arch (registers, shared
//!    memory, stack frame, spills), exposed at run time through `src/build_info.rs`.
//! 3. `build_emulator` (feature `emulator`): the same kernel sources compiled as C++ for the host against
//!    `kernels/emu/`, linked as the static library `gsdpa_emu`.
//! 4. `regenerate_bindings` (feature `regen-bindings`): bindgen over `kernels/gsdpa_params.h`. Normal builds
//!    use the committed `src/ffi/params.rs`; CI regenerates it and diffs.
//!
//! Files under `kernels/wip/` are work in progress: they are never compiled here, and editing them does not
//! recompile anything: each compile is skipped when a hash of its real inputs (sources, headers, compiler
//! and flags) matches the one stored with its output. The fatbin does not depend on the cargo profile, so
//! it is cached once per target directory (`target/gsdpa-cache`) and shared by dev, test and release
//! builds (`cargo clippy` and `cargo test --release` in CI run nvcc once).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

/// SASS targets when `GSDPA_CUDA_ARCHS` is not set: Ampere (A100), Ampere consumer, Ada, Hopper (with the
/// arch-specific `a` features). PTX for the lowest one is embedded as well, so a newer GPU can JIT it.
const DEFAULT_ARCHS: &[&str] = &["80", "86", "89", "90a"];

/// Name of the generated Rust file that `src/build_info.rs` includes.
const BUILD_INFO_FILE: &str = "gsdpa_build_info.rs";

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
    let device = start_device_build(&paths, &sources, require_nvcc)?;
    let emulator_built = match build_emulator(&paths, &sources) {
        Ok(built) => built,
        Err(message) => {
            device.abort();
            return Err(message);
        }
    };
    let device = device.finish(&paths)?;
    warn_about_spills(&device.kernels);

    regenerate_bindings(&paths)?;
    write_build_info(&paths, &device, emulator_built, require_nvcc)
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
    /// Every other file under `kernels/` except `wip/`: headers any unit may include.
    headers: Vec<PathBuf>,
}

impl KernelSources {
    fn scan(kernels: &Path) -> Result<KernelSources> {
        let mut all = Vec::new();
        collect_files(kernels, &kernels.join("wip"), &mut all)?;
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

fn collect_files(dir: &Path, skip: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .path();
        if path == skip {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, skip, out)?;
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
// Step 1: the device build (nvcc -> fatbin)
// ---------------------------------------------------------------------------------------------------------

/// One kernel instantiation's resources as ptxas reports them for one arch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct KernelResources {
    name: String,
    arch: String,
    registers: u32,
    shared_bytes: u32,
    stack_bytes: u32,
    spill_store_bytes: u32,
    spill_load_bytes: u32,
}

/// The outcome of the device build.
struct DeviceBuild {
    /// The fatbin in OUT_DIR, when kernels were built.
    fatbin: Option<PathBuf>,
    nvcc_version: Option<String>,
    /// `sm_XX` for each SASS target, then `compute_XX` for the embedded PTX.
    archs: Vec<String>,
    kernels: Vec<KernelResources>,
    not_built_reason: Option<String>,
}

impl DeviceBuild {
    fn not_built(reason: String) -> DeviceBuild {
        DeviceBuild {
            fatbin: None,
            nvcc_version: None,
            archs: Vec::new(),
            kernels: Vec::new(),
            not_built_reason: Some(reason),
        }
    }
}

/// The device build in flight: nvcc runs as a child process while the emulator compiles.
enum DeviceJob {
    Done(DeviceBuild),
    Running(Box<RunningNvcc>),
}

struct RunningNvcc {
    child: Child,
    started: Instant,
    command: String,
    nvcc_version: String,
    archs: Vec<String>,
    fatbin: PathBuf,
    log_path: PathBuf,
    cache: CacheEntry,
}

/// Starts nvcc on every kernel (or finds its output in the cache, or explains why there are no kernels).
fn start_device_build(
    paths: &Paths,
    sources: &KernelSources,
    require_nvcc: bool,
) -> Result<DeviceJob> {
    let nvcc = match find_nvcc() {
        Ok(nvcc) => nvcc,
        Err(looked) => {
            let reason = format!(
                "the CUDA kernels were not built: nvcc not found ({looked}). Install the CUDA toolkit \
                 (12.x or 13.x) or the nvidia-cuda-nvcc wheel, set CUDA_HOME or NVCC, and rebuild"
            );
            if require_nvcc {
                return Err(format!("GSDPA_REQUIRE_NVCC=1 but {reason}"));
            }
            println!(
                "cargo:warning=gated-sdpa: {reason}; the CUDA backend will report kernels-not-built"
            );
            return Ok(DeviceJob::Done(DeviceBuild::not_built(reason)));
        }
    };
    if sources.kernel_units.is_empty() {
        let reason = "no kernels/*.cu to compile".to_string();
        if require_nvcc {
            return Err(format!("GSDPA_REQUIRE_NVCC=1 but {reason}"));
        }
        return Ok(DeviceJob::Done(DeviceBuild::not_built(reason)));
    }
    let nvcc_version = nvcc_version(&nvcc)?;
    let archs = cuda_archs()?;

    // One translation unit including every kernel file: a single nvcc invocation (one host preprocessing
    // and front-end pass per arch, archs compiled in parallel with --threads 0) instead of one per file.
    // Consequence for kernel authors: kernel files share one namespace, so file-local helpers need
    // distinct names (put them in a namespace named after the file).
    let unit = paths.out.join("gsdpa_kernels.cu");
    let mut text = String::from(
        "// Generated by build.rs: every top-level kernels/*.cu, compiled as one unit.\n",
    );
    for cu in &sources.kernel_units {
        let path = c_string_escape(&cu.display().to_string());
        writeln!(text, "#include \"{path}\"").unwrap();
    }
    write_if_changed(&unit, text.as_bytes())?;

    let mut args: Vec<String> = ["-fatbin", "-std=c++17", "-O3", "-Xptxas", "-v"]
        .map(String::from)
        .to_vec();
    // Archs are compiled in parallel (CUDA 11.2+).
    args.extend(["--threads".into(), "0".into()]);
    args.extend(["-I".into(), paths.kernels.display().to_string()]);
    for arch in &archs {
        args.extend([
            "-gencode".into(),
            format!("arch=compute_{arch},code=sm_{arch}"),
        ]);
    }
    let ptx_arch = lowest_arch(&archs);
    args.extend([
        "-gencode".into(),
        format!("arch=compute_{ptx_arch},code=compute_{ptx_arch}"),
    ]);

    // The key covers everything that determines the fatbin. It does not depend on the cargo profile, so
    // `cargo clippy` (dev) and `cargo test --release` share one nvcc run through the cache.
    let nvcc_env: Vec<String> = ["NVCC_CCBIN", "NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS"]
        .iter()
        .map(|name| format!("{name}={}", env_var(name).unwrap_or_default()))
        .collect();
    let mut key = ContentKey::new();
    key.add_str(&nvcc.display().to_string())
        .add_str(&nvcc_version)
        .add_strs(&args)
        .add_strs(&nvcc_env);
    for file in sources.kernel_units.iter().map(PathBuf::as_path) {
        key.add_file(file)?;
    }
    for file in sources.device_headers(&paths.kernels) {
        key.add_file(file)?;
    }
    let cache = CacheEntry::new(&paths.shared_cache, "nvcc", &key);

    let fatbin = paths.out.join("gsdpa_kernels.fatbin");
    let log_path = paths.out.join("ptxas.log");
    if cache.fetch(&[(&fatbin, "fatbin"), (&log_path, "log")]) {
        return finish_device_build(&fatbin, &log_path, nvcc_version, &archs).map(DeviceJob::Done);
    }

    args.extend([
        "-o".into(),
        fatbin.display().to_string(),
        unit.display().to_string(),
    ]);
    // Output goes to a file, not a pipe: nothing has to drain it while the emulator compiles.
    let log =
        fs::File::create(&log_path).map_err(|e| format!("creating {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let command = format!("{} {}", nvcc.display(), args.join(" "));
    let child = Command::new(&nvcc)
        .args(&args)
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("running {}: {e}", nvcc.display()))?;
    Ok(DeviceJob::Running(Box::new(RunningNvcc {
        child,
        started: Instant::now(),
        command,
        nvcc_version,
        archs,
        fatbin,
        log_path,
        cache,
    })))
}

impl DeviceJob {
    /// Stops a running nvcc (when the build fails elsewhere).
    fn abort(self) {
        if let DeviceJob::Running(mut job) = self {
            let _ = job.child.kill();
            let _ = job.child.wait();
        }
    }

    /// Waits for nvcc; a failure is a build error that shows nvcc's output.
    fn finish(self, paths: &Paths) -> Result<DeviceBuild> {
        let job = match self {
            DeviceJob::Done(build) => return Ok(build),
            DeviceJob::Running(job) => job,
        };
        let RunningNvcc {
            mut child,
            started,
            command,
            nvcc_version,
            archs,
            fatbin,
            log_path,
            cache,
        } = *job;
        let status = child.wait().map_err(|e| format!("waiting for nvcc: {e}"))?;
        let seconds = started.elapsed().as_secs_f64();
        if !status.success() {
            let log = read_to_string(&log_path).unwrap_or_default();
            let hint = if nvcc_major(&nvcc_version).is_some_and(|m| m < 12) {
                " (nvcc older than 12.0 cannot target sm_90a: use CUDA 12 or 13, or narrow \
                 GSDPA_CUDA_ARCHS)"
            } else {
                ""
            };
            return Err(format!(
                "nvcc failed ({status}){hint}\ncommand: {command}\n{log}"
            ));
        }
        let timing = format!("{seconds:.1} s for {}\n", archs.join(","));
        fs::write(paths.out.join("nvcc-time.txt"), timing)
            .map_err(|e| format!("writing nvcc-time.txt: {e}"))?;
        cache.store(&[(&fatbin, "fatbin"), (&log_path, "log")])?;
        finish_device_build(&fatbin, &log_path, nvcc_version, &archs)
    }
}

/// The device build's result from nvcc's output files.
fn finish_device_build(
    fatbin: &Path,
    log_path: &Path,
    nvcc_version: String,
    archs: &[String],
) -> Result<DeviceBuild> {
    let log = read_to_string(log_path)?;
    // nvcc and ptxas warnings would otherwise vanish into a log nobody reads.
    for line in log.lines().filter(|l| l.contains("warning")) {
        println!("cargo:warning=nvcc: {}", line.trim());
    }
    let kernels = parse_ptxas_report(&log)?;
    let mut arch_names: Vec<String> = archs.iter().map(|a| format!("sm_{a}")).collect();
    arch_names.push(format!("compute_{}", lowest_arch(archs)));
    Ok(DeviceBuild {
        fatbin: Some(fatbin.to_path_buf()),
        nvcc_version: Some(nvcc_version),
        archs: arch_names,
        kernels,
        not_built_reason: None,
    })
}

/// `NVCC`, then `$CUDA_HOME/bin/nvcc`, `$CUDA_PATH/bin/nvcc`, then `PATH`. Err says where it looked.
fn find_nvcc() -> std::result::Result<PathBuf, String> {
    let exe = if cfg!(windows) { "nvcc.exe" } else { "nvcc" };
    if let Some(nvcc) = env_var("NVCC").filter(|v| !v.is_empty()) {
        // An explicit choice is not second-guessed by falling back to another nvcc.
        let path = PathBuf::from(&nvcc);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("NVCC={nvcc} does not exist"))
        };
    }
    let mut looked = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        match env_var(var).filter(|v| !v.is_empty()) {
            Some(root) => {
                let path = Path::new(&root).join("bin").join(exe);
                if path.is_file() {
                    return Ok(path);
                }
                looked.push(format!("{} does not exist", path.display()));
            }
            None => looked.push(format!("{var} is not set")),
        }
    }
    // Only a PATH lookup makes PATH an input of the build.
    if let Some(path) = env_var("PATH") {
        if let Some(found) = env::split_paths(&path)
            .map(|dir| dir.join(exe))
            .find(|p| p.is_file())
        {
            return Ok(found);
        }
    }
    looked.push("not on PATH".into());
    Err(format!("NVCC is not set, {}", looked.join(", ")))
}

/// The version from `nvcc --version`'s last line, "Cuda compilation tools, release 13.0, V13.0.88".
fn nvcc_version(nvcc: &Path) -> Result<String> {
    let output = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("running {} --version: {e}", nvcc.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "{} --version failed ({}): {text}{}",
            nvcc.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let release_line = text
        .lines()
        .rev()
        .find(|l| l.contains("release"))
        .unwrap_or("")
        .trim();
    let version = release_line
        .rsplit(", V")
        .next()
        .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()));
    match version {
        Some(v) => Ok(v.to_string()),
        None if !release_line.is_empty() => Ok(release_line.to_string()),
        None => Err(format!(
            "cannot read a version from `{} --version`:\n{text}",
            nvcc.display()
        )),
    }
}

fn nvcc_major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

/// The SASS archs to build: `GSDPA_CUDA_ARCHS` (e.g. `80,90a`, `sm_` prefixes allowed), or the defaults.
fn cuda_archs() -> Result<Vec<String>> {
    let Some(list) = env_var("GSDPA_CUDA_ARCHS").filter(|v| !v.trim().is_empty()) else {
        return Ok(DEFAULT_ARCHS.iter().map(|a| a.to_string()).collect());
    };
    let mut archs: Vec<String> = Vec::new();
    for item in list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        let arch = item
            .trim_start_matches("sm_")
            .trim_start_matches("compute_");
        let digits = arch.trim_end_matches(['a', 'f']);
        if digits.is_empty()
            || !digits.chars().all(|c| c.is_ascii_digit())
            || arch.len() > digits.len() + 1
        {
            return Err(format!(
                "GSDPA_CUDA_ARCHS: `{item}` is not an arch like 80, 86, 89 or 90a"
            ));
        }
        if !archs.iter().any(|a| a == arch) {
            archs.push(arch.to_string());
        }
    }
    if archs.is_empty() {
        return Err(format!("GSDPA_CUDA_ARCHS=`{list}` names no arch"));
    }
    Ok(archs)
}

/// The arch whose PTX is embedded: the numerically lowest (PTX JIT-compiles forward, never backward).
fn lowest_arch(archs: &[String]) -> &str {
    let number = |a: &String| {
        a.trim_end_matches(['a', 'f'])
            .parse::<u32>()
            .unwrap_or(u32::MAX)
    };
    archs
        .iter()
        .min_by_key(|a| number(a))
        .expect("at least one arch")
}

// ---------------------------------------------------------------------------------------------------------
// Step 2: the ptxas resource report
// ---------------------------------------------------------------------------------------------------------

/// Parses `-Xptxas -v` output. Per entry function ptxas prints
///
/// ```text
/// ptxas info    : Compiling entry function 'gsdpa_gate_bf16' for 'sm_80'
/// ptxas info    : Function properties for gsdpa_gate_bf16
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 44 registers, used 0 barriers, 4096 bytes smem, 472 bytes cmem[0]
/// ```
///
/// ("used N barriers" and the order of the items vary between CUDA versions; "Function properties" also
/// appears for non-inlined device functions, which are not entries and are skipped). nvcc --threads
/// prints each arch's block in one piece, and every line is attributed to the entry named in it or to
/// the last "Compiling entry function" line, so the result does not depend on the order of the blocks.
fn parse_ptxas_report(log: &str) -> Result<Vec<KernelResources>> {
    let mut kernels: Vec<KernelResources> = Vec::new();
    // Index of the entry whose "Function properties" header was the previous line.
    let mut properties_of: Option<usize> = None;
    let mut current: Option<usize> = None;
    for line in log.lines() {
        let pending = properties_of.take();
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let name = parts.next().unwrap_or_default().to_string();
            let arch = parts.nth(1).unwrap_or_default().to_string();
            kernels.push(KernelResources {
                name,
                arch,
                ..Default::default()
            });
            current = Some(kernels.len() - 1);
        } else if let Some(name) = line.split("Function properties for ").nth(1) {
            properties_of = current.filter(|&i| kernels[i].name == name.trim());
        } else if line.contains("bytes stack frame") {
            if let Some(i) = pending {
                for item in line.split(',') {
                    let value = leading_number(item)?;
                    if item.contains("stack frame") {
                        kernels[i].stack_bytes = value;
                    } else if item.contains("spill stores") {
                        kernels[i].spill_store_bytes = value;
                    } else if item.contains("spill loads") {
                        kernels[i].spill_load_bytes = value;
                    }
                }
            }
        } else if let Some(rest) = line
            .split("Used ")
            .nth(1)
            .filter(|r| r.contains("registers"))
        {
            let Some(i) = current else { continue };
            for item in rest.split(',') {
                // cmem (constant banks), barriers and the cumulative stack size are not recorded.
                if item.contains("registers") {
                    kernels[i].registers = leading_number(item)?;
                } else if item.contains("bytes smem") {
                    kernels[i].shared_bytes = leading_number(item)?;
                }
            }
        }
    }
    if kernels
        .iter()
        .any(|k| k.name.is_empty() || k.arch.is_empty())
    {
        return Err(format!(
            "unexpected ptxas output (an entry without name or arch):\n{log}"
        ));
    }
    kernels.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    Ok(kernels)
}

fn leading_number(item: &str) -> Result<u32> {
    let digits: String = item
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .map_err(|_| format!("unexpected ptxas output: `{item}` does not start with a number"))
}

/// Spills and stack frames cost local-memory traffic: make them visible in every build that has them.
fn warn_about_spills(kernels: &[KernelResources]) {
    for k in kernels
        .iter()
        .filter(|k| k.stack_bytes > 0 || k.spill_store_bytes > 0 || k.spill_load_bytes > 0)
    {
        println!(
            "cargo:warning=ptxas: {} on {}: {} registers, {} bytes stack frame, {} bytes spill stores, {} bytes spill loads",
            k.name, k.arch, k.registers, k.stack_bytes, k.spill_store_bytes, k.spill_load_bytes
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Step 3: the emulator build (host C++)
// ---------------------------------------------------------------------------------------------------------

#[cfg(not(feature = "emulator"))]
fn build_emulator(_paths: &Paths, _sources: &KernelSources) -> Result<bool> {
    Ok(false)
}

/// Compiles `kernels/emu/*.cpp` and every top-level `kernels/*.cu` as C++20 for the host and links them as
/// the static library `gsdpa_emu`. Each unit is its own object, compiled in parallel, and recompiled only
/// when its source, a shared header or the compiler command changes.
#[cfg(feature = "emulator")]
fn build_emulator(paths: &Paths, sources: &KernelSources) -> Result<bool> {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        // Fixed, not the profile's: the emulator runs every CUDA thread as a fiber, and unoptimised kernels
        // would make the test suite crawl in debug builds.
        .opt_level(2)
        .include(&paths.kernels)
        .include(paths.kernels.join("emu"))
        .define("GSDPA_EMULATOR", None)
        // Kernels reinterpret buffers as vector types (uint4 loads), as CUDA code does.
        .flag("-fno-strict-aliasing")
        // `#pragma unroll` is CUDA's; the host compiler unrolls on its own judgement.
        .flag("-Wno-unknown-pragmas");
    // Hook for an AddressSanitizer build (GSDPA_EMU_SANITIZE=address). The C++ side is instrumented and
    // gcc's libasan linked; rustc links with -nodefaultlibs, so the runtime is named explicitly, and as it
    // is then not first in the library list, run with ASAN_OPTIONS=verify_asan_link_order=0 (or
    // LD_PRELOAD it): `GSDPA_EMU_SANITIZE=address ASAN_OPTIONS=verify_asan_link_order=0 cargo test`.
    // Unless the fiber runtime annotates its stack switches (__sanitizer_start_switch_fiber), ASan may
    // report false positives around fiber stacks.
    if let Some(sanitizer) = env_var("GSDPA_EMU_SANITIZE").filter(|s| !s.is_empty()) {
        if sanitizer != "address" {
            return Err(format!(
                "GSDPA_EMU_SANITIZE={sanitizer}: only `address` is supported"
            ));
        }
        build
            .flag("-fsanitize=address")
            .flag("-fno-omit-frame-pointer");
        println!("cargo:rustc-link-lib=dylib=asan");
    }

    // Without the runtime the kernels' objects have undefined references (and +whole-archive would force
    // them into every binary), so build nothing rather than break every link.
    if sources.emulator_units.is_empty() {
        println!("cargo:warning=gated-sdpa: no kernels/emu/*.cpp (the emulator runtime): the emulator backend is not built");
        return Ok(false);
    }

    // Each .cu is compiled through a one-line wrapper .cpp, so the compiler treats it as C++ without
    // per-file language flags, and diagnostics still name the real kernel file.
    let wrapper_dir = paths.out.join("emu-src");
    fs::create_dir_all(&wrapper_dir)
        .map_err(|e| format!("creating {}: {e}", wrapper_dir.display()))?;
    let mut units: Vec<(PathBuf, PathBuf)> = Vec::new(); // (compiled file, original source)
    for cu in &sources.kernel_units {
        let stem = cu.file_stem().and_then(|s| s.to_str()).unwrap_or("kernel");
        let wrapper = wrapper_dir.join(format!("{stem}.cu.cpp"));
        let text = format!(
            "// Generated by build.rs\n#include \"{}\"\n",
            c_string_escape(&cu.display().to_string())
        );
        write_if_changed(&wrapper, text.as_bytes())?;
        units.push((wrapper, cu.clone()));
    }
    for cpp in &sources.emulator_units {
        units.push((cpp.clone(), cpp.clone()));
    }

    // The compiler command (which reads CXX, CXXFLAGS, ... and tells cargo to watch them) is part of every
    // object's key, as is every shared header: a header change recompiles all units.
    let compiler = build
        .try_get_compiler()
        .map_err(|e| format!("no C++ compiler for the emulator: {e}"))?;
    let mut base_key = ContentKey::new();
    base_key.add_str(&compiler.path().display().to_string());
    base_key.add_strs(
        &compiler
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
    );
    for header in &sources.headers {
        base_key.add_file(header)?;
    }

    let cache = paths.out.join("emu-obj");
    fs::create_dir_all(&cache).map_err(|e| format!("creating {}: {e}", cache.display()))?;
    let mut objects = Vec::new();
    let mut stale: Vec<(PathBuf, PathBuf, ContentKey)> = Vec::new(); // (compiled file, object, key)
    for (file, source) in &units {
        let name = file.file_name().and_then(|s| s.to_str()).unwrap_or("unit");
        let object = cache.join(format!("{name}.o"));
        let mut key = base_key.clone();
        key.add_file(source)?;
        if !(key.matches(&cache.join(format!("{name}.key"))) && object.is_file()) {
            stale.push((file.clone(), object.clone(), key));
        }
        objects.push(object);
    }

    if !stale.is_empty() {
        let started = Instant::now();
        let mut compile = build.clone();
        compile.out_dir(paths.out.join("emu-build"));
        for (file, _, _) in &stale {
            compile.file(file);
        }
        // cc compiles the files in parallel (its `parallel` feature, bounded by cargo's jobserver).
        let compiled = compile
            .try_compile_intermediates()
            .map_err(|e| format!("compiling the emulator: {e}"))?;
        for ((_, object, key), built) in stale.iter().zip(&compiled) {
            fs::copy(built, object).map_err(|e| format!("copying {}: {e}", built.display()))?;
            let name = object
                .file_name()
                .and_then(|s| s.to_str())
                .unwrap_or("unit")
                .trim_end_matches(".o");
            key.store(&cache.join(format!("{name}.key")))?;
        }
        let summary = format!(
            "{:.1} s for {} unit(s)\n",
            started.elapsed().as_secs_f64(),
            stale.len()
        );
        fs::write(paths.out.join("emu-time.txt"), summary)
            .map_err(|e| format!("writing emu-time.txt: {e}"))?;
    }

    // Kernels register themselves with the emulator's launcher from static constructors, which nothing
    // references: +whole-archive keeps the linker from dropping those objects.
    let mut archive = cc::Build::new();
    archive
        .cpp(true)
        .objects(&objects)
        .link_lib_modifier("+whole-archive");
    archive
        .try_compile("gsdpa_emu")
        .map_err(|e| format!("archiving the emulator: {e}"))?;
    // The fiber runtime uses threads for its workers.
    if env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os != "windows") {
        println!("cargo:rustc-link-lib=pthread");
    }
    Ok(true)
}

// ---------------------------------------------------------------------------------------------------------
// Step 4: bindgen (only with the `regen-bindings` feature)
// ---------------------------------------------------------------------------------------------------------

#[cfg(not(feature = "regen-bindings"))]
fn regenerate_bindings(_paths: &Paths) -> Result<()> {
    Ok(())
}

/// Writes the Rust mirror of `kernels/gsdpa_params.h` to `$GSDPA_BINDGEN_OUT` (CI diffs it against the
/// committed `src/ffi/params.rs`), or to `OUT_DIR/params.rs`. The build never uses the result directly.
#[cfg(feature = "regen-bindings")]
fn regenerate_bindings(paths: &Paths) -> Result<()> {
    let header = paths.kernels.join("gsdpa_params.h");
    let target = env_var("GSDPA_BINDGEN_OUT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| paths.out.join("params.rs"));
    let bindings = bindgen::Builder::default()
        .header(header.display().to_string())
        .clang_args(["-x", "c", "-std=c11"])
        .allowlist_type("Gsdpa.*")
        .allowlist_var("GSDPA_.*")
        // `GSDPA_GATE_NONE: GsdpaGateMode` rather than `GsdpaGateMode_GSDPA_GATE_NONE`: the C names already
        // carry the prefix. The fields that hold them are int32_t, so Rust code casts with `as i32`.
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_debug(true)
        .derive_copy(true)
        .generate_comments(true)
        .layout_tests(true)
        .raw_line(
            "// Generated by bindgen from kernels/gsdpa_params.h; do not edit. Regenerate with",
        )
        .raw_line(
            "//     GSDPA_BINDGEN_OUT=$PWD/src/ffi/params.rs cargo check --features regen-bindings",
        )
        .raw_line("// CI regenerates this file and fails if it differs.")
        .formatter(bindgen::Formatter::Rustfmt)
        .generate()
        .map_err(|e| format!("bindgen on {}: {e}", header.display()))?;
    bindings
        .write_to_file(&target)
        .map_err(|e| format!("writing {}: {e}", target.display()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Output: the generated build-info module
// ---------------------------------------------------------------------------------------------------------

fn write_build_info(
    paths: &Paths,
    device: &DeviceBuild,
    emulator_built: bool,
    require_nvcc: bool,
) -> Result<()> {
    let mut out = String::from("// Generated by build.rs; included by src/build_info.rs.\n\n");
    writeln!(out, "pub(super) const KERNELS: &[KernelResources] = &[").unwrap();
    for k in &device.kernels {
        writeln!(
            out,
            "    KernelResources {{ name: {:?}, arch: {:?}, registers: {}, shared_bytes: {}, stack_bytes: {}, spill_store_bytes: {}, spill_load_bytes: {} }},",
            k.name, k.arch, k.registers, k.shared_bytes, k.stack_bytes, k.spill_store_bytes, k.spill_load_bytes
        )
        .unwrap();
    }
    writeln!(out, "];").unwrap();
    writeln!(
        out,
        "pub(super) const NVCC_VERSION: Option<&str> = {:?};",
        device.nvcc_version.as_deref()
    )
    .unwrap();
    writeln!(
        out,
        "pub(super) const ARCHS: &[&str] = &{:?};",
        device.archs
    )
    .unwrap();
    writeln!(
        out,
        "pub(super) const KERNELS_NOT_BUILT_REASON: Option<&str> = {:?};",
        device.not_built_reason.as_deref()
    )
    .unwrap();
    writeln!(
        out,
        "pub(super) const EMULATOR_BUILT: bool = {emulator_built};"
    )
    .unwrap();
    writeln!(out, "pub(super) const REQUIRE_NVCC: bool = {require_nvcc};").unwrap();
    match &device.fatbin {
        // The driver reads the fatbin's 64-bit header fields in place: keep the embedded bytes aligned.
        Some(fatbin) => writeln!(
            out,
            "#[repr(C, align(64))]\nstruct Aligned<T: ?Sized>(T);\n\
             static FATBIN_BYTES: &Aligned<[u8]> = &Aligned(*include_bytes!({:?}));\n\
             pub static FATBIN: Option<&[u8]> = Some(&FATBIN_BYTES.0);",
            fatbin.display().to_string()
        )
        .unwrap(),
        None => writeln!(out, "pub static FATBIN: Option<&[u8]> = None;").unwrap(),
    }
    write_if_changed(&paths.out.join(BUILD_INFO_FILE), out.as_bytes())
}

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

/// A hash of everything that determines a build step's output (FNV-1a, 64 bit: stable across Rust
/// versions, unlike std's hasher). A step is skipped when the key stored next to its output matches.
#[derive(Clone)]
struct ContentKey(u64);

impl ContentKey {
    fn new() -> ContentKey {
        ContentKey(0xcbf2_9ce4_8422_2325)
    }

    fn add_bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes.iter().chain(&(bytes.len() as u64).to_le_bytes()) {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    fn add_str(&mut self, s: &str) -> &mut Self {
        self.add_bytes(s.as_bytes())
    }

    fn add_strs(&mut self, items: &[String]) -> &mut Self {
        for s in items {
            self.add_str(s);
        }
        self
    }

    fn add_file(&mut self, path: &Path) -> Result<&mut Self> {
        let bytes = fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        self.add_str(&path.display().to_string());
        Ok(self.add_bytes(&bytes))
    }

    // The emulator's per-object keys live next to its objects (they differ between profiles).
    #[cfg_attr(not(feature = "emulator"), allow(dead_code))]
    fn matches(&self, stored: &Path) -> bool {
        fs::read_to_string(stored).is_ok_and(|s| s.trim() == format!("{:016x}", self.0))
    }

    #[cfg_attr(not(feature = "emulator"), allow(dead_code))]
    fn store(&self, path: &Path) -> Result<()> {
        fs::write(path, format!("{:016x}\n", self.0))
            .map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

/// Build outputs stored under their content key in the shared cache directory. Entries are written to a
/// temporary name and renamed, so a reader never sees half a file; the newest few per kind are kept.
struct CacheEntry {
    dir: PathBuf,
    kind: String,
    stem: String,
}

impl CacheEntry {
    /// How many keys per kind stay cached (e.g. several GSDPA_CUDA_ARCHS settings, or a branch switch).
    const KEEP: usize = 4;

    fn new(dir: &Path, kind: &str, key: &ContentKey) -> CacheEntry {
        CacheEntry {
            dir: dir.to_path_buf(),
            kind: kind.to_string(),
            stem: format!("{kind}-{:016x}", key.0),
        }
    }

    fn path(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", self.stem))
    }

    /// Copies the cached files (by extension) to their destinations; false when the entry is incomplete.
    fn fetch(&self, files: &[(&Path, &str)]) -> bool {
        files.iter().all(|(_, ext)| self.path(ext).is_file())
            && files
                .iter()
                .all(|(dest, ext)| fs::copy(self.path(ext), dest).is_ok())
    }

    fn store(&self, files: &[(&Path, &str)]) -> Result<()> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        for (source, ext) in files {
            let tmp = self.path(&format!("{ext}.tmp{}", std::process::id()));
            fs::copy(source, &tmp).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
            fs::rename(&tmp, self.path(ext))
                .map_err(|e| format!("writing {}: {e}", self.path(ext).display()))?;
        }
        self.evict_old();
        Ok(())
    }

    /// Removes all but the KEEP most recently written keys of this kind (best effort).
    fn evict_old(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!("{}-", self.kind);
        let mut stems: Vec<(std::time::SystemTime, String)> = Vec::new();
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_prefix(&prefix).and_then(|r| r.split('.').next()) else {
                continue;
            };
            let stem = format!("{prefix}{stem}");
            let modified = entry.metadata().and_then(|m| m.modified());
            if let Ok(modified) = modified {
                match stems.iter_mut().find(|(_, s)| *s == stem) {
                    Some((newest, _)) => *newest = (*newest).max(modified),
                    None => stems.push((modified, stem.clone())),
                }
            }
            files.push((stem, entry.path()));
        }
        stems.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
        let keep: Vec<&String> = stems.iter().take(Self::KEEP).map(|(_, s)| s).collect();
        for (stem, path) in files {
            if !keep.contains(&&stem) && stem != self.stem {
                let _ = fs::remove_file(path);
            }
        }
    }
}

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
