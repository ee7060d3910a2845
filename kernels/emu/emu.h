// emu.h: what the kernel sources see of CUDA when they are compiled for the host (-DGSDPA_EMULATOR).
//
// Execution model (scheduler.cpp): every CUDA thread of a block is a fiber; a block's fibers run
// cooperatively on one OS thread and switch only at synchronisation points (__syncthreads, warp
// collectives), so code between two such points runs without interruption, in an order that
// GSDPA_EMU_SEED permutes (a seed also makes warps run at different speeds between barriers). Blocks are
// spread over worker threads.
//
// Warp collectives (shuffles, mma.sync, ldmatrix, __syncwarp) are rendezvous: each lane deposits its
// operands and yields; when all 32 lanes of the warp wait at the same call site, the collective runs for
// the whole warp. Lanes waiting at different sites are a divergence error reported with both sites.
// Only __syncwarp and __syncthreads order shared-memory accesses between threads: the race detector
// (racecheck.cpp) reports a tracked access that conflicts with another thread's without one of them.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <source_location>

// ----- CUDA keywords: no meaning on the host. -----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Static shared memory cannot be emulated without knowing the block: kernels use dynamic_smem().
#define __shared__ static_assert(false, "use gsdpa::dynamic_smem() instead of __shared__ in kernels");

// ----- Vector types with CUDA's sizes and alignments. -----
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { uint32_t x, y; };
struct alignas(16) uint4 { uint32_t x, y, z, w; };
struct alignas(16) int4 { int32_t x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace gsdpa_emu {

// ----- 16-bit floats: storage plus round-to-nearest-even conversions, NaN preserved. -----
struct bf16 {
    uint16_t bits;
    static bf16 from_bits(uint16_t b) { return bf16{b}; }
    static bf16 from_float(float f) {
        uint32_t u;
        std::memcpy(&u, &f, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x0040u)};  // quiet NaN
        u += 0x7fffu + ((u >> 16) & 1u);
        return bf16{uint16_t(u >> 16)};
    }
    float to_float() const {
        uint32_t u = uint32_t(bits) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
};

struct f16 {
    uint16_t bits;
    static f16 from_bits(uint16_t b) { return f16{b}; }
    static f16 from_float(float f);  // float16.cpp: IEEE binary16, round to nearest even
    float to_float() const;
};

// The call site of a primitive, captured by default arguments in primitives.h.
struct Site {
    const char *file;
    unsigned line;
    static Site current(std::source_location loc = std::source_location::current()) {
        return Site{loc.file_name(), loc.line()};
    }
};

enum class MmaType { BF16, F16 };

// Per-fiber CUDA built-in variables.
struct ThreadContext {
    dim3 thread_idx, block_idx, block_dim, grid_dim;
};
const ThreadContext &current_thread();

char *dynamic_smem();

void syncthreads(Site site);
void syncwarp(unsigned mask, Site site);

enum class ShuffleMode { Idx, Up, Down, Xor };
uint32_t shuffle(ShuffleMode mode, unsigned mask, uint32_t value, int arg, int width, Site site);
// vote.sync.any: whether any lane of the warp brings a true predicate; every lane gets the answer.
bool vote_any(unsigned mask, bool predicate, Site site);

void mma_m16n8k16(MmaType type, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                  const float (&c)[4], Site site);
void ldmatrix(uint32_t *regs, int num_matrices, bool trans, const void *smem_row, Site site);

void cp_async(void *smem_dst, const void *gmem_src, int cp_size, int src_size, Site site);
void cp_async_commit();
void cp_async_wait(int newest_pending_allowed);

float atomic_add_f32(float *address, float value);

// Shared-memory loads and stores the race detector sees (racecheck.cpp): primitives.h's ld_shared and
// st_shared. A plain C++ access to shared memory works but is invisible to the detector.
void shared_load(void *dst, const void *smem_src, size_t bytes, Site site);
void shared_store(void *smem_dst, const void *src, size_t bytes, Site site);

// Reports a kernel-side failure (e.g. an assertion) and ends the launch with an error.
[[noreturn]] void fail(const char *message, Site site);

using KernelEntry = void (*)(const void *params);
struct KernelRegistrar {
    // max_threads: the kernel's __launch_bounds__ (its maximum threads per block).
    KernelRegistrar(const char *name, size_t params_size, unsigned max_threads, KernelEntry entry);
};

}  // namespace gsdpa_emu

#define threadIdx (::gsdpa_emu::current_thread().thread_idx)
#define blockIdx (::gsdpa_emu::current_thread().block_idx)
#define blockDim (::gsdpa_emu::current_thread().block_dim)
#define gridDim (::gsdpa_emu::current_thread().grid_dim)

inline void __syncthreads(gsdpa_emu::Site site = gsdpa_emu::Site::current()) { gsdpa_emu::syncthreads(site); }
inline void __syncwarp(unsigned mask = 0xffffffffu, gsdpa_emu::Site site = gsdpa_emu::Site::current()) {
    gsdpa_emu::syncwarp(mask, site);
}

namespace gsdpa_emu {
template <class T>
inline T shuffle_typed(ShuffleMode mode, unsigned mask, T value, int arg, int width, Site site) {
    static_assert(sizeof(T) == 4, "the emulator shuffles 32-bit values");
    uint32_t u;
    std::memcpy(&u, &value, 4);
    u = shuffle(mode, mask, u, arg, width, site);
    T out;
    std::memcpy(&out, &u, 4);
    return out;
}
}  // namespace gsdpa_emu

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                         gsdpa_emu::Site site = gsdpa_emu::Site::current()) {
    return gsdpa_emu::shuffle_typed(gsdpa_emu::ShuffleMode::Xor, mask, v, lane_mask, width, site);
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32,
                     gsdpa_emu::Site site = gsdpa_emu::Site::current()) {
    return gsdpa_emu::shuffle_typed(gsdpa_emu::ShuffleMode::Idx, mask, v, src_lane, width, site);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                          gsdpa_emu::Site site = gsdpa_emu::Site::current()) {
    return gsdpa_emu::shuffle_typed(gsdpa_emu::ShuffleMode::Down, mask, v, int(delta), width, site);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                        gsdpa_emu::Site site = gsdpa_emu::Site::current()) {
    return gsdpa_emu::shuffle_typed(gsdpa_emu::ShuffleMode::Up, mask, v, int(delta), width, site);
}

inline int __any_sync(unsigned mask, int predicate, gsdpa_emu::Site site = gsdpa_emu::Site::current()) {
    return gsdpa_emu::vote_any(mask, predicate != 0, site) ? 1 : 0;
}

inline float atomicAdd(float *address, float value) { return gsdpa_emu::atomic_add_f32(address, value); }

// ----- Host-side C API used by the Rust emulator backend (src/emulator.rs). -----
// Bits of gsdpa_emu_launch's `flags`.
#define GSDPA_EMU_RACECHECK 1u  // run the shared-memory race detector (racecheck.cpp)
// Hand out the blocks last to first: a block that writes outside its own outputs (which a later block
// would overwrite in the natural order) then leaves its writes in place for a test to see.
#define GSDPA_EMU_REVERSE_BLOCKS 2u
extern "C" {
// Runs `kernel` over the grid. Returns 0 on success; otherwise writes a message into err (NUL-terminated).
// The launch-resource limits of the target arch are checked by the caller (src/arch.rs); this only
// refuses what it cannot run (no such kernel, a wrong params size, 0 threads or more than the kernel's
// __launch_bounds__). flags: GSDPA_EMU_* bits.
int gsdpa_emu_launch_with_flags(const char *kernel, const uint32_t grid[3], const uint32_t block[3],
                                size_t dynamic_smem_bytes, const void *params, size_t params_size, uint64_t seed,
                                uint32_t worker_threads, uint32_t flags, char *err, size_t err_len);
// gsdpa_emu_launch_with_flags with the race detector on.
int gsdpa_emu_launch(const char *kernel, const uint32_t grid[3], const uint32_t block[3], size_t dynamic_smem_bytes,
                     const void *params, size_t params_size, uint64_t seed, uint32_t worker_threads, char *err,
                     size_t err_len);
// Memory whose last byte is immediately followed by an inaccessible guard page (when bytes is a multiple of
// alignment; else the gap is under `alignment` bytes): an out-of-bounds read or write past the end faults,
// and the launch reports it as an error. alignment: a power of two up to the page size.
void *gsdpa_emu_alloc_guarded(size_t bytes, size_t alignment);
void gsdpa_emu_free_guarded(void *ptr);
// 1 when the kernel is registered (compiled into this build).
int gsdpa_emu_has_kernel(const char *kernel);
// The kernel's __launch_bounds__ as registered by GSDPA_REGISTER_KERNEL, or 0 when it is not registered.
uint32_t gsdpa_emu_kernel_max_threads(const char *kernel);
}
