// Runs a CUDA grid on the host: blocks one after another (in ascending
// order, or descending as the caller asks), the threads of a
// block as fibers (context.cpp) that switch only at barriers. Each warp runs as
// far as it can (through its warp operations, up to __syncthreads) before
// the next warp starts, and the order of warps and of lanes flips every
// round: a read of shared memory that lacks its barrier sees data not yet
// written, or already overwritten. A barrier that can never complete (a
// warp operation some lanes skip) is reported as an error, not a hang.
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "context.hpp"
#include "cuda_emu.hpp"
#include "scheduler.hpp"

namespace emu {
namespace {

enum class State { Runnable, BlockBarrier, WarpBarrier, Done };

// One cp.async: 16 bytes at dst, `bytes` of them from src.
struct AsyncCopy {
    void* dst;
    const void* src;
    int bytes;
    void perform() const;
};

// One wgmma.mma_async of a thread: its accumulators and descriptors.
struct AsyncMma {
    float* d;
    int n;
    uint64_t desc_x, desc_w;
};

// A thread's asynchronous operations of one kind (cp.async copies, wgmma
// MMAs) not yet performed: issued since the last commit, and the
// committed groups, oldest first.
template <class Op>
struct AsyncGroups {
    std::vector<Op> uncommitted;
    std::deque<std::vector<Op>> groups;
    void clear() {
        uncommitted.clear();
        groups.clear();
    }
    void commit() {
        groups.push_back(std::move(uncommitted));
        uncommitted.clear();
    }
    // wait_group: performs the oldest groups until at most
    // `newest_in_flight` remain.
    template <class Perform>
    void wait(int newest_in_flight, Perform perform) {
        while (groups.size() > (size_t)newest_in_flight) {
            for (const Op& op : groups.front()) perform(op);
            groups.pop_front();
        }
    }
};

struct Fiber {
    Context context;
    std::unique_ptr<char[]> stack;
    ThreadIds ids;
    State state = State::Runnable;
    AsyncGroups<AsyncCopy> copies;
    AsyncGroups<AsyncMma> mmas;
    // Chunks of dynamic shared memory this thread's cp.async wrote since
    // its last fence.proxy.async.
    std::vector<size_t> unfenced;
    // A wgmma.fence since the thread's start or its last wgmma.wait_group:
    // a wgmma.mma_async needs one (see wgmma below).
    bool mma_fenced = false;
};

constexpr size_t STACK_BYTES = 128 * 1024;
constexpr int MAX_WORDS = 8;  // words a lane posts in one warp exchange

struct Executor {
    std::vector<Fiber> fibers;
    Context scheduler;
    size_t current = 0;
    const std::function<void()>* body = nullptr;
    std::vector<uint64_t> slots;  // per warp: 32 lanes × MAX_WORDS
    std::string error;
    bool eager_copies = false;  // cp.async lands at issue (else at its wait)
    unsigned launch = 0;        // this OS thread's launches so far
    // The launch's dynamic shared memory, as many bytes as it asked for.
    std::vector<uint4> dynamic_shared;
    size_t dynamic_bytes = 0;
    // Per 16-byte chunk of it: 1 + the thread whose cp.async wrote it and
    // has not yet executed fence.proxy.async (0: none). wgmma reads shared
    // memory through the async proxy, and a write through the generic
    // proxy (cp.async's) is visible to it only after the writer's proxy
    // fence (and a barrier, for the other threads): a wgmma operand in an
    // unfenced chunk is an error here.
    std::vector<uint32_t> generic_writer;
};

thread_local Executor* executor = nullptr;

Fiber& me() { return executor->fibers[executor->current]; }

// Performed by the thread that issued the copy (at the issue, or at its
// wait): a copy into the dynamic shared memory marks its chunk as that
// thread's unfenced write.
void AsyncCopy::perform() const {
    if (bytes > 0) std::memcpy(dst, src, (size_t)bytes);
    std::memset((char*)dst + bytes, 0, (size_t)(16 - bytes));
    const char* base = (const char*)executor->dynamic_shared.data();
    const char* at = (const char*)dst;
    if (at >= base && at < base + executor->dynamic_bytes) {
        size_t chunk = (size_t)(at - base) / 16;
        executor->generic_writer[chunk] = (uint32_t)executor->current + 1;
        me().unfenced.push_back(chunk);
    }
}

void yield_as(State state) {
    Fiber& fiber = me();
    fiber.state = state;
    context_switch(fiber.context, executor->scheduler);
}

void fiber_main() {
    (*executor->body)();
    yield_as(State::Done);
}

// Runs the lanes of warp `w` as far as they go: through every warp
// operation, until each lane waits at __syncthreads or has exited. False
// when the warp is stuck (lanes split between a warp operation and
// __syncthreads or exit).
bool run_warp(Executor& e, size_t w, bool reverse, std::string& why) {
    size_t begin = w * 32, end = std::min(e.fibers.size(), begin + 32);
    for (;;) {
        for (size_t k = begin; k < end; ++k) {
            size_t i = reverse ? end - 1 - (k - begin) : k;
            if (e.fibers[i].state != State::Runnable) continue;
            e.current = i;
            context_switch(e.scheduler, e.fibers[i].context);
        }
        size_t waiting = 0;
        for (size_t i = begin; i < end; ++i) waiting += e.fibers[i].state == State::WarpBarrier;
        if (waiting == 0) return true;
        if (waiting < end - begin) {
            why = "warp " + std::to_string(w) + ": " + std::to_string(waiting) + " of " +
                  std::to_string(end - begin) + " lanes at a warp operation, the others at __syncthreads or exited";
            return false;
        }
        for (size_t i = begin; i < end; ++i) e.fibers[i].state = State::Runnable;
    }
}

bool run_block(Executor& e, const ThreadIds& block, std::string& error) {
    size_t n = (size_t)block.block_dim.x * block.block_dim.y * block.block_dim.z;
    if (e.fibers.size() != n) {
        e.fibers.clear();
        e.fibers.resize(n);
        for (auto& f : e.fibers) f.stack.reset(new char[STACK_BYTES]);
        e.slots.assign(((n + 31) / 32) * 32 * MAX_WORDS, 0);
    }
    for (size_t i = 0; i < n; ++i) {
        Fiber& f = e.fibers[i];
        f.ids = block;
        f.ids.thread_idx = {(unsigned)(i % block.block_dim.x), (unsigned)((i / block.block_dim.x) % block.block_dim.y),
                            (unsigned)(i / (block.block_dim.x * block.block_dim.y))};
        f.state = State::Runnable;
        f.copies.clear();
        f.mmas.clear();
        f.unfenced.clear();
        f.mma_fenced = false;
        context_start(f.context, f.stack.get(), STACK_BYTES, fiber_main);
    }
    // Each warp runs as far as it can before the next one starts (warps as
    // far apart as the barriers allow), in an order that flips every round.
    size_t warps = (n + 31) / 32;
    // Odd blocks start reversed: across a grid, every barrier interval runs
    // in both orders.
    unsigned block_index = block.block_idx.x + block.grid_dim.x * (block.block_idx.y + block.grid_dim.y * block.block_idx.z);
    // By block parity, and flipped every launch: a one-block grid runs
    // both ways over consecutive launches.
    e.eager_copies = (block_index + e.launch) % 2 == 0;
    e.generic_writer.assign(e.dynamic_shared.size(), 0);
    for (size_t round = 0;; ++round) {
        bool reverse = (round + block_index) % 2 == 1;
        for (size_t k = 0; k < warps; ++k) {
            if (!run_warp(e, reverse ? warps - 1 - k : k, reverse, error)) return false;
        }
        bool all_done = true;
        for (auto& f : e.fibers) all_done &= f.state == State::Done;
        if (all_done) return true;
        // Every live thread now waits at __syncthreads.
        for (auto& f : e.fibers)
            if (f.state == State::BlockBarrier) f.state = State::Runnable;
    }
}

}  // namespace

const ThreadIds& ids() { return me().ids; }

int lane() { return (int)(executor->current % 32); }

void sync_block() { yield_as(State::BlockBarrier); }

const uint64_t* exchange_begin(const uint64_t* mine, int count) {
    size_t warp = executor->current / 32;
    uint64_t* table = executor->slots.data() + warp * 32 * MAX_WORDS;
    if (count > MAX_WORDS) {
        std::fprintf(stderr, "gpu-emu: a warp exchange of %d words (at most %d)\n", count, MAX_WORDS);
        std::abort();
    }
    for (int i = 0; i < count; ++i) table[lane() * count + i] = mine[i];
    yield_as(State::WarpBarrier);
    return table;
}

void exchange_end() { yield_as(State::WarpBarrier); }

void cp_async(void* dst, const void* src, int src_bytes) {
    if ((uintptr_t)dst % 16 != 0 || (src_bytes > 0 && (uintptr_t)src % 16 != 0) || src_bytes < 0 || src_bytes > 16) {
        std::fprintf(stderr, "gpu-emu: cp.async of %d bytes from %p to %p: addresses must be 16-byte aligned\n",
                     src_bytes, src, dst);
        std::abort();
    }
    AsyncCopy copy{dst, src, src_bytes};
    if (executor->eager_copies) {
        copy.perform();
    } else {
        me().copies.uncommitted.push_back(copy);
    }
}

void cp_async_commit() { me().copies.commit(); }

void cp_async_wait(int newest_in_flight) {
    me().copies.wait(newest_in_flight, [](const AsyncCopy& copy) { copy.perform(); });
}

uint32_t shared_offset(const void* p) {
    const char* base = (const char*)executor->dynamic_shared.data();
    const char* at = (const char*)p;
    if (at < base || at >= base + executor->dynamic_bytes || (at - base) % 16 != 0) {
        std::fprintf(stderr, "gpu-emu: a wgmma operand at %p is not 16-byte aligned in the dynamic shared memory\n", p);
        std::abort();
    }
    return (uint32_t)(at - base);
}

namespace {
// The operand element (row r, k) of a no-swizzle descriptor, as a float.
float operand(uint64_t desc, int r, int k) {
    uint64_t start = (desc & 0x3FFF) << 4, lbo = ((desc >> 16) & 0x3FFF) << 4, sbo = ((desc >> 32) & 0x3FFF) << 4;
    if ((desc >> 49) & 7 || desc >> 62) {
        std::fprintf(stderr, "gpu-emu: a wgmma descriptor with a base offset or swizzle (%#llx)\n",
                     (unsigned long long)desc);
        std::abort();
    }
    uint64_t at = start + (uint64_t)(r / 8) * sbo + (uint64_t)(k / 8) * lbo + (uint64_t)(r % 8) * 16 + (uint64_t)(k % 8) * 2;
    if (at + 2 > executor->dynamic_bytes) {
        std::fprintf(stderr, "gpu-emu: a wgmma operand reads byte %llu of %zu of dynamic shared memory\n",
                     (unsigned long long)at, executor->dynamic_bytes);
        std::abort();
    }
    if (uint32_t writer = executor->generic_writer[at / 16]) {
        std::fprintf(stderr,
                     "gpu-emu: thread %zu's wgmma reads byte %llu of dynamic shared memory, which thread %u's cp.async "
                     "wrote with no fence.proxy.async by it since\n",
                     executor->current, (unsigned long long)at, writer - 1);
        std::abort();
    }
    __half h;
    std::memcpy(&h.bits, (const char*)executor->dynamic_shared.data() + at, 2);
    return __half2float(h);
}

// m64nNk16 for the running thread: warp w of its warpgroup holds rows
// 16w + g and 16w + g + 8 (g = lane / 4), columns 8j + 2t and 8j + 2t + 1
// (t = lane % 4) in d[4j…4j+3].
void perform_mma(const AsyncMma& mma) {
    int thread = (int)executor->current, w = (thread / 32) % 4, l = thread % 32, g = l / 4, t = l % 4;
    float x_rows[2][16];
    for (int h = 0; h < 2; ++h)
        for (int k = 0; k < 16; ++k) x_rows[h][k] = operand(mma.desc_x, 16 * w + g + 8 * h, k);
    for (int j = 0; j < mma.n / 8; ++j) {
        float w_cols[2][16];
        for (int c = 0; c < 2; ++c)
            for (int k = 0; k < 16; ++k) w_cols[c][k] = operand(mma.desc_w, 8 * j + 2 * t + c, k);
        for (int i = 0; i < 4; ++i) {
            float sum = mma.d[4 * j + i];
            for (int k = 0; k < 16; ++k) sum += x_rows[i / 2][k] * w_cols[i % 2][k];
            mma.d[4 * j + i] = sum;
        }
    }
}
}  // namespace

void wgmma(float* d, int n, uint64_t desc_x, uint64_t desc_w) {
    if (n % 8 != 0 || n < 8 || n > 256) {
        std::fprintf(stderr, "gpu-emu: wgmma with N = %d\n", n);
        std::abort();
    }
    // The PTX ISA asks for a wgmma.fence before the first wgmma.mma_async
    // and between a thread's own accesses to the accumulators and a later
    // wgmma.mma_async that uses them (MMAs of one shape on the same
    // accumulators are ordered among themselves). The emulator cannot see
    // register accesses, so it asks for one after every wait_group (after
    // which the accumulators are the thread's to read and write), as
    // CUTLASS's mainloops issue one per K block.
    if (!me().mma_fenced) {
        std::fprintf(stderr,
                     "gpu-emu: thread %zu issues a wgmma.mma_async with no wgmma.fence since its start or its last "
                     "wgmma.wait_group\n",
                     executor->current);
        std::abort();
    }
    me().mmas.uncommitted.push_back(AsyncMma{d, n, desc_x, desc_w});
}

void wgmma_fence() { me().mma_fenced = true; }

void fence_proxy_async() {
    Fiber& f = me();
    uint32_t mine = (uint32_t)executor->current + 1;
    for (size_t chunk : f.unfenced)
        if (executor->generic_writer[chunk] == mine) executor->generic_writer[chunk] = 0;
    f.unfenced.clear();
}

void wgmma_commit() { me().mmas.commit(); }

void wgmma_wait(int newest_in_flight) {
    me().mmas.wait(newest_in_flight, perform_mma);
    me().mma_fenced = false;
}

void* dynamic_shared(int bytes) {
    if (bytes < 0 || (size_t)bytes > executor->dynamic_bytes) {
        std::fprintf(stderr, "gpu-emu: a kernel uses %d bytes of dynamic shared memory, its launch gave %zu\n", bytes,
                     executor->dynamic_bytes);
        std::abort();
    }
    return executor->dynamic_shared.data();
}

bool run_grid(const uint3& grid, const uint3& block, size_t shared_bytes, bool reverse_blocks,
              const std::function<void()>& body, std::string& error) {
    // CUDA refuses these shapes (CUDA_ERROR_INVALID_VALUE) on every GPU.
    const uint64_t threads = (uint64_t)block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
        error = "grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," + std::to_string(grid.z) +
                ") is empty or exceeds CUDA's (2^31 - 1, 65535, 65535) blocks";
        return false;
    }
    if (threads == 0 || threads > 1024 || block.z > 64) {
        error = "block (" + std::to_string(block.x) + "," + std::to_string(block.y) + "," + std::to_string(block.z) +
                ") is empty or exceeds CUDA's 1024 threads (64 along z)";
        return false;
    }
    thread_local Executor local;
    Executor* outer = executor;
    executor = &local;
    local.body = &body;
    ++local.launch;
    local.dynamic_bytes = shared_bytes;
    local.dynamic_shared.assign((shared_bytes + 15) / 16, uint4{~0u, ~0u, ~0u, ~0u});
    bool ok = true;
    ThreadIds ids{};
    ids.grid_dim = grid;
    ids.block_dim = block;
    // Blocks in ascending order, or descending: a kernel that relies on the
    // order of its blocks (the last block of a group to finish doing the
    // group's remaining work, say) meets both.
    const uint64_t blocks = (uint64_t)grid.x * grid.y * grid.z;
    for (uint64_t i = 0; ok && i < blocks; ++i) {
        uint64_t b = reverse_blocks ? blocks - 1 - i : i;
        unsigned x = (unsigned)(b % grid.x), y = (unsigned)(b / grid.x % grid.y), z = (unsigned)(b / grid.x / grid.y);
        ids.block_idx = {x, y, z};
        if (!run_block(local, ids, error)) {
            error = "block (" + std::to_string(x) + "," + std::to_string(y) + "," + std::to_string(z) + "): " + error;
            ok = false;
        }
    }
    executor = outer;
    return ok;
}

}  // namespace emu
