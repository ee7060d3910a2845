// platform.h: the single place where the kernel sources learn which target they are compiled for.
//
// The same .cu files build two ways:
//  - nvcc, for the GPU: CUDA's own types and intrinsics;
//  - the host C++ compiler with -DGSDPA_EMULATOR, for the CPU emulator (kernels/emu): every CUDA thread
//    becomes a fiber and the warp-level primitives are emulated with their exact PTX semantics.
// Kernel logic never tests GSDPA_EMULATOR. Only this header and primitives.h do.
#pragma once

#include "../gsdpa_params.h"

#if defined(GSDPA_EMULATOR)
#include "../emu/emu.h"
namespace gsdpa {
using bf16 = gsdpa_emu::bf16;
using f16 = gsdpa_emu::f16;
}  // namespace gsdpa
// Makes an `extern "C"` kernel entry point launchable by name from the emulator's launcher.
// max_threads is the kernel's __launch_bounds__ (pass the same constant): the emulator refuses a launch
// with more threads per block, as the driver does (docs/emulator.md, launch-resource checks).
#define GSDPA_REGISTER_KERNEL(name, Params, max_threads)                                          \
    static ::gsdpa_emu::KernelRegistrar gsdpa_registrar_##name(                                  \
        #name, sizeof(Params), (max_threads),                                                    \
        [](const void *params) { name(*static_cast<const Params *>(params)); });
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
namespace gsdpa {
using bf16 = __nv_bfloat16;
using f16 = __half;
}  // namespace gsdpa
// On the GPU the driver finds kernels by their unmangled names and knows their __launch_bounds__;
// nothing to register.
#define GSDPA_REGISTER_KERNEL(name, Params, max_threads)
#endif

#define GSDPA_DEVICE __device__ __forceinline__

// The most dynamic shared memory one block may opt in to on the arch this device code is compiled for:
// the figures of TargetArch::max_dynamic_shared_bytes (src/arch.rs), whose launch check refuses any
// kernel that needs more, so a kernel whose tiles cannot fit is never launched on that arch and its entry
// point may compile empty there (backward.cu's large tiles: build time, and spills for code that never
// runs). Archs the table does not know get the smallest figure on both sides. nvcc's host pass and the
// emulator see no limit: the emulator applies its target arch's at launch. tests/sass.rs checks that a
// large-tile kernel has its main loop on exactly the archs whose limit holds its tiles.
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ == 800 || __CUDA_ARCH__ == 870
#define GSDPA_ARCH_MAX_DYNAMIC_SMEM_BYTES (163 * 1024)
#elif __CUDA_ARCH__ == 900 || __CUDA_ARCH__ == 1000
#define GSDPA_ARCH_MAX_DYNAMIC_SMEM_BYTES (227 * 1024)
#else
#define GSDPA_ARCH_MAX_DYNAMIC_SMEM_BYTES (99 * 1024)
#endif
#else
#define GSDPA_ARCH_MAX_DYNAMIC_SMEM_BYTES 0x7fffffff
#endif

namespace gsdpa {

template <class T>
GSDPA_DEVICE constexpr T tmin(T a, T b) { return a < b ? a : b; }
template <class T>
GSDPA_DEVICE constexpr T tmax(T a, T b) { return a > b ? a : b; }
template <class T>
GSDPA_DEVICE constexpr T ceil_div(T a, T b) { return (a + b - 1) / b; }

}  // namespace gsdpa
