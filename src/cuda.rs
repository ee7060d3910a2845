//! The CUDA backend: the fused kernels on an NVIDIA GPU, through cudarc.
//!
//! Built for engines' hot loops:
//! - every launch goes on the stream you pass, allocates no device memory and never synchronizes;
//! - workspace (the backward's dQ accumulator and friends, the forward's gate-statistics partials) is
//!   sized by [`crate::backward_workspace_bytes`] / [`crate::gate_stats_workspace_len`] and passed in by
//!   you;
//! - launches can be captured in CUDA graphs. cudarc's event tracking records events around every
//!   buffer use; disable it on the context (`ctx.disable_event_tracking()`) before capturing, and order
//!   your streams yourself, as you would for any captured kernel.
//!
//! The kernels come from the fatbin the build script embedded (by default SASS for sm_80, sm_86, sm_89,
//! sm_90a, sm_100 and sm_120, as far as the nvcc supports them, and PTX for compute_80; `build_info::archs`
//! lists what this build has), which the driver loads in place. Creating a backend never panics: no
//! libcuda, no usable device or no kernels in this build are typed errors, and a fatbin the driver rejects
//! is an error that names the driver, the device and the fatbin's archs.

use std::collections::HashMap;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{self, CUfunction_attribute, CUresult};
use cudarc::driver::{
    CudaContext, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr,
    DriverError,
};

use crate::arch::{self, KernelLimits, TargetArch};
use crate::backend::{
    BackwardArgs, BackwardOptions, ForwardArgs, ForwardDiagnostics, ForwardKernel, GateArgs,
    GateBackwardArgs,
};
use crate::build_info;
use crate::error::{GsdpaError, Result};

use crate::launch::{self, LaunchConfig};
use crate::problem::{Activation, AttentionProblem, GateMode};
use crate::tensor::{Element, Layout, Memory, Tensor};
use crate::validate;

// SAFETY: a plain C struct of pointers, integers and opaque tensor maps, passed by value as the kernel's
// only parameter.
unsafe impl DeviceRepr for crate::ffi::GsdpaFwdSm90Params {}

/// Whether [`ForwardKernel::Auto`] runs the Hopper forward on an sm_90 device. Not yet: the kernel is
/// verified on the emulator only (docs/hopper-forward.md), so until the GPU suite has passed on an sm_90
/// device a plain call runs the mma.sync kernel there, and the Hopper one is opt-in
/// ([`ForwardKernel::Hopper`]; `tests/gpu.rs` runs both).
const HOPPER_FORWARD_BY_DEFAULT: bool = false;

pub(crate) fn cuda_error(what: &str, e: DriverError) -> GsdpaError {
    GsdpaError::Cuda(format!("{what}: {e:?}"))
}

/// Maps a failed driver call to the crate's error by its result code alone (no driver call, so it is
/// unit-tested without a GPU). The codes by which `cuInit` or a device query says that no device can be
/// used (none visible, as in a container without `/dev/nvidia*`, a bad ordinal, a device the driver
/// will not run) become [`GsdpaError::NoDevice`]; those saying the driver library itself is unusable (a
/// stub, or a kernel module of another version) become [`GsdpaError::NoDriver`]; anything else is
/// [`GsdpaError::Cuda`]. Every message names the code.
pub(crate) fn driver_error(what: &str, code: CUresult) -> GsdpaError {
    use CUresult::*;
    let message = format!("{what}: {code:?}");
    match code {
        CUDA_ERROR_NO_DEVICE
        | CUDA_ERROR_INVALID_DEVICE
        | CUDA_ERROR_NOT_INITIALIZED
        | CUDA_ERROR_DEINITIALIZED
        | CUDA_ERROR_DEVICE_NOT_LICENSED
        | CUDA_ERROR_SYSTEM_NOT_READY
        | CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => GsdpaError::NoDevice { reason: message },
        CUDA_ERROR_STUB_LIBRARY | CUDA_ERROR_SYSTEM_DRIVER_MISMATCH => {
            GsdpaError::NoDriver(message)
        }
        _ => GsdpaError::Cuda(message),
    }
}

/// The message of a failed kernel module load: the driver's error, the driver's CUDA version, the
/// device's compute capability and what the fatbin holds, with the two usual causes spelled out. A GPU
/// with no SASS of its arch in the fatbin JIT-compiles the PTX, which only a driver at least as new as
/// the nvcc that wrote it accepts (CUDA 13 PTX needs a 580 or newer driver).
fn module_load_message(
    code: CUresult,
    driver_version: Option<i32>,
    compute_capability: Option<(i32, i32)>,
    archs: &[&str],
    nvcc_version: Option<&str>,
) -> String {
    let driver = driver_version.map_or("unknown".to_string(), |v| {
        format!("CUDA {}.{}", v / 1000, v % 1000 / 10)
    });
    let device = compute_capability.map_or("unknown".to_string(), |(major, minor)| {
        format!("sm_{major}{minor}")
    });
    let nvcc = nvcc_version.unwrap_or("unknown");
    let mut message = format!(
        "loading the kernels failed ({code:?}): driver {driver}, device {device}, fatbin built by \
         nvcc {nvcc} for [{}]",
        archs.join(", ")
    );
    if compute_capability.is_some_and(|(major, _)| major < 8) {
        message.push_str("; the kernels need sm_80 or newer");
    } else {
        message.push_str(
            "; a device without SASS of its arch in the fatbin JIT-compiles the PTX, which needs a \
             driver at least as new as that nvcc (CUDA 13 PTX: driver 580 or newer): build with a \
             CUDA 12.x nvcc for older drivers, or add the device's arch to GSDPA_CUDA_ARCHS",
        );
    }
    message
}

/// The kernels' module, loaded by the driver straight from the fatbin embedded in the binary.
///
/// cudarc's `load_module` takes an owned image (`Ptx::from_binary(Vec<u8>)`): a copy of the whole
/// fatbin, in an allocation that need not keep the static's 64-byte alignment. The driver reads the
/// image only during `cuModuleLoadData`, so the static serves directly; this owns the handle instead of
/// a `CudaModule` (which cudarc builds only from its own loads) and unloads it on drop.
struct KernelModule {
    ctx: Arc<CudaContext>,
    handle: sys::CUmodule,
}

// SAFETY: a module handle is a driver object usable from any thread whose current context is the one
// it was loaded in; every use binds `ctx` first.
unsafe impl Send for KernelModule {}
// SAFETY: as above; the driver's module calls are thread-safe.
unsafe impl Sync for KernelModule {}

/// A kernel of the [`KernelModule`]; valid while the module is loaded (the backend holds both).
#[derive(Debug, Clone, Copy)]
struct KernelFunction(sys::CUfunction);

// SAFETY: a function handle is a driver object, valid on any thread while its module is loaded.
unsafe impl Send for KernelFunction {}
// SAFETY: as above; launching it is thread-safe in the driver.
unsafe impl Sync for KernelFunction {}

impl KernelModule {
    fn load(ctx: &Arc<CudaContext>, fatbin: &'static [u8]) -> Result<Self> {
        ctx.bind_to_thread()
            .map_err(|e| cuda_error("binding the context", e))?;
        // SAFETY: `fatbin` is the complete fatbin image build.rs embedded, 64-byte aligned and alive for
        // the whole program; the driver only reads it during this call. The context is current.
        let handle = unsafe { cudarc::driver::result::module::load_data(fatbin.as_ptr().cast()) }
            .map_err(|e| {
            GsdpaError::Cuda(module_load_message(
                e.0,
                driver_version(),
                ctx.compute_capability().ok(),
                build_info::archs(),
                build_info::nvcc_version(),
            ))
        })?;
        Ok(KernelModule {
            ctx: ctx.clone(),
            handle,
        })
    }

    fn function(&self, name: &str) -> std::result::Result<KernelFunction, DriverError> {
        // A NUL in a kernel name cannot name any kernel of the module.
        let name = std::ffi::CString::new(name)
            .map_err(|_| DriverError(CUresult::CUDA_ERROR_NOT_FOUND))?;
        self.ctx.bind_to_thread()?;
        // SAFETY: `handle` is a loaded module of the context bound above.
        unsafe { cudarc::driver::result::module::get_function(self.handle, name) }
            .map(KernelFunction)
    }
}

impl Drop for KernelModule {
    fn drop(&mut self) {
        // Nothing can be reported from a drop; a failure leaves the module to the context's teardown.
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `handle` was loaded by `load` and is unloaded once; no function of it is used
            // after the backend (which owns this) is gone.
            let _ = unsafe { cudarc::driver::result::module::unload(self.handle) };
        }
    }
}

/// True when cudarc's driver calls will find libcuda, checked without calling cudarc (which panics
/// when it cannot load the library).
///
/// cudarc either loads libcuda on the first driver call (`fallback-dynamic-loading`, this crate's
/// default, looking for `libcuda.so` / `nvcuda.dll` first) or has it linked into the program
/// (`dynamic-linking`, which candle-core's `cuda` feature selects and cargo then unifies for every crate
/// of the build). Which mode the build has is not visible here, so both are probed: the library cudarc
/// would load, or the driver's `libcuda.so.1` already mapped into the process, as it is at start-up when
/// it was linked.
pub fn driver_library_present() -> bool {
    driver_probe::present()
}

#[cfg(target_os = "linux")]
mod driver_probe {
    use std::ffi::{c_char, c_int, c_void, CStr};

    extern "C" {
        fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
        fn dlclose(handle: *mut c_void) -> c_int;
    }
    // <dlfcn.h> on Linux (glibc and musl alike).
    const RTLD_LAZY: c_int = 0x1;
    const RTLD_NOLOAD: c_int = 0x4;

    /// `dlopen(name, flags)` succeeds; the reference it took is dropped again.
    fn opens(name: &CStr, flags: c_int) -> bool {
        // SAFETY: `name` is NUL-terminated. Opening the driver library runs no code of ours; its
        // initialisers are the ones any CUDA program runs. The handle is closed once, right away.
        unsafe {
            let handle = dlopen(name.as_ptr(), flags);
            if handle.is_null() {
                return false;
            }
            dlclose(handle);
        }
        true
    }

    pub(super) fn present() -> bool {
        opens(c"libcuda.so", RTLD_LAZY) || opens(c"libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD)
    }
}

#[cfg(windows)]
mod driver_probe {
    use std::ffi::{c_char, c_int, c_void};

    extern "system" {
        fn LoadLibraryA(name: *const c_char) -> *mut c_void;
        fn FreeLibrary(module: *mut c_void) -> c_int;
    }

    pub(super) fn present() -> bool {
        // SAFETY: the name is NUL-terminated; the module is freed once, right away.
        unsafe {
            let module = LoadLibraryA(c"nvcuda.dll".as_ptr());
            if module.is_null() {
                return false;
            }
            FreeLibrary(module);
        }
        true
    }
}

/// No NVIDIA driver exists for other systems.
#[cfg(not(any(target_os = "linux", windows)))]
mod driver_probe {
    pub(super) fn present() -> bool {
        false
    }
}

/// The driver's CUDA version (`cuDriverGetVersion`, e.g. 12040 for 12.4), `None` if the call fails.
fn driver_version() -> Option<i32> {
    let mut version = 0;
    // SAFETY: writes one int; only called once the driver library is loaded.
    let rc = unsafe { sys::cuDriverGetVersion(&mut version) };
    (rc == CUresult::CUDA_SUCCESS).then_some(version)
}

/// Device memory as the validation layer sees it: an address and a length, borrowed for `'a`.
#[derive(Debug, Clone, Copy)]
pub struct DeviceMemory<'a, T> {
    addr: u64,
    len: usize,
    _borrow: PhantomData<&'a T>,
}

impl<T> DeviceMemory<'_, T> {
    /// A device address and a length in elements, as the validation layer sees them.
    pub(crate) fn new(addr: u64, len: usize) -> Self {
        DeviceMemory {
            addr,
            len,
            _borrow: PhantomData,
        }
    }
}

impl<T> Memory for DeviceMemory<'_, T> {
    type Elem = T;
    fn addr(&self) -> usize {
        self.addr as usize
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// Device cu_seqlens for varlen problems: the same prefix sums as the problem's host copy, in device
/// memory (the kernels read them; checking them against the host copy would need a synchronization).
pub struct CudaSeqlens<'a> {
    /// `[batch + 1]` query prefix sums.
    pub q: CudaView<'a, i32>,
    /// `[batch + 1]` key prefix sums.
    pub k: CudaView<'a, i32>,
}

/// Forward arguments on the device.
pub type CudaForwardArgs<'a, T> =
    ForwardArgs<CudaView<'a, T>, CudaViewMut<'a, T>, CudaViewMut<'a, f32>>;
/// Backward arguments on the device.
pub type CudaBackwardArgs<'a, T> =
    BackwardArgs<CudaView<'a, T>, CudaView<'a, f32>, CudaViewMut<'a, T>>;
/// Standalone gate arguments on the device.
pub type CudaGateArgs<'a, T> = GateArgs<CudaView<'a, T>, CudaViewMut<'a, T>>;
/// Standalone gate backward arguments on the device.
pub type CudaGateBackwardArgs<'a, T> = GateBackwardArgs<CudaView<'a, T>, CudaViewMut<'a, T>>;

/// The fused gated attention kernels on one CUDA device.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    module: KernelModule,
    functions: Mutex<HashMap<String, KernelFunction>>,
    /// The device's architecture, whose launch limits `launch` checks.
    arch: TargetArch,
    /// The dynamic shared memory one block may opt in to, in bytes: the device's own figure
    /// (`CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN`), at most the arch's
    /// ([`TargetArch::max_dynamic_shared_bytes`], which `launch` checks against). The backward's tiles
    /// are chosen from it.
    max_dynamic_shared_bytes: u32,
    forward_kernel: ForwardKernel,
    /// The kernel the latest forward launched.
    last_forward_kernel: Mutex<Option<String>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("ordinal", &self.ctx.ordinal())
            .finish()
    }
}

impl CudaBackend {
    /// Opens device `ordinal` (its primary context) and loads the kernels. No driver library is
    /// [`GsdpaError::NoDriver`]; a driver that cannot initialise (e.g. a container without
    /// `/dev/nvidia*`), no device or no device `ordinal` is [`GsdpaError::NoDevice`].
    pub fn new(ordinal: usize) -> Result<Self> {
        // cudarc panics when libcuda is missing: check first.
        if !driver_library_present() {
            return Err(GsdpaError::NoDriver(
                "libcuda (the NVIDIA driver library) was not found".into(),
            ));
        }
        // device_count runs cuInit first: that is where a host without usable devices fails.
        let count = CudaContext::device_count()
            .map_err(|e| driver_error("initialising the driver (cuInit, cuDeviceGetCount)", e.0))?;
        if count <= 0 || ordinal >= count as usize {
            return Err(GsdpaError::NoDevice {
                reason: format!(
                    "device {ordinal} was asked for, the driver reports {} device(s)",
                    count.max(0)
                ),
            });
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| driver_error(&format!("opening device {ordinal}"), e.0))?;
        Self::from_context(ctx)
    }

    /// Uses an existing context (for engines that own theirs) and loads the kernels into it.
    pub fn from_context(ctx: Arc<CudaContext>) -> Result<Self> {
        let Some(fatbin) = build_info::fatbin() else {
            let why = build_info::kernels_not_built_reason()
                .unwrap_or("nvcc was not found at build time");
            return Err(GsdpaError::KernelsNotBuilt(why.to_string()));
        };
        let module = KernelModule::load(&ctx, fatbin)?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| cuda_error("querying the compute capability", e))?;
        let arch = TargetArch::new(major.max(0) as u32, minor.max(0) as u32);
        let device_limit = ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(|e| cuda_error("querying the opt-in shared memory per block", e))?;
        let max_dynamic_shared_bytes =
            (device_limit.max(0) as u32).min(arch.max_dynamic_shared_bytes());
        Ok(CudaBackend {
            ctx,
            module,
            functions: Mutex::new(HashMap::new()),
            arch,
            max_dynamic_shared_bytes,
            forward_kernel: ForwardKernel::Auto,
            last_forward_kernel: Mutex::new(None),
        })
    }

    /// Selects the forward kernel. [`ForwardKernel::Hopper`] runs the Hopper kernel
    /// (kernels/forward_sm90.cu) for the calls it supports on an sm_90 device whose fatbin holds sm_90a
    /// SASS, and is an error on any other device or build; [`ForwardKernel::Auto`] (the default) runs
    /// the mma.sync kernel for now, until the Hopper one has passed the GPU suite on hardware
    /// (`HOPPER_FORWARD_BY_DEFAULT`). docs/hopper-forward.md lists the fallbacks.
    pub fn with_forward_kernel(mut self, kernel: ForwardKernel) -> Self {
        self.forward_kernel = kernel;
        self
    }

    /// The name of the kernel the latest forward launched, `None` before any.
    pub fn last_forward_kernel(&self) -> Option<String> {
        self.last_forward_kernel
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default()
    }

    /// Whether forwards run the Hopper kernel where it supports the call.
    fn wants_hopper(&self) -> Result<bool> {
        let available = self.arch.major == 9 && build_info::archs().contains(&"sm_90a");
        match self.forward_kernel {
            ForwardKernel::Auto => Ok(available && HOPPER_FORWARD_BY_DEFAULT),
            ForwardKernel::MmaSync => Ok(false),
            ForwardKernel::Hopper if available => Ok(true),
            ForwardKernel::Hopper => Err(GsdpaError::InvalidArgument(format!(
                "the Hopper forward needs an sm_90 device and sm_90a in the build's archs; device sm_{}{}, \
                 archs {:?}",
                self.arch.major,
                self.arch.minor,
                build_info::archs()
            ))),
        }
    }

    /// The device's architecture (compute capability), whose launch limits every launch is checked
    /// against.
    pub fn arch(&self) -> TargetArch {
        self.arch
    }

    /// The dynamic shared memory one block may opt in to on this device, in bytes (the smaller of the
    /// device's figure and its arch's): what [`crate::launch::backward_tiles`] chooses the backward's
    /// tiles from.
    pub fn max_dynamic_shared_bytes(&self) -> u32 {
        self.max_dynamic_shared_bytes
    }

    /// The context the kernels live in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The device's name, e.g. "NVIDIA H200".
    pub fn device_name(&self) -> Result<String> {
        self.ctx
            .name()
            .map_err(|e| cuda_error("cuDeviceGetName", e))
    }

    /// Looks a kernel up once and raises its dynamic shared memory limit to what it needs.
    fn function(&self, config: &LaunchConfig) -> Result<KernelFunction> {
        let mut functions = self
            .functions
            .lock()
            .map_err(|_| GsdpaError::Cuda("kernel cache poisoned".into()))?;
        if let Some(&f) = functions.get(&config.kernel) {
            return Ok(f);
        }
        let f = self.module.function(&config.kernel).map_err(|e| {
            cuda_error(&format!("kernel {} is not in the fatbin", config.kernel), e)
        })?;
        // Above the arch's opt-in limit the driver refuses the attribute: `launch` reports it instead.
        if config.shared_bytes > 48 * 1024
            && config.shared_bytes <= self.arch.max_dynamic_shared_bytes()
        {
            // SAFETY: `f` is a function of the live module.
            unsafe {
                cudarc::driver::result::function::set_function_attribute(
                    f.0,
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    config.shared_bytes as i32,
                )
            }
            .map_err(|e| {
                cuda_error(
                    &format!("raising {}'s shared memory limit", config.kernel),
                    e,
                )
            })?;
        }
        functions.insert(config.kernel.clone(), f);
        Ok(f)
    }

    fn record_forward_kernel(&self, config: &LaunchConfig) {
        if let Ok(mut last) = self.last_forward_kernel.lock() {
            *last = Some(config.kernel.clone());
        }
    }

    /// Launches one kernel with its params struct on `stream`.
    pub(crate) fn launch<P: DeviceRepr>(
        &self,
        stream: &CudaStream,
        config: &LaunchConfig,
        params: &P,
    ) -> Result<()> {
        // SAFETY: `stream` is a live cudarc stream of the caller's; `params` was produced by
        // validation from live device buffers of the sizes the kernel indexes, whose uses the caller
        // recorded on `stream`.
        unsafe { self.launch_on(stream.cu_stream(), config, params) }
    }

    /// Launches one kernel with its params struct on a raw driver stream (an engine's own, through
    /// [`crate::raw`]), with the same resource checks as [`CudaBackend::launch`].
    ///
    /// # Safety
    /// `stream` must be a live stream of this backend's context (or null, the legacy default stream),
    /// and every pointer in `params` must address device memory of that context, large enough for
    /// every access the kernel makes with these params, alive until the kernel has run.
    pub(crate) unsafe fn launch_on<P: DeviceRepr>(
        &self,
        stream: sys::CUstream,
        config: &LaunchConfig,
        params: &P,
    ) -> Result<()> {
        if config.is_empty() {
            return Ok(());
        }
        let f = self.function(config)?;
        // SAFETY: `f` is a function of the live module.
        let attribute =
            |which| unsafe { cudarc::driver::result::function::get_function_attribute(f.0, which) };
        let limits = KernelLimits {
            max_threads: attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)
                .ok()
                .map(|n| n.max(0) as u32),
            registers: attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_NUM_REGS)
                .ok()
                .map(|n| n.max(0) as u32),
        };
        arch::check_resources(config, self.arch, &limits)?;
        let launching = |e| cuda_error(&format!("launching {}", config.kernel), e);
        self.ctx.bind_to_thread().map_err(launching)?;
        // The kernels take one argument, the params struct by value: the driver copies it at launch.
        let mut kernel_args = [(params as *const P).cast_mut().cast::<c_void>()];
        // SAFETY: `f` is a function of the live module, on this context (bound above); the caller
        // vouches for `stream` and for the buffers behind `params` (validated for the sizes the kernel
        // indexes); the launch config is the one the kernel is written for.
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.0,
                (config.grid[0], config.grid[1], config.grid[2]),
                (config.block[0], config.block[1], config.block[2]),
                config.shared_bytes,
                stream,
                &mut kernel_args,
            )
        }
        .map_err(launching)?;
        Ok(())
    }

    /// Fused gated forward: `Y = softmax(scale Q K^T + mask) V * act(G)`, and optionally LSE and the
    /// ungated O.
    /// Enqueued on `stream`; returns before the GPU finishes. `seqlens` is required for varlen problems.
    pub fn forward<T: Element + DeviceRepr>(
        &self,
        stream: &CudaStream,
        problem: &AttentionProblem,
        args: &mut CudaForwardArgs<'_, T>,
        seqlens: Option<&CudaSeqlens<'_>>,
    ) -> Result<()> {
        let mut guards = Vec::new();
        let dev = ForwardArgs {
            q: input(&args.q, stream, &mut guards),
            k: input(&args.k, stream, &mut guards),
            v: input(&args.v, stream, &mut guards),
            g: args.g.as_ref().map(|g| input(g, stream, &mut guards)),
            y: output(&mut args.y, stream, &mut guards),
            o: args.o.as_mut().map(|o| output(o, stream, &mut guards)),
            lse: args
                .lse
                .as_mut()
                .map(|lse| output(lse, stream, &mut guards)),
            diagnostics: args.diagnostics.as_mut().map(|d| ForwardDiagnostics {
                sink_mass: d.sink_mass.as_mut().map(|t| output(t, stream, &mut guards)),
                n_sink: d.n_sink,
                gate_stats: d
                    .gate_stats
                    .as_mut()
                    .map(|t| output(t, stream, &mut guards)),
                gate_workspace: d
                    .gate_workspace
                    .as_mut()
                    .map(|t| output(t, stream, &mut guards)),
            }),
        };
        let cu = || device_seqlens(problem, seqlens, stream, &mut guards);
        // SAFETY: the views are live device buffers of this context, their uses recorded on `stream`
        // (the guards, alive until the end of this function); the seqlens are the problem's.
        unsafe { self.forward_on(stream.cu_stream(), problem, &dev, cu) }
    }

    /// The forward on a raw driver stream over device addresses: the validation and launches of
    /// [`CudaBackend::forward`], which [`crate::raw::forward`] exposes.
    ///
    /// # Safety
    /// `stream` is a live stream of this context (or null); every tensor's address and length describe
    /// live device memory of this context that stays valid, and that no other work writes, until the
    /// kernels have run; `cu_seqlens` are 0 or the device addresses of the problem's `[batch + 1]`
    /// prefix sums, equal to its host copies (`cu_seqlens` is asked for them after validation, and
    /// only when something is launched).
    pub(crate) unsafe fn forward_on<I, O, F>(
        &self,
        stream: sys::CUstream,
        problem: &AttentionProblem,
        args: &ForwardArgs<I, O, F>,
        cu_seqlens: impl FnOnce() -> Result<(u64, u64)>,
    ) -> Result<()>
    where
        I: Memory,
        I::Elem: Element,
        O: Memory<Elem = I::Elem>,
        F: Memory<Elem = f32>,
    {
        let mut params = validate::validate_forward(problem, args)?;
        let hopper = self.wants_hopper()?;
        let gate_stats_requested = !params.gate_stats.is_null();
        if problem.is_empty() && !gate_stats_requested {
            return Ok(());
        }
        let (cu_q, cu_k) = cu_seqlens()?;
        params.cu_seqlens_q = cu_q as *const i32;
        params.cu_seqlens_k = cu_k as *const i32;
        // SAFETY (both launches): the params come from validation of the caller's buffers, which the
        // caller vouches for.
        if problem.is_empty() {
            // No query rows: no partials, and the statistics kernel writes 0 for every sequence.
            params.gate_partials_per_head = 0;
        } else if hopper && launch::hopper_forward_unsupported(problem, &params).is_none() {
            if !params.gate_partials.is_null() {
                // The Hopper kernel's partials layout (the workspace holds either kernel's).
                params.gate_partials_per_head = launch::gate_partials_per_head_sm90(problem)?
                    .try_into()
                    .map_err(|_| GsdpaError::SizeOverflow("gate partials per head".into()))?;
            }
            let maps = launch::forward_sm90_maps(problem, <I::Elem as Element>::DTYPE, &params)?;
            let [q_map, k_map, v_map] = &maps.qkv;
            let sm90 = crate::ffi::GsdpaFwdSm90Params {
                fwd: params,
                q_map: q_map.encode_cuda(self)?,
                k_map: k_map.encode_cuda(self)?,
                v_map: v_map.encode_cuda(self)?,
                g_map: match &maps.g {
                    Some(g) => g.encode_cuda(self)?,
                    None => crate::ffi::GsdpaTensorMap { opaque: [0; 16] },
                },
                y_map: match &maps.y {
                    Some(y) => y.encode_cuda(self)?,
                    None => crate::ffi::GsdpaTensorMap { opaque: [0; 16] },
                },
                o_map: match &maps.o {
                    Some(o) => o.encode_cuda(self)?,
                    None => crate::ffi::GsdpaTensorMap { opaque: [0; 16] },
                },
                tma_store: maps.tma_store(),
                ..Default::default()
            };
            let config = launch::forward_sm90(problem, <I::Elem as Element>::DTYPE)?;
            self.record_forward_kernel(&config);
            unsafe { self.launch_on(stream, &config, &sm90)? };
        } else {
            let config = launch::forward(problem, <I::Elem as Element>::DTYPE)?;
            self.record_forward_kernel(&config);
            unsafe { self.launch_on(stream, &config, &params)? };
        }
        if gate_stats_requested {
            // Same stream: it reads the partials the forward wrote.
            unsafe { self.launch_on(stream, &launch::gate_stats(problem)?, &params)? };
        }
        Ok(())
    }

    /// The backward: dQ, dK, dV and dG. `workspace` must hold [`crate::backward_workspace_bytes`] bytes
    /// and start 256-byte aligned.
    pub fn backward<T: Element + DeviceRepr>(
        &self,
        stream: &CudaStream,
        problem: &AttentionProblem,
        args: &mut CudaBackwardArgs<'_, T>,
        workspace: &mut CudaViewMut<'_, u8>,
        seqlens: Option<&CudaSeqlens<'_>>,
        options: BackwardOptions,
    ) -> Result<()> {
        let mut guards = Vec::new();
        let dev = BackwardArgs {
            q: input(&args.q, stream, &mut guards),
            k: input(&args.k, stream, &mut guards),
            v: input(&args.v, stream, &mut guards),
            g: args.g.as_ref().map(|g| input(g, stream, &mut guards)),
            y: input(&args.y, stream, &mut guards),
            o: args.o.as_ref().map(|o| input(o, stream, &mut guards)),
            dy: input(&args.dy, stream, &mut guards),
            lse: input(&args.lse, stream, &mut guards),
            dq: output(&mut args.dq, stream, &mut guards),
            dk: output(&mut args.dk, stream, &mut guards),
            dv: output(&mut args.dv, stream, &mut guards),
            dg: args.dg.as_mut().map(|dg| output(dg, stream, &mut guards)),
        };
        let workspace_len = workspace.len();
        let (ws_ptr, ws_guard) = workspace.device_ptr_mut(stream);
        let cu = || device_seqlens(problem, seqlens, stream, &mut guards);
        // SAFETY: as in `forward`; the workspace is the caller's live buffer, its use recorded by
        // `ws_guard`.
        let result = unsafe {
            self.backward_on(
                stream.cu_stream(),
                problem,
                &dev,
                (ws_ptr, workspace_len),
                cu,
                options,
            )
        };
        drop(ws_guard);
        result
    }

    /// The backward on a raw driver stream over device addresses: the validation and launches of
    /// [`CudaBackend::backward`], which [`crate::raw::backward`] exposes. `workspace` is the address
    /// and the length in bytes of the caller's workspace.
    ///
    /// # Safety
    /// As [`CudaBackend::forward_on`], and the workspace is live device memory of this context of the
    /// given length that nothing else uses until the kernels have run.
    pub(crate) unsafe fn backward_on<I, L, O>(
        &self,
        stream: sys::CUstream,
        problem: &AttentionProblem,
        args: &BackwardArgs<I, L, O>,
        workspace: (u64, usize),
        cu_seqlens: impl FnOnce() -> Result<(u64, u64)>,
        options: BackwardOptions,
    ) -> Result<()>
    where
        I: Memory,
        I::Elem: Element,
        L: Memory<Elem = f32>,
        O: Memory<Elem = I::Elem>,
    {
        // No early return for empty problems: with queries absent but keys present, the dK/dV kernel
        // still runs and writes zeros (launch::backward leaves out only the empty grids).
        let mut params = validate::validate_backward(problem, args, options.deterministic)?;
        validate::set_backward_workspace(&mut params, problem, workspace.0 as usize, workspace.1)?;
        let (cu_q, cu_k) = cu_seqlens()?;
        params.cu_seqlens_q = cu_q as *const i32;
        params.cu_seqlens_k = cu_k as *const i32;
        let dtype = <I::Elem as Element>::DTYPE;
        for config in launch::backward(problem, dtype, options, self.max_dynamic_shared_bytes)? {
            // SAFETY: the params come from validation of the caller's buffers and workspace, which
            // the caller vouches for.
            unsafe { self.launch_on(stream, &config, &params)? };
        }
        Ok(())
    }

    /// The standalone gate `Y = O * act(G)` ([`GateArgs`]: the unfused path engines use today; the
    /// benches compare the fused forward against our gate = none forward followed by this). Validated
    /// like the forward; enqueued on `stream`.
    pub fn gate<T: Element + DeviceRepr>(
        &self,
        stream: &CudaStream,
        gate: GateMode,
        activation: Activation,
        args: &mut CudaGateArgs<'_, T>,
    ) -> Result<()> {
        let mut guards = Vec::new();
        let dev = GateArgs {
            o: input(&args.o, stream, &mut guards),
            g: args.g.as_ref().map(|g| input(g, stream, &mut guards)),
            y: output(&mut args.y, stream, &mut guards),
        };
        let params = validate::validate_gate(gate, activation, &dev)?;
        let (rows, heads, head_dim) = (params.seqlen, params.heads, params.head_dim);
        if rows == 0 || heads == 0 || head_dim == 0 {
            return Ok(());
        }
        let config = launch::gate(T::DTYPE, rows as usize, heads as usize, head_dim as usize)?;
        self.launch(stream, &config, &params)
    }

    /// The standalone gate backward ([`GateBackwardArgs`]), the unfused path's first backward step:
    /// `d_o = dY * act(G)` and `dg = dY * O * act'(G)` (headwise: `dg = act'(G) * sum_d dY * O`).
    /// Engines then run a gate = none backward fed with `d_o` (and with the ungated O as its forward
    /// output). Validated like the backward; enqueued on `stream`.
    pub fn gate_backward<T: Element + DeviceRepr>(
        &self,
        stream: &CudaStream,
        gate: GateMode,
        activation: Activation,
        args: &mut CudaGateBackwardArgs<'_, T>,
    ) -> Result<()> {
        let mut guards = Vec::new();
        let dev = GateBackwardArgs {
            o: input(&args.o, stream, &mut guards),
            g: args.g.as_ref().map(|g| input(g, stream, &mut guards)),
            dy: input(&args.dy, stream, &mut guards),
            d_o: output(&mut args.d_o, stream, &mut guards),
            dg: args.dg.as_mut().map(|dg| output(dg, stream, &mut guards)),
        };
        let params = validate::validate_gate_backward(gate, activation, &dev)?;
        let (rows, heads, head_dim) = (params.seqlen, params.heads, params.head_dim);
        if rows == 0 || heads == 0 || head_dim == 0 {
            return Ok(());
        }
        let config =
            launch::gate_backward(T::DTYPE, rows as usize, heads as usize, head_dim as usize)?;
        self.launch(stream, &config, &params)
    }
}

/// Keeps cudarc's stream-ordering record of a device buffer's use alive for the launch.
pub(crate) type Guard<'a> = cudarc::driver::SyncOnDrop<'a>;

/// A device input as the validation layer sees it (its address and length), its use recorded in `guards`.
pub(crate) fn input<'a, T>(
    tensor: &'a Tensor<CudaView<'_, T>>,
    stream: &'a CudaStream,
    guards: &mut Vec<Guard<'a>>,
) -> Tensor<DeviceMemory<'a, T>> {
    let (addr, guard) = tensor.data.device_ptr(stream);
    guards.push(guard);
    Tensor::new(
        DeviceMemory::new(addr, tensor.data.len()),
        tensor.layout.clone(),
    )
}

/// A device output as the validation layer sees it, its use recorded in `guards`.
pub(crate) fn output<'a, T>(
    tensor: &'a mut Tensor<CudaViewMut<'_, T>>,
    stream: &'a CudaStream,
    guards: &mut Vec<Guard<'a>>,
) -> Tensor<DeviceMemory<'a, T>> {
    let layout: Layout = tensor.layout.clone();
    let len = tensor.data.len();
    let (addr, guard) = tensor.data.device_ptr_mut(stream);
    guards.push(guard);
    Tensor::new(DeviceMemory::new(addr, len), layout)
}

/// Device addresses of the cu_seqlens (0 when the problem is not varlen).
fn device_seqlens<'a>(
    problem: &AttentionProblem,
    seqlens: Option<&'a CudaSeqlens<'_>>,
    stream: &'a CudaStream,
    guards: &mut Vec<Guard<'a>>,
) -> Result<(u64, u64)> {
    match (&problem.varlen, seqlens) {
        (None, None) => Ok((0, 0)),
        (None, Some(_)) => Err(GsdpaError::InvalidArgument(
            "device cu_seqlens were given for a problem that is not varlen".into(),
        )),
        (Some(_), None) => Err(GsdpaError::InvalidArgument(
            "a varlen problem needs the device cu_seqlens (CudaSeqlens)".into(),
        )),
        (Some(v), Some(s)) => {
            for (name, view, host) in [
                ("cu_seqlens_q", &s.q, &v.cu_seqlens_q),
                ("cu_seqlens_k", &s.k, &v.cu_seqlens_k),
            ] {
                if view.len() != host.len() {
                    return Err(GsdpaError::InvalidCuSeqlens {
                        which: if name == "cu_seqlens_q" {
                            "cu_seqlens_q"
                        } else {
                            "cu_seqlens_k"
                        },
                        reason: format!(
                            "device copy has {} entries, the problem's has {}",
                            view.len(),
                            host.len()
                        ),
                    });
                }
            }
            let (q, gq) = s.q.device_ptr(stream);
            let (k, gk) = s.k.device_ptr(stream);
            guards.push(gq);
            guards.push(gk);
            Ok((q, k))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_codes_of_an_unusable_host_map_to_no_device_or_no_driver() {
        use CUresult::*;
        // cuInit in a container without /dev/nvidia* and its relatives: no device to use.
        for code in [
            CUDA_ERROR_NO_DEVICE,
            CUDA_ERROR_INVALID_DEVICE,
            CUDA_ERROR_NOT_INITIALIZED,
            CUDA_ERROR_DEINITIALIZED,
            CUDA_ERROR_DEVICE_NOT_LICENSED,
            CUDA_ERROR_SYSTEM_NOT_READY,
            CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE,
        ] {
            match driver_error("cuInit", code) {
                GsdpaError::NoDevice { reason } => {
                    assert!(reason.contains(&format!("{code:?}")), "{code:?}: {reason}")
                }
                other => panic!("{code:?} mapped to {other:?}"),
            }
        }
        // A stub libcuda or a kernel module of another version: the driver itself is unusable.
        for code in [CUDA_ERROR_STUB_LIBRARY, CUDA_ERROR_SYSTEM_DRIVER_MISMATCH] {
            assert!(
                matches!(driver_error("cuInit", code), GsdpaError::NoDriver(ref m) if m.contains(&format!("{code:?}"))),
                "{code:?}"
            );
        }
        // Anything else stays a CUDA error, with the call and the code in the message.
        for code in [
            CUDA_ERROR_OUT_OF_MEMORY,
            CUDA_ERROR_UNKNOWN,
            CUDA_ERROR_INVALID_VALUE,
        ] {
            assert_eq!(
                driver_error("cuDeviceGetCount", code),
                GsdpaError::Cuda(format!("cuDeviceGetCount: {code:?}"))
            );
        }
    }

    /// The loader probe that replaced cudarc's (which exists only in cudarc's loading mode, this
    /// build's unless `cudarc-dynamic-linking` is on) gives its answer on this host.
    #[test]
    #[cfg(not(feature = "cudarc-dynamic-linking"))]
    fn driver_probe_agrees_with_cudarcs_loader() {
        // SAFETY: only probes whether the driver library can be loaded.
        let cudarc = unsafe { sys::is_culib_present() };
        assert_eq!(driver_library_present(), cudarc);
    }

    #[test]
    fn module_load_message_names_driver_device_and_fatbin() {
        let archs = ["sm_80", "sm_90a", "compute_80"];
        let message = module_load_message(
            CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
            Some(12040),
            Some((8, 6)),
            &archs,
            Some("13.0.88"),
        );
        for part in [
            "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
            "driver CUDA 12.4",
            "device sm_86",
            "nvcc 13.0.88",
            "[sm_80, sm_90a, compute_80]",
            "580",
            "12.x nvcc",
        ] {
            assert!(message.contains(part), "{part:?} missing from: {message}");
        }
        // Queries that failed still give a message; a pre-Ampere device is told so.
        let message = module_load_message(
            CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU,
            None,
            Some((7, 5)),
            &archs,
            None,
        );
        assert!(message.contains("driver unknown"), "{message}");
        assert!(message.contains("sm_80 or newer"), "{message}");
    }
}
