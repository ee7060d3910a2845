// mbarrier.h: Hopper's synchronisation primitives (sm_90a): mbarriers with transaction counts, named
// barriers, elect.sync, setmaxnreg and the async-proxy fence. Semantics: docs/ptx-primitives.md.
//
// Designed for a warp-specialized kernel: a producer warp arms a "full" barrier with the bytes its TMA
// loads will deliver (arrive_expect_tx) and the consumers wait on its parity; the consumers release a
// stage by arriving on an "empty" barrier the producer waits on. Parity starts at 0 for barriers that
// begin empty of data (consumers wait parity 0 first) and the producer's first wait on an empty barrier
// uses parity 1, which returns at once.
#pragma once

#include "arch.h"

#if GSDPA_HOPPER
namespace gsdpa {

// mbarrier.init: `count` arrivals complete a phase. One thread initialises; then fence_barrier_init and a
// __syncthreads before any other thread (or the TMA unit) uses it.
GSDPA_DEVICE void mbarrier_init(uint64_t *bar, uint32_t count GSDPA_SITE_PARAM) {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::mbarrier_init(bar, count, site);
#else
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count));
#endif
}

// Makes barrier initialisation visible to the async proxy (the TMA unit).
GSDPA_DEVICE void fence_barrier_init() {
#if !defined(GSDPA_EMULATOR)
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

GSDPA_DEVICE void mbarrier_arrive(uint64_t *bar GSDPA_SITE_PARAM) {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::mbarrier_arrive(bar, site);
#else
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
#endif
}

// Adds `bytes` to the phase's expected transactions (what TMA loads completing on it will deliver), then
// arrives. The phase completes when every arrival is in and the transactions count back to zero.
GSDPA_DEVICE void mbarrier_arrive_expect_tx(uint64_t *bar, uint32_t bytes GSDPA_SITE_PARAM) {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::mbarrier_arrive_expect_tx(bar, bytes, site);
#else
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
                 : "memory");
#endif
}

GSDPA_DEVICE void mbarrier_expect_tx(uint64_t *bar, uint32_t bytes GSDPA_SITE_PARAM) {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::mbarrier_expect_tx(bar, bytes, site);
#else
    asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
                 : "memory");
#endif
}

// Waits until the phase of parity `parity` has completed (try_wait.parity until it succeeds).
GSDPA_DEVICE void mbarrier_wait(uint64_t *bar, uint32_t parity GSDPA_SITE_PARAM) {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::mbarrier_wait(bar, parity, site);
#else
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "wait_again:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra wait_again;\n"
        "}\n" ::"r"(smem_addr(bar)),
        "r"(parity)
        : "memory");
#endif
}

// Whether that wait would return now (mbarrier.test_wait.parity, never blocks).
GSDPA_DEVICE bool mbarrier_test_wait(uint64_t *bar, uint32_t parity GSDPA_SITE_PARAM) {
#if defined(GSDPA_EMULATOR)
    return ::gsdpa_emu::mbarrier_test_wait(bar, parity, site);
#else
    uint32_t done;
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
    return done != 0;
#endif
}

// bar.sync id, count: waits until `count` threads (whole warps) have arrived at barrier `id` (1..15; 0
// is __syncthreads'). bar.arrive counts the caller without waiting (a producer signalling consumers).
GSDPA_DEVICE void named_barrier_sync(uint32_t id, uint32_t count GSDPA_SITE_PARAM) {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::named_barrier_sync(id, count, site);
#else
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
#endif
}

GSDPA_DEVICE void named_barrier_arrive(uint32_t id, uint32_t count GSDPA_SITE_PARAM) {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::named_barrier_arrive(id, count, site);
#else
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
#endif
}

// elect.sync with the full mask: true in exactly one lane of the warp (all lanes must call it).
GSDPA_DEVICE bool elect_one_sync(GSDPA_SITE_PARAM_ONLY) {
#if defined(GSDPA_EMULATOR)
    return ::gsdpa_emu::elect_one(site);
#else
    uint32_t elected;
    asm volatile(
        "{\n"
        ".reg .b32 leader;\n"
        ".reg .pred p;\n"
        "elect.sync leader|p, 0xffffffff;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(elected));
    return elected != 0;
#endif
}

// setmaxnreg.{inc,dec}.sync.aligned.u32: a warpgroup raises or lowers its per-thread register budget
// (producers give registers to consumers). Legal counts: multiples of 8 in 24..256. A no-op on the host.
template <uint32_t Count>
GSDPA_DEVICE void setmaxnreg_inc(GSDPA_SITE_PARAM_ONLY) {
    static_assert(Count >= 24 && Count <= 256 && Count % 8 == 0, "setmaxnreg: a multiple of 8 in 24..256");
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::setmaxnreg(Count, site);
#else
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Count));
#endif
}

template <uint32_t Count>
GSDPA_DEVICE void setmaxnreg_dec(GSDPA_SITE_PARAM_ONLY) {
    static_assert(Count >= 24 && Count <= 256 && Count % 8 == 0, "setmaxnreg: a multiple of 8 in 24..256");
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::setmaxnreg(Count, site);
#else
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Count));
#endif
}

// fence.proxy.async.shared::cta: orders this thread's ordinary shared-memory stores before later reads of
// the same memory by the async proxy (wgmma descriptors, TMA stores). Needed between writing a tile with
// st.shared and handing it to wgmma or a TMA store.
GSDPA_DEVICE void fence_proxy_async(GSDPA_SITE_PARAM_ONLY) {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::fence_proxy_async(site);
#else
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

}  // namespace gsdpa
#endif
