// append_kv.cu: writes new keys and values into the paged cache at each sequence's length.
//
// Token i of sequence b (k_new, v_new [B, S_new, Hkv, D]) goes to key position pos = cache_seqlens[b] + i:
// slot pos % block_size of block block_table[b][pos / block_size]. One thread per 16-byte chunk of a
// (token, kv head) row, a grid-stride loop. The device values are checked before any address is formed
// from them (docs/decode.md): a length outside [0, capacity], a position at or past the capacity or a
// block id outside [0, num_blocks) leaves the token unwritten and sets the status word.
#include "common/platform.h"

namespace gsdpa {
namespace append {

template <class T>
GSDPA_DEVICE void append_kv(const GsdpaAppendKvParams &p) {
    const int chunks = p.head_dim / 8;
    const int64_t capacity = int64_t(p.max_blocks) * p.block_size;
    const int64_t total = int64_t(p.batch) * p.seqlen_new * p.heads_kv * chunks;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const int c = int(idx % chunks);
        int64_t rest = idx / chunks;
        const int h = int(rest % p.heads_kv);
        rest /= p.heads_kv;
        const int i = int(rest % p.seqlen_new);
        const int b = int(rest / p.seqlen_new);

        const int len = p.cache_seqlens[b];
        const int64_t pos = int64_t(len) + i;
        bool valid = len >= 0 && pos < capacity;  // len <= capacity follows from pos < capacity, i >= 0
        int id = -1;
        if (valid) {
            id = p.block_table[int64_t(b) * p.table_batch_stride + pos / p.block_size];
            valid = id >= 0 && id < p.num_blocks;
        }
        if (!valid) {
            if (p.status != nullptr) *p.status = GSDPA_DECODE_STATUS_INVALID_INPUT;
            continue;
        }
        const int slot = int(pos % p.block_size);
        const int64_t src_k = int64_t(b) * p.k_new_stride.batch + int64_t(i) * p.k_new_stride.row +
                              int64_t(h) * p.k_new_stride.head + c * 8;
        const int64_t src_v = int64_t(b) * p.v_new_stride.batch + int64_t(i) * p.v_new_stride.row +
                              int64_t(h) * p.v_new_stride.head + c * 8;
        const int64_t dst_k = int64_t(id) * p.k_stride.block + int64_t(slot) * p.k_stride.slot +
                              int64_t(h) * p.k_stride.head + c * 8;
        const int64_t dst_v = int64_t(id) * p.v_stride.block + int64_t(slot) * p.v_stride.slot +
                              int64_t(h) * p.v_stride.head + c * 8;
        *reinterpret_cast<uint4 *>(static_cast<T *>(p.k_cache) + dst_k) =
            *reinterpret_cast<const uint4 *>(static_cast<const T *>(p.k_new) + src_k);
        *reinterpret_cast<uint4 *>(static_cast<T *>(p.v_cache) + dst_v) =
            *reinterpret_cast<const uint4 *>(static_cast<const T *>(p.v_new) + src_v);
    }
}

}  // namespace append
}  // namespace gsdpa

#define GSDPA_APPEND_KV_KERNEL(TYPE, TYPE_NAME)                                                           \
    extern "C" __global__ void __launch_bounds__(GSDPA_APPEND_KV_THREADS)                                \
        gsdpa_append_kv_##TYPE_NAME(const GsdpaAppendKvParams p) {                                       \
        gsdpa::append::append_kv<TYPE>(p);                                                               \
    }                                                                                                     \
    GSDPA_REGISTER_KERNEL(gsdpa_append_kv_##TYPE_NAME, GsdpaAppendKvParams, GSDPA_APPEND_KV_THREADS)

GSDPA_APPEND_KV_KERNEL(gsdpa::bf16, bf16)
GSDPA_APPEND_KV_KERNEL(gsdpa::f16, f16)
