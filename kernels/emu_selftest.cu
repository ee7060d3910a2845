// emu_selftest.cu: kernels with one deliberate bug each, for tests/emulator.rs. The emulator exists to
// catch what a GPU would hide; these check that it does. Each runs as 2 warps (GSDPA_SELFTEST_THREADS)
// with GSDPA_SELFTEST_SMEM bytes of dynamic shared memory. They are compiled for the GPU too (the build
// takes every kernels/*.cu) but only ever launched on the emulator.
//
// The correct pattern all of them vary: every thread stores its input to shared memory, the block
// synchronises, and each thread outputs twice the value the thread 32 places away stored.
#include "common/primitives.h"

namespace gsdpa {
namespace selftest {

constexpr int kThreads = GSDPA_SELFTEST_THREADS;

GSDPA_DEVICE float partner_value(const float *s, int tid) { return 2.0f * s[(tid + 32) % kThreads]; }

}  // namespace selftest
}  // namespace gsdpa


// Correct: store, barrier, read.
extern "C" __global__ void __launch_bounds__(GSDPA_SELFTEST_THREADS) gsdpa_selftest_correct(const GsdpaSelftestParams p) {
    float *s = reinterpret_cast<float *>(gsdpa::dynamic_smem());
    const int tid = threadIdx.x;
    s[tid] = p.input[tid];
    __syncthreads();
    p.output[tid] = gsdpa::selftest::partner_value(s, tid);
}
GSDPA_REGISTER_KERNEL(gsdpa_selftest_correct, GsdpaSelftestParams, GSDPA_SELFTEST_THREADS)

// Bug: no __syncthreads between the store and the other warp's read. A __syncwarp orders each warp's
// lanes but not the two warps; when one warp runs ahead, it reads shared memory the other has not
// written yet (poisoned: NaN).
extern "C" __global__ void __launch_bounds__(GSDPA_SELFTEST_THREADS) gsdpa_selftest_missing_barrier(const GsdpaSelftestParams p) {
    float *s = reinterpret_cast<float *>(gsdpa::dynamic_smem());
    const int tid = threadIdx.x;
    __syncwarp();
    s[tid] = p.input[tid];
    __syncwarp();
    p.output[tid] = gsdpa::selftest::partner_value(s, tid);
}
GSDPA_REGISTER_KERNEL(gsdpa_selftest_missing_barrier, GsdpaSelftestParams, GSDPA_SELFTEST_THREADS)

// Bug: a cp.async whose data is read before cp.async.wait_group.
extern "C" __global__ void __launch_bounds__(GSDPA_SELFTEST_THREADS) gsdpa_selftest_missing_wait(const GsdpaSelftestParams p) {
    float *s = reinterpret_cast<float *>(gsdpa::dynamic_smem());
    const int tid = threadIdx.x;
    if (tid < gsdpa::selftest::kThreads / 4) gsdpa::cp_async_16(s + 4 * tid, p.input + 4 * tid, true);
    gsdpa::cp_async_commit();
    __syncthreads();
    p.output[tid] = gsdpa::selftest::partner_value(s, tid);
    gsdpa::cp_async_wait<0>();
}
GSDPA_REGISTER_KERNEL(gsdpa_selftest_missing_wait, GsdpaSelftestParams, GSDPA_SELFTEST_THREADS)

// Bug: half of a warp shuffles while the other half waits at __syncwarp (undefined on hardware).
extern "C" __global__ void __launch_bounds__(GSDPA_SELFTEST_THREADS) gsdpa_selftest_divergent_shuffle(const GsdpaSelftestParams p) {
    const int tid = threadIdx.x;
    float v = p.input[tid];
    if ((tid & 31) < 16) {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
    } else {
        __syncwarp();
    }
    p.output[tid] = v;
}
GSDPA_REGISTER_KERNEL(gsdpa_selftest_divergent_shuffle, GsdpaSelftestParams, GSDPA_SELFTEST_THREADS)

// Bug: lanes that returned early leave the rest of the warp waiting at a full-mask shuffle.
extern "C" __global__ void __launch_bounds__(GSDPA_SELFTEST_THREADS) gsdpa_selftest_exited_lanes(const GsdpaSelftestParams p) {
    const int tid = threadIdx.x;
    if ((tid & 31) >= 24) return;
    p.output[tid] = __shfl_xor_sync(0xffffffffu, p.input[tid], 1);
}
GSDPA_REGISTER_KERNEL(gsdpa_selftest_exited_lanes, GsdpaSelftestParams, GSDPA_SELFTEST_THREADS)

// Bug: the two warps wait at different __syncthreads.
extern "C" __global__ void __launch_bounds__(GSDPA_SELFTEST_THREADS) gsdpa_selftest_barrier_mismatch(const GsdpaSelftestParams p) {
    float *s = reinterpret_cast<float *>(gsdpa::dynamic_smem());
    const int tid = threadIdx.x;
    s[tid] = p.input[tid];
    if (tid < 32) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    p.output[tid] = gsdpa::selftest::partner_value(s, tid);
}
GSDPA_REGISTER_KERNEL(gsdpa_selftest_barrier_mismatch, GsdpaSelftestParams, GSDPA_SELFTEST_THREADS)

// Bug: an ldmatrix row address that is not 16-byte aligned.
extern "C" __global__ void __launch_bounds__(GSDPA_SELFTEST_THREADS) gsdpa_selftest_misaligned_ldmatrix(const GsdpaSelftestParams p) {
    char *s = gsdpa::dynamic_smem();
    const int tid = threadIdx.x;
    uint32_t r[1];
    gsdpa::ldmatrix_x1(r, s + 16 * (tid & 7) + 8);
    p.output[tid] = gsdpa::u32_as_float(r[0]);
}
GSDPA_REGISTER_KERNEL(gsdpa_selftest_misaligned_ldmatrix, GsdpaSelftestParams, GSDPA_SELFTEST_THREADS)

// Bug: a store one element past the end of the output (an off-by-one bound).
extern "C" __global__ void __launch_bounds__(GSDPA_SELFTEST_THREADS) gsdpa_selftest_out_of_bounds(const GsdpaSelftestParams p) {
    const int tid = threadIdx.x;
    p.output[tid + (tid == 63 ? 1 : 0)] = p.input[tid];
}
GSDPA_REGISTER_KERNEL(gsdpa_selftest_out_of_bounds, GsdpaSelftestParams, GSDPA_SELFTEST_THREADS)

// ----- The race detector (kernels/emu/racecheck.cpp). These hand data between threads through
// ld_shared / st_shared, cp.async and ldmatrix: the accesses the detector tracks. -----

// Correct: lanes hand their value to their neighbour (lane ^ 1) within a warp; the __syncwarp orders the
// store before the neighbour's load.
extern "C" __global__ void __launch_bounds__(GSDPA_SELFTEST_THREADS)
    gsdpa_selftest_warp_handoff(const GsdpaSelftestParams p) {
    float *s = reinterpret_cast<float *>(gsdpa::dynamic_smem());
    const int tid = threadIdx.x;
    gsdpa::st_shared(s + tid, p.input[tid]);
    __syncwarp();
    p.output[tid] = 2.0f * gsdpa::ld_shared(s + (tid ^ 1));
}
GSDPA_REGISTER_KERNEL(gsdpa_selftest_warp_handoff, GsdpaSelftestParams, GSDPA_SELFTEST_THREADS)

// Bug: the same without the __syncwarp. Lanes of a warp are not in lockstep on Volta and later: the
// neighbour's store need not be visible (nor done) yet.
extern "C" __global__ void __launch_bounds__(GSDPA_SELFTEST_THREADS)
    gsdpa_selftest_warp_race(const GsdpaSelftestParams p) {
    float *s = reinterpret_cast<float *>(gsdpa::dynamic_smem());
    const int tid = threadIdx.x;
    gsdpa::st_shared(s + tid, p.input[tid]);
    p.output[tid] = 2.0f * gsdpa::ld_shared(s + (tid ^ 1));
}
GSDPA_REGISTER_KERNEL(gsdpa_selftest_warp_race, GsdpaSelftestParams, GSDPA_SELFTEST_THREADS)

// Bug: a __syncwarp where a __syncthreads is needed: it orders each warp's lanes, not the two warps.
extern "C" __global__ void __launch_bounds__(GSDPA_SELFTEST_THREADS)
    gsdpa_selftest_block_race(const GsdpaSelftestParams p) {
    float *s = reinterpret_cast<float *>(gsdpa::dynamic_smem());
    const int tid = threadIdx.x;
    gsdpa::st_shared(s + tid, p.input[tid]);
    __syncwarp();
    p.output[tid] = 2.0f * gsdpa::ld_shared(s + (tid + 32) % gsdpa::selftest::kThreads);
}
GSDPA_REGISTER_KERNEL(gsdpa_selftest_block_race, GsdpaSelftestParams, GSDPA_SELFTEST_THREADS)

// Bug: a tile refilled while another warp still reads it. Both warps load an 8x8 16-bit tile (128
// bytes, 8 rows of 16) with cp.async and __syncthreads; then warp 0 reads it with ldmatrix while warp 1,
// with no __syncthreads in between, overwrites it with the next tile: the pipelining bug a missing
// "every warp is done with this stage" barrier makes.
extern "C" __global__ void __launch_bounds__(GSDPA_SELFTEST_THREADS)
    gsdpa_selftest_refill_race(const GsdpaSelftestParams p) {
    char *s = gsdpa::dynamic_smem();
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    if (tid < 8) gsdpa::cp_async_16(s + 16 * tid, p.input + 4 * tid, true);
    gsdpa::cp_async_commit();
    gsdpa::cp_async_wait<0>();
    __syncthreads();
    if (tid < 32) {
        uint32_t r[1];
        gsdpa::ldmatrix_x1(r, s + 16 * (lane & 7));
        p.output[tid] = gsdpa::u32_as_float(r[0]);
    } else {
        if (lane < 8) gsdpa::cp_async_16(s + 16 * lane, p.input + 32 + 4 * lane, true);
        gsdpa::cp_async_commit();
        gsdpa::cp_async_wait<0>();
        p.output[tid] = 0.0f;
    }
}
GSDPA_REGISTER_KERNEL(gsdpa_selftest_refill_race, GsdpaSelftestParams, GSDPA_SELFTEST_THREADS)

// ----- Hopper (sm_90a) self-tests: one consumer warpgroup (threads 0-127) and one producer warp
// (128-159). The producer loads the 64 x 64 bf16 tensor with TMA (128B swizzle) onto a "full" mbarrier;
// the consumers wait on it and compute T T^T (64 x 64) with four wgmmas (K = 64) straight from the TMA
// box, which doubles as a check that the TMA and wgmma swizzles agree. Each thread outputs its 32
// accumulators. Every variant but the correct one carries one bug. -----
#include "common/hopper/mbarrier.h"
#include "common/hopper/tma.h"
#include "common/hopper/wgmma.h"

#if GSDPA_HOPPER
namespace gsdpa {
namespace hopper_selftest {

enum class Bug {
    None,
    Pipelined,  // correct too: two groups, wait_group 1 then 0
    MissingWgmmaWait,
    MissingWgmmaFence,
    ShortExpectTx,
    LongExpectTx,
    ReadBeforeBarrier,
    OperandOverwritten,
    AccumulatorWritten,
    WriteInFlight,
    ReuseAfterIssue,  // bug: the producer reuses the box once the wgmma is issued, not once it is retired
};

constexpr uint32_t kBoxBytes = GSDPA_HOPPER_SELFTEST_ROWS * 64 * 2;

template <Bug B>
GSDPA_DEVICE void run(const GsdpaHopperSelftestParams &p) {
    char *smem = dynamic_smem();  // the box at 0 (1024-aligned), the barrier after it
    uint64_t *full = reinterpret_cast<uint64_t *>(smem + kBoxBytes);
    const int tid = threadIdx.x;
    if (tid == 128) {
        mbarrier_init(full, 1);
        fence_barrier_init();
    }
    __syncthreads();
    if (tid >= 128) {
        if (elect_one_sync()) {
            const uint32_t bytes = B == Bug::ShortExpectTx ? kBoxBytes - 128 : B == Bug::LongExpectTx ? kBoxBytes + 128
                                                                                                      : kBoxBytes;
            mbarrier_arrive_expect_tx(full, bytes);
            const int32_t coords[2] = {0, 0};
            tma_load<2>(smem, p.map, full, coords);
        }
        // Tells the consumers the load is issued (not that it has landed: only the mbarrier says that).
        named_barrier_arrive(1, GSDPA_HOPPER_SELFTEST_THREADS);
        for (int i = 0; i < 32; ++i) p.output[tid * 32 + i] = 0.0f;
        // The box handed back (barrier 4): the producer warp writes into it, as a next load into the
        // stage would. Correct once the consumers have retired their wgmma (they arrive after their wait);
        // the bug variant's consumers arrive right after the issue, while the wgmma may still read it.
        if constexpr (B == Bug::None || B == Bug::ReuseAfterIssue) {
            named_barrier_sync(4, GSDPA_HOPPER_SELFTEST_THREADS);
            st_shared(reinterpret_cast<bf16 *>(smem) + (tid - 128), from_float<bf16>(0.0f));
        }
        return;
    }
    setmaxnreg_inc<232>();
    named_barrier_sync(1, GSDPA_HOPPER_SELFTEST_THREADS);
    float early = 0.0f;
    if constexpr (B == Bug::ReadBeforeBarrier) early = to_float(ld_shared(reinterpret_cast<const bf16 *>(smem) + tid));
    if constexpr (B == Bug::WriteInFlight) {
        if (tid == 7) st_shared(reinterpret_cast<bf16 *>(smem) + 64 * 9, from_float<bf16>(1.0f));
    }
    mbarrier_wait(full, 0);
    // K-major, 128B swizzle: rows of 128 bytes (64 elements), 8-row groups 1024 bytes apart; each k step
    // of 16 elements moves the start 32 bytes along the row.
    const uint64_t desc = wgmma_descriptor(smem, 16, 1024, WgmmaSwizzle::B128);
    float d[32];
    if constexpr (B == Bug::Pipelined) {
        // k 0..31 into d, k 32..63 into e, two groups: wait_group 1 retires the first only.
        float e[32];
        wgmma_fence();
        wgmma_ss<bf16, 64>(d, desc, desc, false);
        wgmma_ss<bf16, 64>(d, wgmma_descriptor_advance(desc, 32), wgmma_descriptor_advance(desc, 32), true);
        wgmma_commit();
        wgmma_ss<bf16, 64>(e, wgmma_descriptor_advance(desc, 64), wgmma_descriptor_advance(desc, 64), false);
        wgmma_ss<bf16, 64>(e, wgmma_descriptor_advance(desc, 96), wgmma_descriptor_advance(desc, 96), true);
        wgmma_commit();
        wgmma_wait<1>();
        float first[32];
#pragma unroll
        for (int i = 0; i < 32; ++i) first[i] = d[i];
        wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < 32; ++i) d[i] = first[i] + e[i];
    } else {
        if constexpr (B != Bug::MissingWgmmaFence) wgmma_fence();
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const uint64_t step = wgmma_descriptor_advance(desc, 32 * k);
            wgmma_ss<bf16, 64>(d, step, step, k > 0);
        }
        wgmma_commit();
        // The tile is overwritten (the next TMA into this stage would do it) before the wgmma is retired.
        // (The named barrier makes every consumer wait after the store: the wgmma completes at the first
        // wait that retires it.)
        if constexpr (B == Bug::OperandOverwritten) {
            if (tid == 5) st_shared(reinterpret_cast<bf16 *>(smem) + 8, from_float<bf16>(3.0f));
            named_barrier_sync(2, 128);
        }
        if constexpr (B == Bug::AccumulatorWritten) d[3] = 0.0f;
        if constexpr (B == Bug::ReuseAfterIssue) named_barrier_arrive(4, GSDPA_HOPPER_SELFTEST_THREADS);
        if constexpr (B != Bug::MissingWgmmaWait) wgmma_wait<0>();
        if constexpr (B == Bug::None) named_barrier_arrive(4, GSDPA_HOPPER_SELFTEST_THREADS);
    }
#pragma unroll
    for (int i = 0; i < 32; ++i) p.output[tid * 32 + i] = d[i] + 0.0f * early;
}

// ----- Named barriers and the race detector: hand-offs through shared memory (ld_shared / st_shared).
// Each consumer thread stores a value, the warpgroup meets at named barrier 2 (bar.sync 2, 128) and each
// reads the value of the thread 32 places on (another warp); the producer warp stores 32 values and
// bar.arrive's at barrier 3 (all 160 threads), where the consumers bar.sync before reading them. Outputs:
// out[32 t] = the warpgroup neighbour's value, out[32 t + 1] = the producer lane's value (0 elsewhere). -----
enum class Handoff {
    Correct,
    NoBarrier,        // bug: the consumers skip barrier 2
    Outsider,         // bug: barrier 2 joins warps 1-3 and the producer warp; warp 0, a writer, is not in it
    WriteAfterArrive  // bug: the producer rewrites its values after its bar.arrive
};

template <Handoff H>
GSDPA_DEVICE void handoff(const GsdpaHopperSelftestParams &p) {
    float *s = reinterpret_cast<float *>(dynamic_smem());
    const int tid = threadIdx.x;
    const float mine = float(tid) + 0.5f * float(p.input[tid] & 7);
    st_shared(s + tid, mine);
    if (tid >= 128) {
        if constexpr (H == Handoff::Outsider) named_barrier_sync(2, 128);
        named_barrier_arrive(3, GSDPA_HOPPER_SELFTEST_THREADS);
        if constexpr (H == Handoff::WriteAfterArrive) st_shared(s + tid, mine + 1.0f);
        for (int i = 0; i < 32; ++i) p.output[tid * 32 + i] = 0.0f;
        return;
    }
    if constexpr (H == Handoff::Correct || H == Handoff::WriteAfterArrive) named_barrier_sync(2, 128);
    if constexpr (H == Handoff::Outsider) {
        if (tid >= 32) named_barrier_sync(2, 128);
    }
    const float neighbour = ld_shared(s + (tid + 32) % 128);
    named_barrier_sync(3, GSDPA_HOPPER_SELFTEST_THREADS);
    const float producer = ld_shared(s + 128 + tid % 32);
    p.output[tid * 32] = neighbour;
    p.output[tid * 32 + 1] = producer;
    for (int i = 2; i < 32; ++i) p.output[tid * 32 + i] = 0.0f;
}

}  // namespace hopper_selftest
}  // namespace gsdpa
#endif

#if GSDPA_HOPPER
#define GSDPA_HOPPER_SELFTEST_BODY(BUG) gsdpa::hopper_selftest::run<gsdpa::hopper_selftest::Bug::BUG>(p);
#else
#define GSDPA_HOPPER_SELFTEST_BODY(BUG)
#endif
#define GSDPA_HOPPER_SELFTEST(name, BUG)                                                                   \
    extern "C" __global__ void __launch_bounds__(GSDPA_HOPPER_SELFTEST_THREADS)                           \
        name(const __grid_constant__ GsdpaHopperSelftestParams p) {                                      \
        GSDPA_HOPPER_SELFTEST_BODY(BUG)                                                                    \
    }                                                                                                      \
    GSDPA_REGISTER_KERNEL(name, GsdpaHopperSelftestParams, GSDPA_HOPPER_SELFTEST_THREADS)

// Correct: TMA onto the barrier, wait, fence, wgmmas, commit, wait.
GSDPA_HOPPER_SELFTEST(gsdpa_selftest_hopper_correct, None)
// Correct: the same product in two wgmma groups, retired by wait_group 1 and then 0.
GSDPA_HOPPER_SELFTEST(gsdpa_selftest_hopper_pipelined, Pipelined)
// Bug: the accumulators are read without wgmma.wait_group (NaN, and the wgmma is still in flight at exit).
GSDPA_HOPPER_SELFTEST(gsdpa_selftest_hopper_missing_wgmma_wait, MissingWgmmaWait)
// Bug: no wgmma.fence before the first wgmma.
GSDPA_HOPPER_SELFTEST(gsdpa_selftest_hopper_missing_wgmma_fence, MissingWgmmaFence)
// Bug: expect_tx announces 128 bytes fewer than the box (more bytes arrive than expected).
GSDPA_HOPPER_SELFTEST(gsdpa_selftest_hopper_short_expect_tx, ShortExpectTx)
// Bug: expect_tx announces 128 bytes more than the box (the phase never completes: a deadlock).
GSDPA_HOPPER_SELFTEST(gsdpa_selftest_hopper_long_expect_tx, LongExpectTx)
// Bug: a consumer reads the TMA destination before waiting on its barrier.
GSDPA_HOPPER_SELFTEST(gsdpa_selftest_hopper_read_before_barrier, ReadBeforeBarrier)
// Bug: a wgmma's shared-memory operand is overwritten before the wait retires it.
GSDPA_HOPPER_SELFTEST(gsdpa_selftest_hopper_operand_overwritten, OperandOverwritten)
// Bug: an accumulator is written while its wgmma is in flight.
GSDPA_HOPPER_SELFTEST(gsdpa_selftest_hopper_accumulator_written, AccumulatorWritten)
// Bug: a consumer writes into the box while the TMA load is still writing it.
GSDPA_HOPPER_SELFTEST(gsdpa_selftest_hopper_write_in_flight, WriteInFlight)
// Bug: the producer writes into the box ordered after the wgmma's issue only, not after its retirement.
GSDPA_HOPPER_SELFTEST(gsdpa_selftest_hopper_reuse_after_issue, ReuseAfterIssue)

#if GSDPA_HOPPER
#define GSDPA_HANDOFF_SELFTEST_BODY(H) gsdpa::hopper_selftest::handoff<gsdpa::hopper_selftest::Handoff::H>(p);
#else
#define GSDPA_HANDOFF_SELFTEST_BODY(H)
#endif
#define GSDPA_HANDOFF_SELFTEST(name, H)                                                                    \
    extern "C" __global__ void __launch_bounds__(GSDPA_HOPPER_SELFTEST_THREADS)                           \
        name(const __grid_constant__ GsdpaHopperSelftestParams p) {                                      \
        GSDPA_HANDOFF_SELFTEST_BODY(H)                                                                     \
    }                                                                                                      \
    GSDPA_REGISTER_KERNEL(name, GsdpaHopperSelftestParams, GSDPA_HOPPER_SELFTEST_THREADS)

// Correct: a hand-off within the warpgroup through bar.sync 2, 128, and one from the producer warp through
// its bar.arrive at barrier 3 and the consumers' bar.sync.
GSDPA_HANDOFF_SELFTEST(gsdpa_selftest_hopper_named_handoff, Correct)
// Bug: the warpgroup's hand-off without its barrier.
GSDPA_HANDOFF_SELFTEST(gsdpa_selftest_hopper_named_no_barrier, NoBarrier)
// Bug: the hand-off's barrier does not include the writing warp 0.
GSDPA_HANDOFF_SELFTEST(gsdpa_selftest_hopper_named_outsider, Outsider)
// Bug: the producer stores after its bar.arrive (the arrive orders only what came before it).
GSDPA_HANDOFF_SELFTEST(gsdpa_selftest_hopper_named_write_after_arrive, WriteAfterArrive)
