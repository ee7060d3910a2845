// internal.h: the emulator's state, shared by its .cpp files (never included by kernels).
#pragma once

#include <csetjmp>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "emu.h"
#include "fiber.h"
#include "hopper_state.h"

namespace gsdpa_emu {

constexpr int kWarpSize = 32;

// What a fiber is doing when it is not running.
enum class FiberState {
    Runnable,      // will run at the next scheduler pass
    AtCollective,  // parked at a warp collective, waiting for the other lanes
    AtBarrier,     // parked at __syncthreads
    AtWarpgroup,   // parked at a warpgroup collective (wgmma), waiting for the other 127 threads
    AtMbarrier,    // parked in mbarrier_wait until the barrier's phase completes
    AtNamedBarrier,  // parked at bar.sync id, count
    Done,          // returned from the kernel
};

enum class CollectiveKind { SyncWarp, Shuffle, Vote, Mma, Ldmatrix, Stmatrix };

const char *collective_name(CollectiveKind kind);

// The operands a lane deposits at a warp collective. Pointers refer to the lane's own stack, which
// stays valid while the lane is parked.
struct PendingCollective {
    CollectiveKind kind = CollectiveKind::SyncWarp;
    Site site{"", 0};
    unsigned mask = 0;
    // Shuffle
    ShuffleMode shuffle_mode = ShuffleMode::Idx;
    uint32_t shuffle_value = 0;
    int shuffle_arg = 0;
    int shuffle_width = 32;
    uint32_t shuffle_result = 0;
    // vote.sync.any
    bool vote_value = false;
    bool vote_result = false;
    // mma.sync
    MmaType mma_type = MmaType::BF16;
    const uint32_t *mma_a = nullptr;
    const uint32_t *mma_b = nullptr;
    const float *mma_c = nullptr;
    float *mma_d = nullptr;
    // ldmatrix
    uint32_t *ldm_regs = nullptr;
    int ldm_num = 0;
    bool ldm_trans = false;
    const void *ldm_addr = nullptr;  // also stmatrix's row address, with ldm_regs its source
};

// When a shared-memory access happened, as the race detector orders accesses: the block's barrier epoch
// (one more per __syncthreads; unique per block, so accesses of an earlier block are always ordered
// before), the issuing warp's __syncwarp count, the thread's linear id within the block, and the
// thread's own entry of its vector clock (the partial named barriers it has taken part in; racecheck.cpp).
// a happens before b when a.epoch < b.epoch, or a and b are the same thread, or they are lanes of one
// warp and a.warp_syncs < b.warp_syncs, or b's thread has learnt a's clock through partial named
// barriers (its vector clock's entry for a's thread is at least a.clock).
struct AccessStamp {
    uint32_t epoch = 0;  // 0: no access recorded
    uint32_t warp_syncs = 0;
    uint32_t thread = 0;
    uint32_t clock = 0;
};

// One cp.async, performed when a wait_group retires its group. On hardware the destination is being
// written from the issue to the retirement: the race detector checks the copy against the accesses of
// other threads as of `issued`.
struct AsyncCopy {
    char *dst;
    const char *src;
    int cp_size;
    int src_size;
    Site site;
    AccessStamp issued;
};

// The race detector's memory of one access to a shared byte (racecheck.cpp): its stamp, packed, and
// the source line that made it, as an index into RaceDetector::sites. 16 bytes: the shadow of a
// kernel's shared memory is 48 times its size.
struct ShadowAccess {
    uint32_t epoch = 0;  // 0: none
    uint32_t warp_syncs = 0;
    uint32_t clock = 0;
    uint16_t thread = 0;
    uint16_t site = 0;
};
// A byte's last write and its two latest reads by different threads.
struct ShadowByte {
    ShadowAccess write;
    ShadowAccess read;        // the latest read
    ShadowAccess other_read;  // the latest read by a thread other than `read`'s
};

// Per-runner state of the race detector; `enabled` is the launch's GSDPA_EMU_RACECHECK flag.
struct RaceDetector {
    bool enabled = false;
    uint32_t epoch = 0;
    std::vector<uint32_t> warp_syncs;  // per warp of the block
    std::vector<ShadowByte> shadow;    // per byte of the block's dynamic shared memory
    std::vector<Site> sites;           // the source lines ShadowAccess::site indexes
    std::map<std::pair<const char *, unsigned>, uint16_t> site_ids;
    Site last_site{nullptr, 0};  // the latest site interned, and its index: most lookups hit it
    uint16_t last_site_id = 0;
    // Vector clocks for the partial named barriers (and the __syncwarps after the first of them), per
    // thread of the block: clocks[t * threads + u] is what thread t knows of thread u's clock. Unused
    // (`vector_clocks` false) until a block's first partial named barrier; before it every thread's own
    // clock is 1.
    int threads = 0;
    bool vector_clocks = false;
    std::vector<uint32_t> clocks;
    std::vector<uint32_t> named_join[16];  // per barrier id: the clocks its bar.arrives carry to its waiters
};

struct Fiber {
    FiberContext context;
    char *stack = nullptr;
    ThreadContext thread;
    int linear_id = 0;
    FiberState state = FiberState::Runnable;
    PendingCollective pending;
    Site barrier_site{"", 0};
    std::vector<AsyncCopy> uncommitted;
    std::deque<std::vector<AsyncCopy>> committed;  // oldest first
    HopperFiber hopper;
};

struct Launch;

// Runs blocks, one at a time, on the OS thread that owns it.
struct BlockRunner {
    const Launch *launch = nullptr;
    std::vector<Fiber> fibers;
    FiberContext scheduler;
    Fiber *current = nullptr;
    char *smem = nullptr;
    size_t smem_bytes = 0;
    uint64_t rng_state = 0;
    RaceDetector race;
    HopperBlock hopper;
    sigjmp_buf on_failure;  // where fail() and the fault handler return to
    bool in_block = false;
};

// The runner of the calling OS thread (null outside a launch).
BlockRunner *current_runner();
void set_current_runner(BlockRunner *runner);

// Executes a collective for the lanes of one warp, all parked at the same site. Returns an empty string,
// or the reason the collective is invalid (e.g. a misaligned ldmatrix row).
std::string execute_collective(BlockRunner &runner, Fiber *const lanes[kWarpSize]);

// Formats "kernel K, block (x,y,z), thread (x,y,z) (warp w, lane l)" and, with a site, " at file:line".
std::string describe_fiber(const BlockRunner &runner, const Fiber &fiber);
std::string describe_thread(const BlockRunner &runner, const Fiber &fiber, Site site);
std::string kernel_name(const BlockRunner &runner);

// Records the launch's failure (the first one wins) and unwinds to the runner's scheduler.
[[noreturn]] void fail_current_block(const std::string &message);

// ----- The shared-memory race detector (racecheck.cpp). All are no-ops when it is disabled. -----
void racecheck_setup(BlockRunner &runner, bool enabled, int warps, int threads);  // once per runner
void racecheck_block_start(BlockRunner &runner);                     // a new epoch: nothing before it races
void racecheck_barrier(BlockRunner &runner);                         // __syncthreads released
void racecheck_syncwarp(BlockRunner &runner, int warp);              // __syncwarp released for a warp
// A thread arrives at named barrier `id` without waiting (bar.arrive): what it did so far happens before
// what the barrier's waiting threads do once it completes; nothing flows back to it.
void racecheck_named_arrive(BlockRunner &runner, const Fiber &fiber, uint32_t id);
// Named barrier `id` of `count` threads completed: its waiting threads (`waiters`, linear ids, parked since
// their bar.sync) learn what every participant had done. A barrier of the whole block that every thread
// waited at is a __syncthreads.
void racecheck_named_release(BlockRunner &runner, uint32_t id, uint32_t count, const std::vector<int> &waiters);
AccessStamp racecheck_stamp(const BlockRunner &runner, const Fiber &fiber);
// Records a read or a write of [addr, addr + bytes) by `fiber` at `site`. Returns an empty string, or the
// description of the race with another thread's access (kernel, block, both threads, both lines).
// A write with `in_flight_since` (a cp.async retiring) conflicts with every access of another thread
// not ordered before that stamp.
std::string racecheck_read(BlockRunner &runner, const Fiber &fiber, const void *addr, size_t bytes, Site site,
                           const char *what = "reads it");
std::string racecheck_write(BlockRunner &runner, const Fiber &fiber, const void *addr, size_t bytes, Site site,
                            const AccessStamp *in_flight_since = nullptr);

// ----- Hopper primitives (mbarrier.cpp, wgmma.cpp, tma.cpp): the scheduler's hooks. -----
void hopper_block_start(BlockRunner &runner);
// Releases what the Hopper primitives hold: complete warpgroup collectives, named barriers, mbarrier
// waits whose phase completed. With `stuck` (nothing else can proceed), first lands the TMA loads in
// flight. Returns true when it made progress.
bool hopper_resolve(BlockRunner &runner, bool stuck);
// Where a parked thread waits, for the deadlock report; empty when not at a Hopper primitive.
std::string hopper_describe_wait(const BlockRunner &runner, const Fiber &fiber);
// The block's threads all finished: performs outstanding bulk stores, reports wgmmas never waited for.
void hopper_block_end(BlockRunner &runner);
// __syncthreads released: every thread now sees what any of them observed of the mbarriers.
void hopper_barrier_released(BlockRunner &runner, int first_thread, int threads);
// A tracked shared-memory read (ld_shared, ldmatrix, wgmma descriptors) of [addr, addr + bytes): fails
// when a TMA load still writes those bytes or delivered them on a phase this thread has not observed.
void hopper_check_read(BlockRunner &runner, const Fiber &fiber, const void *addr, size_t bytes, Site site);
// A tracked shared-memory write (st_shared, stmatrix): fails on bytes a TMA load is still writing;
// landed loads it overlaps are forgotten.
void hopper_note_write(BlockRunner &runner, const Fiber &fiber, const void *addr, size_t bytes, Site site);
std::string format_site(Site site);

// Guard pages: the fault handler turns a fault inside a fiber into a launch error.
void install_fault_handler();
bool is_in_guard_page(const void *addr);
void register_guard_page(const void *page_start, size_t page_bytes);
void unregister_guard_page(const void *page_start);

// Maps `bytes` of read/write memory followed by one inaccessible page; returns the start of the usable
// range, whose end touches the guard page.
char *map_guarded(size_t bytes, size_t alignment);
void unmap_guarded(char *usable_start);

}  // namespace gsdpa_emu
