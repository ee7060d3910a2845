// conformance.cu: runs every primitive of primitives.h once on structured inputs and dumps each lane's
// registers. tests/conformance.rs checks the emulator's dump against the PTX layouts computed
// independently in Rust; on a GPU the same kernel checks the emulator against the hardware.
//
// Inputs: X[r][c] = r*16 + c (0..255, exact in bf16 and f16), stored row-major twice: as bf16 at
// input[0..256) and as f16 at input[256..512). In shared memory a row is 32 bytes.
//
// Output slots per lane (out[lane * GSDPA_CONFORMANCE_SLOTS + slot]):
//   0..3   ldmatrix_x4        lane l points at &X[l % 16][(l / 16) * 8]   (the A-fragment addressing)
//   4..7   ldmatrix_x4_trans  same addresses
//   8..9   ldmatrix_x2        &X[l % 8][((l / 8) % 2) * 8]                 (B stored [n][k])
//   10..11 ldmatrix_x2_trans  &X[l % 16][0]                               (B stored [k][n])
//   12     ldmatrix_x1        &X[l % 8][0]
//   13     ldmatrix_x1_trans  &X[l % 8][8]
//   14..17 mma bf16: A = slots 0..3, B = slots 8..9, C[i] = lane * 4 + i; D as f32 bits
//   18..21 mma f16: the same fragments loaded from the f16 copy of X
//   22..25 __shfl_xor_sync of (lane + 100), width 32, lane masks 1, 2, 4, 16
//   26..28 __shfl_xor_sync width 8, lane masks 1, 4, 8
//   29     __shfl_sync width 32 from lane (7 * lane) % 32;   30: width 8 from lane 3
//   31     __shfl_up_sync 1, width 32;   32: __shfl_up_sync 3, width 8
//   33     __shfl_down_sync 2, width 32; 34: __shfl_down_sync 5, width 16
//   35..38 cp.async: lanes 0..3 copy 16 bytes from input + 16 * lane with src-size {0, 4, 12, 16}[lane]
//          into a poisoned area; every lane then reads the 16 bytes of area (lane % 4)
//   39     pack_float2<bf16>(specials[2 lane], specials[2 lane + 1])
//   40     pack_float2<f16>(specials[2 lane], specials[2 lane + 1])
//   41     __any_sync(lane == 17);   42: __any_sync(0);   43: __any_sync(lane % 2)
//   44..47 zero
#include "common/primitives.h"

namespace gsdpa {

// Byte offset of X[r][c] in the shared-memory copy (32-byte rows, no swizzle).
GSDPA_DEVICE int conformance_offset(int r, int c) { return r * 32 + c * 2; }

GSDPA_DEVICE void conformance_body(const GsdpaConformanceParams &p) {
    char *smem = dynamic_smem();
    char *x_bf16 = smem;
    char *x_f16 = smem + 512;
    char *async_area = smem + 1024;
    const int lane = threadIdx.x;
    uint32_t *out = p.out + lane * GSDPA_CONFORMANCE_SLOTS;
    for (int slot = 0; slot < GSDPA_CONFORMANCE_SLOTS; ++slot) out[slot] = 0;

    // Stage both copies of X: 64 chunks of 16 bytes, two per lane.
    for (int chunk = lane; chunk < 64; chunk += 32) {
        const uint4 v = reinterpret_cast<const uint4 *>(p.input)[chunk];
        *reinterpret_cast<uint4 *>(smem + chunk * 16) = v;
    }
    __syncthreads();

    uint32_t a[4], a_t[4], b[2], b_t[2], r1[1], r1_t[1];
    ldmatrix_x4(a, x_bf16 + conformance_offset(lane % 16, (lane / 16) * 8));
    ldmatrix_x4_trans(a_t, x_bf16 + conformance_offset(lane % 16, (lane / 16) * 8));
    ldmatrix_x2(b, x_bf16 + conformance_offset(lane % 8, ((lane / 8) % 2) * 8));
    ldmatrix_x2_trans(b_t, x_bf16 + conformance_offset(lane % 16, 0));
    ldmatrix_x1(r1, x_bf16 + conformance_offset(lane % 8, 0));
    ldmatrix_x1_trans(r1_t, x_bf16 + conformance_offset(lane % 8, 8));
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        out[j] = a[j];
        out[4 + j] = a_t[j];
    }
    out[8] = b[0];
    out[9] = b[1];
    out[10] = b_t[0];
    out[11] = b_t[1];
    out[12] = r1[0];
    out[13] = r1_t[0];

    float c[4], d[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) c[i] = static_cast<float>(lane * 4 + i);
    mma_m16n8k16<bf16>(d, a, b, c);
#pragma unroll
    for (int i = 0; i < 4; ++i) out[14 + i] = float_as_u32(d[i]);

    uint32_t ah[4], bh[2];
    ldmatrix_x4(ah, x_f16 + conformance_offset(lane % 16, (lane / 16) * 8));
    ldmatrix_x2(bh, x_f16 + conformance_offset(lane % 8, ((lane / 8) % 2) * 8));
    mma_m16n8k16<f16>(d, ah, bh, c);
#pragma unroll
    for (int i = 0; i < 4; ++i) out[18 + i] = float_as_u32(d[i]);

    const uint32_t value = static_cast<uint32_t>(lane + 100);
    out[22] = __shfl_xor_sync(0xffffffffu, value, 1);
    out[23] = __shfl_xor_sync(0xffffffffu, value, 2);
    out[24] = __shfl_xor_sync(0xffffffffu, value, 4);
    out[25] = __shfl_xor_sync(0xffffffffu, value, 16);
    out[26] = __shfl_xor_sync(0xffffffffu, value, 1, 8);
    out[27] = __shfl_xor_sync(0xffffffffu, value, 4, 8);
    out[28] = __shfl_xor_sync(0xffffffffu, value, 8, 8);
    out[29] = __shfl_sync(0xffffffffu, value, (7 * lane) % 32);
    out[30] = __shfl_sync(0xffffffffu, value, 3, 8);
    out[31] = __shfl_up_sync(0xffffffffu, value, 1);
    out[32] = __shfl_up_sync(0xffffffffu, value, 3, 8);
    out[33] = __shfl_down_sync(0xffffffffu, value, 2);
    out[34] = __shfl_down_sync(0xffffffffu, value, 5, 16);

    // cp.async with zero fill. The area is poisoned first so that bytes the copy must zero are not
    // already zero by accident.
    for (int i = lane; i < 16; i += 32) reinterpret_cast<uint32_t *>(async_area)[i] = 0xdeadbeefu;
    __syncthreads();
    if (lane < 4) {
        const int src_bytes = lane == 0 ? 0 : lane == 1 ? 4 : lane == 2 ? 12 : 16;
        cp_async_16_partial(async_area + 16 * lane, reinterpret_cast<const char *>(p.input) + 16 * lane, src_bytes);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 4; ++i) out[35 + i] = reinterpret_cast<const uint32_t *>(async_area + 16 * (lane % 4))[i];

    out[39] = pack_float2<bf16>(p.specials[2 * lane], p.specials[2 * lane + 1]);
    out[40] = pack_float2<f16>(p.specials[2 * lane], p.specials[2 * lane + 1]);

    out[41] = static_cast<uint32_t>(__any_sync(0xffffffffu, lane == 17));
    out[42] = static_cast<uint32_t>(__any_sync(0xffffffffu, 0));
    out[43] = static_cast<uint32_t>(__any_sync(0xffffffffu, lane % 2));
}

}  // namespace gsdpa

extern "C" __global__ void __launch_bounds__(32) gsdpa_conformance(const GsdpaConformanceParams p) {
    gsdpa::conformance_body(p);
}
GSDPA_REGISTER_KERNEL(gsdpa_conformance, GsdpaConformanceParams, 32)
