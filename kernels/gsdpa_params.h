/*
 * gsdpa_params.h: the one definition of what a kernel launch receives.
 *
 * Plain C on purpose: nvcc (device build), the host C++ compiler (emulator build) and bindgen (the Rust
 * mirror in src/ffi/params.rs) all read this file, so the three views of the struct cannot drift apart.
 * Every kernel takes one of these structs by value as its only argument.
 *
 * Conventions (see README "Conventions"):
 *  - Tensors are addressed as base + b * batch + row * row_stride + h * head + d, in elements; the last
 *    dimension is contiguous. For varlen problems (cu_seqlens_* non-null) the batch stride is unused and
 *    `row` is the packed token index cu_seqlens[b] + i.
 *  - The headwise gate has no last dimension: element (b, i, h) sits at b * batch + i * row + h * head.
 *  - lse (and the backward's delta) is f32 at b * lse_batch_stride + h * lse_head_stride + row.
 *  - Causal masking is bottom-right aligned: query i sees key j iff j <= i + (seqlen_k - seqlen_q), with
 *    the lengths of the current sequence.
 */
#ifndef GSDPA_PARAMS_H
#define GSDPA_PARAMS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Gate modes and activations, as stored in the params' `gate_mode` and `activation` fields. */
enum GsdpaGateMode {
    GSDPA_GATE_NONE = 0,
    GSDPA_GATE_ELEMENTWISE = 1,
    GSDPA_GATE_HEADWISE = 2
};

enum GsdpaActivation {
    GSDPA_ACT_SIGMOID = 0,
    GSDPA_ACT_SILU = 1
};

/* Strides of a [batch, row, head, dim] tensor, in elements (dim stride is 1). */
typedef struct GsdpaStrides {
    int64_t batch;
    int64_t row;
    int64_t head;
} GsdpaStrides;

/* Forward: Y = softmax(scale Q K^T + mask) V * act(G), LSE, optionally the ungated O. */
typedef struct GsdpaFwdParams {
    const void *q;                 /* [B, Sq, Hq, D] (varlen: [Tq, Hq, D]) */
    const void *k;                 /* [B, Sk, Hkv, D] */
    const void *v;                 /* [B, Sk, Hkv, D] */
    const void *g;                 /* gate logits [B, Sq, Hq, D] or [B, Sq, Hq]; null when gate_mode == NONE */
    void *y;                       /* gated output, same shape as q */
    void *o;                       /* ungated output (optional, null to skip) */
    float *lse;                    /* [B, Hq, Sq] (varlen: [Hq, Tq]), natural log, -inf for empty rows; null to skip */
    const int32_t *cu_seqlens_q;   /* [B + 1] prefix sums, or null */
    const int32_t *cu_seqlens_k;   /* [B + 1] prefix sums, or null (both or neither) */

    GsdpaStrides q_stride, k_stride, v_stride, g_stride, y_stride, o_stride;
    int64_t lse_batch_stride;
    int64_t lse_head_stride;

    int32_t batch;
    int32_t seqlen_q;              /* varlen: max_seqlen_q (sizes the grid) */
    int32_t seqlen_k;              /* varlen: max_seqlen_k */
    int32_t heads_q;
    int32_t heads_kv;
    int32_t head_dim;
    int32_t causal;                /* 0 or 1 */
    int32_t gate_mode;             /* enum GsdpaGateMode */
    int32_t activation;            /* enum GsdpaActivation */
    float scale;                   /* softmax scale, default 1/sqrt(D) */
    float scale_log2;              /* scale * log2(e): the kernels use exp2 */

    /*
     * Diagnostics (docs/diagnostics.md), each off when its pointer is null.
     * sink_mass: f32 like lse (same indexing, its own strides): each row's attention probability on the
     * first n_sink keys of its sequence. gate_stats: f32 [B, Hq] at b * batch + h * head, the mean act(G)
     * over the sequence's rows (and D for the elementwise gate). It takes two launches: the forward
     * writes one partial sum per (batch, head, query block, warp) into gate_partials, a caller-provided
     * workspace of gate_partials_per_head floats per (batch, head), in that order; gsdpa_diag_gate_stats
     * then sums each head's partials in a fixed order (deterministic) and divides.
     */
    float *sink_mass;
    int64_t sink_batch_stride;
    int64_t sink_head_stride;
    int32_t n_sink;                /* >= 1 when sink_mass is requested */
    int32_t gate_partials_per_head; /* query blocks of the grid x warps per block */
    float *gate_partials;
    float *gate_stats;
    int64_t gate_stats_batch_stride;
    int64_t gate_stats_head_stride;
} GsdpaFwdParams;

/* Standalone gate (the unfused baseline): Y = O * act(G) over [B, S, H, D] tensors. */
typedef struct GsdpaGateParams {
    const void *o;
    const void *g;
    void *y;
    GsdpaStrides o_stride, g_stride, y_stride;
    int32_t batch;
    int32_t seqlen;
    int32_t heads;
    int32_t head_dim;
    int32_t gate_mode;             /* ELEMENTWISE or HEADWISE */
    int32_t activation;
} GsdpaGateParams;

/*
 * Standalone gate backward (the unfused baseline's, run before a gate = none attention backward): from
 * dY, the ungated O and the logits G, dO = dY * act(G) and dG = dY * O * act'(G); headwise (G and dG
 * [B, S, H]) dG = act'(G) * sum_d dY * O. Same layout and launch geometry as GsdpaGateParams.
 */
typedef struct GsdpaGateBackwardParams {
    const void *o;                 /* ungated attention output [B, S, H, D] */
    const void *g;                 /* gate logits [B, S, H, D] or [B, S, H] */
    const void *dy;                /* upstream gradient of Y = O * act(G) */
    void *d_o;                     /* gradient of O, [B, S, H, D] */
    void *dg;                      /* gradient of G, same shape as g */
    GsdpaStrides o_stride, g_stride, dy_stride, d_o_stride, dg_stride;
    int32_t batch;
    int32_t seqlen;
    int32_t heads;
    int32_t head_dim;
    int32_t gate_mode;             /* ELEMENTWISE or HEADWISE (NONE: dO = dY, o, g and dg untouched) */
    int32_t activation;
} GsdpaGateBackwardParams;

/*
 * Standalone gate launch: blocks of GSDPA_GATE_THREADS (the kernel's __launch_bounds__), a grid-stride
 * loop over rows, so any grid size works. Rows are counted in 32 bits: batch * seqlen * heads < 2^32.
 */
enum GsdpaGateGeometry {
    GSDPA_GATE_THREADS = 256
};

/* Backward: dQ, dK, dV, dG from dY, Y, G, LSE (and the ungated O for silu gates). */
typedef struct GsdpaBwdParams {
    const void *q;
    const void *k;
    const void *v;
    const void *g;                 /* null when gate_mode == NONE */
    const void *y;                 /* forward output (gated) */
    const void *o;                 /* ungated forward output; needed only for the silu activation */
    const void *dy;
    const float *lse;
    void *dq;
    void *dk;                      /* [B, Sk, Hkv, D]: summed over the query heads of each kv head */
    void *dv;
    void *dg;                      /* same shape as g; null when gate_mode == NONE */
    const int32_t *cu_seqlens_q;
    const int32_t *cu_seqlens_k;

    /* Caller-provided workspace (sizes from the Rust API). */
    float *delta;                  /* rowsum(dY * Y), laid out like lse */
    void *d_o;                     /* ungated upstream gradient dO = dY * act(G), dtype, ws_stride layout */
    float *dq_accum;               /* f32 dQ accumulator, ws_stride layout (zeroed by the preprocess kernel) */

    GsdpaStrides q_stride, k_stride, v_stride, g_stride, y_stride, o_stride, dy_stride;
    GsdpaStrides dq_stride, dk_stride, dv_stride, dg_stride;
    GsdpaStrides ws_stride;        /* of d_o and dq_accum: dense [B, Sq, Hq, D] (varlen [Tq, Hq, D]) */
    int64_t lse_batch_stride;
    int64_t lse_head_stride;

    int32_t batch;
    int32_t seqlen_q;
    int32_t seqlen_k;
    int32_t heads_q;
    int32_t heads_kv;
    int32_t head_dim;
    int32_t causal;
    int32_t gate_mode;
    int32_t activation;
    int32_t deterministic;         /* 1: dQ by its own kernel, no atomics */
    float scale;
    float scale_log2;
} GsdpaBwdParams;

/*
 * Conformance kernel (kernels/conformance.cu): runs each primitive on structured inputs and dumps every
 * lane's registers, so the emulator can be checked against the PTX formulas and against a real GPU.
 * One warp, GSDPA_CONFORMANCE_SMEM bytes of dynamic shared memory.
 */
typedef struct GsdpaConformanceParams {
    const uint16_t *input;         /* [2][16][16]: value r*16+c encoded as bf16, then as f16 */
    const float *specials;         /* [64]: pairs (lo, hi) per lane for the 16-bit packing checks */
    uint32_t *out;                 /* [32 lanes][GSDPA_CONFORMANCE_SLOTS] */
} GsdpaConformanceParams;

enum GsdpaConformanceLayout {
    GSDPA_CONFORMANCE_SLOTS = 48,
    GSDPA_CONFORMANCE_SMEM = 2048
};

/*
 * Emulator self-test kernels (kernels/emu_selftest.cu): one correct kernel and several with a deliberate
 * bug each (a missing barrier, a divergent collective, an out-of-bounds store, ...), which the emulator
 * must report. Two warps, GSDPA_SELFTEST_THREADS threads, GSDPA_SELFTEST_SMEM bytes of shared memory.
 */
typedef struct GsdpaSelftestParams {
    const float *input;            /* [GSDPA_SELFTEST_THREADS] */
    float *output;                 /* [GSDPA_SELFTEST_THREADS] */
} GsdpaSelftestParams;

enum GsdpaSelftestLayout {
    GSDPA_SELFTEST_THREADS = 64,
    GSDPA_SELFTEST_SMEM = 1024
};

/*
 * Hopper (sm_90a) primitives: kernels/common/hopper/, emulated by kernels/emu/{mbarrier,wgmma,tma}.cpp.
 *
 * A TMA tensor map as the kernels receive it: the driver's opaque 128-byte CUtensorMap (from
 * cuTensorMapEncodeTiled) on the GPU, the emulator's encoding of the same parameters on the host. Kernels
 * take it inside their params, declared `const __grid_constant__`, and never look inside.
 */
typedef struct GsdpaTensorMap {
    uint64_t opaque[16];
} __attribute__((aligned(64))) GsdpaTensorMap;

/* The parameters of cuTensorMapEncodeTiled (src/tma.rs builds them for both backends). */
typedef struct GsdpaTensorMapParams {
    uint64_t global_address;
    uint64_t global_dims[5];       /* elements, innermost first */
    uint64_t global_strides[4];    /* bytes, of dims 1..rank-1 (dim 0 is contiguous) */
    uint32_t box_dims[5];          /* elements, 1..256 each */
    uint32_t element_strides[5];   /* 1..8 */
    uint32_t rank;                 /* 1..5 */
    uint32_t element_bytes;        /* 2 (bf16, f16) or 4 (f32) */
    uint32_t element_kind;         /* GsdpaTmaElement */
    uint32_t swizzle;              /* GsdpaTmaSwizzle */
    uint32_t oob_fill_nan;         /* 0: out-of-bounds elements read as zero; 1: as NaN */
} GsdpaTensorMapParams;

enum GsdpaTmaElement {
    GSDPA_TMA_BF16 = 0,
    GSDPA_TMA_F16 = 1,
    GSDPA_TMA_F32 = 2
};

/* Swizzle modes of TMA boxes and wgmma descriptors (the byte span of one swizzled row). */
enum GsdpaTmaSwizzle {
    GSDPA_SWIZZLE_NONE = 0,
    GSDPA_SWIZZLE_32B = 1,
    GSDPA_SWIZZLE_64B = 2,
    GSDPA_SWIZZLE_128B = 3
};

/*
 * wgmma conformance (kernels/conformance_hopper.cu): one block of one warpgroup per case. The block copies
 * the case's shared-memory image (A and B tiles laid out for the descriptors) to shared memory offset 0,
 * loads its accumulators from c_init (or not: accumulate == 0), issues k_steps wgmmas with the case's
 * descriptors and dumps every thread's accumulators: out[out_offset + thread * n / 2 + i].
 */
typedef struct GsdpaWgmmaCase {
    uint64_t desc_a[4];            /* per k step; unused when A comes from registers */
    uint64_t desc_b[4];
    uint32_t n;                    /* 8..256 */
    uint32_t dtype;                /* 0: bf16, 1: f16 */
    uint32_t a_from_registers;     /* 1: A fragments loaded from a_rows (row-major 64 x 16 k_steps) */
    uint32_t trans_a;              /* 1: A is MN-major in shared memory */
    uint32_t trans_b;              /* 1: B is MN-major in shared memory */
    uint32_t k_steps;              /* 1..4 */
    uint32_t accumulate;           /* 1: the first wgmma adds to c_init; 0: it overwrites */
    uint32_t image_bytes;          /* multiple of 16, at most GSDPA_WGMMA_CONF_SMEM */
    uint64_t image_offset;         /* bytes into images */
    uint64_t a_offset;             /* elements into a_rows */
    uint64_t c_offset;             /* floats into c_init (128 threads x n / 2) */
    uint64_t out_offset;           /* floats into out */
} GsdpaWgmmaCase;

typedef struct GsdpaWgmmaConformanceParams {
    const GsdpaWgmmaCase *cases;   /* [gridDim.x] */
    const uint8_t *images;
    const uint16_t *a_rows;
    const float *c_init;
    float *out;
} GsdpaWgmmaConformanceParams;

/*
 * TMA conformance: one block of GSDPA_HOPPER_CONF_THREADS threads per case. Load: the box at `coords` lands
 * in shared memory offset 0 on an mbarrier; the block dumps the box's bytes raw (swizzled as they lie) to
 * out + out_offset. Store (is_store): the block fills shared memory with the case's box image (from
 * `image`) and stores it (or adds it: reduce_add) to the tensor at `coords` of store_map.
 */
typedef struct GsdpaTmaCase {
    GsdpaTensorMap map;
    int32_t coords[5];
    uint32_t rank;
    uint32_t box_bytes;            /* bytes the box occupies in shared memory (the expect_tx count) */
    uint32_t is_store;
    uint32_t reduce_add;
    uint32_t pad;
    uint64_t out_offset;           /* bytes into out (loads) or into image (stores) */
} GsdpaTmaCase;

typedef struct GsdpaTmaConformanceParams {
    const GsdpaTmaCase *cases;     /* [gridDim.x] */
    const uint8_t *image;          /* store sources */
    uint8_t *out;                  /* load dumps */
} GsdpaTmaConformanceParams;

/*
 * mbarrier phase conformance: one block of GSDPA_HOPPER_CONF_THREADS threads. Each round r of `rounds`
 * (at most GSDPA_MBARRIER_CONF_ROUNDS), threads arrive on a barrier initialised with `count`
 * arrivals in a pattern fixed by r, and thread 0 records, after each arrival, whether each parity's wait
 * would succeed (try_wait.parity, non-blocking): out[r * GSDPA_MBARRIER_CONF_WORDS + i].
 */
typedef struct GsdpaMbarrierConformanceParams {
    uint32_t rounds;
    uint32_t *out;
} GsdpaMbarrierConformanceParams;

/*
 * stmatrix and elect.sync conformance: one warp stores known registers with each stmatrix shape into
 * poisoned shared memory and dumps it (GSDPA_STMATRIX_CONF_WORDS words; layout in conformance_hopper.cu).
 */
typedef struct GsdpaStmatrixConformanceParams {
    uint32_t *out;
} GsdpaStmatrixConformanceParams;

/* Hopper self-tests (kernels/emu_selftest.cu): one warpgroup plus one producer warp. */
typedef struct GsdpaHopperSelftestParams {
    GsdpaTensorMap map;            /* a 2D bf16 tensor of GSDPA_HOPPER_SELFTEST_ROWS x 64 */
    const uint16_t *input;         /* the tensor, row-major */
    float *output;                 /* [GSDPA_HOPPER_SELFTEST_THREADS * 32] */
} GsdpaHopperSelftestParams;

enum GsdpaHopperConformanceLayout {
    GSDPA_HOPPER_CONF_THREADS = 128,
    GSDPA_WGMMA_CONF_SMEM = 96 * 1024,
    GSDPA_TMA_CONF_SMEM = 64 * 1024,
    GSDPA_MBARRIER_CONF_ROUNDS = 8,
    GSDPA_MBARRIER_CONF_WORDS = 64,
    GSDPA_STMATRIX_CONF_WORDS = 416,
    GSDPA_HOPPER_SELFTEST_THREADS = 160,
    GSDPA_HOPPER_SELFTEST_ROWS = 64,
    GSDPA_HOPPER_SELFTEST_SMEM = 32 * 1024
};

/* gsdpa_diag_gate_stats (the diagnostics' second launch, GsdpaFwdParams): one warp per (head, batch),
 * grid (heads_q, batch). */
enum GsdpaGateStatsGeometry {
    GSDPA_GATE_STATS_THREADS = 32
};

/*
 * Launch geometry, one definition for the kernels and for the Rust launchers (through bindgen).
 * Forward grid: (ceil(seqlen_q / BLOCK_M), heads_q, batch); block: THREADS; dynamic shared memory: SMEM
 * bytes (the same for bf16 and f16). Each warp owns BLOCK_M / (THREADS / 32) query rows, a multiple of 16.
 * Why these tiles: see kernels/forward/kernel_traits.h.
 */
enum GsdpaFwdGeometry {
    GSDPA_FWD_BLOCK_M_D64 = 128,
    GSDPA_FWD_BLOCK_N_D64 = 64,
    GSDPA_FWD_THREADS_D64 = 128,
    GSDPA_FWD_SMEM_D64 = (128 + 2 * 64) * 64 * 2,      /* Q + K + V tiles (single-buffered), 16-bit: 32 KiB */
    GSDPA_FWD_BLOCK_M_D128 = 128,
    GSDPA_FWD_BLOCK_N_D128 = 64,
    GSDPA_FWD_THREADS_D128 = 256,
    GSDPA_FWD_SMEM_D128 = (128 + 4 * 64) * 128 * 2,    /* Q + 2 x (K + V): 96 KiB */
    GSDPA_FWD_BLOCK_M_D256 = 64,
    GSDPA_FWD_BLOCK_N_D256 = 32,
    GSDPA_FWD_THREADS_D256 = 128,
    GSDPA_FWD_SMEM_D256 = (64 + 2 * 32) * 256 * 2      /* Q + K + V (single-buffered): 64 KiB */
};

/*
 * The Hopper forward (kernels/forward_sm90.cu, sm_90a only; docs/hopper-forward.md): the mma.sync
 * forward's params plus TMA tensor maps of Q, K, V (and the elementwise G), 4-D [D, S, H, B] (innermost first, 16-bit, 128-byte
 * swizzle, boxes of 64 x BLOCK_M or 64 x BLOCK_N rows). Grid (ceil(seqlen_q / BLOCK_M), heads_q, batch);
 * block: one producer warpgroup and two consumer warpgroups of 64 query rows each. Why these tiles:
 * kernels/forward_sm90/kernel_traits.h.
 */
typedef struct GsdpaFwdSm90Params {
    GsdpaFwdParams fwd;
    GsdpaTensorMap q_map;
    GsdpaTensorMap k_map;
    GsdpaTensorMap v_map;
    GsdpaTensorMap g_map;          /* the elementwise gate, like q_map; unused (zero) for other gate modes */
    GsdpaTensorMap y_map;          /* Y, boxes of GSDPA_FWD_SM90_STORE_ROWS rows: the TMA store */
    GsdpaTensorMap o_map;          /* the ungated O, like y_map (unused when O is not requested) */
    uint32_t tma_store;            /* GsdpaFwdSm90Store bits: which outputs the TMA stores (else registers) */
} GsdpaFwdSm90Params;

enum GsdpaFwdSm90Store {
    GSDPA_FWD_SM90_STORE_Y = 1,
    GSDPA_FWD_SM90_STORE_O = 2
};

enum GsdpaFwdSm90Geometry {
    GSDPA_FWD_SM90_BLOCK_M = 128,
    GSDPA_FWD_SM90_THREADS = 384,
    GSDPA_FWD_SM90_BOX_COLS = 64,  /* head-dim columns per TMA box: one 128-byte swizzled row */
    GSDPA_FWD_SM90_STORE_ROWS = 64,  /* rows per TMA store box: one consumer warpgroup's */
    GSDPA_FWD_SM90_BLOCK_N_D64 = 128,
    GSDPA_FWD_SM90_BLOCK_N_D128 = 128,
    GSDPA_FWD_SM90_BLOCK_N_D256 = 64,
    /* Q (BLOCK_M x D) + 2 stages x (K + V) (BLOCK_N x D), 16-bit, + 1 KiB for the mbarriers + 2 KiB for
     * the sink mass diagnostic's sums (8 bytes per consumer thread) */
    GSDPA_FWD_SM90_SMEM_D64 = (128 + 4 * 128) * 64 * 2 + 1024 + 2048,    /* 83 KiB */
    GSDPA_FWD_SM90_SMEM_D128 = (128 + 4 * 128) * 128 * 2 + 1024 + 2048,  /* 163 KiB */
    GSDPA_FWD_SM90_SMEM_D256 = (128 + 4 * 64) * 256 * 2 + 1024 + 2048    /* 195 KiB */
};

/*
 * Backward launch geometry (kernels/backward.cu; why these tiles: kernels/backward/traits.h). Order and
 * grids (docs/backward.md): preprocess (ceil(seqlen_q / PRE_ROWS), heads_q, batch); dkdv
 * (ceil(seqlen_k / DKDV_BLOCK_N), heads_kv, batch); then dq (ceil(seqlen_q / DQ_BLOCK_M), heads_q, batch)
 * when deterministic, else convert (ceil(seqlen_q / CONVERT_ROWS), heads_q, batch). SMEM in bytes.
 */
enum GsdpaBwdGeometry {
    GSDPA_BWD_PRE_ROWS = 64,
    GSDPA_BWD_PRE_THREADS = 256,
    GSDPA_BWD_CONVERT_ROWS = 64,
    GSDPA_BWD_CONVERT_THREADS = 256,
    GSDPA_BWD_DKDV_BLOCK_M_D64 = 64,
    GSDPA_BWD_DKDV_BLOCK_N_D64 = 128,
    GSDPA_BWD_DKDV_THREADS_D64 = 256,
    GSDPA_BWD_DKDV_SMEM_D64 = (2 * 128 + 3 * 64) * 64 * 2 + 2 * 64 * 128 * 2,   /* 88 KiB */
    GSDPA_BWD_DKDV_BLOCK_M_D128 = 64,
    GSDPA_BWD_DKDV_BLOCK_N_D128 = 64,
    GSDPA_BWD_DKDV_THREADS_D128 = 256,
    GSDPA_BWD_DKDV_SMEM_D128 = (2 * 64 + 3 * 64) * 128 * 2 + 2 * 64 * 64 * 2,  /* 96 KiB */
    GSDPA_BWD_DKDV_BLOCK_M_D256 = 32,
    GSDPA_BWD_DKDV_BLOCK_N_D256 = 32,
    GSDPA_BWD_DKDV_THREADS_D256 = 256,
    GSDPA_BWD_DKDV_SMEM_D256 = (2 * 32 + 3 * 32) * 256 * 2 + 2 * 32 * 64 * 2,  /* 88 KiB */
    GSDPA_BWD_DQ_BLOCK_M_D64 = 64,
    GSDPA_BWD_DQ_BLOCK_N_D64 = 128,
    GSDPA_BWD_DQ_THREADS_D64 = 256,
    GSDPA_BWD_DQ_SMEM_D64 = (2 * 64 + 3 * 128) * 64 * 2 + 64 * 128 * 2,        /* 80 KiB */
    GSDPA_BWD_DQ_BLOCK_M_D128 = 64,
    GSDPA_BWD_DQ_BLOCK_N_D128 = 64,
    GSDPA_BWD_DQ_THREADS_D128 = 256,
    GSDPA_BWD_DQ_SMEM_D128 = (2 * 64 + 3 * 64) * 128 * 2 + 64 * 64 * 2,        /* 88 KiB */
    GSDPA_BWD_DQ_BLOCK_M_D256 = 32,
    GSDPA_BWD_DQ_BLOCK_N_D256 = 32,
    GSDPA_BWD_DQ_THREADS_D256 = 256,
    GSDPA_BWD_DQ_SMEM_D256 = (2 * 32 + 3 * 32) * 256 * 2 + 32 * 64 * 2,        /* 84 KiB */
    /* The large-tile kernels (gsdpa_bwd_{dkdv,dq}_*_d{128,256}_large), same grids with these tiles, for
     * devices whose opt-in shared memory per block holds them (D = 64 and 128: sm_80's 163 KiB and sm_90's
     * 227; D = 256: sm_90, and sm_80 with the one-stage variant below); src/launch.rs. */
    /* D = 64: a large dQ kernel only (gsdpa_bwd_dq_*_d64_large, the deterministic mode's); its dK/dV
     * kernel stays the compact one (128 x 128 spills there: backward/traits.h). */
    GSDPA_BWD_LARGE_DQ_BLOCK_M_D64 = 128,
    GSDPA_BWD_LARGE_DQ_BLOCK_N_D64 = 128,
    GSDPA_BWD_LARGE_DQ_THREADS_D64 = 256,
    GSDPA_BWD_LARGE_DQ_SMEM_D64 = (2 * 128 + 3 * 128) * 64 * 2 + 128 * 128 * 2,      /* 112 KiB */
    GSDPA_BWD_LARGE_DKDV_BLOCK_M_D128 = 64,
    GSDPA_BWD_LARGE_DKDV_BLOCK_N_D128 = 128,
    GSDPA_BWD_LARGE_DKDV_THREADS_D128 = 256,
    GSDPA_BWD_LARGE_DKDV_SMEM_D128 = (2 * 128 + 3 * 64) * 128 * 2 + 2 * 64 * 128 * 2,  /* 144 KiB */
    GSDPA_BWD_LARGE_DQ_BLOCK_M_D128 = 64,
    GSDPA_BWD_LARGE_DQ_BLOCK_N_D128 = 128,
    GSDPA_BWD_LARGE_DQ_THREADS_D128 = 256,
    GSDPA_BWD_LARGE_DQ_SMEM_D128 = (2 * 64 + 3 * 128) * 128 * 2 + 64 * 128 * 2,       /* 144 KiB */
    GSDPA_BWD_LARGE_DKDV_BLOCK_M_D256 = 64,
    GSDPA_BWD_LARGE_DKDV_BLOCK_N_D256 = 64,
    GSDPA_BWD_LARGE_DKDV_THREADS_D256 = 256,
    GSDPA_BWD_LARGE_DKDV_SMEM_D256 = (2 * 64 + 3 * 64) * 256 * 2 + 2 * 64 * 64 * 2,    /* 176 KiB */
    GSDPA_BWD_LARGE_DQ_BLOCK_M_D256 = 64,
    GSDPA_BWD_LARGE_DQ_BLOCK_N_D256 = 64,
    GSDPA_BWD_LARGE_DQ_THREADS_D256 = 256,
    GSDPA_BWD_LARGE_DQ_SMEM_D256 = (2 * 64 + 3 * 64) * 256 * 2 + 64 * 64 * 2,          /* 168 KiB */
    /* D = 256's large tiles with one Q buffer (dK/dV) and one K buffer (dQ), the same tiles and threads:
     * gsdpa_bwd_{dkdv,dq}_*_d256_large_1stage, for sm_80's 163 KiB (src/launch.rs). */
    GSDPA_BWD_LARGE_1STAGE_DKDV_SMEM_D256 = (2 * 64 + 2 * 64) * 256 * 2 + 2 * 64 * 64 * 2, /* 144 KiB */
    GSDPA_BWD_LARGE_1STAGE_DQ_SMEM_D256 = (2 * 64 + 2 * 64) * 256 * 2 + 64 * 64 * 2        /* 136 KiB */
};

/*
 * Paged-KV decode (kernels/decode.cu, design: docs/decode.md): Y = softmax(scale Q K^T + mask) V * act(G)
 * with K and V gathered from a paged cache through a block table, split over the keys (split-KV) and
 * merged by a combine kernel that also applies the gate. Both launches take this struct.
 *
 * Layouts:
 *  - q, g, y: [B, Sq, Hq, D] ([B, Sq, Hq] headwise g), or packed [Tq, Hq, D] when cu_seqlens_q is set.
 *  - k_cache, v_cache: [num_blocks, block_size, Hkv, D], any block / slot / head strides (dim stride 1).
 *  - block_table: [B, max_blocks] i32 (row stride table_batch_stride); cache_seqlens: [B] i32. Key j of
 *    sequence b is slot j % block_size of block block_table[b][j / block_size].
 *  - lse (optional): f32 at b * lse_batch_stride + h * lse_head_stride + i (varlen: + token index).
 *  - Workspace (num_splits > 1 only): o_partial f32 [num_splits, Tq, Hq, D], lse_partial f32
 *    [num_splits, Tq, Hq], with Tq = total_q (B * Sq when not varlen).
 * Device values are never trusted: a length outside [0, max_blocks * block_size] or a block id outside
 * [0, num_blocks) among the blocks of a sequence's length is not followed; that sequence's rows of y and
 * lse become NaN and *status (when non-null) is set to GSDPA_DECODE_STATUS_INVALID_INPUT. The kernels
 * only ever store that value there: the caller zeroes the word.
 */
typedef struct GsdpaPagedStrides {
    int64_t block;
    int64_t slot;
    int64_t head;
} GsdpaPagedStrides;

typedef struct GsdpaDecodeParams {
    const void *q;
    const void *k_cache;
    const void *v_cache;
    const int32_t *block_table;
    const int32_t *cache_seqlens;
    const int32_t *cu_seqlens_q;   /* [B + 1] prefix sums over the packed queries, or null */
    const void *g;                 /* null when gate_mode == NONE */
    void *y;
    float *lse;                    /* optional (null: not written) */
    float *o_partial;              /* workspace, null when num_splits == 1 */
    float *lse_partial;
    int32_t *status;               /* optional */

    GsdpaStrides q_stride, g_stride, y_stride;
    GsdpaPagedStrides k_stride, v_stride;
    int64_t table_batch_stride;
    int64_t lse_batch_stride;
    int64_t lse_head_stride;

    int32_t batch;
    int32_t seqlen_q;              /* varlen: max_seqlen_q (sizes the grid) */
    int32_t total_q;               /* B * seqlen_q, or the packed token count when varlen */
    int32_t heads_q;
    int32_t heads_kv;
    int32_t head_dim;
    int32_t block_size;
    int32_t num_blocks;
    int32_t max_blocks;
    int32_t num_splits;
    int32_t causal;
    int32_t gate_mode;
    int32_t activation;
    float scale;
    float scale_log2;
} GsdpaDecodeParams;

enum GsdpaDecodeStatus {
    GSDPA_DECODE_STATUS_OK = 0,
    GSDPA_DECODE_STATUS_INVALID_INPUT = 1
};

/*
 * Decode launch geometry. Main kernel: grid (ceil(group * Sq / BLOCK_M) * num_splits, heads_kv, batch),
 * group = heads_q / heads_kv; block THREADS; SMEM bytes of dynamic shared memory (Q tile + one K and one
 * V tile, plus a 16-byte flag). Combine: blocks of COMBINE_THREADS, a grid-stride loop over 8-element
 * chunks of the output rows. Why these tiles: kernels/decode/traits.h.
 */
enum GsdpaDecodeGeometry {
    GSDPA_DECODE_BLOCK_M = 64,
    GSDPA_DECODE_THREADS = 128,
    GSDPA_DECODE_MAX_SPLITS = 128,
    GSDPA_DECODE_MAX_BLOCK_SIZE = 256,
    GSDPA_DECODE_BLOCK_N_D64 = 32,
    GSDPA_DECODE_SMEM_D64 = (64 + 2 * 32) * 64 * 2 + 16,      /* 16 KiB */
    GSDPA_DECODE_BLOCK_N_D128 = 32,
    GSDPA_DECODE_SMEM_D128 = (64 + 2 * 32) * 128 * 2 + 16,    /* 32 KiB */
    GSDPA_DECODE_BLOCK_N_D256 = 32,
    GSDPA_DECODE_SMEM_D256 = (64 + 2 * 32) * 256 * 2 + 16,    /* 64 KiB */
    GSDPA_DECODE_COMBINE_THREADS = 128
};

/*
 * Appending new keys and values to the paged cache (kernels/append_kv.cu), what engines do before a
 * decode step: token i of k_new / v_new [B, S_new, Hkv, D] goes to key position cache_seqlens[b] + i of
 * sequence b, i.e. slot (pos % block_size) of block block_table[b][pos / block_size]. The lengths are
 * not updated (the caller advances them). Device values are checked as in the decode: a length outside
 * [0, max_blocks * block_size], a position at or past that capacity, or a block id outside
 * [0, num_blocks) leaves that token unwritten and stores GSDPA_DECODE_STATUS_INVALID_INPUT into
 * *status (when non-null). Blocks of GSDPA_APPEND_KV_THREADS, a grid-stride loop over 16-byte chunks.
 */
typedef struct GsdpaAppendKvParams {
    const void *k_new;
    const void *v_new;
    void *k_cache;
    void *v_cache;
    const int32_t *block_table;
    const int32_t *cache_seqlens;
    int32_t *status;               /* optional */
    GsdpaStrides k_new_stride, v_new_stride;
    GsdpaPagedStrides k_stride, v_stride;
    int64_t table_batch_stride;
    int32_t batch;
    int32_t seqlen_new;
    int32_t heads_kv;
    int32_t head_dim;
    int32_t block_size;
    int32_t num_blocks;
    int32_t max_blocks;
} GsdpaAppendKvParams;

enum GsdpaAppendKvGeometry {
    GSDPA_APPEND_KV_THREADS = 256
};

#ifdef __cplusplus
}
#endif

#endif /* GSDPA_PARAMS_H */
