// memory.cpp: the emulator's memory model: guarded buffers, the fault handler, cp.async, atomics.
#include <sys/mman.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <map>
#include <mutex>

#include "internal.h"

namespace gsdpa_emu {

// ----- Guarded mappings. -----

static size_t page_size() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

struct Mapping {
    char *base;
    size_t total;
};

static std::mutex g_mappings_mutex;
static std::map<char *, Mapping> g_mappings;  // usable start -> whole mapping

// Guard pages, for the fault handler's message. Read from a signal handler without the lock would race
// with registration, so the handler only tries the lock.
static std::mutex g_guards_mutex;
static std::map<uintptr_t, size_t> g_guards;  // page start -> bytes

void register_guard_page(const void *page_start, size_t page_bytes) {
    std::lock_guard<std::mutex> lock(g_guards_mutex);
    g_guards[reinterpret_cast<uintptr_t>(page_start)] = page_bytes;
}

void unregister_guard_page(const void *page_start) {
    std::lock_guard<std::mutex> lock(g_guards_mutex);
    g_guards.erase(reinterpret_cast<uintptr_t>(page_start));
}

bool is_in_guard_page(const void *addr) {
    std::unique_lock<std::mutex> lock(g_guards_mutex, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    uintptr_t a = reinterpret_cast<uintptr_t>(addr);
    auto it = g_guards.upper_bound(a);
    if (it == g_guards.begin()) return false;
    --it;
    return a < it->first + it->second;
}

char *map_guarded(size_t bytes, size_t alignment) {
    const size_t page = page_size();
    const size_t usable = (bytes + alignment - 1) / alignment * alignment;
    const size_t data_pages = (usable + page - 1) / page * page;
    void *base = mmap(nullptr, data_pages + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    char *guard = static_cast<char *>(base) + data_pages;
    mprotect(guard, page, PROT_NONE);
    register_guard_page(guard, page);
    char *start = guard - usable;
    std::lock_guard<std::mutex> lock(g_mappings_mutex);
    g_mappings[start] = Mapping{static_cast<char *>(base), data_pages + page};
    return start;
}

void unmap_guarded(char *usable_start) {
    Mapping m;
    {
        std::lock_guard<std::mutex> lock(g_mappings_mutex);
        auto it = g_mappings.find(usable_start);
        if (it == g_mappings.end()) return;
        m = it->second;
        g_mappings.erase(it);
    }
    unregister_guard_page(m.base + m.total - page_size());
    munmap(m.base, m.total);
}

// ----- Faults inside kernels become launch errors. -----

static struct sigaction g_previous[3];
static const int kTrappedSignals[3] = {SIGSEGV, SIGBUS, SIGFPE};

static void fault_handler(int sig, siginfo_t *info, void *ucontext) {
    BlockRunner *runner = current_runner();
    if (runner != nullptr && runner->in_block) {
        char message[256];
        const char *what = sig == SIGFPE ? "arithmetic fault (integer division by zero?)"
                           : is_in_guard_page(info->si_addr)
                               ? "out-of-bounds access: the address is in the guard page past the end of a "
                                 "kernel buffer or below a thread's stack"
                               : "invalid memory access";
        std::snprintf(message, sizeof message, "%s at address %p", what, info->si_addr);
        std::string where = runner->current != nullptr ? describe_fiber(*runner, *runner->current)
                                                       : "kernel " + kernel_name(*runner);
        fail_current_block(where + ": " + message);
    }
    // Not ours: hand the signal to whoever was installed before us (Rust's stack-overflow handler, a
    // debugger's), or let the default action happen when the faulting instruction runs again.
    for (int i = 0; i < 3; ++i) {
        if (kTrappedSignals[i] != sig) continue;
        const struct sigaction &prev = g_previous[i];
        if (prev.sa_flags & SA_SIGINFO) {
            prev.sa_sigaction(sig, info, ucontext);
        } else if (prev.sa_handler == SIG_DFL || prev.sa_handler == SIG_IGN) {
            sigaction(sig, &prev, nullptr);
        } else {
            prev.sa_handler(sig);
        }
    }
}

void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction action{};
        action.sa_sigaction = fault_handler;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&action.sa_mask);
        for (int i = 0; i < 3; ++i) sigaction(kTrappedSignals[i], &action, &g_previous[i]);
    });
}

// ----- cp.async: issued copies are queued per thread and performed when a wait retires their group. -----

void cp_async(void *smem_dst, const void *gmem_src, int cp_size, int src_size, Site site) {
    BlockRunner *runner = current_runner();
    if (runner == nullptr || runner->current == nullptr) fail("cp.async outside a kernel", site);
    if (cp_size != 4 && cp_size != 8 && cp_size != 16) fail("cp.async size must be 4, 8 or 16 bytes", site);
    if (src_size < 0 || src_size > cp_size) fail("cp.async src-size outside 0..cp-size", site);
    char *dst = static_cast<char *>(smem_dst);
    if (dst < runner->smem || dst + cp_size > runner->smem + runner->smem_bytes) {
        fail("cp.async destination is outside the block's dynamic shared memory", site);
    }
    if (reinterpret_cast<uintptr_t>(dst) % cp_size != 0) fail("cp.async destination is not aligned to its size", site);
    if (src_size > 0 && reinterpret_cast<uintptr_t>(gmem_src) % cp_size != 0) {
        fail("cp.async source is not aligned to its size", site);
    }
    // Until a wait retires the copy its destination holds garbage on hardware; here, NaN bytes.
    std::memset(dst, 0xff, cp_size);
    runner->current->uncommitted.push_back(AsyncCopy{dst, static_cast<const char *>(gmem_src), cp_size, src_size, site,
                                                     racecheck_stamp(*runner, *runner->current)});
}

void cp_async_commit() {
    BlockRunner *runner = current_runner();
    Fiber &f = *runner->current;
    f.committed.push_back(std::move(f.uncommitted));
    f.uncommitted.clear();
}

void cp_async_wait(int newest_pending_allowed) {
    BlockRunner *runner = current_runner();
    Fiber &f = *runner->current;
    while (f.committed.size() > static_cast<size_t>(newest_pending_allowed)) {
        for (const AsyncCopy &c : f.committed.front()) {
            std::string race = racecheck_write(*runner, f, c.dst, c.cp_size, c.site, &c.issued);
            if (!race.empty()) fail_current_block(race);
            if (c.src_size > 0) std::memcpy(c.dst, c.src, c.src_size);
            std::memset(c.dst + c.src_size, 0, c.cp_size - c.src_size);
        }
        f.committed.pop_front();
    }
}

// ----- Atomics: blocks run on several OS threads, so these are real atomics. -----

float atomic_add_f32(float *address, float value) {
    uint32_t *word = reinterpret_cast<uint32_t *>(address);
    uint32_t expected = __atomic_load_n(word, __ATOMIC_RELAXED);
    for (;;) {
        float old;
        std::memcpy(&old, &expected, 4);
        float updated = old + value;
        uint32_t desired;
        std::memcpy(&desired, &updated, 4);
        if (__atomic_compare_exchange_n(word, &expected, desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            return old;
        }
    }
}

}  // namespace gsdpa_emu

extern "C" void *gsdpa_emu_alloc_guarded(size_t bytes, size_t alignment) {
    if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > gsdpa_emu::page_size()) return nullptr;
    return gsdpa_emu::map_guarded(bytes, alignment);
}

extern "C" void gsdpa_emu_free_guarded(void *ptr) { gsdpa_emu::unmap_guarded(static_cast<char *>(ptr)); }
