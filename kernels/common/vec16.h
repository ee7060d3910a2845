// vec16.h: 16-byte vector accesses, the unit every kernel moves rows of a tensor in: 8 elements of a
// 16-bit type (or 4 f32) per thread and access.
//
// A warp reading 32 consecutive 16-byte chunks touches 512 contiguous bytes in one instruction; 8
// consecutive 16-bit elements per thread is also what a swizzled shared-memory chunk holds
// (common/swizzle.h). The address must be 16-byte aligned (the launch contracts guarantee it for tensor
// rows; swizzled chunks are aligned by construction).
//
// Checked in the PTX (nvcc -ptx -arch=sm_80, CUDA 13.0): every load_vec16 / store_vec16 through an
// element pointer is one 128-bit access: ld.global.v4.u32 / st.global.v4.u32 for uint4 (load8, store8),
// ld.global.v4.f32 / st.global.v4.f32 for float4 (dq_accum), ld.shared.v4.u32 for store_tile's read of a
// swizzled chunk; the gate kernels' uint4 row arrays give the same ld/st.global.v4.u32.
#pragma once

#include "primitives.h"

namespace gsdpa {

// One 16-byte load / store. V: uint4 (8 packed 16-bit elements) or float4 (4 f32); T: the element type
// the pointer is typed with.
template <class V = uint4, class T>
GSDPA_DEVICE V load_vec16(const T *src) {
    static_assert(sizeof(V) == 16, "16-byte vectors only");
    return *reinterpret_cast<const V *>(src);
}
template <class V, class T>
GSDPA_DEVICE void store_vec16(T *dst, const V &v) {
    static_assert(sizeof(V) == 16, "16-byte vectors only");
    *reinterpret_cast<V *>(dst) = v;
}

// 8 16-bit elements of type T, packed two per 32-bit word in memory order, to and from f32.
template <class T>
GSDPA_DEVICE void unpack8(const uint4 v, float (&f)[8]) {
    const float2 p0 = unpack_float2<T>(v.x), p1 = unpack_float2<T>(v.y);
    const float2 p2 = unpack_float2<T>(v.z), p3 = unpack_float2<T>(v.w);
    f[0] = p0.x, f[1] = p0.y, f[2] = p1.x, f[3] = p1.y;
    f[4] = p2.x, f[5] = p2.y, f[6] = p3.x, f[7] = p3.y;
}
template <class T>
GSDPA_DEVICE uint4 pack8(const float (&f)[8]) {
    uint4 v;
    v.x = pack_float2<T>(f[0], f[1]);
    v.y = pack_float2<T>(f[2], f[3]);
    v.z = pack_float2<T>(f[4], f[5]);
    v.w = pack_float2<T>(f[6], f[7]);
    return v;
}

// 8 consecutive elements of T at src, as f32 (one 16-byte load).
template <class T>
GSDPA_DEVICE void load8(float (&f)[8], const T *src) {
    unpack8<T>(load_vec16(src), f);
}
// 8 f32, rounded to T, to 8 consecutive elements at dst (one 16-byte store).
template <class T>
GSDPA_DEVICE void store8(T *dst, const float (&f)[8]) {
    store_vec16(dst, pack8<T>(f));
}

}  // namespace gsdpa
