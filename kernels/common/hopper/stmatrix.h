// stmatrix.h: stmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16 (sm_90): the inverse of ldmatrix.
// Row r of matrix j is written to the 16-byte-aligned address held by lane 8j + r; r[j] of lane l holds
// M_j[l/4][2(l%4)..+1] (.trans: M_j[2(l%4)..+1][l/4]), exactly the registers ldmatrix would return. The
// epilogue stores accumulator fragments (packed to 16 bits) with it, a warp at a time.
#pragma once

#include "arch.h"

#if GSDPA_HOPPER
namespace gsdpa {

#if defined(GSDPA_EMULATOR)
#define GSDPA_DEFINE_STMATRIX(fn, N, TRANS)                                                      \
    GSDPA_DEVICE void fn(void *smem_row, const uint32_t (&r)[N] GSDPA_SITE_PARAM) {             \
        ::gsdpa_emu::stmatrix(r, N, TRANS, smem_row, site);                                     \
    }
GSDPA_DEFINE_STMATRIX(stmatrix_x1, 1, false)
GSDPA_DEFINE_STMATRIX(stmatrix_x2, 2, false)
GSDPA_DEFINE_STMATRIX(stmatrix_x4, 4, false)
GSDPA_DEFINE_STMATRIX(stmatrix_x1_trans, 1, true)
GSDPA_DEFINE_STMATRIX(stmatrix_x2_trans, 2, true)
GSDPA_DEFINE_STMATRIX(stmatrix_x4_trans, 4, true)
#undef GSDPA_DEFINE_STMATRIX
#else
GSDPA_DEVICE void stmatrix_x1(void *smem_row, const uint32_t (&r)[1]) {
    asm volatile("stmatrix.sync.aligned.m8n8.x1.shared.b16 [%0], {%1};\n" ::"r"(smem_addr(smem_row)), "r"(r[0]) : "memory");
}
GSDPA_DEVICE void stmatrix_x2(void *smem_row, const uint32_t (&r)[2]) {
    asm volatile("stmatrix.sync.aligned.m8n8.x2.shared.b16 [%0], {%1, %2};\n" ::"r"(smem_addr(smem_row)), "r"(r[0]),
                 "r"(r[1]) : "memory");
}
GSDPA_DEVICE void stmatrix_x4(void *smem_row, const uint32_t (&r)[4]) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_addr(smem_row)),
                 "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3]) : "memory");
}
GSDPA_DEVICE void stmatrix_x1_trans(void *smem_row, const uint32_t (&r)[1]) {
    asm volatile("stmatrix.sync.aligned.m8n8.x1.trans.shared.b16 [%0], {%1};\n" ::"r"(smem_addr(smem_row)), "r"(r[0])
                 : "memory");
}
GSDPA_DEVICE void stmatrix_x2_trans(void *smem_row, const uint32_t (&r)[2]) {
    asm volatile("stmatrix.sync.aligned.m8n8.x2.trans.shared.b16 [%0], {%1, %2};\n" ::"r"(smem_addr(smem_row)),
                 "r"(r[0]), "r"(r[1]) : "memory");
}
GSDPA_DEVICE void stmatrix_x4_trans(void *smem_row, const uint32_t (&r)[4]) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_addr(smem_row)),
                 "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3]) : "memory");
}
#endif

}  // namespace gsdpa
#endif
