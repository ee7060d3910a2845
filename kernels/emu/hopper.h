// hopper.h: the emulator's Hopper (sm_90a) primitives, as kernels/common/hopper/*.h call them.
// Semantics: docs/ptx-primitives.md (Hopper sections); the emulation: docs/emulator.md.
//
// Shared-memory addresses are the shared window's: the byte offset from the block's dynamic shared
// memory base (smem_address), which on the GPU is 1024-byte aligned, so swizzles computed from address
// bits agree on both sides.
#pragma once

#include "emu.h"

namespace gsdpa_emu {

uint32_t smem_address(const void *p, Site site);

// ----- mbarrier (mbarrier.cpp) -----
void mbarrier_init(uint64_t *bar, uint32_t count, Site site);
void mbarrier_arrive(uint64_t *bar, Site site);
void mbarrier_expect_tx(uint64_t *bar, uint32_t bytes, Site site);
void mbarrier_arrive_expect_tx(uint64_t *bar, uint32_t bytes, Site site);
// Blocks until the phase of the given parity has completed (try_wait.parity in a loop on the GPU).
void mbarrier_wait(uint64_t *bar, uint32_t parity, Site site);
// mbarrier.test_wait.parity: whether that wait would return now.
bool mbarrier_test_wait(uint64_t *bar, uint32_t parity, Site site);
// bar.sync id, count / bar.arrive id, count.
void named_barrier_sync(uint32_t id, uint32_t count, Site site);
void named_barrier_arrive(uint32_t id, uint32_t count, Site site);
// elect.sync with a full mask: a rendezvous of the warp; true in lane 0.
bool elect_one(Site site);
void setmaxnreg(uint32_t count, Site site);

// ----- wgmma (wgmma.cpp) -----
struct WgmmaOp {
    MmaType type = MmaType::BF16;
    int n = 0;
    bool a_from_registers = false;
    const uint32_t *a = nullptr;  // 4 registers when a_from_registers
    uint64_t desc_a = 0, desc_b = 0;
    bool trans_a = false, trans_b = false;
    bool accumulate = false;  // scale-d: D = A B + D, else D = A B
    float *d = nullptr;       // n / 2 accumulators of the thread
};
void wgmma(const WgmmaOp &op, Site site);  // a rendezvous of the warpgroup (4 consecutive warps)
void wgmma_fence(Site site);
void wgmma_commit(Site site);
void wgmma_wait(int newest_pending_allowed, Site site);

// ----- TMA (tma.cpp) -----
// cp.async.bulk.tensor.Nd.shared::cluster.global.mbarrier::complete_tx::bytes: the box at `coords` of the
// tensor map's tensor, to smem_dst, completing box-bytes transactions on `bar`.
void tma_load(void *smem_dst, const void *tensor_map, uint64_t *bar, const int32_t *coords, int rank, Site site);
// cp.async.bulk.tensor.Nd.global.shared::cta.bulk_group (reduce_add: cp.reduce.async.bulk.tensor .add).
void tma_store(const void *tensor_map, const void *smem_src, const int32_t *coords, int rank, bool reduce_add,
               Site site);
void bulk_commit(Site site);
void bulk_wait_read(int newest_pending_allowed, Site site);
void fence_proxy_async(Site site);

// stmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16: the inverse of ldmatrix (a warp collective).
void stmatrix(const uint32_t *regs, int num_matrices, bool trans, void *smem_row, Site site);

}  // namespace gsdpa_emu

extern "C" {
struct GsdpaTensorMapParams;
// Validates the parameters as cuTensorMapEncodeTiled does and writes the emulator's 128-byte tensor map.
// Returns 0, or 1 with a message in err.
int gsdpa_emu_encode_tensor_map(void *map, const struct GsdpaTensorMapParams *params, char *err, size_t err_len);
}
