// The CUDA device builtins that kernels/mmoe.cu uses, on the host, so the
// kernels' own source runs on a CPU: every block's threads are fibers
// (scheduler.cpp) that switch only at barriers, shared memory is a static
// per OS thread, and the warp-level operations (mma.sync, ldmatrix, shuffles)
// exchange their lanes' values at warp barriers and compute what the PTX ISA
// specifies. Force-included before the kernel source (-include), with
// MMOE_EMULATE defined so the source skips its CUDA headers and inline PTX.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

// ---------------------------------------------------------------- qualifiers

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One OS thread runs one block at a time: per-thread statics are the block's
// shared memory.
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))

// ---------------------------------------------------------------- vector types

struct uint3 {
    unsigned x, y, z;
};
// Aligned as CUDA's, so UBSan's alignment check stands for the GPU's.
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) uint2 {
    unsigned x, y;
};
struct __attribute__((aligned(16))) uint4 {
    unsigned x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// ---------------------------------------------------------------- fp16

// IEEE binary16 through the compiler's _Float16 (round to nearest even, as
// __float2half_rn).
struct __half {
    uint16_t bits;
};
struct __attribute__((aligned(4))) __half2 {
    __half x, y;
};
inline __half __float2half_rn(float f) {
    _Float16 h = (_Float16)f;
    __half out;
    std::memcpy(&out.bits, &h, 2);
    return out;
}
namespace emu {
// Every binary16 value as a float, each from the compiler's own conversion:
// the same results, by a lookup instead of libgcc's software
// __extendhfsf2, which took a quarter of the emulator's time.
// Never freed, so that a thread still emulating at exit reads valid memory.
inline const float* half_to_float_table() {
    static const float* const table = [] {
        float* values = new float[65536];
        for (uint32_t bits = 0; bits < 65536; ++bits) {
            uint16_t b = (uint16_t)bits;
            _Float16 v;
            std::memcpy(&v, &b, 2);
            values[bits] = (float)v;
        }
        return values;
    }();
    return table;
}
}  // namespace emu
inline float __half2float(__half h) { return emu::half_to_float_table()[h.bits]; }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half_rn(lo), __float2half_rn(hi)}; }

// ---------------------------------------------------------------- math

using std::isfinite;
using std::isnan;
using std::min;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

// ---------------------------------------------------------------- threads

namespace emu {
struct ThreadIds {
    uint3 thread_idx, block_idx, block_dim, grid_dim;
};
// The running fiber's ids.
const ThreadIds& ids();
// __syncthreads(): waits until every live thread of the block arrives.
void sync_block();
// A warp-wide exchange: each lane posts `count` words, waits for its warp,
// reads every lane's words (`table[lane * count + i]`), then calls
// exchange_end, which waits until the warp has read.
const uint64_t* exchange_begin(const uint64_t* mine, int count);
void exchange_end();
// This lane's index in its warp.
int lane();
// cp.async: see the definitions below and scheduler.cpp.
void cp_async(void* dst, const void* src, int src_bytes);
void cp_async_commit();
void cp_async_wait(int newest_in_flight);
// The launch's dynamic shared memory, 16-byte aligned, filled with 0xFF
// bytes (fp16 NaNs) at each launch so that a read before a write shows in
// the results; aborts with a message when the launch gave fewer than
// `bytes`.
void* dynamic_shared(int bytes);
// wgmma: see the definitions below and scheduler.cpp.
uint32_t shared_offset(const void* p);
void wgmma(float* d, int n, uint64_t desc_x, uint64_t desc_w);
void wgmma_fence();
void wgmma_commit();
void wgmma_wait(int newest_in_flight);
void fence_proxy_async();
}  // namespace emu

#define threadIdx (::emu::ids().thread_idx)
#define blockIdx (::emu::ids().block_idx)
#define blockDim (::emu::ids().block_dim)
#define gridDim (::emu::ids().grid_dim)

inline void __syncthreads() { emu::sync_block(); }

// ---------------------------------------------------------------- global memory

// One OS thread runs a grid's blocks, and its fibers switch only at
// barriers: a read-modify-write is atomic and every store is visible to
// the blocks after it, so the fence orders nothing more here.
inline unsigned atomicAdd(unsigned* address, unsigned value) {
    unsigned old = *address;
    *address = old + value;
    return old;
}
inline void __threadfence() {}
// Loads cached in L2 only (another block's stores of the same launch).
inline float __ldcg(const float* p) { return *p; }
inline float2 __ldcg(const float2* p) { return *p; }

inline float __shfl_xor_sync(unsigned /*mask: the kernels use all lanes*/, float v, int lane_mask) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    uint64_t word = bits;
    const uint64_t* table = emu::exchange_begin(&word, 1);
    uint32_t other = (uint32_t)table[emu::lane() ^ lane_mask];
    emu::exchange_end();
    float out;
    std::memcpy(&out, &other, 4);
    return out;
}

// ---------------------------------------------------------------- tensor cores

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lane l gives the address of row
// l % 8 of matrix l / 8; lane l receives, of each matrix i, the halves at
// row l / 4, columns 2·(l % 4) and 2·(l % 4) + 1.
inline void ldmatrix_x4(uint32_t* r, const __half* p) {
    uint64_t address = (uint64_t)(uintptr_t)p;
    const uint64_t* table = emu::exchange_begin(&address, 1);
    int l = emu::lane();
    for (int i = 0; i < 4; ++i) {
        const __half* row = (const __half*)(uintptr_t)table[8 * i + l / 4];
        r[i] = (uint32_t)row[2 * (l % 4)].bits | ((uint32_t)row[2 * (l % 4) + 1].bits << 16);
    }
    emu::exchange_end();
}

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32, D = A·B + C, with the
// fragment layout of the PTX ISA (g = lane / 4, t = lane % 4): A registers
// hold (row g, k 2t..2t+1), (row g+8, k 2t..), (row g, k 2t+8..),
// (row g+8, k 2t+8..); B registers (k 2t..2t+1, n g) and (k 2t+8.., n g); C
// and D (row g, n 2t..2t+1) and (row g+8, n 2t..).
namespace emu {
inline float fragment_half(uint32_t reg, int which) {
    __half h{(uint16_t)(which ? reg >> 16 : reg & 0xffff)};
    return __half2float(h);
}
}  // namespace emu

inline void mma_16816(float* c, const uint32_t* a, const uint32_t* b) {
    uint64_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    const uint64_t* table = emu::exchange_begin(mine, 6);
    auto a_at = [&](int row, int k) {
        int lane = (row % 8) * 4 + (k % 8) / 2;
        int reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
        return emu::fragment_half((uint32_t)table[lane * 6 + reg], k % 2);
    };
    auto b_at = [&](int k, int n) {
        int lane = n * 4 + (k % 8) / 2;
        int reg = k >= 8 ? 1 : 0;
        return emu::fragment_half((uint32_t)table[lane * 6 + 4 + reg], k % 2);
    };
    int l = emu::lane(), g = l / 4, t = l % 4;
    // This lane's two rows of A and two columns of B, each converted once.
    float a_rows[2][16], b_cols[2][16];
    for (int r = 0; r < 2; ++r)
        for (int k = 0; k < 16; ++k) a_rows[r][k] = a_at(g + 8 * r, k);
    for (int j = 0; j < 2; ++j)
        for (int k = 0; k < 16; ++k) b_cols[j][k] = b_at(k, 2 * t + j);
    float d[4];
    for (int i = 0; i < 4; ++i) {
        float sum = c[i];
        for (int k = 0; k < 16; ++k) sum += a_rows[i / 2][k] * b_cols[i % 2][k];
        d[i] = sum;
    }
    emu::exchange_end();
    for (int i = 0; i < 4; ++i) c[i] = d[i];
}

// ---------------------------------------------------------------- cp.async

// cp.async.cg.shared.global (16 bytes, `src_bytes` of them read, the rest
// zero), commit_group and wait_group. A copy may land any time between its
// issue and the wait that covers it; the emulator takes both extremes, by
// block parity (flipped every launch): even blocks copy at issue (a copy
// into a stage that other warps still read, missing its barrier,
// overwrites what they read), odd blocks only at the wait (a read before
// the wait sees the stage's previous contents). Misaligned addresses or
// sizes abort, as they fault on a GPU.
inline void cp_async16(void* dst, const void* src, int src_bytes) { emu::cp_async(dst, src, src_bytes); }
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
    emu::cp_async_wait(N);
}

// ---------------------------------------------------------------- wgmma

// Hopper's warpgroup MMA, m64nNk16 (f32 += f16 · f16), both operands in
// shared memory through descriptors (PTX ISA, "matrix descriptor"): bits
// 0–13 the start address, 16–29 LBO, 32–45 SBO, each in 16-byte units;
// 49–51 the base offset and 62–63 the swizzle mode, both 0 here (no
// swizzle: the emulator aborts on others). Element (row r, k) of an
// operand lies at start + (r / 8)·SBO + (k / 8)·LBO + (r % 8)·16 + (k % 8)·2
// bytes. Addresses are offsets into the launch's dynamic shared memory
// (the only shared memory the wgmma kernels use). An MMA is asynchronous
// until a wait_group covers it: the emulator performs it at that wait,
// reading shared memory then, so a stage overwritten before the wait, or
// accumulators read before it, give wrong results here too; and an
// operand that a cp.async wrote is an error until the writing thread's
// fence.proxy.async, and an MMA with no wgmma.fence since the thread's
// last wait_group is one too (scheduler.cpp). The sums take k in ascending order
// per k16 step, as mma_16816 above.
// The kernels encode descriptors themselves (wgmma_desc in mmoe.cu) from
// this address.
inline uint32_t shared_address(const void* p) { return emu::shared_offset(p); }
inline void wgmma_fence() { emu::wgmma_fence(); }
inline void fence_proxy_async_shared() { emu::fence_proxy_async(); }
inline void wgmma_commit() { emu::wgmma_commit(); }
template <int N>
inline void wgmma_wait() {
    emu::wgmma_wait(N);
}
inline void wgmma_m64n128k16(float (&d)[16][4], uint64_t desc_x, uint64_t desc_w) {
    emu::wgmma(&d[0][0], 128, desc_x, desc_w);
}
