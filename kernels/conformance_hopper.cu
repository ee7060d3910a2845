// conformance_hopper.cu: runs the Hopper primitives (kernels/common/hopper/) on cases the host prepares
// and dumps what they produce, so that tests/conformance_hopper.rs can check the emulator against the PTX
// ISA's formulas computed independently in Rust, and a Hopper GPU against the emulator. The entry points
// are empty on every arch but sm_90a (and never launched there).
//
//   gsdpa_conformance_wgmma     one warpgroup per case (GsdpaWgmmaCase): every accumulator of every thread
//   gsdpa_conformance_tma       one block per case (GsdpaTmaCase): a loaded box's raw bytes, or a store
//   gsdpa_conformance_mbarrier  mbarrier phase sequences, as test_wait sees them
//   gsdpa_conformance_stmatrix  every stmatrix shape, and elect.sync
#include "common/hopper/mbarrier.h"
#include "common/hopper/stmatrix.h"
#include "common/hopper/tma.h"
#include "common/hopper/wgmma.h"

#if GSDPA_HOPPER
namespace gsdpa {
namespace hopper_conformance {

constexpr int kThreads = GSDPA_HOPPER_CONF_THREADS;

// Copies `bytes` (a multiple of 16) from global memory to shared memory offset 0 with the whole block,
// then makes the ordinary stores visible to the async proxy (wgmma, TMA) and to the other threads.
GSDPA_DEVICE void stage_image(char *smem, const uint8_t *image, uint32_t bytes) {
    for (uint32_t i = 16 * threadIdx.x; i < bytes; i += 16 * kThreads) {
        *reinterpret_cast<uint4 *>(smem + i) = *reinterpret_cast<const uint4 *>(image + i);
    }
    fence_proxy_async();
    __syncthreads();
}

template <class T, int N, bool TransA, bool TransB, bool FromRegisters>
GSDPA_DEVICE void wgmma_case(const GsdpaWgmmaConformanceParams &p, const GsdpaWgmmaCase &c) {
    constexpr int R = N / 2;
    const int tid = threadIdx.x;
    char *smem = dynamic_smem();
    stage_image(smem, p.images + c.image_offset, c.image_bytes);
    // Without accumulate the first wgmma must overwrite d: start from a value that would show.
    float d[R];
    const float *c_init = p.c_init + c.c_offset + size_t(tid) * R;
#pragma unroll
    for (int r = 0; r < R; ++r) d[r] = c.accumulate ? c_init[r] : -12345.0f;
    // A fragments (the mma.sync A layout of the warp's 16 rows) from row-major 64 x (16 k_steps) bf16/f16.
    uint32_t a[4][4];
    const int warp = tid / 32, g = (tid % 32) / 4, t = tid % 4;
    const uint16_t *a_rows = p.a_rows + c.a_offset;
    const int a_cols = 16 * static_cast<int>(c.k_steps);
#pragma unroll
    for (int s = 0; s < 4; ++s) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            a[s][j] = 0;
            if (FromRegisters && s < static_cast<int>(c.k_steps)) {
                const int row = 16 * warp + g + 8 * (j % 2), col = 16 * s + 2 * t + 8 * (j / 2);
                a[s][j] = uint32_t(a_rows[row * a_cols + col]) | (uint32_t(a_rows[row * a_cols + col + 1]) << 16);
            }
        }
    }
    wgmma_fence();
#pragma unroll
    for (int s = 0; s < 4; ++s) {
        if (s < static_cast<int>(c.k_steps)) {
            const bool accumulate = c.accumulate != 0 || s > 0;
            if constexpr (FromRegisters) {
                wgmma_rs<T, N, TransB>(d, a[s], c.desc_b[s], accumulate);
            } else {
                wgmma_ss<T, N, TransA, TransB>(d, c.desc_a[s], c.desc_b[s], accumulate);
            }
        }
    }
    wgmma_commit();
    wgmma_wait<0>();
    float *out = p.out + c.out_offset + size_t(tid) * R;
#pragma unroll
    for (int r = 0; r < R; ++r) out[r] = d[r];
}

template <class T, int N>
GSDPA_DEVICE void wgmma_modes(const GsdpaWgmmaConformanceParams &p, const GsdpaWgmmaCase &c) {
    if (c.a_from_registers) {
        if (c.trans_b) wgmma_case<T, N, false, true, true>(p, c);
        else wgmma_case<T, N, false, false, true>(p, c);
    } else if (c.trans_a) {
        if (c.trans_b) wgmma_case<T, N, true, true, false>(p, c);
        else wgmma_case<T, N, true, false, false>(p, c);
    } else {
        if (c.trans_b) wgmma_case<T, N, false, true, false>(p, c);
        else wgmma_case<T, N, false, false, false>(p, c);
    }
}

template <class T>
GSDPA_DEVICE void wgmma_shapes(const GsdpaWgmmaConformanceParams &p, const GsdpaWgmmaCase &c) {
    // The N the tests cover (tests/conformance_hopper.rs lists the same).
    switch (c.n) {
        case 8: wgmma_modes<T, 8>(p, c); break;
        case 16: wgmma_modes<T, 16>(p, c); break;
        case 24: wgmma_modes<T, 24>(p, c); break;
        case 32: wgmma_modes<T, 32>(p, c); break;
        case 64: wgmma_modes<T, 64>(p, c); break;
        case 96: wgmma_modes<T, 96>(p, c); break;
        case 128: wgmma_modes<T, 128>(p, c); break;
        case 176: wgmma_modes<T, 176>(p, c); break;
        case 192: wgmma_modes<T, 192>(p, c); break;
        case 256: wgmma_modes<T, 256>(p, c); break;
        default: break;  // out stays poisoned: the test fails
    }
}

template <int Rank>
GSDPA_DEVICE void tma_case_rank(const GsdpaTmaConformanceParams &p, const GsdpaTmaCase &c, char *smem, uint64_t *bar) {
    int32_t coords[Rank];
#pragma unroll
    for (int i = 0; i < Rank; ++i) coords[i] = c.coords[i];
    const int tid = threadIdx.x;
    if (!c.is_store) {
        if (tid == 0) {
            mbarrier_arrive_expect_tx(bar, c.box_bytes);
            tma_load<Rank>(smem, c.map, bar, coords);
        }
        mbarrier_wait(bar, 0);
        for (uint32_t i = 16 * tid; i < c.box_bytes; i += 16 * kThreads) {
            *reinterpret_cast<uint4 *>(p.out + c.out_offset + i) = ld_shared(reinterpret_cast<const uint4 *>(smem + i));
        }
    } else {
        stage_image(smem, p.image + c.out_offset, c.box_bytes);
        if (tid == 0) {
            if (c.reduce_add) tma_store<Rank, true>(c.map, smem, coords);
            else tma_store<Rank, false>(c.map, smem, coords);
            bulk_commit();
            bulk_wait_read<0>();
        }
    }
}

}  // namespace hopper_conformance
}  // namespace gsdpa
#endif

extern "C" __global__ void __launch_bounds__(GSDPA_HOPPER_CONF_THREADS)
    gsdpa_conformance_wgmma(const GsdpaWgmmaConformanceParams p) {
#if GSDPA_HOPPER
    const GsdpaWgmmaCase &c = p.cases[blockIdx.x];
    if (c.dtype == 0) gsdpa::hopper_conformance::wgmma_shapes<gsdpa::bf16>(p, c);
    else gsdpa::hopper_conformance::wgmma_shapes<gsdpa::f16>(p, c);
#endif
}
GSDPA_REGISTER_KERNEL(gsdpa_conformance_wgmma, GsdpaWgmmaConformanceParams, GSDPA_HOPPER_CONF_THREADS)

extern "C" __global__ void __launch_bounds__(GSDPA_HOPPER_CONF_THREADS)
    gsdpa_conformance_tma(const GsdpaTmaConformanceParams p) {
#if GSDPA_HOPPER
    using namespace gsdpa;
    const GsdpaTmaCase &c = p.cases[blockIdx.x];
    char *smem = dynamic_smem();
    uint64_t *bar = reinterpret_cast<uint64_t *>(smem + GSDPA_TMA_CONF_SMEM - 64);
    if (threadIdx.x == 0) {
        mbarrier_init(bar, 1);
        fence_barrier_init();
    }
    __syncthreads();
    switch (c.rank) {
        case 1: hopper_conformance::tma_case_rank<1>(p, c, smem, bar); break;
        case 2: hopper_conformance::tma_case_rank<2>(p, c, smem, bar); break;
        case 3: hopper_conformance::tma_case_rank<3>(p, c, smem, bar); break;
        case 4: hopper_conformance::tma_case_rank<4>(p, c, smem, bar); break;
        case 5: hopper_conformance::tma_case_rank<5>(p, c, smem, bar); break;
        default: break;
    }
#endif
}
GSDPA_REGISTER_KERNEL(gsdpa_conformance_tma, GsdpaTmaConformanceParams, GSDPA_HOPPER_CONF_THREADS)

// Round r: a barrier expecting (r % 4) + 1 arrivals goes through three phases; the arrivals come from
// threads (37 i + r) % 128 one at a time, and after each event thread 0 records
// test_wait(parity 0) | test_wait(parity 1) << 1: word 0 after init, then one word per arrival.
extern "C" __global__ void __launch_bounds__(GSDPA_HOPPER_CONF_THREADS)
    gsdpa_conformance_mbarrier(const GsdpaMbarrierConformanceParams p) {
#if GSDPA_HOPPER
    using namespace gsdpa;
    uint64_t *bars = reinterpret_cast<uint64_t *>(dynamic_smem());
    const int tid = threadIdx.x;
    for (uint32_t r = 0; r < p.rounds && r < GSDPA_MBARRIER_CONF_ROUNDS; ++r) {
        uint64_t *bar = bars + r;
        const uint32_t count = r % 4 + 1;
        uint32_t *out = p.out + r * GSDPA_MBARRIER_CONF_WORDS;
        if (tid == 0) {
            mbarrier_init(bar, count);
            fence_barrier_init();
        }
        __syncthreads();
        auto record = [&](uint32_t word) {
            if (tid == 0) out[word] = (mbarrier_test_wait(bar, 0) ? 1u : 0u) | (mbarrier_test_wait(bar, 1) ? 2u : 0u);
        };
        record(0);
        __syncthreads();  // thread 0 has recorded before the first arrival
        uint32_t word = 1;
        for (uint32_t i = 0; i < 3 * count; ++i) {
            if (tid == static_cast<int>((37 * i + r) % GSDPA_HOPPER_CONF_THREADS)) mbarrier_arrive(bar);
            __syncthreads();
            record(word++);
            __syncthreads();
        }
    }
#endif
}
GSDPA_REGISTER_KERNEL(gsdpa_conformance_mbarrier, GsdpaMbarrierConformanceParams, GSDPA_HOPPER_CONF_THREADS)

// One warp. Lane l holds r[j] = {8 l + 2 j, 8 l + 2 j + 1} (16-bit halves, low first) and stores:
//   words   0..127  stmatrix_x4        into a 16 x 16 tile (32-byte rows), lane l at &T[l % 16][(l / 16) * 8]
//   words 128..255  stmatrix_x4_trans  the same addresses, another tile
//   words 256..319  stmatrix_x2        into a 16 x 8 tile (16-byte rows), lane l at &T[l % 16][0]
//   words 320..351  stmatrix_x1        into an 8 x 8 tile, lane l at &T[l % 8][0]
//   words 352..383  stmatrix_x1_trans  likewise
//   words 384..415  elect_one_sync() of each lane
// Every tile starts poisoned (0xffff), so a half not written shows.
extern "C" __global__ void __launch_bounds__(32) gsdpa_conformance_stmatrix(const GsdpaStmatrixConformanceParams p) {
#if GSDPA_HOPPER
    using namespace gsdpa;
    char *smem = dynamic_smem();
    const int lane = threadIdx.x;
    for (int i = lane; i < 384; i += 32) reinterpret_cast<uint32_t *>(smem)[i] = 0xffffffffu;
    __syncwarp();
    uint32_t r[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) r[j] = uint32_t(8 * lane + 2 * j) | (uint32_t(8 * lane + 2 * j + 1) << 16);
    const uint32_t x4[4] = {r[0], r[1], r[2], r[3]};
    const uint32_t x2[2] = {r[0], r[1]};
    const uint32_t x1[1] = {r[0]};
    stmatrix_x4(smem + (lane % 16) * 32 + (lane / 16) * 16, x4);
    stmatrix_x4_trans(smem + 512 + (lane % 16) * 32 + (lane / 16) * 16, x4);
    stmatrix_x2(smem + 1024 + (lane % 16) * 16, x2);
    stmatrix_x1(smem + 1280 + (lane % 8) * 16, x1);
    stmatrix_x1_trans(smem + 1408 + (lane % 8) * 16, x1);
    __syncwarp();
    for (int i = lane; i < 384; i += 32) p.out[i] = ld_shared(reinterpret_cast<const uint32_t *>(smem) + i);
    p.out[384 + lane] = elect_one_sync() ? 1u : 0u;
#endif
}
GSDPA_REGISTER_KERNEL(gsdpa_conformance_stmatrix, GsdpaStmatrixConformanceParams, 32)
