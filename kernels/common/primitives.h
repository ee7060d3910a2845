// primitives.h: the warp- and thread-level primitives every kernel is written on.
//
// Each wrapper is a few lines of inline PTX on the GPU and a call into the emulator on the host
// (kernels/emu). This file and platform.h are the only places that look at GSDPA_EMULATOR.
// Exact semantics (fragment layouts, zero fill, group ordering): docs/ptx-primitives.md and
// the comments below.
//
// In emulator builds every wrapper takes a hidden trailing `site` argument (the caller's file and line,
// filled in by default) so that a divergent warp or a misaligned ldmatrix is reported where it happens.
#pragma once

#include "constants.h"
#include "platform.h"

#if defined(GSDPA_EMULATOR)
#define GSDPA_SITE_PARAM , ::gsdpa_emu::Site site = ::gsdpa_emu::Site::current()
#define GSDPA_SITE_PARAM_ONLY ::gsdpa_emu::Site site = ::gsdpa_emu::Site::current()
#else
#define GSDPA_SITE_PARAM
#define GSDPA_SITE_PARAM_ONLY
#endif

namespace gsdpa {

// ---------------------------------------------------------------------------------------------------
// 16-bit float conversions. A 32-bit register holding two 16-bit values keeps the first (`lo`) in bits
// 15:0, as the mma fragments expect. Rounding is to nearest even; NaN stays NaN.
// ---------------------------------------------------------------------------------------------------
template <class T>
GSDPA_DEVICE float to_float(T x);
template <class T>
GSDPA_DEVICE T from_float(float x);
template <class T>
GSDPA_DEVICE uint32_t pack_float2(float lo, float hi);
template <class T>
GSDPA_DEVICE float2 unpack_float2(uint32_t packed);

GSDPA_DEVICE uint32_t float_as_u32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}
GSDPA_DEVICE float u32_as_float(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

#if defined(GSDPA_EMULATOR)
template <>
GSDPA_DEVICE float to_float<bf16>(bf16 x) { return x.to_float(); }
template <>
GSDPA_DEVICE float to_float<f16>(f16 x) { return x.to_float(); }
template <>
GSDPA_DEVICE bf16 from_float<bf16>(float x) { return bf16::from_float(x); }
template <>
GSDPA_DEVICE f16 from_float<f16>(float x) { return f16::from_float(x); }
template <>
GSDPA_DEVICE uint32_t pack_float2<bf16>(float lo, float hi) {
    return uint32_t(bf16::from_float(lo).bits) | (uint32_t(bf16::from_float(hi).bits) << 16);
}
template <>
GSDPA_DEVICE uint32_t pack_float2<f16>(float lo, float hi) {
    return uint32_t(f16::from_float(lo).bits) | (uint32_t(f16::from_float(hi).bits) << 16);
}
template <>
GSDPA_DEVICE float2 unpack_float2<bf16>(uint32_t p) {
    return make_float2(bf16::from_bits(uint16_t(p & 0xffff)).to_float(), bf16::from_bits(uint16_t(p >> 16)).to_float());
}
template <>
GSDPA_DEVICE float2 unpack_float2<f16>(uint32_t p) {
    return make_float2(f16::from_bits(uint16_t(p & 0xffff)).to_float(), f16::from_bits(uint16_t(p >> 16)).to_float());
}
#else
template <>
GSDPA_DEVICE float to_float<bf16>(bf16 x) { return __bfloat162float(x); }
template <>
GSDPA_DEVICE float to_float<f16>(f16 x) { return __half2float(x); }
template <>
GSDPA_DEVICE bf16 from_float<bf16>(float x) { return __float2bfloat16_rn(x); }
template <>
GSDPA_DEVICE f16 from_float<f16>(float x) { return __float2half_rn(x); }
template <>
GSDPA_DEVICE uint32_t pack_float2<bf16>(float lo, float hi) {
    // __floats2bfloat162_rn(x, y) puts x in .x, the low half (the PTX cvt itself takes them swapped).
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
}
template <>
GSDPA_DEVICE uint32_t pack_float2<f16>(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
}
template <>
GSDPA_DEVICE float2 unpack_float2<bf16>(uint32_t p) {
    __nv_bfloat162 v;
    memcpy(&v, &p, 4);
    return __bfloat1622float2(v);
}
template <>
GSDPA_DEVICE float2 unpack_float2<f16>(uint32_t p) {
    __half2 v;
    memcpy(&v, &p, 4);
    return __half22float2(v);
}
#endif

// ---------------------------------------------------------------------------------------------------
// Special functions.
// ---------------------------------------------------------------------------------------------------

// 2^x. On the GPU ex2.approx (<= 2 ulp, -inf -> +0, denormal results flushed); on the host exp2f.
GSDPA_DEVICE float fast_exp2(float x) {
#if defined(GSDPA_EMULATOR)
    return exp2f(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

// sigmoid and 1 / x: fast_math.h.

// ---------------------------------------------------------------------------------------------------
// Shared memory. Kernels use dynamic shared memory only (the emulator cannot see static __shared__
// declarations); this returns its base, aligned to 128 bytes.
// ---------------------------------------------------------------------------------------------------
GSDPA_DEVICE char *dynamic_smem() {
#if defined(GSDPA_EMULATOR)
    return ::gsdpa_emu::dynamic_smem();
#else
    extern __shared__ __align__(128) char gsdpa_dynamic_smem[];
    return gsdpa_dynamic_smem;
#endif
}

// A load from / a store to shared memory that the emulator's race detector sees (docs/emulator.md): on the
// GPU a plain access; on the emulator it is checked against the other threads' accesses to the same
// bytes. Kernel code that hands data between threads through shared memory by hand (not through
// cp.async or ldmatrix) should use these, so that a missing __syncthreads or __syncwarp is caught.
template <class T>
GSDPA_DEVICE T ld_shared(const T *smem_src GSDPA_SITE_PARAM) {
#if defined(GSDPA_EMULATOR)
    T value;
    ::gsdpa_emu::shared_load(&value, smem_src, sizeof(T), site);
    return value;
#else
    return *smem_src;
#endif
}

template <class T>
GSDPA_DEVICE void st_shared(T *smem_dst, const T &value GSDPA_SITE_PARAM) {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::shared_store(smem_dst, &value, sizeof(T), site);
#else
    *smem_dst = value;
#endif
}

#if !defined(GSDPA_EMULATOR)
GSDPA_DEVICE uint32_t smem_u32(const void *p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
#endif

// ---------------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32: D = A * B + C, one warp.
// With g = lane / 4 and t = lane % 4:
//   A (16x16, row-major) a[0] = A[g][2t..2t+1],  a[1] = A[g+8][2t..2t+1],
//                        a[2] = A[g][2t+8..+9],  a[3] = A[g+8][2t+8..+9]
//   B (16x8, k x n)      b[0] = {B[2t][g], B[2t+1][g]},  b[1] = {B[2t+8][g], B[2t+9][g]}
//   C, D (16x8, f32)     c[0..1] = C[g][2t..2t+1],  c[2..3] = C[g+8][2t..2t+1]
// All 32 lanes must execute it together.
// ---------------------------------------------------------------------------------------------------
template <class T>
GSDPA_DEVICE void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                               const float (&c)[4] GSDPA_SITE_PARAM);

#if defined(GSDPA_EMULATOR)
template <>
GSDPA_DEVICE void mma_m16n8k16<bf16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                     const float (&c)[4], ::gsdpa_emu::Site site) {
    ::gsdpa_emu::mma_m16n8k16(::gsdpa_emu::MmaType::BF16, d, a, b, c, site);
}
template <>
GSDPA_DEVICE void mma_m16n8k16<f16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                    const float (&c)[4], ::gsdpa_emu::Site site) {
    ::gsdpa_emu::mma_m16n8k16(::gsdpa_emu::MmaType::F16, d, a, b, c, site);
}
#else
template <>
GSDPA_DEVICE void mma_m16n8k16<bf16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                     const float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}
template <>
GSDPA_DEVICE void mma_m16n8k16<f16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                    const float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}
#endif

// ---------------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16: 8x8 16-bit matrices from shared memory.
// Row r of matrix j comes from the 16-byte-aligned address held by lane 8j + r; r[j] receives matrix j.
// Plain: lane l gets {M[l/4][2(l%4)], M[l/4][2(l%4)+1]}; .trans: {M[2(l%4)][l/4], M[2(l%4)+1][l/4]}.
// Every lane passes an address (lanes beyond the matrices used are ignored but must be valid shared
// memory addresses on the emulator only if used).
// ---------------------------------------------------------------------------------------------------
#if defined(GSDPA_EMULATOR)
#define GSDPA_DEFINE_LDMATRIX(fn, N, TRANS)                                                      \
    GSDPA_DEVICE void fn(uint32_t (&r)[N], const void *smem_row GSDPA_SITE_PARAM) {             \
        ::gsdpa_emu::ldmatrix(r, N, TRANS, smem_row, site);                                     \
    }
GSDPA_DEFINE_LDMATRIX(ldmatrix_x1, 1, false)
GSDPA_DEFINE_LDMATRIX(ldmatrix_x2, 2, false)
GSDPA_DEFINE_LDMATRIX(ldmatrix_x4, 4, false)
GSDPA_DEFINE_LDMATRIX(ldmatrix_x1_trans, 1, true)
GSDPA_DEFINE_LDMATRIX(ldmatrix_x2_trans, 2, true)
GSDPA_DEFINE_LDMATRIX(ldmatrix_x4_trans, 4, true)
#undef GSDPA_DEFINE_LDMATRIX
#else
GSDPA_DEVICE void ldmatrix_x1(uint32_t (&r)[1], const void *smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_u32(smem_row)));
}
GSDPA_DEVICE void ldmatrix_x2(uint32_t (&r)[2], const void *smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(smem_row)));
}
GSDPA_DEVICE void ldmatrix_x4(uint32_t (&r)[4], const void *smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(smem_row)));
}
GSDPA_DEVICE void ldmatrix_x1_trans(uint32_t (&r)[1], const void *smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(smem_u32(smem_row)));
}
GSDPA_DEVICE void ldmatrix_x2_trans(uint32_t (&r)[2], const void *smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(smem_row)));
}
GSDPA_DEVICE void ldmatrix_x4_trans(uint32_t (&r)[4], const void *smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(smem_row)));
}
#endif

// ---------------------------------------------------------------------------------------------------
// cp.async: asynchronous global -> shared copies (sm_80+).
// cp_async_16 copies 16 bytes when `valid`, else writes 16 zero bytes without reading the source.
// cp_async_16_partial copies the first src_bytes (0..16) and zero-fills the rest.
// Both addresses must be 16-byte aligned. The data is visible to the issuing thread after
// cp_async_wait<N>() (at most the N newest committed groups still pending), and to other threads only
// after a __syncthreads() that follows that wait.
// ---------------------------------------------------------------------------------------------------
GSDPA_DEVICE void cp_async_16_partial(void *smem_dst, const void *gmem_src, int src_bytes GSDPA_SITE_PARAM) {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::cp_async(smem_dst, gmem_src, 16, src_bytes, site);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem_dst)), "l"(gmem_src),
                 "r"(src_bytes));
#endif
}

GSDPA_DEVICE void cp_async_16(void *smem_dst, const void *gmem_src, bool valid GSDPA_SITE_PARAM) {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::cp_async(smem_dst, gmem_src, 16, valid ? 16 : 0, site);
#else
    cp_async_16_partial(smem_dst, gmem_src, valid ? 16 : 0);
#endif
}

GSDPA_DEVICE void cp_async_commit() {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
GSDPA_DEVICE void cp_async_wait() {
#if defined(GSDPA_EMULATOR)
    ::gsdpa_emu::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

}  // namespace gsdpa
