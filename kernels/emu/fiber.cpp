// fiber.cpp: context switching for the emulator's fibers (see fiber.h).
#include "fiber.h"

#include <cstring>

namespace gsdpa_emu {

#if defined(__x86_64__)

// gsdpa_fiber_switch(void **save_sp, void *load_sp)
// Pushes the callee-saved registers and the MXCSR / x87 control words, stores rsp into *save_sp, loads
// load_sp and pops the same frame from it. A fresh fiber's stack is laid out by fiber_init so that the
// final `ret` enters its entry function.
asm(R"(
    .text
    .globl gsdpa_fiber_switch
    .type gsdpa_fiber_switch, @function
gsdpa_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size gsdpa_fiber_switch, .-gsdpa_fiber_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");

extern "C" void gsdpa_fiber_switch(void **save_sp, void *load_sp);

void fiber_init(FiberContext &ctx, char *stack_base, size_t stack_bytes, void (*entry)()) {
    // Top of stack, 16-byte aligned. After the switch's final `ret` pops `entry`, rsp = top - 8, which is
    // what a function expects on entry (rsp + 8 aligned to 16). The slot at top - 8 is a null return
    // address: entry never returns.
    uintptr_t top = (reinterpret_cast<uintptr_t>(stack_base) + stack_bytes) & ~uintptr_t(15);
    uint64_t *sp = reinterpret_cast<uint64_t *>(top);
    *--sp = 0;                                          // fake return address of entry
    *--sp = reinterpret_cast<uint64_t>(entry);          // popped by `ret`
    for (int i = 0; i < 6; ++i) *--sp = 0;              // rbp rbx r12 r13 r14 r15
    *--sp = 0;                                          // MXCSR (low 4 bytes) and x87 CW (next 2)
    uint32_t mxcsr = 0x1f80;                            // default: all exceptions masked, round to nearest
    uint16_t fpucw = 0x037f;                            // default x87 control word
    std::memcpy(reinterpret_cast<char *>(sp), &mxcsr, 4);
    std::memcpy(reinterpret_cast<char *>(sp) + 4, &fpucw, 2);
    ctx.sp = sp;
}

void fiber_switch(FiberContext &from, FiberContext &to) { gsdpa_fiber_switch(&from.sp, to.sp); }

#else

void fiber_init(FiberContext &ctx, char *stack_base, size_t stack_bytes, void (*entry)()) {
    getcontext(&ctx.uc);
    ctx.uc.uc_stack.ss_sp = stack_base;
    ctx.uc.uc_stack.ss_size = stack_bytes;
    ctx.uc.uc_link = nullptr;
    makecontext(&ctx.uc, entry, 0);
}

void fiber_switch(FiberContext &from, FiberContext &to) { swapcontext(&from.uc, &to.uc); }

#endif

}  // namespace gsdpa_emu
