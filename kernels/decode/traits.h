// traits.h: compile-time shape of the paged decode kernel for one (dtype, head dim).
//
// A block computes BLOCK_M "query rows" of one (batch, kv head, split). With GQA packing a row is a pair
// (query position i, query head hg of the kv head's group), row r = i * group + hg, so every query head
// that reads a kv head shares its K/V tiles: each K/V byte of a split is read once per kv head, not once
// per query head. Decode has group * Sq rows (Qwen3-Next: 8 x 1), padded to the mma's 16-row tiles;
// longer problems (speculative decoding, chunked prefill) use several row blocks.
//
// Four warps, each owning 16 rows (one m16 tile), as in the forward's D = 256 kernel. Key tiles are
// BLOCK_N keys gathered row by row through the block table (paged_tile.h), single-buffered K and V whose
// loads alternate with the two GEMMs (FlashAttention-2's scheme, see forward/kernel_traits.h):
//
//   D    BLOCK_M x BLOCK_N  smem
//   64   64 x 32            16 KiB
//   128  64 x 32            32 KiB
//   256  64 x 32            64 KiB
//
// 32 keys per tile at every head dim: 64-key tiles spill on sm_80 at D = 64 (with the padding-warp
// skip) and D = 128, and at D = 256 a 64-key score tile next to 128 f32 O registers would too.
// ptxas (CUDA 13.0): no spills, no stack on any target (tests/build_info.rs).
// Q is re-read from shared memory each k-step (not kept in registers): decode is bound by the K/V
// bytes from HBM, not by shared-memory traffic, and it keeps the register count flat over head dims.
// Shared memory: [Q: BLOCK_M x D][K: BLOCK_N x D][V: BLOCK_N x D][flag: 16 bytes], 16-bit and swizzled.
#pragma once

#include "../common/fragments.h"

namespace gsdpa {
namespace decode {

template <int D>
struct DecodeGeometry;
template <>
struct DecodeGeometry<64> {
    static constexpr int BLOCK_N = GSDPA_DECODE_BLOCK_N_D64, SMEM = GSDPA_DECODE_SMEM_D64;
};
template <>
struct DecodeGeometry<128> {
    static constexpr int BLOCK_N = GSDPA_DECODE_BLOCK_N_D128, SMEM = GSDPA_DECODE_SMEM_D128;
};
template <>
struct DecodeGeometry<256> {
    static constexpr int BLOCK_N = GSDPA_DECODE_BLOCK_N_D256, SMEM = GSDPA_DECODE_SMEM_D256;
};

template <class T_, int D_>
struct DecodeTraits {
    using T = T_;
    static constexpr int D = D_;
    static constexpr int BLOCK_M = GSDPA_DECODE_BLOCK_M;
    static constexpr int BLOCK_N = DecodeGeometry<D>::BLOCK_N;
    static constexpr int THREADS = GSDPA_DECODE_THREADS;
    static constexpr int WARPS = THREADS / 32;

    static constexpr int K_STEPS_QK = D / 16;        // k-steps of S = Q K^T (over the head dim)
    static constexpr int N_TILES_S = BLOCK_N / 8;    // 16 x 8 score tiles per warp
    static constexpr int K_STEPS_PV = BLOCK_N / 16;  // k-steps of O += P V (over the keys)
    static constexpr int N_TILES_O = D / 8;          // 16 x 8 output tiles per warp

    // Shared memory, in elements of T.
    static constexpr int SMEM_Q = 0;
    static constexpr int SMEM_K = SMEM_Q + BLOCK_M * D;
    static constexpr int SMEM_V = SMEM_K + BLOCK_N * D;
    static constexpr int SMEM_FLAG_BYTES = (SMEM_V + BLOCK_N * D) * int(sizeof(T));
    static constexpr int SMEM_BYTES = SMEM_FLAG_BYTES + 16;

    static_assert(sizeof(T) == 2, "16-bit element types only");
    static_assert(BLOCK_M == 16 * WARPS, "each warp owns 16 query rows");
    static_assert(BLOCK_N % 16 == 0 && D % 64 == 0, "whole mma tiles and swizzled 128-byte rows");
    static_assert(SMEM_BYTES == DecodeGeometry<D>::SMEM, "GSDPA_DECODE_SMEM_* must match the layout");
    static_assert(SMEM_BYTES <= 99 * 1024, "must fit sm_86 / sm_89 (99 KiB per block)");
};

}  // namespace decode
}  // namespace gsdpa
