// arch.h: where the Hopper primitives exist. They compile to PTX only for sm_90a (the arch-specific
// feature set that wgmma and setmaxnreg need: nvcc defines __CUDA_ARCH_FEAT_SM90_ALL for
// compute_90a) and to calls into the emulator on the host. On every other target GSDPA_HOPPER is 0 and
// the wrappers are not declared, so a Hopper kernel's entry point compiles to an empty body there and
// other archs are untouched.
#pragma once

#include "../platform.h"

#if defined(GSDPA_EMULATOR)
#define GSDPA_HOPPER 1
#include "../../emu/hopper.h"
// Kernels that take tensor maps declare their params `const __grid_constant__` (the map must stay in
// parameter space on the GPU, where the TMA unit reads it); on the host it means nothing.
#define __grid_constant__
#elif defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GSDPA_HOPPER 1
#else
#define GSDPA_HOPPER 0
#endif

#if GSDPA_HOPPER
#include "../primitives.h"

namespace gsdpa {

// The shared-window address of a pointer into dynamic shared memory, as PTX instructions take it. On the
// emulator it is the offset from the dynamic shared memory base (which is 1024-byte aligned on the GPU,
// so swizzle patterns computed from address bits agree).
GSDPA_DEVICE uint32_t smem_addr(const void *p GSDPA_SITE_PARAM) {
#if defined(GSDPA_EMULATOR)
    return ::gsdpa_emu::smem_address(p, site);
#else
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}

}  // namespace gsdpa
#endif
