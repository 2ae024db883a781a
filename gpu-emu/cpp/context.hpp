// Switching between the emulated threads' stacks (context.cpp).
#pragma once

#include <cstddef>

// The routine is System V x86-64 in ELF assembly; -DEMU_UCONTEXT takes the
// portable path there too (to check it builds).
#if defined(__x86_64__) && defined(__ELF__) && !defined(EMU_UCONTEXT)
#define EMU_OWN_SWITCH 1
#else
#include <ucontext.h>
#endif

namespace emu {

// Where a suspended fiber (or the scheduler) resumes.
struct Context {
#if EMU_OWN_SWITCH
    void* sp = nullptr;  // its stack pointer, the registers saved below it
#else
    ucontext_t uc;
#endif
};

// Makes `context` start `entry` (which must never return) on the stack
// [stack, stack + bytes) at its first switch.
void context_start(Context& context, char* stack, size_t bytes, void (*entry)());

// Saves the running code into `from` and resumes `to`.
void context_switch(Context& from, Context& to);

}  // namespace emu
