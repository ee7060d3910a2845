// warp_collectives.cpp: what a warp collective does once all 32 lanes have arrived.
// Layouts and semantics: docs/ptx-primitives.md (PTX ISA: shfl.sync, mma m16n8k16, ldmatrix).
#include <cstdio>

#include "internal.h"

namespace gsdpa_emu {

static float half_bits_to_float(MmaType type, uint16_t bits) {
    return type == MmaType::BF16 ? bf16::from_bits(bits).to_float() : f16::from_bits(bits).to_float();
}

// shfl.sync with CUDA's width argument: lanes form segments of `width`; a source outside the caller's
// segment (or below it, for .up) yields the caller's own value.
static void execute_shuffle(Fiber *const lanes[kWarpSize]) {
    for (int lane = 0; lane < kWarpSize; ++lane) {
        const PendingCollective &p = lanes[lane]->pending;
        const int width = p.shuffle_width;
        const int arg = p.shuffle_arg & 31;  // PTX uses b[4:0]
        const int seg_start = lane & ~(width - 1);
        const int seg_end = seg_start + width - 1;
        int src = lane;
        bool in_range = true;
        switch (p.shuffle_mode) {
            case ShuffleMode::Idx: src = seg_start + (arg & (width - 1)); break;
            case ShuffleMode::Up:
                src = lane - arg;
                in_range = src >= seg_start;
                break;
            case ShuffleMode::Down:
                src = lane + arg;
                in_range = src <= seg_end;
                break;
            case ShuffleMode::Xor:
                src = lane ^ arg;  // may land in an earlier segment, which PTX allows
                in_range = src <= seg_end;
                break;
        }
        if (!in_range) src = lane;
        lanes[lane]->pending.shuffle_result = lanes[src]->pending.shuffle_value;
    }
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: gathers A, B and C from the lanes' fragments,
// computes D = A B + C and scatters D back. The products of two 16-bit floats are exact in f32; the sum
// is accumulated in double and rounded once, one valid choice among the orders the PTX ISA allows.
static std::string execute_mma(Fiber *const lanes[kWarpSize]) {
    const MmaType type = lanes[0]->pending.mma_type;
    float A[16][16], B[16][8], C[16][8];
    for (int lane = 0; lane < kWarpSize; ++lane) {
        const PendingCollective &p = lanes[lane]->pending;
        if (p.mma_type != type) return "mma.sync lanes disagree on the operand type";
        const int g = lane >> 2, t = lane & 3;
        for (int i = 0; i < 8; ++i) {
            const uint32_t reg = p.mma_a[i / 2];
            const uint16_t bits = static_cast<uint16_t>((i & 1) ? reg >> 16 : reg & 0xffff);
            A[g + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + 8 * (i >> 2)] = half_bits_to_float(type, bits);
        }
        for (int i = 0; i < 4; ++i) {
            const uint32_t reg = p.mma_b[i / 2];
            const uint16_t bits = static_cast<uint16_t>((i & 1) ? reg >> 16 : reg & 0xffff);
            B[2 * t + (i & 1) + 8 * (i >> 1)][g] = half_bits_to_float(type, bits);
        }
        for (int i = 0; i < 4; ++i) C[g + 8 * (i >> 1)][2 * t + (i & 1)] = p.mma_c[i];
    }
    float D[16][8];
    for (int m = 0; m < 16; ++m) {
        for (int n = 0; n < 8; ++n) {
            double acc = C[m][n];
            for (int k = 0; k < 16; ++k) acc += double(A[m][k]) * double(B[k][n]);
            D[m][n] = static_cast<float>(acc);
        }
    }
    // Written only now: d usually aliases c.
    for (int lane = 0; lane < kWarpSize; ++lane) {
        const int g = lane >> 2, t = lane & 3;
        float *d = lanes[lane]->pending.mma_d;
        for (int i = 0; i < 4; ++i) d[i] = D[g + 8 * (i >> 1)][2 * t + (i & 1)];
    }
    return {};
}

// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16.
static std::string execute_ldmatrix(BlockRunner &runner, Fiber *const lanes[kWarpSize]) {
    const int num = lanes[0]->pending.ldm_num;
    const bool trans = lanes[0]->pending.ldm_trans;
    uint16_t M[4][8][8];
    for (int j = 0; j < num; ++j) {
        for (int r = 0; r < 8; ++r) {
            const int lane = 8 * j + r;
            const PendingCollective &p = lanes[lane]->pending;
            if (p.ldm_num != num || p.ldm_trans != trans) return "ldmatrix lanes disagree on the shape";
            const char *row = static_cast<const char *>(p.ldm_addr);
            char buf[200];
            if (row < runner.smem || row + 16 > runner.smem + runner.smem_bytes) {
                std::snprintf(buf, sizeof buf,
                              "ldmatrix row %d of matrix %d (lane %d) at %p is outside the block's shared memory",
                              r, j, lane, static_cast<const void *>(row));
                return buf;
            }
            if (reinterpret_cast<uintptr_t>(row) % 16 != 0) {
                std::snprintf(buf, sizeof buf,
                              "ldmatrix row %d of matrix %d (lane %d) at %p is not 16-byte aligned", r, j, lane,
                              static_cast<const void *>(row));
                return buf;
            }
            // ldmatrix does not order memory: the lane's row must be ordered after its last writer.
            std::string race = racecheck_read(runner, *lanes[lane], row, 16, p.site);
            if (!race.empty()) fail_current_block(race);
            hopper_check_read(runner, *lanes[lane], row, 16, p.site);
            std::memcpy(M[j][r], row, 16);
        }
    }
    for (int lane = 0; lane < kWarpSize; ++lane) {
        const int row = lane / 4, col = 2 * (lane % 4);
        uint32_t *regs = lanes[lane]->pending.ldm_regs;
        for (int j = 0; j < num; ++j) {
            const uint16_t lo = trans ? M[j][col][row] : M[j][row][col];
            const uint16_t hi = trans ? M[j][col + 1][row] : M[j][row][col + 1];
            regs[j] = uint32_t(lo) | (uint32_t(hi) << 16);
        }
    }
    return {};
}

// stmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16: the inverse of ldmatrix. Register j of lane
// l holds M_j[l/4][2(l%4)..+1] (.trans: M_j[2(l%4)..+1][l/4]); row r of matrix j goes to the address of
// lane 8j + r.
static std::string execute_stmatrix(BlockRunner &runner, Fiber *const lanes[kWarpSize]) {
    const int num = lanes[0]->pending.ldm_num;
    const bool trans = lanes[0]->pending.ldm_trans;
    uint16_t M[4][8][8];
    for (int lane = 0; lane < kWarpSize; ++lane) {
        const PendingCollective &p = lanes[lane]->pending;
        if (p.ldm_num != num || p.ldm_trans != trans) return "stmatrix lanes disagree on the shape";
        const int row = lane / 4, col = 2 * (lane % 4);
        for (int j = 0; j < num; ++j) {
            const uint32_t reg = p.ldm_regs[j];
            (trans ? M[j][col][row] : M[j][row][col]) = static_cast<uint16_t>(reg & 0xffff);
            (trans ? M[j][col + 1][row] : M[j][row][col + 1]) = static_cast<uint16_t>(reg >> 16);
        }
    }
    for (int j = 0; j < num; ++j) {
        for (int r = 0; r < 8; ++r) {
            const int lane = 8 * j + r;
            const PendingCollective &p = lanes[lane]->pending;
            char *row = static_cast<char *>(const_cast<void *>(p.ldm_addr));
            char buf[200];
            if (row < runner.smem || row + 16 > runner.smem + runner.smem_bytes ||
                reinterpret_cast<uintptr_t>(row) % 16 != 0) {
                std::snprintf(buf, sizeof buf,
                              "stmatrix row %d of matrix %d (lane %d) at %p is outside the block's shared memory "
                              "or not 16-byte aligned",
                              r, j, lane, static_cast<const void *>(row));
                return buf;
            }
            std::string race = racecheck_write(runner, *lanes[lane], row, 16, p.site);
            if (!race.empty()) fail_current_block(race);
            hopper_note_write(runner, *lanes[lane], row, 16, p.site);
            std::memcpy(row, M[j][r], 16);
        }
    }
    return {};
}

std::string execute_collective(BlockRunner &runner, Fiber *const lanes[kWarpSize]) {
    switch (lanes[0]->pending.kind) {
        case CollectiveKind::SyncWarp: return {};
        case CollectiveKind::Shuffle: {
            for (int lane = 0; lane < kWarpSize; ++lane) {
                const int w = lanes[lane]->pending.shuffle_width;
                if (w < 1 || w > 32 || (w & (w - 1)) != 0) return "shuffle width must be a power of two <= 32";
                if (lanes[lane]->pending.shuffle_mode != lanes[0]->pending.shuffle_mode) {
                    return "shuffle lanes disagree on the mode";
                }
            }
            execute_shuffle(lanes);
            return {};
        }
        case CollectiveKind::Vote: {
            bool any = false;
            for (int lane = 0; lane < kWarpSize; ++lane) any = any || lanes[lane]->pending.vote_value;
            for (int lane = 0; lane < kWarpSize; ++lane) lanes[lane]->pending.vote_result = any;
            return {};
        }
        case CollectiveKind::Mma: return execute_mma(lanes);
        case CollectiveKind::Ldmatrix: return execute_ldmatrix(runner, lanes);
        case CollectiveKind::Stmatrix: return execute_stmatrix(runner, lanes);
    }
    return "unknown collective";
}

}  // namespace gsdpa_emu
