// gate_stats.cu: the second launch of the forward's gate statistics (docs/diagnostics.md).
//
//   gate_stats[b, h] = (sum of act(G) over the sequence's rows, and over D for the elementwise gate)
//                      / (seqlen_q(b) * (elementwise ? D : 1)),   0 for an empty sequence.
//
// The forward (forward/diagnostics.h) leaves one partial sum per (batch, head, query block, warp) in
// p.gate_partials, gate_partials_per_head floats per (batch, head), blocks past a varlen sequence's end
// writing 0. One warp per (head, batch) here: lane l adds partials l, l + 32, ... in index order, then
// the lanes are combined in a fixed butterfly. The order never depends on scheduling, so the result is
// bit-reproducible, which atomics would not be. Launched on the same stream right after the forward:
// grid (heads_q, batch), GSDPA_GATE_STATS_THREADS threads, no shared memory.
#include "common/seqlen_info.h"
#include "forward/diagnostics.h"

namespace gsdpa {
namespace gate_stats {

GSDPA_DEVICE void reduce_head(const GsdpaFwdParams &p) {
    const int h = blockIdx.x;
    const int b = blockIdx.y;
    const int lane = threadIdx.x;
    const SeqlenInfo seq(p, b);
    const float *partials = p.gate_partials + (int64_t(b) * p.heads_q + h) * p.gate_partials_per_head;
    float sum = 0.0f;
    for (int i = lane; i < p.gate_partials_per_head; i += 32) sum += partials[i];
    sum = fwd::warp_sum(sum);
    if (lane == 0) {
        const int per_row = p.gate_mode == GSDPA_GATE_ELEMENTWISE ? p.head_dim : 1;
        const float count = float(seq.seqlen_q) * float(per_row);
        p.gate_stats[int64_t(b) * p.gate_stats_batch_stride + int64_t(h) * p.gate_stats_head_stride] =
            seq.seqlen_q > 0 ? sum / count : 0.0f;  // IEEE division: once per head, exact means
    }
}

}  // namespace gate_stats
}  // namespace gsdpa

extern "C" __global__ void __launch_bounds__(GSDPA_GATE_STATS_THREADS) gsdpa_diag_gate_stats(const GsdpaFwdParams p) {
    gsdpa::gate_stats::reduce_head(p);
}
GSDPA_REGISTER_KERNEL(gsdpa_diag_gate_stats, GsdpaFwdParams, GSDPA_GATE_STATS_THREADS)
