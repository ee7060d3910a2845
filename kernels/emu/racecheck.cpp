// racecheck.cpp: the shared-memory race detector (in the spirit of compute-sanitizer's racecheck).
//
// On hardware, a thread's shared-memory store is guaranteed visible to another thread only after a
// barrier that both pass: __syncthreads for any two threads of the block, __syncwarp for two lanes of
// one warp. Shuffles, mma.sync and ldmatrix do not order memory, even though the emulator happens to
// run them as rendezvous of the whole warp. Two accesses to the same byte by different threads, at least
// one of them a write, with no such barrier between them, are a race: the kernel's result depends on
// timing the emulator does not reproduce.
//
// What is tracked (docs/emulator.md lists it for kernel authors): ldmatrix rows (reads, attributed to the
// lane that supplies the row address), cp.async destinations (writes, in flight from the issue to the
// wait_group that retires them), and primitives.h's ld_shared / st_shared. A plain C++ access such as
// `smem[i] = x` cannot be intercepted and is not tracked.
//
// Each shared byte remembers its last write and its two latest reads by different threads (ShadowByte,
// 36 bytes). Each access gets an AccessStamp (internal.h) and is checked against them:
//   read:  the last write must happen before it;
//   write: the last write and the latest read by another thread must happen before it.
// Remembering two reads is a bound on cost, not the whole read set: a write can miss a race with an
// older read of a third thread that a newer read of the same warp as the writer has displaced.
#include <string>

#include "internal.h"

namespace gsdpa_emu {

void racecheck_setup(BlockRunner &runner, bool enabled, int warps) {
    RaceDetector &race = runner.race;
    race.enabled = enabled;
    race.epoch = 0;
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
    if (runner.race.enabled) ++runner.race.epoch;
}

void racecheck_barrier(BlockRunner &runner) {
    if (runner.race.enabled) ++runner.race.epoch;
}

void racecheck_syncwarp(BlockRunner &runner, int warp) {
    if (runner.race.enabled) ++runner.race.warp_syncs[warp];
}

AccessStamp racecheck_stamp(const BlockRunner &runner, const Fiber &fiber) {
    const RaceDetector &race = runner.race;
    if (!race.enabled) return AccessStamp{};
    return AccessStamp{race.epoch, race.warp_syncs[fiber.linear_id / kWarpSize],
                       static_cast<uint32_t>(fiber.linear_id)};
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
    return ShadowAccess{when.epoch, when.warp_syncs, static_cast<uint16_t>(when.thread), site};
}

// True when the access `a` happens before the one stamped `b` (or `a` is no access at all).
static bool happens_before(const ShadowAccess &a, const AccessStamp &b) {
    if (a.epoch == 0 || a.epoch < b.epoch || a.thread == b.thread) return true;
    return a.thread / kWarpSize == b.thread / kWarpSize && a.warp_syncs < b.warp_syncs;
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
           ", and no __syncthreads (or __syncwarp, within one warp) orders the two";
}

// The offset of [addr, addr + bytes) in the block's shared memory, or -1 when it is not inside it.
static long long shared_offset(const BlockRunner &runner, const void *addr, size_t bytes) {
    const char *p = static_cast<const char *>(addr);
    if (p < runner.smem || p + bytes > runner.smem + runner.smem_bytes) return -1;
    return p - runner.smem;
}

std::string racecheck_read(BlockRunner &runner, const Fiber &fiber, const void *addr, size_t bytes, Site site) {
    RaceDetector &race = runner.race;
    if (!race.enabled) return {};
    const long long offset = shared_offset(runner, addr, bytes);
    if (offset < 0) return {};
    const AccessStamp now = racecheck_stamp(runner, fiber);
    const ShadowAccess record = shadow_of(now, intern_site(race, site));
    for (size_t i = 0; i < bytes; ++i) {
        ShadowByte &b = race.shadow[offset + i];
        if (!happens_before(b.write, now)) {
            return describe_race(runner, offset + i, fiber, "reads it", site, b.write, "wrote it");
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
        if (!happens_before(b.write, checked)) {
            return describe_race(runner, offset + i, fiber, what, site, b.write, "wrote it");
        }
        const ShadowAccess &other_thread_read = b.read.thread != record.thread ? b.read : b.other_read;
        if (other_thread_read.thread != record.thread && !happens_before(other_thread_read, checked)) {
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
