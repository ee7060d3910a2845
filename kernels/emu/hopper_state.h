// hopper_state.h: the emulator's per-thread and per-block state for the Hopper primitives (never included
// by kernels). Part of internal.h.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "hopper.h"

namespace gsdpa_emu {

// One wgmma of the warpgroup: the operands as read at issue, so that the wait can check that the
// shared-memory sources are unchanged.
struct WgmmaRecord {
    WgmmaOp op;  // as thread 0 of the warpgroup issued it
    std::vector<uint8_t> smem_a, smem_b;  // the bytes each descriptor read, in the order read
    std::vector<uint32_t> offsets_a, offsets_b;
    Site site{"", 0};
    bool checked = false;
};

// One thread's part of a wgmma, in flight from issue to the wait_group that retires its group. Its
// accumulators hold poison (NaN) meanwhile; the result is written at the retirement.
struct WgmmaInFlight {
    std::shared_ptr<WgmmaRecord> record;
    float *d = nullptr;
    std::vector<float> result;
    bool superseded = false;  // a later wgmma of the same thread chains on the same accumulators
    const uint32_t *a = nullptr;  // the thread's A registers (A from registers), and their values at issue
    uint32_t a_snapshot[4] = {0, 0, 0, 0};
};

// A TMA store waiting for cp.async.bulk.wait_group.read: performed at the wait (or when the block ends),
// after checking that its shared-memory source is unchanged since the issue.
struct BulkStore {
    std::vector<uint8_t> image;  // the box as read at issue
    const char *smem = nullptr;
    std::vector<std::pair<char *, uint32_t>> targets;  // global address, box byte offset: in-bounds elements
    uint32_t element_bytes = 2;
    uint32_t element_kind = 0;
    bool reduce_add = false;
    Site site{"", 0};
};

struct HopperFiber {
    // wgmma
    bool wgmma_fenced = false;
    std::vector<WgmmaInFlight> wgmma_uncommitted;
    std::deque<std::vector<WgmmaInFlight>> wgmma_committed;  // oldest first
    WgmmaOp wgmma_pending;                                   // deposited at the warpgroup rendezvous
    Site wgmma_site{"", 0};
    // mbarrier wait / named barrier wait: where the thread is parked
    uint32_t wait_bar = 0;
    uint64_t wait_completions = 0;  // the barrier's completed phases when the wait began
    uint32_t named_id = 0, named_count = 0;
    Site wait_site{"", 0};
    // The phases of each barrier this thread has observed complete (its own waits, or a barrier with a
    // thread that did): TMA data a phase delivered is visible to it only then.
    std::map<uint32_t, uint64_t> observed;
    // bulk stores
    std::vector<BulkStore> bulk_uncommitted;
    std::deque<std::vector<BulkStore>> bulk_committed;
};

// A TMA load: issued, then landed (performed) when the block can make no other progress, or when a thread
// waits on its barrier's phase.
struct TmaLoad {
    char *dst = nullptr;
    std::vector<uint8_t> data;
    uint32_t bar = 0;
    Site site{"", 0};
    bool landed = false;
    uint64_t phase = 0;  // landed: the barrier phase (completions count + 1) that delivers it
};

struct Mbarrier {
    uint32_t expected = 0;
    uint32_t pending = 0;
    int64_t tx = 0;
    uint64_t completions = 0;  // completed phases; the current phase's parity is completions % 2
    Site init_site{"", 0};
    Site last_expect{"", 0};
    // What the arriving threads had observed of other barriers: an arrive releases it, a completed wait
    // acquires it (so a chain of barriers orders TMA data for the race checks).
    std::map<uint32_t, uint64_t> carried;
};

struct NamedBarrier {
    uint32_t count = 0;
    uint32_t arrived = 0;  // threads (warps x 32) that arrived, waiting or not
    Site site{"", 0};
    std::map<uint32_t, uint64_t> carried;  // what the arrivers had observed of the mbarriers
};

struct HopperBlock {
    std::map<uint32_t, Mbarrier> barriers;  // by shared address
    std::vector<TmaLoad> loads;             // in issue order; landed ones kept for the visibility check
    NamedBarrier named[16];
};

}  // namespace gsdpa_emu
