// tma.h: the Tensor Memory Accelerator (sm_90a): tiled cp.async.bulk.tensor loads into shared memory that
// complete on an mbarrier, tensor stores and reduce-adds from shared memory in bulk groups. The tensor
// map (GsdpaTensorMap, kernels/gsdpa_params.h) comes from src/tma.rs: cuTensorMapEncodeTiled on the GPU,
// the emulator's encoder of the same parameters on the host. Semantics: docs/ptx-primitives.md.
//
// Use: the producer thread arms the stage's barrier with the box bytes (mbarrier_arrive_expect_tx) and
// issues the loads; consumers mbarrier_wait on it before reading the box (wgmma or ld_shared). Boxes lie
// in shared memory dimension 0 innermost, swizzled as the map says, 128-byte aligned (1024 for the 128B
// swizzle, to match wgmma's pattern). Elements outside the tensor read as zero (or NaN, as the map says)
// and still count towards the transaction bytes.
#pragma once

#include "arch.h"

#if GSDPA_HOPPER
namespace gsdpa {

// Coordinates are element indices per dimension, innermost first; they may be negative or run past the
// tensor's end (that part of the box is filled).
template <int Rank>
GSDPA_DEVICE void tma_load(void *smem_dst, const GsdpaTensorMap &map, uint64_t *bar,
                           const int32_t (&c)[Rank] GSDPA_SITE_PARAM) {
    static_assert(Rank >= 1 && Rank <= 5, "TMA tensors have 1..5 dimensions");
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::tma_load(smem_dst, &map, bar, c, Rank, site);
#else
    const uint32_t dst = smem_addr(smem_dst), b = smem_addr(bar);
    const uint64_t m = reinterpret_cast<uint64_t>(&map);
    if constexpr (Rank == 1) {
        asm volatile("cp.async.bulk.tensor.1d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3}], [%2];\n"
                     ::"r"(dst), "l"(m), "r"(b), "r"(c[0]) : "memory");
    } else if constexpr (Rank == 2) {
        asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n"
                     ::"r"(dst), "l"(m), "r"(b), "r"(c[0]), "r"(c[1]) : "memory");
    } else if constexpr (Rank == 3) {
        asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];\n"
                     ::"r"(dst), "l"(m), "r"(b), "r"(c[0]), "r"(c[1]), "r"(c[2]) : "memory");
    } else if constexpr (Rank == 4) {
        asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], [%2];\n"
                     ::"r"(dst), "l"(m), "r"(b), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]) : "memory");
    } else {
        asm volatile("cp.async.bulk.tensor.5d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6, %7}], [%2];\n"
                     ::"r"(dst), "l"(m), "r"(b), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]), "r"(c[4]) : "memory");
    }
#endif
}

// Shared -> global: the box at `c`; elements outside the tensor are not written. With ReduceAdd the box is
// added to the tensor (cp.reduce.async.bulk.tensor .add) instead. Issue after fence_proxy_async() (the box
// was written with ordinary stores); the source must stay unchanged until bulk_wait_read.
template <int Rank, bool ReduceAdd = false>
GSDPA_DEVICE void tma_store(const GsdpaTensorMap &map, const void *smem_src, const int32_t (&c)[Rank] GSDPA_SITE_PARAM) {
    static_assert(Rank >= 1 && Rank <= 5, "TMA tensors have 1..5 dimensions");
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::tma_store(&map, smem_src, c, Rank, ReduceAdd, site);
#else
    const uint32_t src = smem_addr(smem_src);
    const uint64_t m = reinterpret_cast<uint64_t>(&map);
    if constexpr (ReduceAdd) {
        if constexpr (Rank == 1) asm volatile("cp.reduce.async.bulk.tensor.1d.global.shared::cta.add.tile.bulk_group [%0, {%2}], [%1];\n" ::"l"(m), "r"(src), "r"(c[0]) : "memory");
        else if constexpr (Rank == 2) asm volatile("cp.reduce.async.bulk.tensor.2d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(m), "r"(src), "r"(c[0]), "r"(c[1]) : "memory");
        else if constexpr (Rank == 3) asm volatile("cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"(m), "r"(src), "r"(c[0]), "r"(c[1]), "r"(c[2]) : "memory");
        else if constexpr (Rank == 4) asm volatile("cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(m), "r"(src), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]) : "memory");
        else asm volatile("cp.reduce.async.bulk.tensor.5d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4, %5, %6}], [%1];\n" ::"l"(m), "r"(src), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]), "r"(c[4]) : "memory");
    } else {
        if constexpr (Rank == 1) asm volatile("cp.async.bulk.tensor.1d.global.shared::cta.bulk_group [%0, {%2}], [%1];\n" ::"l"(m), "r"(src), "r"(c[0]) : "memory");
        else if constexpr (Rank == 2) asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(m), "r"(src), "r"(c[0]), "r"(c[1]) : "memory");
        else if constexpr (Rank == 3) asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"(m), "r"(src), "r"(c[0]), "r"(c[1]), "r"(c[2]) : "memory");
        else if constexpr (Rank == 4) asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(m), "r"(src), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]) : "memory");
        else asm volatile("cp.async.bulk.tensor.5d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5, %6}], [%1];\n" ::"l"(m), "r"(src), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]), "r"(c[4]) : "memory");
    }
#endif
}

// Closes this thread's outstanding TMA stores into a bulk group.
GSDPA_DEVICE void bulk_commit(GSDPA_SITE_PARAM_ONLY) {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::bulk_commit(site);
#else
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N bulk groups of this thread still read their shared-memory sources.
template <int N>
GSDPA_DEVICE void bulk_wait_read(GSDPA_SITE_PARAM_ONLY) {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::bulk_wait_read(N, site);
#else
    asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
#endif
}

// Brings the tensor map into the TMA unit's cache ahead of the first load (a hint; a no-op on the host).
GSDPA_DEVICE void tma_prefetch_map(const GsdpaTensorMap &map) {
#if defined(GSDPA_EMULATOR)
    (void)map;
#else
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&map)) : "memory");
#endif
}

}  // namespace gsdpa
#endif
