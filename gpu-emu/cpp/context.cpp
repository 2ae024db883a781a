// Fiber switches. On x86-64, a switch saves and restores only what the
// System V ABI has a callee keep (rbx, rbp, r12-r15, the stack pointer, the
// SSE and x87 control words). glibc's swapcontext also sets the signal mask,
// two system calls per switch: 90% of the emulator's time went there
// (perf, gpu-emu/tests/parity.rs, 2026-11-28). Elsewhere, ucontext.
#include "context.hpp"

#include <cstdint>
#include <cstring>

namespace emu {

#if EMU_OWN_SWITCH

extern "C" void emu_context_switch(void** save_sp, void* load_sp);

// emu_context_switch(save_sp = rdi, load_sp = rsi): pushes the callee-saved
// registers and the control words, stores rsp in *save_sp, then loads
// load_sp and pops the same layout, and returns into the other stack.
asm(R"(
    .text
    .globl emu_context_switch
    .hidden emu_context_switch
    .type emu_context_switch, @function
emu_context_switch:
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
    .size emu_context_switch, .-emu_context_switch
)");

void context_start(Context& context, char* stack, size_t bytes, void (*entry)()) {
    // From the 16-byte aligned top down: a zero return address for `entry`
    // (entered by `ret`, it finds rsp = top - 8, as after a call), `entry`
    // itself, six zero registers, then this thread's control words.
    auto top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t{15};
    auto* words = reinterpret_cast<uint64_t*>(top) - 9;
    std::memset(words, 0, 9 * sizeof(uint64_t));
    words[7] = reinterpret_cast<uint64_t>(entry);
    uint32_t mxcsr;
    uint16_t fpu_control;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpu_control));
    std::memcpy(reinterpret_cast<char*>(words), &mxcsr, 4);
    std::memcpy(reinterpret_cast<char*>(words) + 4, &fpu_control, 2);
    context.sp = words;
}

void context_switch(Context& from, Context& to) { emu_context_switch(&from.sp, to.sp); }

#else

void context_start(Context& context, char* stack, size_t bytes, void (*entry)()) {
    getcontext(&context.uc);
    context.uc.uc_stack.ss_sp = stack;
    context.uc.uc_stack.ss_size = bytes;
    context.uc.uc_link = nullptr;
    makecontext(&context.uc, entry, 0);
}

void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

#endif

}  // namespace emu
