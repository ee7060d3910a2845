// wgmma.cpp: wgmma.mma_async.sync.aligned.m64nNk16.f32.{bf16,f16}.{bf16,f16} and its fence, commit_group
// and wait_group (docs/ptx-primitives.md states the layouts).
//
// A wgmma is a rendezvous of the warpgroup's 128 threads. At the rendezvous the emulator reads both
// operands (A from the threads' registers or through a shared-memory descriptor, B through one), computes
// D = A B (+ D) in double, rounded once to f32, and keeps each thread's slice of the result in flight: the
// accumulator registers hold NaN until the wgmma.wait_group that retires the group writes the result. At
// that wait the operands are read again and must be unchanged, and the accumulators must still hold the
// poison: a missing wait reads NaN, a source overwritten too early or an accumulator written while in
// flight is reported. Every wgmma must follow a wgmma.fence issued since the thread's last wait_group.
#include <algorithm>
#include <cstdio>

#include "internal.h"

namespace gsdpa_emu {

static constexpr int kWarpgroup = 128;
static constexpr uint32_t kPoison = 0xffffffffu;

static float bits_to_float(MmaType type, uint16_t bits) {
    return type == MmaType::BF16 ? bf16::from_bits(bits).to_float() : f16::from_bits(bits).to_float();
}

void wgmma(const WgmmaOp &op, Site site) {
    BlockRunner *runner = current_runner();
    if (runner == nullptr || runner->current == nullptr) std::abort();
    Fiber &f = *runner->current;
    f.hopper.wgmma_pending = op;
    f.hopper.wgmma_site = site;
    f.state = FiberState::AtWarpgroup;
    fiber_switch(f.context, runner->scheduler);
}

void wgmma_fence(Site) { current_runner()->current->hopper.wgmma_fenced = true; }

void wgmma_commit(Site) {
    HopperFiber &h = current_runner()->current->hopper;
    h.wgmma_committed.push_back(std::move(h.wgmma_uncommitted));
    h.wgmma_uncommitted.clear();
}

// A descriptor decoded: start address, leading and stride byte offsets, swizzle span in bytes (0: none).
struct Descriptor {
    uint32_t start, lbo, sbo, span;
};

static std::string decode_descriptor(uint64_t desc, Descriptor &out) {
    const uint64_t reserved = desc & ~(0x3FFFull | (0x3FFFull << 16) | (0x3FFFull << 32) | (7ull << 49) | (3ull << 62));
    char buf[160];
    if (reserved != 0) {
        std::snprintf(buf, sizeof buf, "matrix descriptor %#llx sets reserved bits %#llx",
                      static_cast<unsigned long long>(desc), static_cast<unsigned long long>(reserved));
        return buf;
    }
    if (((desc >> 49) & 7) != 0) {
        std::snprintf(buf, sizeof buf,
                      "matrix descriptor %#llx has a non-zero base offset, which the emulator does not model "
                      "(keep swizzled tiles aligned to their pattern)",
                      static_cast<unsigned long long>(desc));
        return buf;
    }
    out.start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
    out.lbo = static_cast<uint32_t>((desc >> 16) & 0x3FFF) << 4;
    out.sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
    static const uint32_t spans[4] = {0, 128, 64, 32};  // layout type: 0 none, 1 128B, 2 64B, 3 32B
    out.span = spans[desc >> 62];
    return {};
}

// The shared address of element (mn, k) of an operand tile (64 x 16 for A, N x 16 for B, as rows of the
// M or N dimension), K-major unless mn_major.
static uint32_t operand_address(const Descriptor &d, bool mn_major, uint32_t mn, uint32_t k) {
    uint32_t a;
    if (d.span == 0) {
        // Core matrices of 8 rows x 16 bytes, each 128 contiguous bytes.
        a = mn_major ? d.start + (mn / 8) * d.sbo + (k / 8) * d.lbo + (k % 8) * 16 + (mn % 8) * 2
                     : d.start + (mn / 8) * d.sbo + (k / 8) * d.lbo + (mn % 8) * 16 + (k % 8) * 2;
        return a;
    }
    const uint32_t per_row = d.span / 2;  // 16-bit elements in one swizzled row
    a = mn_major ? d.start + (mn / per_row) * d.lbo + (k / 8) * d.sbo + (k % 8) * d.span + (mn % per_row) * 2
                 : d.start + (mn / 8) * d.sbo + (mn % 8) * d.span + k * 2;
    // The swizzle permutes the 16-byte chunks of each span with address bits 7 and up.
    const uint32_t mask = d.span / 16 - 1;
    return a ^ (((a >> 7) & mask) << 4);
}

// Reads an operand through its descriptor: out[mn * 16 + k]; records the shared offsets read.
static std::string read_operand(BlockRunner &runner, const Fiber &fiber, uint64_t desc, bool mn_major, uint32_t rows,
                                MmaType type, std::vector<float> &out, std::vector<uint32_t> &offsets,
                                std::vector<uint8_t> &bytes, Site site) {
    Descriptor d{};
    std::string problem = decode_descriptor(desc, d);
    if (!problem.empty()) return problem;
    // Swizzled tiles: the patterns repeat every 8 rows of the span. The emulator swizzles by address bits,
    // which is the hardware's pattern when every 8-row group starts on a repeat boundary (the start may
    // move along the first row: the k steps). Other placements need the base offset: refused.
    const uint32_t repeat = 8 * d.span;
    if (d.span != 0 && (d.start % repeat >= d.span || d.sbo % repeat != 0 || (mn_major && d.lbo % repeat != 0))) {
        char buf[240];
        std::snprintf(buf, sizeof buf,
                      "matrix descriptor %#llx: a %u-byte swizzled tile must start within the first row of a "
                      "%u-byte pattern repeat, with stride%s byte offsets multiples of it",
                      static_cast<unsigned long long>(desc), d.span, repeat, mn_major ? " and leading" : "");
        return buf;
    }
    out.assign(rows * 16, 0.0f);
    offsets.resize(rows * 16);
    bytes.resize(rows * 32);
    uint32_t last_chunk = ~0u;
    for (uint32_t mn = 0; mn < rows; ++mn) {
        for (uint32_t k = 0; k < 16; ++k) {
            const uint32_t a = operand_address(d, mn_major, mn, k);
            if (a % 2 != 0 || a + 2 > runner.smem_bytes) {
                char buf[200];
                std::snprintf(buf, sizeof buf,
                              "matrix descriptor %#llx: element (%u, %u) at shared address %u is outside the "
                              "block's %zu bytes of shared memory",
                              static_cast<unsigned long long>(desc), mn, k, a, runner.smem_bytes);
                return buf;
            }
            if ((a & ~15u) != last_chunk) {
                last_chunk = a & ~15u;
                hopper_check_read(runner, fiber, runner.smem + last_chunk, 16, site);
            }
            uint16_t bits;
            std::memcpy(&bits, runner.smem + a, 2);
            out[mn * 16 + k] = bits_to_float(type, bits);
            offsets[mn * 16 + k] = a;
            std::memcpy(&bytes[(mn * 16 + k) * 2], &bits, 2);
        }
    }
    return {};
}

static bool same_op(const WgmmaOp &a, const WgmmaOp &b) {
    return a.type == b.type && a.n == b.n && a.a_from_registers == b.a_from_registers && a.desc_a == b.desc_a &&
           a.desc_b == b.desc_b && a.trans_a == b.trans_a && a.trans_b == b.trans_b && a.accumulate == b.accumulate;
}

// The latest in-flight wgmma of this thread on these accumulators, if any.
static WgmmaInFlight *in_flight_on(HopperFiber &h, const float *d) {
    for (auto it = h.wgmma_uncommitted.rbegin(); it != h.wgmma_uncommitted.rend(); ++it) {
        if (it->d == d && !it->superseded) return &*it;
    }
    for (auto g = h.wgmma_committed.rbegin(); g != h.wgmma_committed.rend(); ++g) {
        for (auto it = g->rbegin(); it != g->rend(); ++it) {
            if (it->d == d && !it->superseded) return &*it;
        }
    }
    return nullptr;
}

static void execute_wgmma(BlockRunner &runner, int first) {
    Fiber &lead = runner.fibers[first];
    const WgmmaOp op = lead.hopper.wgmma_pending;
    const Site site = lead.hopper.wgmma_site;
    auto fail_at = [&](const Fiber &f, const std::string &why) {
        fail_current_block(describe_thread(runner, f, site) + ": wgmma.mma_async: " + why);
    };
    if (op.n < 8 || op.n > 256 || op.n % 8 != 0) fail_at(lead, "N must be a multiple of 8 in 8..256");
    if (op.a_from_registers && op.trans_a) fail_at(lead, "A from registers cannot be transposed");
    for (int i = 0; i < kWarpgroup; ++i) {
        Fiber &f = runner.fibers[first + i];
        if (!same_op(f.hopper.wgmma_pending, op)) fail_at(f, "the threads of the warpgroup disagree on the operands");
        if (!f.hopper.wgmma_fenced) {
            fail_at(f, "no wgmma.fence since the thread's last wgmma.wait_group (or the kernel's start): the "
                       "wgmma may read registers before earlier writes to them land");
        }
    }
    auto record = std::make_shared<WgmmaRecord>();
    record->op = op;
    record->site = site;
    std::vector<float> A(64 * 16), B;  // A[m * 16 + k], B[n * 16 + k]
    if (op.a_from_registers) {
        for (int i = 0; i < kWarpgroup; ++i) {
            const uint32_t *a = runner.fibers[first + i].hopper.wgmma_pending.a;
            const int w = i / 32, lane = i % 32, g = lane / 4, t = lane % 4;
            for (int e = 0; e < 8; ++e) {
                const uint32_t reg = a[e / 2];
                const uint16_t bits = static_cast<uint16_t>((e & 1) ? reg >> 16 : reg & 0xffff);
                A[(16 * w + g + 8 * ((e >> 1) & 1)) * 16 + 2 * t + (e & 1) + 8 * (e >> 2)] = bits_to_float(op.type, bits);
            }
        }
    } else {
        std::string p = read_operand(runner, lead, op.desc_a, op.trans_a, 64, op.type, A, record->offsets_a,
                                     record->smem_a, site);
        if (!p.empty()) fail_at(lead, "A: " + p);
    }
    std::string p = read_operand(runner, lead, op.desc_b, op.trans_b, static_cast<uint32_t>(op.n), op.type, B,
                                 record->offsets_b, record->smem_b, site);
    if (!p.empty()) fail_at(lead, "B: " + p);

    const int regs = op.n / 2;
    for (int i = 0; i < kWarpgroup; ++i) {
        Fiber &f = runner.fibers[first + i];
        const WgmmaOp &mine = f.hopper.wgmma_pending;
        WgmmaInFlight w;
        w.record = record;
        w.d = mine.d;
        w.a = mine.a;
        if (mine.a_from_registers) std::memcpy(w.a_snapshot, mine.a, sizeof w.a_snapshot);
        WgmmaInFlight *previous = in_flight_on(f.hopper, mine.d);
        if (previous != nullptr && previous->result.size() != static_cast<size_t>(regs)) {
            fail_at(f, "chains on accumulators of an in-flight wgmma of another N (issued at " +
                           format_site(previous->record->site) + ")");
        }
        w.result.resize(regs);
        const int warp = i / 32, lane = i % 32, g = lane / 4, t = lane % 4;
        for (int r = 0; r < regs; ++r) {
            const int m = 16 * warp + g + 8 * ((r >> 1) & 1);
            const int n = 8 * (r >> 2) + 2 * t + (r & 1);
            double acc = 0.0;
            if (mine.accumulate) acc = previous != nullptr ? previous->result[r] : mine.d[r];
            for (int k = 0; k < 16; ++k) acc += double(A[m * 16 + k]) * double(B[n * 16 + k]);
            w.result[r] = static_cast<float>(acc);
        }
        if (previous != nullptr) previous->superseded = true;
        for (int r = 0; r < regs; ++r) std::memcpy(&mine.d[r], &kPoison, 4);
        f.hopper.wgmma_uncommitted.push_back(std::move(w));
        f.state = FiberState::Runnable;
    }
}

bool wgmma_resolve(BlockRunner &runner) {
    const int n = static_cast<int>(runner.fibers.size());
    bool progressed = false;
    for (int first = 0; first < n; first += kWarpgroup) {
        int parked = 0, done = 0;
        const Fiber *at = nullptr;
        const int count = std::min(kWarpgroup, n - first);
        for (int i = 0; i < count; ++i) {
            const Fiber &f = runner.fibers[first + i];
            if (f.state == FiberState::AtWarpgroup) {
                ++parked;
                if (at == nullptr) at = &f;
            }
            done += f.state == FiberState::Done;
        }
        if (parked == 0) continue;
        if (count < kWarpgroup) {
            fail_current_block(describe_thread(runner, *at, at->hopper.wgmma_site) +
                               ": wgmma in a partial warpgroup (the block is not a multiple of 128 threads)");
        }
        if (parked + done == count && done > 0) {
            fail_current_block(describe_thread(runner, *at, at->hopper.wgmma_site) + ": wgmma waits for " +
                               std::to_string(done) + " threads of its warpgroup that have already exited");
        }
        if (parked < count) continue;
        for (int i = 0; i < count; ++i) {
            const Fiber &f = runner.fibers[first + i];
            const Site s = f.hopper.wgmma_site;
            if (s.line != at->hopper.wgmma_site.line || std::string(s.file) != at->hopper.wgmma_site.file) {
                fail_current_block("divergent warpgroup: " + describe_thread(runner, *at, at->hopper.wgmma_site) +
                                   " and " + describe_thread(runner, f, s) + " are at different wgmmas");
            }
        }
        execute_wgmma(runner, first);
        progressed = true;
    }
    return progressed;
}

static void retire(BlockRunner &runner, Fiber &f, WgmmaInFlight &w, Site wait_site) {
    auto fail_here = [&](const std::string &why) {
        fail_current_block(describe_thread(runner, f, wait_site) + ": wgmma.wait_group retiring the wgmma at " +
                           format_site(w.record->site) + ": " + why);
    };
    WgmmaRecord &rec = *w.record;
    if (!rec.checked) {
        rec.checked = true;
        for (int operand = 0; operand < 2; ++operand) {
            const std::vector<uint32_t> &offs = operand == 0 ? rec.offsets_a : rec.offsets_b;
            const std::vector<uint8_t> &bytes = operand == 0 ? rec.smem_a : rec.smem_b;
            for (size_t e = 0; e < offs.size(); ++e) {
                if (std::memcmp(runner.smem + offs[e], &bytes[2 * e], 2) != 0) {
                    fail_here(std::string("its operand ") + (operand == 0 ? "A" : "B") +
                              " in shared memory (shared address " + std::to_string(offs[e]) +
                              ") changed while the wgmma was in flight");
                }
                // For the race detector the shared operands are read by the first thread to retire
                // the wgmma, when it retires: on the GPU the reads may last until then, so a write
                // by another thread must be ordered after this wait (a barrier this thread reaches
                // after it), not merely after the issue. The comparison above only sees writes that
                // happened to land while the wgmma was in flight in this run's thread order.
                const std::string race = racecheck_read(runner, f, runner.smem + offs[e], 2, rec.site,
                                                        "reads it as a wgmma operand (until its wait_group)");
                if (!race.empty()) fail_here(race);
            }
        }
    }
    if (w.a != nullptr && rec.op.a_from_registers && std::memcmp(w.a, w.a_snapshot, sizeof w.a_snapshot) != 0) {
        fail_here("its A registers changed while the wgmma was in flight");
    }
    if (w.superseded) return;  // a later wgmma on the same accumulators delivers them
    for (size_t r = 0; r < w.result.size(); ++r) {
        uint32_t bits;
        std::memcpy(&bits, &w.d[r], 4);
        if (bits != kPoison) fail_here("accumulator " + std::to_string(r) + " was written while the wgmma was in flight");
    }
    std::memcpy(w.d, w.result.data(), w.result.size() * sizeof(float));
}

void wgmma_wait(int newest_pending_allowed, Site site) {
    BlockRunner &runner = *current_runner();
    Fiber &f = *runner.current;
    HopperFiber &h = f.hopper;
    if (!h.wgmma_uncommitted.empty() && newest_pending_allowed == 0) {
        // Uncommitted wgmmas are not in any group: wait_group 0 does not wait for them on the GPU either.
        fail_current_block(describe_thread(runner, f, site) + ": wgmma.wait_group with wgmmas issued at " +
                           format_site(h.wgmma_uncommitted.front().record->site) +
                           " not yet committed (wgmma.commit_group missing)");
    }
    while (h.wgmma_committed.size() > static_cast<size_t>(newest_pending_allowed)) {
        for (WgmmaInFlight &w : h.wgmma_committed.front()) retire(runner, f, w, site);
        h.wgmma_committed.pop_front();
    }
    h.wgmma_fenced = false;
}

}  // namespace gsdpa_emu
