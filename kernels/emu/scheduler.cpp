// scheduler.cpp: launches a grid on worker threads and runs each block's CUDA threads as fibers.
//
// A block runs in passes. In a pass every runnable fiber runs until it parks at a synchronisation point
// (a warp collective or __syncthreads) or returns. With a seed (GSDPA_EMU_SEED), the order within a pass
// is permuted and each warp is given a speed, so that warps drift apart between barriers as they do on
// hardware: races between warps then change the result from seed to seed. Between
// passes the scheduler releases what can proceed: a warp whose 32 lanes all wait at the same collective
// (which it then executes for them), or a block whose live threads all wait at __syncthreads. When
// nothing can proceed and threads remain, the kernel has diverged or deadlocked: the launch fails with
// a description of where every warp is parked.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <map>
#include <mutex>
#include <numeric>
#include <thread>
#include <unordered_map>

#include "hopper.h"
#include "internal.h"

namespace gsdpa_emu {

// ----- Kernel registry (filled by static constructors in the kernel objects). -----

struct RegisteredKernel {
    size_t params_size;
    unsigned max_threads;  // __launch_bounds__
    KernelEntry entry;
};

static std::unordered_map<std::string, RegisteredKernel> &kernel_registry() {
    static std::unordered_map<std::string, RegisteredKernel> registry;
    return registry;
}

KernelRegistrar::KernelRegistrar(const char *name, size_t params_size, unsigned max_threads, KernelEntry entry) {
    kernel_registry()[name] = RegisteredKernel{params_size, max_threads, entry};
}

// ----- One launch, shared by its worker threads. -----

struct Launch {
    std::string kernel;
    KernelEntry entry = nullptr;
    const void *params = nullptr;
    dim3 grid, block;
    size_t smem_bytes = 0;
    uint64_t seed = 0;
    bool racecheck = false;
    bool reverse_blocks = false;  // GSDPA_EMU_REVERSE_BLOCKS
    uint64_t total_blocks = 0;
    std::atomic<uint64_t> next_block{0};
    std::atomic<bool> failed{false};
    std::mutex error_mutex;
    std::string error;
};

static thread_local BlockRunner *tl_runner = nullptr;

BlockRunner *current_runner() { return tl_runner; }
void set_current_runner(BlockRunner *runner) { tl_runner = runner; }

static BlockRunner &runner_or_die(const char *what) {
    BlockRunner *runner = tl_runner;
    if (runner == nullptr || runner->current == nullptr) {
        std::fprintf(stderr, "gsdpa emulator: %s called outside a kernel launch\n", what);
        std::abort();
    }
    return *runner;
}

static void record_failure(const Launch &launch_const, const std::string &message) {
    Launch &launch = const_cast<Launch &>(launch_const);
    std::lock_guard<std::mutex> lock(launch.error_mutex);
    if (!launch.failed.load()) {
        launch.error = message;
        launch.failed.store(true);
    }
}

[[noreturn]] void fail_current_block(const std::string &message) {
    BlockRunner *runner = tl_runner;
    record_failure(*runner->launch, message);
    siglongjmp(runner->on_failure, 1);
}

static std::string format_dim3(const dim3 &d) {
    return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

std::string format_site(Site site) { return std::string(site.file) + ":" + std::to_string(site.line); }

std::string kernel_name(const BlockRunner &runner) { return runner.launch->kernel; }

std::string describe_fiber(const BlockRunner &runner, const Fiber &fiber) {
    return "kernel " + runner.launch->kernel + ", block " + format_dim3(fiber.thread.block_idx) + ", thread " +
           format_dim3(fiber.thread.thread_idx) + " (warp " + std::to_string(fiber.linear_id / kWarpSize) +
           ", lane " + std::to_string(fiber.linear_id % kWarpSize) + ")";
}

std::string describe_thread(const BlockRunner &runner, const Fiber &fiber, Site site) {
    return describe_fiber(runner, fiber) + " at " + format_site(site);
}

// ----- What kernels call. -----

const ThreadContext &current_thread() { return runner_or_die("a CUDA built-in variable").current->thread; }

char *dynamic_smem() { return runner_or_die("dynamic_smem").smem; }

static void park_current(FiberState state) {
    BlockRunner &runner = *tl_runner;
    Fiber &fiber = *runner.current;
    fiber.state = state;
    fiber_switch(fiber.context, runner.scheduler);
}

// Records what the current lane brings to a warp collective; the caller adds the operands and parks.
static PendingCollective &begin_collective(const char *what, CollectiveKind kind, unsigned mask, Site site) {
    PendingCollective &p = runner_or_die(what).current->pending;
    p.kind = kind;
    p.site = site;
    p.mask = mask;
    return p;
}

static bool same_site(Site a, Site b) { return a.line == b.line && std::string(a.file) == b.file; }

void syncthreads(Site site) {
    BlockRunner &runner = runner_or_die("__syncthreads");
    runner.current->barrier_site = site;
    park_current(FiberState::AtBarrier);
}

void syncwarp(unsigned mask, Site site) {
    begin_collective("__syncwarp", CollectiveKind::SyncWarp, mask, site);
    park_current(FiberState::AtCollective);
}

uint32_t shuffle(ShuffleMode mode, unsigned mask, uint32_t value, int arg, int width, Site site) {
    PendingCollective &p = begin_collective("a warp shuffle", CollectiveKind::Shuffle, mask, site);
    p.shuffle_mode = mode;
    p.shuffle_value = value;
    p.shuffle_arg = arg;
    p.shuffle_width = width;
    park_current(FiberState::AtCollective);
    return p.shuffle_result;
}

bool vote_any(unsigned mask, bool predicate, Site site) {
    PendingCollective &p = begin_collective("a warp vote", CollectiveKind::Vote, mask, site);
    p.vote_value = predicate;
    park_current(FiberState::AtCollective);
    return p.vote_result;
}

void mma_m16n8k16(MmaType type, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4],
                  Site site) {
    PendingCollective &p = begin_collective("mma.sync", CollectiveKind::Mma, 0xffffffffu, site);
    p.mma_type = type;
    p.mma_a = a;
    p.mma_b = b;
    p.mma_c = c;
    p.mma_d = d;
    park_current(FiberState::AtCollective);
}

void ldmatrix(uint32_t *regs, int num_matrices, bool trans, const void *smem_row, Site site) {
    PendingCollective &p = begin_collective("ldmatrix", CollectiveKind::Ldmatrix, 0xffffffffu, site);
    p.ldm_regs = regs;
    p.ldm_num = num_matrices;
    p.ldm_trans = trans;
    p.ldm_addr = smem_row;
    park_current(FiberState::AtCollective);
}

void stmatrix(const uint32_t *regs, int num_matrices, bool trans, void *smem_row, Site site) {
    PendingCollective &p = begin_collective("stmatrix", CollectiveKind::Stmatrix, 0xffffffffu, site);
    p.ldm_regs = const_cast<uint32_t *>(regs);
    p.ldm_num = num_matrices;
    p.ldm_trans = trans;
    p.ldm_addr = smem_row;
    park_current(FiberState::AtCollective);
}

[[noreturn]] void fail(const char *message, Site site) {
    BlockRunner &runner = runner_or_die("fail");
    fail_current_block(describe_thread(runner, *runner.current, site) + ": " + message);
}

const char *collective_name(CollectiveKind kind) {
    switch (kind) {
        case CollectiveKind::SyncWarp: return "__syncwarp";
        case CollectiveKind::Shuffle: return "a shuffle";
        case CollectiveKind::Vote: return "a vote";
        case CollectiveKind::Mma: return "mma.sync";
        case CollectiveKind::Ldmatrix: return "ldmatrix";
        case CollectiveKind::Stmatrix: return "stmatrix";
    }
    return "?";
}

// ----- The scheduler. -----

static void fiber_entry() {
    BlockRunner *runner = tl_runner;
    runner->launch->entry(runner->launch->params);
    runner = tl_runner;
    runner->current->state = FiberState::Done;
    fiber_switch(runner->current->context, runner->scheduler);
    std::abort();  // a finished fiber is never resumed
}

static uint64_t splitmix64(uint64_t &state) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Releases a warp whose lanes all wait at one collective. Returns true when it made progress.
static bool resolve_warp(BlockRunner &runner, int warp) {
    const int n = static_cast<int>(runner.fibers.size());
    const int first = warp * kWarpSize;
    const int count = std::min(kWarpSize, n - first);
    int parked = 0, done = 0;
    for (int i = 0; i < count; ++i) {
        FiberState s = runner.fibers[first + i].state;
        parked += s == FiberState::AtCollective;
        done += s == FiberState::Done;
    }
    if (parked == 0) return false;
    const Fiber &lead = *std::find_if(runner.fibers.begin() + first, runner.fibers.begin() + first + count,
                                      [](const Fiber &f) { return f.state == FiberState::AtCollective; });
    if (parked + done == count && done > 0) {
        fail_current_block(describe_thread(runner, lead, lead.pending.site) + ": " +
                           collective_name(lead.pending.kind) + " waits for " + std::to_string(done) +
                           " lanes of its warp that have already exited");
    }
    if (parked < count) return false;  // some lanes are at a barrier: resolved (or reported) later
    if (count < kWarpSize) {
        fail_current_block(describe_thread(runner, lead, lead.pending.site) + ": " +
                           collective_name(lead.pending.kind) + " in a partial warp");
    }
    Fiber *lanes[kWarpSize];
    for (int i = 0; i < kWarpSize; ++i) {
        lanes[i] = &runner.fibers[first + i];
        const PendingCollective &p = lanes[i]->pending;
        if (p.kind != lead.pending.kind || !same_site(p.site, lead.pending.site)) {
            fail_current_block("divergent warp: " + describe_thread(runner, lead, lead.pending.site) + " is at " +
                               collective_name(lead.pending.kind) + ", but lane " + std::to_string(i) + " is at " +
                               collective_name(p.kind) + " (" + format_site(p.site) + ")");
        }
        if (p.mask != 0xffffffffu) {
            fail_current_block(describe_thread(runner, *lanes[i], p.site) + ": " + collective_name(p.kind) +
                               " with a partial member mask is not supported by the emulator");
        }
    }
    std::string problem = execute_collective(runner, lanes);
    if (!problem.empty()) {
        fail_current_block(describe_thread(runner, lead, lead.pending.site) + ": " + problem);
    }
    // Of the collectives, only __syncwarp orders the lanes' memory accesses.
    if (lead.pending.kind == CollectiveKind::SyncWarp) racecheck_syncwarp(runner, warp);
    for (Fiber *lane : lanes) lane->state = FiberState::Runnable;
    return true;
}

// Releases the block's barrier when every live thread waits at it.
static bool resolve_barrier(BlockRunner &runner) {
    const Fiber *first_waiting = nullptr;
    for (const Fiber &f : runner.fibers) {
        if (f.state == FiberState::Done) continue;
        if (f.state != FiberState::AtBarrier) return false;
        if (first_waiting == nullptr) {
            first_waiting = &f;
        } else if (!same_site(f.barrier_site, first_waiting->barrier_site)) {
            fail_current_block("threads wait at different __syncthreads: " +
                               describe_thread(runner, *first_waiting, first_waiting->barrier_site) + " and " +
                               describe_thread(runner, f, f.barrier_site));
        }
    }
    if (first_waiting == nullptr) return false;
    for (Fiber &f : runner.fibers) {
        if (f.state == FiberState::AtBarrier) f.state = FiberState::Runnable;
    }
    racecheck_barrier(runner);
    hopper_barrier_released(runner, 0, static_cast<int>(runner.fibers.size()));
    return true;
}

[[noreturn]] static void report_deadlock(BlockRunner &runner) {
    std::string message = "deadlock in kernel " + runner.launch->kernel + ", block " +
                          format_dim3(runner.fibers[0].thread.block_idx) + ":";
    const int n = static_cast<int>(runner.fibers.size());
    for (int w = 0; w * kWarpSize < n; ++w) {
        message += " warp " + std::to_string(w) + " [";
        std::map<std::string, int> where;
        for (int i = w * kWarpSize; i < std::min(n, (w + 1) * kWarpSize); ++i) {
            const Fiber &f = runner.fibers[i];
            std::string at = hopper_describe_wait(runner, f);
            if (at.empty()) {
                at = f.state == FiberState::Done        ? "exited"
                     : f.state == FiberState::AtBarrier ? "__syncthreads " + format_site(f.barrier_site)
                                                        : std::string(collective_name(f.pending.kind)) + " " +
                                                              format_site(f.pending.site);
            }
            where[at]++;
        }
        bool first = true;
        for (auto &[at, lanes] : where) {
            message += (first ? "" : "; ") + std::to_string(lanes) + " lanes at " + at;
            first = false;
        }
        message += "]";
    }
    fail_current_block(message);
}

static dim3 unlinearize(uint64_t index, const dim3 &extent) {
    dim3 d;
    d.x = static_cast<unsigned>(index % extent.x);
    d.y = static_cast<unsigned>((index / extent.x) % extent.y);
    d.z = static_cast<unsigned>(index / (uint64_t(extent.x) * extent.y));
    return d;
}

// Kernels keep their "registers" on the fiber stack; 256 KiB is far more than any kernel frame here and
// costs nothing until touched.
static constexpr size_t kFiberStackBytes = 256 * 1024;

static void run_block(BlockRunner &runner, uint64_t block_linear) {
    const Launch &launch = *runner.launch;
    const dim3 block_idx = unlinearize(block_linear, launch.grid);
    // Poison shared memory: a read of anything not written in this block shows up as NaN.
    std::memset(runner.smem, 0xff, runner.smem_bytes);
    const int n = static_cast<int>(runner.fibers.size());
    for (int i = 0; i < n; ++i) {
        Fiber &f = runner.fibers[i];
        f.thread.thread_idx = unlinearize(static_cast<uint64_t>(i), launch.block);
        f.thread.block_idx = block_idx;
        f.thread.block_dim = launch.block;
        f.thread.grid_dim = launch.grid;
        f.linear_id = i;
        f.state = FiberState::Runnable;
        f.uncommitted.clear();
        f.committed.clear();
        f.hopper = HopperFiber{};
    }
    for (Fiber &f : runner.fibers) fiber_init(f.context, f.stack, kFiberStackBytes, &fiber_entry);
    runner.rng_state = launch.seed ^ (block_linear * 0x2545f4914f6cdd1dull);
    racecheck_block_start(runner);
    hopper_block_start(runner);

    if (sigsetjmp(runner.on_failure, 1) != 0) {
        runner.in_block = false;
        runner.current = nullptr;
        return;  // the failure is recorded in the launch
    }
    runner.in_block = true;
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    // With a seed, warps also run at different speeds: each warp gets a per-block speed of 1, 1/2 or 1/4
    // (the chance that it runs in a given pass), so warps drift apart between barriers as they can on
    // hardware. A missing __syncthreads lets a fast warp read or overwrite shared memory a slow warp has
    // not finished with, and the result changes with the seed.
    const int warps = (n + kWarpSize - 1) / kWarpSize;
    std::vector<uint64_t> warp_speed(warps, 4);
    if (launch.seed != 0) {
        for (uint64_t &speed : warp_speed) speed = uint64_t(1) << (splitmix64(runner.rng_state) % 3);
    }
    std::vector<char> warp_runs(warps, 1);
    for (;;) {
        if (launch.seed != 0) {
            for (int i = n - 1; i > 0; --i) {
                std::swap(order[i], order[splitmix64(runner.rng_state) % uint64_t(i + 1)]);
            }
            for (int w = 0; w < warps; ++w) warp_runs[w] = splitmix64(runner.rng_state) % 4 < warp_speed[w];
        }
        bool ran = false;
        for (int attempt = 0; attempt < 2 && !ran; ++attempt) {
            for (int i : order) {
                Fiber &f = runner.fibers[i];
                if (f.state != FiberState::Runnable) continue;
                if (attempt == 0 && !warp_runs[i / kWarpSize]) continue;  // held back this pass
                runner.current = &f;
                fiber_switch(runner.scheduler, f.context);
                ran = true;
            }
        }
        runner.current = nullptr;
        bool progressed = ran;
        for (int w = 0; w * kWarpSize < n; ++w) progressed |= resolve_warp(runner, w);
        progressed |= resolve_barrier(runner);
        progressed |= hopper_resolve(runner, false);
        bool all_done = std::all_of(runner.fibers.begin(), runner.fibers.end(),
                                    [](const Fiber &f) { return f.state == FiberState::Done; });
        if (all_done) break;
        // Nothing else can move: the TMA loads in flight land now (as late as possible, so that a read
        // before the barrier wait sees poison), which may complete barrier phases.
        if (!progressed) progressed = hopper_resolve(runner, true);
        if (!progressed) report_deadlock(runner);
    }
    hopper_block_end(runner);
    runner.in_block = false;
}

static char *map_stack(size_t bytes) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void *base = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    // Stacks grow down: the guard page sits below the stack, where an overflow runs into it.
    mprotect(base, page, PROT_NONE);
    register_guard_page(base, page);
    return static_cast<char *>(base) + page;
}

static void unmap_stack(char *stack, size_t bytes) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    unregister_guard_page(stack - page);
    munmap(stack - page, bytes + page);
}

static void worker_main(Launch &launch) {
    // The fault handler runs on an alternate stack: a fiber that overflowed its own has none left.
    std::vector<char> alt_stack(1 << 16);
    stack_t ss{}, old_ss{};
    ss.ss_sp = alt_stack.data();
    ss.ss_size = alt_stack.size();
    sigaltstack(&ss, &old_ss);

    BlockRunner runner;
    runner.launch = &launch;
    const uint64_t threads = uint64_t(launch.block.x) * launch.block.y * launch.block.z;
    runner.fibers.resize(threads);
    bool mapped = true;
    for (Fiber &f : runner.fibers) {
        f.stack = map_stack(kFiberStackBytes);
        mapped &= f.stack != nullptr;
    }
    runner.smem_bytes = launch.smem_bytes;
    runner.smem = map_guarded(std::max<size_t>(launch.smem_bytes, 16), 128);
    racecheck_setup(runner, launch.racecheck, static_cast<int>((threads + kWarpSize - 1) / kWarpSize),
                    static_cast<int>(threads));
    set_current_runner(&runner);
    if (!mapped || runner.smem == nullptr) {
        record_failure(launch, "the emulator could not map fiber stacks or shared memory");
    } else {
        while (!launch.failed.load()) {
            uint64_t b = const_cast<Launch &>(launch).next_block.fetch_add(1);
            if (b >= launch.total_blocks) break;
            run_block(runner, launch.reverse_blocks ? launch.total_blocks - 1 - b : b);
        }
    }
    set_current_runner(nullptr);
    for (Fiber &f : runner.fibers) {
        if (f.stack != nullptr) unmap_stack(f.stack, kFiberStackBytes);
    }
    if (runner.smem != nullptr) unmap_guarded(runner.smem);
    sigaltstack(&old_ss, nullptr);
}

}  // namespace gsdpa_emu

using namespace gsdpa_emu;

static int write_error(char *err, size_t err_len, const std::string &message) {
    if (err != nullptr && err_len > 0) {
        size_t n = std::min(err_len - 1, message.size());
        std::memcpy(err, message.data(), n);
        err[n] = '\0';
    }
    return 1;
}

extern "C" int gsdpa_emu_has_kernel(const char *kernel) { return kernel_registry().count(kernel) ? 1 : 0; }

extern "C" uint32_t gsdpa_emu_kernel_max_threads(const char *kernel) {
    auto found = kernel_registry().find(kernel);
    return found == kernel_registry().end() ? 0 : found->second.max_threads;
}

extern "C" int gsdpa_emu_launch_with_flags(const char *kernel, const uint32_t grid[3], const uint32_t block[3],
                                           size_t dynamic_smem_bytes, const void *params, size_t params_size,
                                           uint64_t seed, uint32_t worker_threads, uint32_t flags, char *err,
                                           size_t err_len) {
    auto found = kernel_registry().find(kernel);
    if (found == kernel_registry().end()) {
        return write_error(err, err_len, std::string("kernel ") + kernel + " is not compiled into the emulator");
    }
    if (found->second.params_size != params_size) {
        return write_error(err, err_len,
                           std::string("kernel ") + kernel + " takes " + std::to_string(found->second.params_size) +
                               "-byte parameters, got " + std::to_string(params_size));
    }
    // The per-arch limits (src/arch.rs) are checked before this call; these guard the emulator itself.
    const uint64_t threads = uint64_t(block[0]) * block[1] * block[2];
    if (threads == 0 || threads > found->second.max_threads) {
        return write_error(err, err_len,
                           "block size must be 1.." + std::to_string(found->second.max_threads) +
                               " threads (the kernel's __launch_bounds__), got " + std::to_string(threads));
    }
    Launch launch;
    launch.kernel = kernel;
    launch.entry = found->second.entry;
    launch.params = params;
    launch.grid = dim3{grid[0], grid[1], grid[2]};
    launch.block = dim3{block[0], block[1], block[2]};
    launch.smem_bytes = dynamic_smem_bytes;
    launch.seed = seed;
    launch.racecheck = (flags & GSDPA_EMU_RACECHECK) != 0;
    launch.reverse_blocks = (flags & GSDPA_EMU_REVERSE_BLOCKS) != 0;
    launch.total_blocks = uint64_t(grid[0]) * grid[1] * grid[2];
    if (launch.total_blocks == 0) return 0;

    install_fault_handler();
    uint64_t workers = worker_threads != 0 ? worker_threads : std::max(1u, std::thread::hardware_concurrency());
    workers = std::min<uint64_t>(workers, launch.total_blocks);
    std::vector<std::thread> pool;
    for (uint64_t i = 0; i < workers; ++i) pool.emplace_back(worker_main, std::ref(launch));
    for (auto &t : pool) t.join();
    if (launch.failed.load()) return write_error(err, err_len, launch.error);
    return 0;
}

extern "C" int gsdpa_emu_launch(const char *kernel, const uint32_t grid[3], const uint32_t block[3],
                                size_t dynamic_smem_bytes, const void *params, size_t params_size, uint64_t seed,
                                uint32_t worker_threads, char *err, size_t err_len) {
    return gsdpa_emu_launch_with_flags(kernel, grid, block, dynamic_smem_bytes, params, params_size, seed,
                                       worker_threads, GSDPA_EMU_RACECHECK, err, err_len);
}
