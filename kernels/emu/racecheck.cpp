// racecheck.cpp: the shared-memory race detector (in the spirit of compute-sanitizer's racecheck).
//
// On hardware, a thread's shared-memory store is guaranteed visible to another thread only after a
// barrier that both pass: __syncthreads for any two threads of the block, __syncwarp for two lanes of
// one warp, a named barrier for two threads that took part in it (the vector clocks below). Shuffles, mma.sync and ldmatrix do not order memory, even though the emulator happens to
// run them as rendezvous of the whole warp. Two accesses to the same byte by different threads, at least
// one of them a write, with no such barrier between them, are a race: the kernel's result depends on
// timing the emulator does not reproduce.
//
// What is tracked (docs/emulator.md lists it for kernel authors): ldmatrix rows (reads, attributed to the
// lane that supplies the row address), cp.async destinations (writes, in flight from the issue to the
// wait_group that retires them), stmatrix rows (writes, like ldmatrix), a TMA store's box (a read by the
// issuing thread), and primitives.h's ld_shared / st_shared. A plain C++ access such as
// `smem[i] = x` cannot be intercepted and is not tracked.
//
// Each shared byte remembers its last write and its two latest reads by different threads (ShadowByte,
// 48 bytes). Each access gets an AccessStamp (internal.h) and is checked against them:
//   read:  the last write must happen before it;
//   write: the last write and the latest read by another thread must happen before it.
// Remembering two reads is a bound on cost, not the whole read set: a write can miss a race with an
// older read of a third thread that a newer read of the same warp as the writer has displaced.
#include <algorithm>
#include <string>

#include "internal.h"

namespace gsdpa_emu {

void racecheck_setup(BlockRunner &runner, bool enabled, int warps, int threads) {
    RaceDetector &race = runner.race;
    race.enabled = enabled;
    race.epoch = 0;
    race.threads = threads;
    race.vector_clocks = false;
    if (!enabled) return;
    race.warp_syncs.assign(warps, 0);
    race.shadow.assign(runner.smem_bytes, ShadowByte{});
    race.sites.assign(1, Site{"(unknown)", 0});  // index 0: when more lines than a uint16_t counts
    race.site_ids.clear();
    race.last_site = Site{nullptr, 0};
}

// Epochs are never reused within a runner, so the shadow state left by earlier blocks is ordered before
// everything in this one and needs no clearing.
void racecheck_block_start(BlockRunner &runner) {
    RaceDetector &race = runner.race;
    if (!race.enabled) return;
    ++race.epoch;
    race.vector_clocks = false;
    for (auto &join : race.named_join) join.clear();
}

void racecheck_barrier(BlockRunner &runner) {
    if (runner.race.enabled) ++runner.race.epoch;
}

// ----- Vector clocks: partial named barriers. -----
//
// A __syncthreads orders everything before it with everything after it, which one block-wide epoch
// counter expresses. A named barrier over a subset of the block (bar.sync id, count with count below the
// block size, e.g. one warpgroup's 128 threads), or one some threads only arrive at (bar.arrive), orders
// the accesses of its participants before those of its waiting threads after it, and nothing else: that
// takes a vector clock per thread. Thread t's own entry clocks[t][t] counts the barriers it has taken
// part in (every access is stamped with it); clocks[t][u] is the latest own entry of thread u that t has
// learnt of through a chain of barriers. An access of u stamped c happens before t's access when
// clocks[t][u] >= c. A participant's snapshot is taken when it arrives (a waiting thread is parked from
// its bar.sync to the release, so its clock is the same then), and its own entry moves on, so that what it
// does after the barrier is not ordered before the waiters. The clocks are set up at a block's first
// partial named barrier; until then each thread's own entry is 1 and no one knows of anyone. After that,
// __syncwarp joins its lanes' clocks too (a chain through a warp hand-off and a named barrier orders),
// and a __syncthreads needs nothing: the epoch orders across it.

static uint32_t *clock_of(RaceDetector &race, int thread) {
    return race.clocks.data() + size_t(thread) * race.threads;
}

static void start_vector_clocks(RaceDetector &race) {
    if (race.vector_clocks) return;
    race.vector_clocks = true;
    race.clocks.assign(size_t(race.threads) * race.threads, 0);
    for (int t = 0; t < race.threads; ++t) clock_of(race, t)[t] = 1;
}

static void join_into(std::vector<uint32_t> &join, const uint32_t *clock, int threads) {
    if (join.empty()) join.assign(threads, 0);
    for (int u = 0; u < threads; ++u) join[u] = std::max(join[u], clock[u]);
}

// Every thread of `ids` gets the join of their clocks, then ticks its own entry.
static void exchange_clocks(RaceDetector &race, const std::vector<uint32_t> &join, const int *ids, int count) {
    for (int i = 0; i < count; ++i) {
        uint32_t *clock = clock_of(race, ids[i]);
        const uint32_t own = clock[ids[i]];
        std::copy(join.begin(), join.end(), clock);
        clock[ids[i]] = std::max(own, join[ids[i]]) + 1;
    }
}

void racecheck_syncwarp(BlockRunner &runner, int warp) {
    RaceDetector &race = runner.race;
    if (!race.enabled) return;
    ++race.warp_syncs[warp];
    if (!race.vector_clocks) return;
    const int first = warp * kWarpSize, lanes = std::min(kWarpSize, race.threads - first);
    std::vector<uint32_t> join;
    int ids[kWarpSize] = {};
    for (int i = 0; i < lanes; ++i) {
        ids[i] = first + i;
        join_into(join, clock_of(race, first + i), race.threads);
    }
    exchange_clocks(race, join, ids, lanes);
}

void racecheck_named_arrive(BlockRunner &runner, const Fiber &fiber, uint32_t id) {
    RaceDetector &race = runner.race;
    if (!race.enabled) return;
    start_vector_clocks(race);
    uint32_t *clock = clock_of(race, fiber.linear_id);
    join_into(race.named_join[id], clock, race.threads);
    ++clock[fiber.linear_id];
}

void racecheck_named_release(BlockRunner &runner, uint32_t id, uint32_t count, const std::vector<int> &waiters) {
    RaceDetector &race = runner.race;
    if (!race.enabled) return;
    std::vector<uint32_t> &join = race.named_join[id];
    if (join.empty() && count == static_cast<uint32_t>(race.threads)) {
        ++race.epoch;  // the whole block, every thread waiting: a __syncthreads
        return;
    }
    start_vector_clocks(race);
    for (int w : waiters) join_into(join, clock_of(race, w), race.threads);
    exchange_clocks(race, join, waiters.data(), static_cast<int>(waiters.size()));
    join.clear();
}

AccessStamp racecheck_stamp(const BlockRunner &runner, const Fiber &fiber) {
    const RaceDetector &race = runner.race;
    if (!race.enabled) return AccessStamp{};
    const uint32_t clock =
        race.vector_clocks ? race.clocks[size_t(fiber.linear_id) * race.threads + fiber.linear_id] : 1;
    return AccessStamp{race.epoch, race.warp_syncs[fiber.linear_id / kWarpSize],
                       static_cast<uint32_t>(fiber.linear_id), clock};
}

static uint16_t intern_site(RaceDetector &race, Site site) {
    if (site.file == race.last_site.file && site.line == race.last_site.line) return race.last_site_id;
    auto [it, inserted] = race.site_ids.try_emplace({site.file, site.line}, uint16_t(0));
    if (inserted && race.sites.size() <= UINT16_MAX) {
        it->second = static_cast<uint16_t>(race.sites.size());
        race.sites.push_back(site);
    }
    race.last_site = site;
    race.last_site_id = it->second;
    return it->second;
}

static ShadowAccess shadow_of(const AccessStamp &when, uint16_t site) {
    return ShadowAccess{when.epoch, when.warp_syncs, when.clock, static_cast<uint16_t>(when.thread), site};
}

// True when the access `a` happens before the one stamped `b` (or `a` is no access at all).
static bool happens_before(const RaceDetector &race, const ShadowAccess &a, const AccessStamp &b) {
    if (a.epoch == 0 || a.epoch < b.epoch || a.thread == b.thread) return true;
    if (a.thread / kWarpSize == b.thread / kWarpSize && a.warp_syncs < b.warp_syncs) return true;
    return race.vector_clocks && race.clocks[size_t(b.thread) * race.threads + a.thread] >= a.clock;
}

static std::string describe_dim3(const dim3 &d) {
    return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

static std::string describe_access(const BlockRunner &runner, uint32_t thread, const char *what, Site site) {
    const Fiber &f = runner.fibers[thread];
    return "thread " + describe_dim3(f.thread.thread_idx) + " (warp " + std::to_string(thread / kWarpSize) +
           ", lane " + std::to_string(thread % kWarpSize) + ") " + what + " at " + site.file + ":" +
           std::to_string(site.line);
}

static std::string describe_race(const BlockRunner &runner, size_t offset, const Fiber &fiber, const char *what,
                                 Site site, const ShadowAccess &other, const char *other_what) {
    return "shared-memory race in kernel " + kernel_name(runner) + ", block " +
           describe_dim3(fiber.thread.block_idx) + ", shared byte " + std::to_string(offset) + ": " +
           describe_access(runner, static_cast<uint32_t>(fiber.linear_id), what, site) + ", " +
           describe_access(runner, other.thread, other_what, runner.race.sites[other.site]) +
           ", and no __syncthreads (or __syncwarp, within one warp, or named barrier both took part in) orders "
           "the two";
}

// The offset of [addr, addr + bytes) in the block's shared memory, or -1 when it is not inside it.
static long long shared_offset(const BlockRunner &runner, const void *addr, size_t bytes) {
    const char *p = static_cast<const char *>(addr);
    if (p < runner.smem || p + bytes > runner.smem + runner.smem_bytes) return -1;
    return p - runner.smem;
}

std::string racecheck_read(BlockRunner &runner, const Fiber &fiber, const void *addr, size_t bytes, Site site,
                           const char *what) {
    RaceDetector &race = runner.race;
    if (!race.enabled) return {};
    const long long offset = shared_offset(runner, addr, bytes);
    if (offset < 0) return {};
    const AccessStamp now = racecheck_stamp(runner, fiber);
    const ShadowAccess record = shadow_of(now, intern_site(race, site));
    for (size_t i = 0; i < bytes; ++i) {
        ShadowByte &b = race.shadow[offset + i];
        if (!happens_before(race, b.write, now)) {
            return describe_race(runner, offset + i, fiber, what, site, b.write, "wrote it");
        }
        if (b.read.epoch == 0 || b.read.thread != record.thread) b.other_read = b.read;
        b.read = record;
    }
    return {};
}

std::string racecheck_write(BlockRunner &runner, const Fiber &fiber, const void *addr, size_t bytes, Site site,
                            const AccessStamp *in_flight_since) {
    RaceDetector &race = runner.race;
    if (!race.enabled) return {};
    const long long offset = shared_offset(runner, addr, bytes);
    if (offset < 0) return {};
    const AccessStamp now = racecheck_stamp(runner, fiber);
    const ShadowAccess record = shadow_of(now, intern_site(race, site));
    // A cp.async writes from its issue on: whatever another thread did since then overlaps it.
    const AccessStamp checked = in_flight_since != nullptr ? *in_flight_since : now;
    const char *what = in_flight_since != nullptr ? "writes it with a cp.async (in flight until its wait_group)"
                                                  : "writes it";
    for (size_t i = 0; i < bytes; ++i) {
        ShadowByte &b = race.shadow[offset + i];
        if (!happens_before(race, b.write, checked)) {
            return describe_race(runner, offset + i, fiber, what, site, b.write, "wrote it");
        }
        const ShadowAccess &other_thread_read = b.read.thread != record.thread ? b.read : b.other_read;
        if (other_thread_read.thread != record.thread && !happens_before(race, other_thread_read, checked)) {
            return describe_race(runner, offset + i, fiber, what, site, other_thread_read, "read it");
        }
        b.write = record;
        b.read = ShadowAccess{};
        b.other_read = ShadowAccess{};
    }
    return {};
}

// ----- ld_shared / st_shared (primitives.h). -----

static BlockRunner &runner_in_kernel(const char *what, Site site) {
    BlockRunner *runner = current_runner();
    if (runner == nullptr || runner->current == nullptr) fail(what, site);  // fail() aborts outside a launch
    return *runner;
}

void shared_load(void *dst, const void *smem_src, size_t bytes, Site site) {
    BlockRunner &runner = runner_in_kernel("ld_shared outside a kernel", site);
    if (shared_offset(runner, smem_src, bytes) < 0) fail("ld_shared outside the block's dynamic shared memory", site);
    std::string problem = racecheck_read(runner, *runner.current, smem_src, bytes, site);
    if (!problem.empty()) fail_current_block(problem);
    hopper_check_read(runner, *runner.current, smem_src, bytes, site);
    std::memcpy(dst, smem_src, bytes);
}

void shared_store(void *smem_dst, const void *src, size_t bytes, Site site) {
    BlockRunner &runner = runner_in_kernel("st_shared outside a kernel", site);
    if (shared_offset(runner, smem_dst, bytes) < 0) fail("st_shared outside the block's dynamic shared memory", site);
    std::string problem = racecheck_write(runner, *runner.current, smem_dst, bytes, site);
    if (!problem.empty()) fail_current_block(problem);
    hopper_note_write(runner, *runner.current, smem_dst, bytes, site);
    std::memcpy(smem_dst, src, bytes);
}

}  // namespace gsdpa_emu
