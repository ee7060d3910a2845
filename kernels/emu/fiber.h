// fiber.h: minimal stackful coroutines for the emulator's CUDA threads.
//
// A block's threads run cooperatively on one OS thread and switch only at synchronisation points, so
// switching must be cheap: tens of thousands of warp collectives per block, 32 switches each. glibc's
// swapcontext saves and restores the signal mask with a system call on every switch; on x86-64 we use a
// few instructions of assembly instead (callee-saved registers, stack pointer, SSE and x87 control
// words, as the System V ABI requires). Other architectures fall back to ucontext.
#pragma once

#include <cstddef>
#include <cstdint>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace gsdpa_emu {

struct FiberContext {
#if defined(__x86_64__)
    void *sp = nullptr;  // saved stack pointer; everything else lives on the stack
#else
    ucontext_t uc;
#endif
};

// Prepares `ctx` so that the first switch to it calls entry() on the given stack. entry must never return.
void fiber_init(FiberContext &ctx, char *stack_base, size_t stack_bytes, void (*entry)());

// Saves the current context into `from` and resumes `to`.
void fiber_switch(FiberContext &from, FiberContext &to);

}  // namespace gsdpa_emu
