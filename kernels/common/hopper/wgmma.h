// wgmma.h: warpgroup matrix multiply-accumulate (sm_90a): wgmma.mma_async m64nNk16 with f32 accumulators
// and bf16/f16 inputs, its shared-memory matrix descriptors, and wgmma.fence / commit_group / wait_group.
// Layouts and descriptor fields: docs/ptx-primitives.md.
//
// A warpgroup is 4 consecutive warps (threads 128 w .. 128 w + 127); all 128 threads issue each wgmma.
// Thread i of the warpgroup (warp i / 32, lane g = lane / 4, t = lane % 4) holds N / 2 accumulators:
//   d[r] = D[16 (i / 32) + g + 8 ((r / 2) % 2)][8 (r / 4) + 2 t + r % 2]
// and, with A from registers, the mma.sync A fragment of rows 16 (i / 32) .. + 15 (primitives.h).
//
// The use pattern (what the emulator enforces):
//   wgmma_fence();                       // after the last write to d or a by ordinary instructions
//   wgmma_ss<T, N>(d, desc_a, desc_b, accumulate);   // any number, chaining on the same d
//   wgmma_commit();                      // closes a group
//   wgmma_wait<0>();                     // or <1> to keep the newest group in flight
//   ... d is readable, the operands' shared memory may be overwritten ...
// Between the issue and the wait that retires its group, d must not be read or written and the
// operands (A registers, both tiles in shared memory) must not change.
#pragma once

#include "arch.h"

#if GSDPA_HOPPER
#if !defined(GSDPA_EMULATOR)
#include "wgmma_ops.h"
#endif

namespace gsdpa {

// The descriptor's layout type (bits 63-62): the swizzle span of the tile's rows.
enum class WgmmaSwizzle : uint32_t { None = 0, B128 = 1, B64 = 2, B32 = 3 };

// Shared-memory matrix descriptor of a tile starting at `smem`, with leading and stride byte offsets
// (docs/ptx-primitives.md says which is which for each layout). Each address field holds bytes / 16 in
// 14 bits; the base offset stays 0: tiles are aligned to their swizzle pattern (1024 bytes for 128B).
GSDPA_DEVICE uint64_t wgmma_descriptor(const void *smem, uint32_t leading_bytes, uint32_t stride_bytes,
                                       WgmmaSwizzle swizzle GSDPA_SITE_PARAM) {
#if defined(GSDPA_EMULATOR)
    const uint32_t address = smem_addr(smem, site);
#else
    const uint32_t address = smem_addr(smem);
#endif
    return uint64_t((address & 0x3FFFF) >> 4) | (uint64_t((leading_bytes & 0x3FFFF) >> 4) << 16) |
           (uint64_t((stride_bytes & 0x3FFFF) >> 4) << 32) | (uint64_t(swizzle) << 62);
}

// A descriptor moved `bytes` further into shared memory (the next k step of a tile): only the start
// address field changes.
GSDPA_DEVICE uint64_t wgmma_descriptor_advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

GSDPA_DEVICE void wgmma_fence(GSDPA_SITE_PARAM_ONLY) {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::wgmma_fence(site);
#else
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

GSDPA_DEVICE void wgmma_commit(GSDPA_SITE_PARAM_ONLY) {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::wgmma_commit(site);
#else
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

// Waits until at most N committed groups of this thread are in flight.
template <int N>
GSDPA_DEVICE void wgmma_wait(GSDPA_SITE_PARAM_ONLY) {
    static_assert(N >= 0 && N <= 7, "wgmma.wait_group takes 0..7");
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::wgmma_wait(N, site);
#else
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// The input type: bf16 or f16 (anything else does not compile).
template <class T>
struct WgmmaInput;
template <>
struct WgmmaInput<bf16> {
    static constexpr bool is_bf16 = true;
};
template <>
struct WgmmaInput<f16> {
    static constexpr bool is_bf16 = false;
};

// D (64 x N) = A (64 x 16) B (16 x N) (+ D when accumulate): A and B through descriptors. TransA / TransB:
// the operand is MN-major (M or N contiguous) instead of K-major.
template <class T, int N, bool TransA = false, bool TransB = false>
GSDPA_DEVICE void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate GSDPA_SITE_PARAM) {
    static_assert(N >= 8 && N <= 256 && N % 8 == 0, "wgmma: N is a multiple of 8 in 8..256");
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::WgmmaOp op;
    op.type = WgmmaInput<T>::is_bf16 ? ::gsdpa_emu::MmaType::BF16 : ::gsdpa_emu::MmaType::F16;
    op.n = N;
    op.desc_a = desc_a;
    op.desc_b = desc_b;
    op.trans_a = TransA;
    op.trans_b = TransB;
    op.accumulate = accumulate;
    op.d = d;
    ::gsdpa_emu::wgmma(op, site);
#else
    wgmma_detail::WgmmaOps<N>::template ss<WgmmaInput<T>::is_bf16, TransA ? 1 : 0, TransB ? 1 : 0>(
        d, desc_a, desc_b, accumulate ? 1u : 0u);
#endif
}

// The same with A from registers: a[4] is the mma.sync A fragment of the warp's 16 rows.
template <class T, int N, bool TransB = false>
GSDPA_DEVICE void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, bool accumulate GSDPA_SITE_PARAM) {
    static_assert(N >= 8 && N <= 256 && N % 8 == 0, "wgmma: N is a multiple of 8 in 8..256");
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::WgmmaOp op;
    op.type = WgmmaInput<T>::is_bf16 ? ::gsdpa_emu::MmaType::BF16 : ::gsdpa_emu::MmaType::F16;
    op.n = N;
    op.a_from_registers = true;
    op.a = a;
    op.desc_b = desc_b;
    op.trans_b = TransB;
    op.accumulate = accumulate;
    op.d = d;
    ::gsdpa_emu::wgmma(op, site);
#else
    wgmma_detail::WgmmaOps<N>::template rs<WgmmaInput<T>::is_bf16, TransB ? 1 : 0>(d, a, desc_b, accumulate ? 1u : 0u);
#endif
}

}  // namespace gsdpa
#endif
