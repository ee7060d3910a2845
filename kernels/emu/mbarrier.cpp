// mbarrier.cpp: mbarriers, named barriers, elect.sync, setmaxnreg, and the scheduler's hooks for the
// Hopper primitives (docs/ptx-primitives.md, docs/emulator.md).
//
// An mbarrier is an 8-byte object in shared memory whose contents are opaque on the GPU. Here its state
// lives in the block's HopperBlock, keyed by its shared address; the 8 bytes hold a marker, so that a
// barrier used before mbarrier.init (shared memory starts poisoned) or overwritten by a store is refused.
//
// A phase completes when its pending arrivals reach zero and its transaction count is zero; then the
// pending count is reset to the init count and the next phase begins. A wait for parity p returns once the
// phase it observed (of parity p) has completed. Threads parked in a wait are released by hopper_resolve.
#include <algorithm>
#include <cstdio>

#include "internal.h"

namespace gsdpa_emu {

static constexpr uint32_t kBarrierMarker = 0x4d424152u;  // "MBAR"

static void merge_into(std::map<uint32_t, uint64_t> &to, const std::map<uint32_t, uint64_t> &from) {
    for (auto &[bar, phase] : from) to[bar] = std::max(to[bar], phase);
}

static BlockRunner &hopper_runner(const char *what, Site site) {
    BlockRunner *runner = current_runner();
    if (runner == nullptr || runner->current == nullptr) {
        std::fprintf(stderr, "gsdpa emulator: %s called outside a kernel launch\n", what);
        std::abort();
    }
    (void)site;
    return *runner;
}

uint32_t smem_address(const void *p, Site site) {
    BlockRunner &runner = hopper_runner("smem_address", site);
    const char *c = static_cast<const char *>(p);
    if (c < runner.smem || c > runner.smem + runner.smem_bytes) {
        fail("a shared-memory address of a pointer outside the block's dynamic shared memory", site);
    }
    return static_cast<uint32_t>(c - runner.smem);
}

static Mbarrier &barrier_at(BlockRunner &runner, uint64_t *bar, Site site, uint32_t *address = nullptr) {
    const uint32_t a = smem_address(bar, site);
    if (a % 8 != 0 || a + 8 > runner.smem_bytes) fail("an mbarrier must be 8-byte aligned in shared memory", site);
    uint32_t marker[2];
    std::memcpy(marker, bar, 8);
    auto it = runner.hopper.barriers.find(a);
    if (it == runner.hopper.barriers.end() || marker[0] != kBarrierMarker || marker[1] != a) {
        fail("mbarrier used before mbarrier.init (or its 8 bytes were overwritten)", site);
    }
    if (address != nullptr) *address = a;
    return it->second;
}

void mbarrier_validate(uint64_t *bar, Site site) { barrier_at(*current_runner(), bar, site); }

void mbarrier_init(uint64_t *bar, uint32_t count, Site site) {
    BlockRunner &runner = hopper_runner("mbarrier.init", site);
    const uint32_t a = smem_address(bar, site);
    if (a % 8 != 0 || a + 8 > runner.smem_bytes) fail("an mbarrier must be 8-byte aligned in shared memory", site);
    if (count < 1 || count > (1u << 20) - 1) fail("mbarrier.init: the arrival count must be 1..2^20-1", site);
    Mbarrier m;
    m.expected = m.pending = count;
    m.init_site = site;
    runner.hopper.barriers[a] = m;
    const uint32_t marker[2] = {kBarrierMarker, a};
    std::memcpy(bar, marker, 8);
}

static std::string describe_barrier(uint32_t a, const Mbarrier &m) {
    return "mbarrier at shared address " + std::to_string(a) + " (initialised at " + format_site(m.init_site) +
           "; phase " + std::to_string(m.completions) + ", " + std::to_string(m.pending) + " of " +
           std::to_string(m.expected) + " arrivals pending, transaction count " + std::to_string(m.tx) + ")";
}

// Completes the phase when nothing is pending. A transaction count below zero with every arrival in means
// more bytes arrived than expect_tx announced: on the GPU the phase would complete early or never.
static void maybe_complete(uint32_t a, Mbarrier &m, Site site) {
    if (m.pending != 0) return;
    if (m.tx < 0) {
        fail_current_block("at " + format_site(site) + ": " + describe_barrier(a, m) + ": " +
                           std::to_string(-m.tx) +
                           " more bytes arrived than expect_tx announced (a wrong expect_tx byte count)");
    }
    if (m.tx != 0) return;
    ++m.completions;
    m.pending = m.expected;
}

void mbarrier_arrive(uint64_t *bar, Site site) {
    BlockRunner &runner = hopper_runner("mbarrier.arrive", site);
    uint32_t a;
    Mbarrier &m = barrier_at(runner, bar, site, &a);
    if (m.pending == 0) fail("mbarrier.arrive on a phase with no pending arrivals", site);
    merge_into(m.carried, runner.current->hopper.observed);
    --m.pending;
    maybe_complete(a, m, site);
}

void mbarrier_expect_tx(uint64_t *bar, uint32_t bytes, Site site) {
    BlockRunner &runner = hopper_runner("mbarrier.expect_tx", site);
    uint32_t a;
    Mbarrier &m = barrier_at(runner, bar, site, &a);
    if (bytes > (1u << 20) - 1) fail("mbarrier.expect_tx: at most 2^20-1 bytes", site);
    m.tx += bytes;
    m.last_expect = site;
}

void mbarrier_arrive_expect_tx(uint64_t *bar, uint32_t bytes, Site site) {
    mbarrier_expect_tx(bar, bytes, site);
    mbarrier_arrive(bar, site);
}

bool mbarrier_test_wait(uint64_t *bar, uint32_t parity, Site site) {
    BlockRunner &runner = hopper_runner("mbarrier.test_wait", site);
    uint32_t a;
    Mbarrier &m = barrier_at(runner, bar, site, &a);
    // The current phase has parity completions % 2; the phase of the other parity is the last completed.
    const bool done = (m.completions & 1) != (parity & 1);
    if (done) {
        uint64_t &seen = runner.current->hopper.observed[a];
        seen = std::max(seen, m.completions);
        merge_into(runner.current->hopper.observed, m.carried);
    }
    return done;
}

void mbarrier_wait(uint64_t *bar, uint32_t parity, Site site) {
    BlockRunner &runner = hopper_runner("mbarrier.try_wait", site);
    uint32_t a;
    Mbarrier &m = barrier_at(runner, bar, site, &a);
    if (mbarrier_test_wait(bar, parity, site)) return;
    Fiber &f = *runner.current;
    f.hopper.wait_bar = a;
    f.hopper.wait_completions = m.completions;
    f.hopper.wait_site = site;
    f.state = FiberState::AtMbarrier;
    fiber_switch(f.context, runner.scheduler);
}

// ----- Named barriers: bar.sync / bar.arrive id, count. Warps take part whole (count threads = count/32
// warps); a barrier completes when `count` threads have arrived, then resets. -----

static void named_barrier(uint32_t id, uint32_t count, bool wait, Site site) {
    BlockRunner &runner = hopper_runner("bar.sync", site);
    Fiber &f = *runner.current;
    if (id >= 16) fail("named barrier id must be 0..15", site);
    if (count == 0 || count % 32 != 0 || count > runner.fibers.size()) {
        fail("named barrier thread count must be a non-zero multiple of 32, at most the block size", site);
    }
    NamedBarrier &b = runner.hopper.named[id];
    if (b.arrived > 0 && b.count != count) {
        fail_current_block(describe_thread(runner, f, site) + ": bar id " + std::to_string(id) + " with count " +
                           std::to_string(count) + " while threads at " + format_site(b.site) +
                           " use count " + std::to_string(b.count));
    }
    b.count = count;
    b.site = site;
    ++b.arrived;
    merge_into(b.carried, f.hopper.observed);
    if (!wait) {
        racecheck_named_arrive(runner, f, id);
        return;
    }
    f.hopper.named_id = id;
    f.hopper.named_count = count;
    f.hopper.wait_site = site;
    f.state = FiberState::AtNamedBarrier;
    fiber_switch(f.context, runner.scheduler);
}

void named_barrier_sync(uint32_t id, uint32_t count, Site site) { named_barrier(id, count, true, site); }
void named_barrier_arrive(uint32_t id, uint32_t count, Site site) { named_barrier(id, count, false, site); }

bool elect_one(Site site) {
    syncwarp(0xffffffffu, site);
    return current_thread().thread_idx.x % kWarpSize == 0;
}

void setmaxnreg(uint32_t count, Site site) {
    if (count < 24 || count > 256 || count % 8 != 0) {
        fail("setmaxnreg: the register count must be a multiple of 8 in 24..256", site);
    }
}

void fence_proxy_async(Site) {}

// ----- Scheduler hooks. -----

void hopper_block_start(BlockRunner &runner) { runner.hopper = HopperBlock{}; }

void hopper_barrier_released(BlockRunner &runner, int first_thread, int threads) {
    std::map<uint32_t, uint64_t> merged;
    for (int i = first_thread; i < first_thread + threads; ++i) merge_into(merged, runner.fibers[i].hopper.observed);
    for (int i = first_thread; i < first_thread + threads; ++i) runner.fibers[i].hopper.observed = merged;
}

bool wgmma_resolve(BlockRunner &runner);  // wgmma.cpp
bool tma_land(BlockRunner &runner);       // tma.cpp
void tma_block_end(BlockRunner &runner);  // tma.cpp

static bool resolve_named(BlockRunner &runner) {
    bool progressed = false;
    for (uint32_t id = 0; id < 16; ++id) {
        NamedBarrier &b = runner.hopper.named[id];
        if (b.arrived == 0 || b.arrived < b.count) continue;
        if (b.arrived > b.count) {
            fail_current_block("bar id " + std::to_string(id) + " at " + format_site(b.site) + ": " +
                               std::to_string(b.arrived) + " threads arrived for a count of " +
                               std::to_string(b.count));
        }
        std::vector<int> released;
        for (Fiber &f : runner.fibers) {
            if (f.state == FiberState::AtNamedBarrier && f.hopper.named_id == id) {
                f.state = FiberState::Runnable;
                released.push_back(f.linear_id);
            }
        }
        // The threads that waited now see what any arriving thread had observed of the mbarriers.
        for (int i : released) merge_into(runner.fibers[i].hopper.observed, b.carried);
        b.carried.clear();
        // Shared memory: what the participants did before it is ordered before what its waiters do after.
        racecheck_named_release(runner, id, b.count, released);
        b.arrived = 0;
        progressed = true;
    }
    return progressed;
}

static bool resolve_mbarrier_waits(BlockRunner &runner) {
    bool progressed = false;
    for (Fiber &f : runner.fibers) {
        if (f.state != FiberState::AtMbarrier) continue;
        auto it = runner.hopper.barriers.find(f.hopper.wait_bar);
        if (it == runner.hopper.barriers.end()) continue;
        if (it->second.completions > f.hopper.wait_completions) {
            uint64_t &seen = f.hopper.observed[f.hopper.wait_bar];
            seen = std::max(seen, it->second.completions);
            merge_into(f.hopper.observed, it->second.carried);
            f.state = FiberState::Runnable;
            progressed = true;
        }
    }
    return progressed;
}

bool hopper_resolve(BlockRunner &runner, bool stuck) {
    bool progressed = false;
    if (stuck) progressed |= tma_land(runner);
    progressed |= wgmma_resolve(runner);
    progressed |= resolve_named(runner);
    progressed |= resolve_mbarrier_waits(runner);
    return progressed;
}

std::string hopper_describe_wait(const BlockRunner &runner, const Fiber &f) {
    switch (f.state) {
        case FiberState::AtWarpgroup: return "wgmma.mma_async " + format_site(f.hopper.wgmma_site);
        case FiberState::AtNamedBarrier: {
            const NamedBarrier &b = runner.hopper.named[f.hopper.named_id];
            return "bar.sync " + std::to_string(f.hopper.named_id) + ", " + std::to_string(f.hopper.named_count) +
                   " " + format_site(f.hopper.wait_site) + " (" + std::to_string(b.arrived) + " threads arrived)";
        }
        case FiberState::AtMbarrier: {
            auto it = runner.hopper.barriers.find(f.hopper.wait_bar);
            std::string what = it == runner.hopper.barriers.end() ? std::string("a destroyed mbarrier")
                                                                  : describe_barrier(it->first, it->second);
            return "mbarrier wait " + format_site(f.hopper.wait_site) + " on " + what;
        }
        default: return {};
    }
}

void hopper_block_end(BlockRunner &runner) {
    for (Fiber &f : runner.fibers) {
        if (!f.hopper.wgmma_uncommitted.empty() || !f.hopper.wgmma_committed.empty()) {
            const WgmmaInFlight &w = f.hopper.wgmma_uncommitted.empty() ? f.hopper.wgmma_committed.front().front()
                                                                        : f.hopper.wgmma_uncommitted.front();
            fail_current_block(describe_thread(runner, f, w.record->site) +
                               ": the thread exited with this wgmma in flight (no wgmma.wait_group retired it)");
        }
    }
    tma_block_end(runner);
}

}  // namespace gsdpa_emu

namespace gsdpa_emu {

// A TMA load landed: `bytes` transactions complete on the barrier.
void mbarrier_complete_tx(BlockRunner &runner, uint32_t bar, uint32_t bytes, Site site) {
    auto it = runner.hopper.barriers.find(bar);
    if (it == runner.hopper.barriers.end()) {
        fail_current_block("the TMA load issued at " + format_site(site) + " completes on an mbarrier that is gone");
    }
    it->second.tx -= bytes;
    maybe_complete(bar, it->second, site);
}

}  // namespace gsdpa_emu
