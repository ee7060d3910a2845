// tma.cpp: the Tensor Memory Accelerator: tensor maps (the emulator's encoding of cuTensorMapEncodeTiled's
// parameters), cp.async.bulk.tensor loads completing on an mbarrier, bulk tensor stores and reduce-adds
// with their bulk groups (docs/ptx-primitives.md).
//
// A load reads the box from global memory at issue (out-of-bounds elements filled with zero or NaN),
// poisons its shared destination and lands as late as the emulator can make it: when no thread of the
// block can proceed otherwise (typically: the consumers wait on its barrier). Landing writes the box and
// completes box-bytes transactions on the barrier. Until then, and until a thread has observed the phase
// that delivered it, a tracked read of the destination (ld_shared, ldmatrix, a wgmma descriptor) fails.
#include <algorithm>
#include <cstdio>
#include <mutex>

#include "../gsdpa_params.h"
#include "internal.h"

namespace gsdpa_emu {

static constexpr uint32_t kMapMarker = 0x544d4150u;  // "TMAP"

struct EmuTensorMap {
    uint32_t marker;
    uint8_t rank, element_bytes, element_kind, swizzle;
    uint8_t oob_nan, pad[3];
    uint64_t address;
    uint32_t dims[5];
    uint64_t strides[4];  // bytes, dims 1..rank-1
    uint16_t box[5];
    uint8_t element_strides[5];
};
static_assert(sizeof(EmuTensorMap) <= sizeof(GsdpaTensorMap), "the emulator's tensor map fits the driver's");

static std::string validate(const GsdpaTensorMapParams &p) {
    auto bad = [](const std::string &why) { return "cuTensorMapEncodeTiled parameters: " + why; };
    if (p.rank < 1 || p.rank > 5) return bad("rank must be 1..5");
    const bool two = p.element_kind == GSDPA_TMA_BF16 || p.element_kind == GSDPA_TMA_F16;
    if (!(two && p.element_bytes == 2) && !(p.element_kind == GSDPA_TMA_F32 && p.element_bytes == 4)) {
        return bad("element kind and size disagree (bf16/f16: 2 bytes, f32: 4)");
    }
    if (p.global_address % 16 != 0) return bad("the global address must be 16-byte aligned");
    for (uint32_t i = 0; i < p.rank; ++i) {
        if (p.global_dims[i] < 1 || p.global_dims[i] > (1ull << 32)) return bad("global dims must be 1..2^32");
        if (p.box_dims[i] < 1 || p.box_dims[i] > 256) return bad("box dims must be 1..256");
        if (p.element_strides[i] < 1 || p.element_strides[i] > 8) return bad("element strides must be 1..8");
        if (i >= 1 && (p.global_strides[i - 1] % 16 != 0 || p.global_strides[i - 1] >= (1ull << 40))) {
            return bad("global strides must be multiples of 16 below 2^40");
        }
    }
    if (p.global_dims[0] > 0xffffffffull) return bad("the emulator keeps dims below 2^32");
    for (uint32_t i = 1; i < p.rank; ++i) {
        if (p.global_dims[i] > 0xffffffffull) return bad("the emulator keeps dims below 2^32");
    }
    const uint32_t inner = p.box_dims[0] * p.element_bytes;
    if (inner % 16 != 0) return bad("the inner box dimension must span a multiple of 16 bytes");
    if (p.swizzle > GSDPA_SWIZZLE_128B) return bad("unknown swizzle mode");
    if (p.swizzle != GSDPA_SWIZZLE_NONE) {
        const uint32_t span = 16u << p.swizzle;
        if (inner > span) return bad("the inner box dimension must not span more bytes than the swizzle");
        if (inner != span) {
            return bad("an inner box dimension narrower than the swizzle span is accepted by the driver but not "
                       "modelled by the emulator");
        }
    }
    if (p.element_strides[0] != 1) {
        return bad("an element stride other than 1 in dimension 0 is not modelled by the emulator");
    }
    return {};
}

static const EmuTensorMap &decode_map(const void *map, Site site) {
    const EmuTensorMap *m = static_cast<const EmuTensorMap *>(map);
    if (reinterpret_cast<uintptr_t>(map) % 64 != 0) fail("a tensor map must be 64-byte aligned", site);
    if (m->marker != kMapMarker) fail("not a tensor map made by gsdpa_emu_encode_tensor_map", site);
    return *m;
}

// The box's shape in shared memory: elements per dimension (box / element stride, rounded up).
static void box_extent(const EmuTensorMap &m, uint32_t ext[5], uint32_t &bytes) {
    bytes = m.element_bytes;
    for (int i = 0; i < 5; ++i) {
        ext[i] = i < m.rank ? (m.box[i] + m.element_strides[i] - 1) / m.element_strides[i] : 1;
        bytes *= ext[i];
    }
}

static uint32_t swizzle_address(uint32_t a, uint32_t swizzle) {
    if (swizzle == GSDPA_SWIZZLE_NONE) return a;
    const uint32_t mask = (1u << swizzle) - 1;  // 32B: 1 chunk bit, 64B: 2, 128B: 3
    return a ^ (((a >> 7) & mask) << 4);
}

// Visits every element of the box: its byte offset in shared memory relative to the destination base
// address `base` (swizzle included), and its global address or null when out of bounds.
template <class F>
static void for_each_element(const EmuTensorMap &m, const int32_t *coords, uint32_t base, F &&visit) {
    uint32_t ext[5], bytes;
    box_extent(m, ext, bytes);
    uint32_t idx[5] = {0, 0, 0, 0, 0};
    uint32_t linear = 0;
    for (;;) {
        bool in = true;
        uint64_t address = m.address;
        for (int i = 0; i < m.rank; ++i) {
            const int64_t g = int64_t(coords[i]) + int64_t(idx[i]) * m.element_strides[i];
            if (g < 0 || g >= int64_t(m.dims[i])) in = false;
            address += uint64_t(g) * (i == 0 ? m.element_bytes : m.strides[i - 1]);
        }
        const uint32_t smem = swizzle_address(base + linear * m.element_bytes, m.swizzle) - base;
        visit(smem, in ? reinterpret_cast<char *>(address) : nullptr);
        ++linear;
        int d = 0;
        while (d < 5 && ++idx[d] == ext[d]) idx[d++] = 0;
        if (d == 5) break;
    }
}

void mbarrier_complete_tx(BlockRunner &runner, uint32_t bar, uint32_t bytes, Site site);  // mbarrier.cpp
void mbarrier_validate(uint64_t *bar, Site site);                                         // mbarrier.cpp

static uint32_t box_destination(BlockRunner &runner, const void *smem, uint32_t bytes, Site site) {
    const uint32_t a = smem_address(smem, site);
    if (a % 128 != 0) fail("a TMA box in shared memory must be 128-byte aligned", site);
    if (a + bytes > runner.smem_bytes) fail("the TMA box does not fit in the block's shared memory", site);
    return a;
}

void tma_load(void *smem_dst, const void *tensor_map, uint64_t *bar, const int32_t *coords, int rank, Site site) {
    BlockRunner &runner = *current_runner();
    const EmuTensorMap &m = decode_map(tensor_map, site);
    if (rank != m.rank) fail("cp.async.bulk.tensor: the instruction's dimension differs from the tensor map's", site);
    uint32_t ext[5], bytes;
    box_extent(m, ext, bytes);
    const uint32_t dst = box_destination(runner, smem_dst, bytes, site);
    const uint32_t bar_address = smem_address(bar, site);
    mbarrier_validate(bar, site);
    TmaLoad load;
    load.dst = runner.smem + dst;
    load.bar = bar_address;
    load.site = site;
    load.data.assign(bytes, 0);
    uint16_t nan16 = m.element_kind == GSDPA_TMA_BF16 ? 0x7fc0 : 0x7e00;
    const uint32_t nan32 = 0x7fc00000u;
    for_each_element(m, coords, dst, [&](uint32_t off, const char *g) {
        if (g != nullptr) {
            std::memcpy(&load.data[off], g, m.element_bytes);
        } else if (m.oob_nan) {
            std::memcpy(&load.data[off], m.element_bytes == 2 ? static_cast<const void *>(&nan16) : &nan32,
                        m.element_bytes);
        }
    });
    // An older load into the same bytes that has landed is superseded.
    auto &loads = runner.hopper.loads;
    loads.erase(std::remove_if(loads.begin(), loads.end(),
                               [&](const TmaLoad &l) {
                                   return l.landed && l.dst >= load.dst &&
                                          l.dst + l.data.size() <= load.dst + load.data.size();
                               }),
                loads.end());
    std::memset(load.dst, 0xff, bytes);  // in flight: garbage on the GPU, NaN here
    loads.push_back(std::move(load));
}

bool tma_land(BlockRunner &runner) {
    bool landed = false;
    for (TmaLoad &l : runner.hopper.loads) {
        if (l.landed) continue;
        std::memcpy(l.dst, l.data.data(), l.data.size());
        l.landed = true;
        // For the race detector the box is new data: what threads did to these bytes before is ordered
        // before the load by the barrier protocol (the stage's "empty" barrier), which it cannot see.
        if (runner.race.enabled) {
            const size_t first = static_cast<size_t>(l.dst - runner.smem);
            std::fill(runner.race.shadow.begin() + first, runner.race.shadow.begin() + first + l.data.size(),
                      ShadowByte{});
        }
        l.phase = runner.hopper.barriers[l.bar].completions + 1;
        mbarrier_complete_tx(runner, l.bar, static_cast<uint32_t>(l.data.size()), l.site);
        landed = true;
    }
    return landed;
}

void hopper_note_write(BlockRunner &runner, const Fiber &fiber, const void *addr, size_t bytes, Site site) {
    auto &loads = runner.hopper.loads;
    if (loads.empty()) return;
    const char *a = static_cast<const char *>(addr);
    for (const TmaLoad &l : loads) {
        if (!l.landed && a < l.dst + l.data.size() && l.dst < a + bytes) {
            fail_current_block(describe_thread(runner, fiber, site) + ": writes shared address " +
                               std::to_string(a - runner.smem) + ", which the TMA load issued at " +
                               format_site(l.site) + " is still writing");
        }
    }
    // Bytes a thread rewrites no longer hold what a landed load delivered.
    loads.erase(std::remove_if(loads.begin(), loads.end(),
                               [&](const TmaLoad &l) {
                                   return l.landed && a < l.dst + l.data.size() && l.dst < a + bytes;
                               }),
                loads.end());
}

void hopper_check_read(BlockRunner &runner, const Fiber &fiber, const void *addr, size_t bytes, Site site) {
    const char *a = static_cast<const char *>(addr);
    for (const TmaLoad &l : runner.hopper.loads) {
        if (a + bytes <= l.dst || a >= l.dst + l.data.size()) continue;
        const std::string what = "reads shared address " + std::to_string(a - runner.smem) +
                                 ", which the TMA load issued at " + format_site(l.site) + " ";
        if (!l.landed) {
            fail_current_block(describe_thread(runner, fiber, site) + ": " + what +
                               "is still writing: wait on its mbarrier first");
        }
        auto seen = fiber.hopper.observed.find(l.bar);
        if (seen == fiber.hopper.observed.end() || seen->second < l.phase) {
            fail_current_block(describe_thread(runner, fiber, site) + ": " + what + "delivered on phase " +
                               std::to_string(l.phase - 1) + " of the mbarrier at shared address " +
                               std::to_string(l.bar) + ", which this thread has not waited for");
        }
    }
}

// ----- Stores: smem -> global, in bulk groups. -----

static std::mutex g_reduce_mutex;

static void perform_store(BlockRunner &runner, Fiber &f, BulkStore &s, Site wait_site) {
    for (size_t e = 0; e < s.targets.size(); ++e) {
        const uint32_t off = s.targets[e].second;
        if (std::memcmp(s.smem + off, &s.image[off], s.element_bytes) != 0) {
            fail_current_block(describe_thread(runner, f, wait_site) + ": the shared-memory source of the TMA store at " +
                               format_site(s.site) +
                               " changed before cp.async.bulk.wait_group.read retired it");
        }
    }
    std::lock_guard<std::mutex> lock(g_reduce_mutex);
    for (auto &[global, off] : s.targets) {
        const uint8_t *src = &s.image[off];
        if (!s.reduce_add) {
            std::memcpy(global, src, s.element_bytes);
            continue;
        }
        if (s.element_kind == GSDPA_TMA_F32) {
            float a, b;
            std::memcpy(&a, global, 4);
            std::memcpy(&b, src, 4);
            a += b;
            std::memcpy(global, &a, 4);
        } else {
            uint16_t ga, gb;
            std::memcpy(&ga, global, 2);
            std::memcpy(&gb, src, 2);
            const bool is_bf16 = s.element_kind == GSDPA_TMA_BF16;
            const float sum = is_bf16 ? bf16::from_bits(ga).to_float() + bf16::from_bits(gb).to_float()
                                      : f16::from_bits(ga).to_float() + f16::from_bits(gb).to_float();
            const uint16_t r = is_bf16 ? bf16::from_float(sum).bits : f16::from_float(sum).bits;
            std::memcpy(global, &r, 2);
        }
    }
}

void tma_store(const void *tensor_map, const void *smem_src, const int32_t *coords, int rank, bool reduce_add,
               Site site) {
    BlockRunner &runner = *current_runner();
    Fiber &f = *runner.current;
    const EmuTensorMap &m = decode_map(tensor_map, site);
    if (rank != m.rank) fail("cp.async.bulk.tensor: the instruction's dimension differs from the tensor map's", site);
    uint32_t ext[5], bytes;
    box_extent(m, ext, bytes);
    const uint32_t src = box_destination(runner, smem_src, bytes, site);
    hopper_check_read(runner, f, runner.smem + src, bytes, site);
    // The TMA unit reads the box on behalf of the issuing thread: what other threads wrote into it must be
    // ordered before the issue (a named barrier of the writers and the issuer, typically).
    std::string race = racecheck_read(runner, f, runner.smem + src, bytes, site, "reads it as a TMA store's source");
    if (!race.empty()) fail_current_block(race);
    BulkStore s;
    s.smem = runner.smem + src;
    s.image.assign(s.smem, s.smem + bytes);
    s.element_bytes = m.element_bytes;
    s.element_kind = m.element_kind;
    s.reduce_add = reduce_add;
    s.site = site;
    for_each_element(m, coords, src, [&](uint32_t off, char *g) {
        if (g != nullptr) s.targets.emplace_back(g, off);  // out-of-bounds elements are not written
    });
    f.hopper.bulk_uncommitted.push_back(std::move(s));
}

void bulk_commit(Site) {
    HopperFiber &h = current_runner()->current->hopper;
    h.bulk_committed.push_back(std::move(h.bulk_uncommitted));
    h.bulk_uncommitted.clear();
}

void bulk_wait_read(int newest_pending_allowed, Site site) {
    BlockRunner &runner = *current_runner();
    Fiber &f = *runner.current;
    HopperFiber &h = f.hopper;
    while (h.bulk_committed.size() > static_cast<size_t>(newest_pending_allowed)) {
        for (BulkStore &s : h.bulk_committed.front()) perform_store(runner, f, s, site);
        h.bulk_committed.pop_front();
    }
}

void tma_block_end(BlockRunner &runner) {
    for (Fiber &f : runner.fibers) {
        HopperFiber &h = f.hopper;
        if (!h.bulk_uncommitted.empty()) h.bulk_committed.push_back(std::move(h.bulk_uncommitted));
        h.bulk_uncommitted.clear();
        while (!h.bulk_committed.empty()) {
            for (BulkStore &s : h.bulk_committed.front()) perform_store(runner, f, s, s.site);
            h.bulk_committed.pop_front();
        }
    }
}

}  // namespace gsdpa_emu

extern "C" int gsdpa_emu_encode_tensor_map(void *map, const GsdpaTensorMapParams *params, char *err, size_t err_len) {
    using namespace gsdpa_emu;
    std::string problem = validate(*params);
    if (problem.empty() && reinterpret_cast<uintptr_t>(map) % 64 != 0) problem = "the tensor map must be 64-byte aligned";
    if (!problem.empty()) {
        if (err != nullptr && err_len > 0) {
            const size_t n = std::min(err_len - 1, problem.size());
            std::memcpy(err, problem.data(), n);
            err[n] = '\0';
        }
        return 1;
    }
    EmuTensorMap m{};
    m.marker = kMapMarker;
    m.rank = static_cast<uint8_t>(params->rank);
    m.element_bytes = static_cast<uint8_t>(params->element_bytes);
    m.element_kind = static_cast<uint8_t>(params->element_kind);
    m.swizzle = static_cast<uint8_t>(params->swizzle);
    m.oob_nan = params->oob_fill_nan != 0;
    m.address = params->global_address;
    for (int i = 0; i < 5; ++i) {
        m.dims[i] = i < int(params->rank) ? static_cast<uint32_t>(params->global_dims[i]) : 1;
        m.box[i] = i < int(params->rank) ? static_cast<uint16_t>(params->box_dims[i]) : 1;
        m.element_strides[i] = i < int(params->rank) ? static_cast<uint8_t>(params->element_strides[i]) : 1;
        if (i < 4) m.strides[i] = i + 1 < int(params->rank) ? params->global_strides[i] : 0;
    }
    std::memset(map, 0, sizeof(GsdpaTensorMap));
    std::memcpy(map, &m, sizeof m);
    return 0;
}
