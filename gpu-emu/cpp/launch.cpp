// The kernels of kernels/mmoe.cu compiled for the host, and one C entry that
// launches any of them by name with its arguments as 64-bit words (pointers,
// or ints sign-extended), as the runtime passes them to cuLaunchKernel.
#define MMOE_EMULATE 1
#include "cuda_emu.hpp"
#include "scheduler.hpp"

#include "mmoe.cu"
#include "selftest.cu"

#include <cstddef>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

namespace {

template <class T>
T from_word(uint64_t word) {
    static_assert(std::is_pointer_v<T> || std::is_integral_v<T>, "kernel parameters are pointers or integers");
    if constexpr (std::is_pointer_v<T>) {
        return reinterpret_cast<T>((uintptr_t)word);
    } else {
        return static_cast<T>((int64_t)word);
    }
}

template <class... P, size_t... I>
void call(void (*kernel)(P...), const uint64_t* words, std::index_sequence<I...>) {
    kernel(from_word<P>(words[I])...);
}

struct Entry {
    const char* name;
    int arity;
    std::function<void(const uint64_t*)> run;
};

template <class... P>
Entry entry(const char* name, void (*kernel)(P...)) {
    return Entry{name, (int)sizeof...(P),
                 [kernel](const uint64_t* words) { call(kernel, words, std::index_sequence_for<P...>{}); }};
}

const std::vector<Entry>& entries() {
    static const std::vector<Entry> table = {
        entry("features_request", features_request),
        entry("features_candidate", features_candidate),
        entry("linear_simt_f32", linear_simt_f32),
        entry("linear_simt_f16", linear_simt_f16),
        entry("linear_mma32", linear_mma32),
        entry("linear_mma64", linear_mma64),
        entry("linear_mma128", linear_mma128),
        entry("linear_mma32h", linear_mma32h),
        entry("linear_mma64h", linear_mma64h),
        entry("linear_mma128h", linear_mma128h),
        entry("linear_mma128x64h", linear_mma128x64h),
        entry("linear_mma64x128h", linear_mma64x128h),
        entry("linear_mma32k64h", linear_mma32k64h),
        entry("linear_mma64k64h", linear_mma64k64h),
        entry("linear_mma32x32h", linear_mma32x32h),
        entry("linear_mma32x32k64h", linear_mma32x32k64h),
        entry("linear_mma128x128s4h", linear_mma128x128s4h),
        entry("linear_mma128x128w4s4h", linear_mma128x128w4s4h),
        entry("linear_mma128x64s6h", linear_mma128x64s6h),
        entry("linear_mma32x32s16h", linear_mma32x32s16h),
        entry("linear_mma32x64s12h", linear_mma32x64s12h),
        entry("linear_mma64x64s8h", linear_mma64x64s8h),
        entry("linear_wgmma128x128", linear_wgmma128x128),
        entry("linear_wgmma64x128", linear_wgmma64x128),
        entry("feature_gate", feature_gate),
        entry("gather", gather),
        entry("layer_norm", layer_norm),
        entry("outer_heads", outer_heads),
        entry("bilinear", bilinear),
        entry("mixture", mixture),
        entry("task_heads_f16", task_heads_f16),
        entry("task_heads_f32", task_heads_f32),
        entry("output_logit", output_logit),
        entry("selftest_exchange", selftest_exchange),
        entry("selftest_exited_lanes", selftest_exited_lanes),
        entry("selftest_shuffle_sum", selftest_shuffle_sum),
        entry("selftest_misaligned", selftest_misaligned),
        entry("selftest_read", selftest_read),
        entry("selftest_cp_async", selftest_cp_async),
        entry("selftest_dynamic_shared", selftest_dynamic_shared),
        entry("selftest_wgmma", selftest_wgmma),
    };
    return table;
}

void set_error(char* out, size_t len, const std::string& message) {
    if (len == 0) return;
    size_t n = std::min(len - 1, message.size());
    std::memcpy(out, message.data(), n);
    out[n] = 0;
}

}  // namespace

// Runs kernel `name` over `grid` blocks of `block` threads with
// `shared_bytes` of dynamic shared memory, the blocks in ascending order (in
// descending order if `reverse_blocks`). Returns 0, or 1 with a message in
// `error` (an unknown kernel, a wrong argument count, a block that cannot
// complete).
extern "C" int mmoe_emu_launch(const char* name, const uint32_t* grid, const uint32_t* block, uint32_t shared_bytes,
                               int reverse_blocks, const uint64_t* args, int nargs, char* error, size_t error_len) {
    for (const Entry& e : entries()) {
        if (std::strcmp(e.name, name) != 0) continue;
        if (e.arity != nargs) {
            set_error(error, error_len,
                      std::string(name) + ": " + std::to_string(nargs) + " arguments, the kernel takes " +
                          std::to_string(e.arity));
            return 1;
        }
        std::string message;
        std::function<void()> body = [&]() { e.run(args); };
        if (!emu::run_grid(uint3{grid[0], grid[1], grid[2]}, uint3{block[0], block[1], block[2]}, shared_bytes,
                           reverse_blocks != 0, body, message)) {
            set_error(error, error_len, std::string(name) + ": " + message);
            return 1;
        }
        return 0;
    }
    set_error(error, error_len, std::string("no kernel named ") + name);
    return 1;
}
