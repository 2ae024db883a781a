// The mmoe CUDA kernels: one `extern "C"` kernel per step of the lowered
// program (src/program.rs). Activations are f32 in device memory, row-major
// with a row stride `ld` (0 for a per-request buffer, which every row reads).
// Weights of Linear layers are fp16, row-major [n_pad, ld_w] (rows padded to
// 128, columns to 16, zero filled) for the tensor-core path, or f32 row-major
// [n, k] for the fp32 path.
#include "common.cuh"

// Programmatic dependent launch (compute capability 9.0; `PlanOptions::pdl`):
// a kernel launched with it may start while the kernel before it still
// runs. Every kernel calls this first, before it touches global memory: it
// waits until the kernels it depends on have finished and their writes are
// visible, then lets the next kernel launch (whose blocks start and wait
// here in turn, so at most two kernels of a chain are resident). Launched
// without the attribute, both instructions do nothing; compiled for an
// older architecture, neither is there, and the runtime sets the attribute
// only when the sm_90 cubin is loaded.
__device__ __forceinline__ void wait_for_inputs() {
#if !defined(MMOE_EMULATE) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// ---------------------------------------------------------------- features

// Value k of row `row` of a dense input, transformed. fp16 values
// (FLAG_VALUES_F16, src/cpu/to_f16.rs) hold NaN for a missing value and
// ±inf for a finite one beyond fp16's range, which a clip bounds as it
// bounds the f32 value.
__device__ float dense_value(const InputDesc& d, const float* values, int row, int k) {
    u64 at = (u64)row * d.dim + k;
    if (d.flags & FLAG_VALUES_F16) {
        float v = __half2float(((const __half*)(values + d.values))[at]);
        if (isnan(v)) return 0.0f;
        if (d.flags & FLAG_CLIP) v = fminf(fmaxf(v, -d.clip), d.clip);
        return v;  // the host sends fp16 only without log1p and standardize
    }
    float v = values[d.values + at];
    if (!isfinite(v)) {
        // The host refused non-finite values of inputs without missing=zero.
        return 0.0f;
    }
    if (d.flags & FLAG_LOG1P) v = copysignf(log1pf(fabsf(v)), v);
    if (d.flags & FLAG_STANDARDIZE) {
        const float* mean = (const float*)d.mean;
        const float* std = (const float*)d.std;
        v = (v - mean[k]) / std[k];
    }
    if (d.flags & FLAG_CLIP) v = fminf(fmaxf(v, -d.clip), d.clip);
    return v;
}

// Element `index` of an embedding table (f32, or fp16: FLAG_TABLE_F16).
__device__ __forceinline__ float table_at(const float* table, u64 index) { return table[index]; }
__device__ __forceinline__ float table_at(const __half* table, u64 index) { return __half2float(table[index]); }

// Σ table[(ids[j] mod rows) · dim + k] over j = first, first + step, … <
// end, added in that order. Four ids at a time: their loads are
// independent, so four ids, then their four table values, are in flight
// together, where a bag was a chain of two dependent loads per id.
// `I`: u32 ids (FLAG_IDS_U32: the host reduced them, so the 32-bit modulo
// only guards the table's bounds) or u64.
template <typename T, typename I>
__device__ float bag_sum_of(const T* table, const I* ids, I rows, u64 dim, u32 first, u32 end, u32 step, int k) {
    float sum = 0.0f;
    u32 j = first;
    for (; j < end && end - j > 3 * step; j += 4 * step) {
        I i0 = ids[j], i1 = ids[j + step], i2 = ids[j + 2 * step], i3 = ids[j + 3 * step];
        float v0 = table_at(table, (i0 % rows) * dim + k), v1 = table_at(table, (i1 % rows) * dim + k);
        float v2 = table_at(table, (i2 % rows) * dim + k), v3 = table_at(table, (i3 % rows) * dim + k);
        sum += v0;
        sum += v1;
        sum += v2;
        sum += v3;
    }
    for (; j < end; j += step) sum += table_at(table, (ids[j] % rows) * dim + k);
    return sum;
}

template <typename T>
__device__ __forceinline__ float bag_sum_in(const InputDesc& d, const u32* ids, u32 first, u32 end, u32 step, int k) {
    if (d.flags & FLAG_IDS_U32) return bag_sum_of((const T*)d.table, ids + d.ids, (u32)d.rows, d.dim, first, end, step, k);
    return bag_sum_of((const T*)d.table, (const u64*)(ids + d.ids), d.rows, d.dim, first, end, step, k);
}

// Column k of the sum of an input's bag: its ids (from 4-byte slot d.ids
// of the id region `ids`) first, …, every `step`-th before `end`.
__device__ __forceinline__ float bag_sum(const InputDesc& d, const u32* ids, u32 first, u32 end, u32 step, int k) {
    if (d.flags & FLAG_TABLE_F16) return bag_sum_in<__half>(d, ids, first, end, step, k);
    return bag_sum_in<float>(d, ids, first, end, step, k);
}

__device__ float pooled_value(const InputDesc& d, const u32* offsets, const u32* ids, int bag, int k) {
    u32 start = offsets[d.values + bag], end = offsets[d.values + bag + 1];
    float sum = bag_sum(d, ids, start, end, 1, k);
    if ((d.flags & FLAG_MEAN) && end > start) sum /= (float)(end - start);
    return sum;
}

__device__ float feature(const InputDesc& d, const unsigned char* staging, int row, int k) {
    const StagingHeader* h = (const StagingHeader*)staging;
    int r = d.scope == 0 ? 0 : row;
    if (d.kind == 0) return dense_value(d, (const float*)(staging + h->floats_at), r, k);
    return pooled_value(d, (const u32*)(staging + h->offsets_at), (const u32*)(staging + h->ids_at), r, k);
}

// The input that owns x0 column `c` (num_inputs when none does).
__device__ __forceinline__ u64 input_of(const InputDesc* descs, u64 num_inputs, int c) {
    for (u64 i = 0; i < num_inputs; ++i) {
        u32 off = descs[i].x0_offset;
        if ((u32)c >= off && (u32)c < off + descs[i].dim) return i;
    }
    return num_inputs;
}

// x0_request[0, :] = request-scope features (zero elsewhere). A warp per
// column: its lanes split the ids of a bag (request bags, a user's history,
// are the long ones). `x0rh` (optional): the same as fp16, for the GEMMs.
// `staging_at` holds the address of the request's staging buffer: the
// session can grow that buffer without the captured graphs changing.
extern "C" __global__ void features_request(const unsigned char* const* staging_at, float* x0r, __half* x0rh,
                                            int d_total) {
    wait_for_inputs();
    const unsigned char* staging = *staging_at;
    const StagingHeader* h = (const StagingHeader*)staging;
    const InputDesc* descs = (const InputDesc*)(staging + h->descs_at);
    int warps = blockDim.x / 32, lane = threadIdx.x % 32;
    for (int c = blockIdx.x * warps + threadIdx.x / 32; c < d_total; c += gridDim.x * warps) {
        u64 i = input_of(descs, h->num_inputs, c);
        float v = 0.0f;
        if (i < h->num_inputs && descs[i].scope == 0) {
            const InputDesc d = descs[i];
            int k = c - (int)d.x0_offset;
            if (d.kind == 0) {
                v = dense_value(d, (const float*)(staging + h->floats_at), 0, k);
            } else {
                const u32* offsets = (const u32*)(staging + h->offsets_at);
                const u32* ids = (const u32*)(staging + h->ids_at);
                u32 start = offsets[d.values], end = offsets[d.values + 1];
                v = bag_sum(d, ids, start + lane, end, 32, k);
                for (int s = 16; s > 0; s /= 2) v += __shfl_xor_sync(0xffffffffu, v, s);
                if ((d.flags & FLAG_MEAN) && end > start) v /= (float)(end - start);
            }
        }
        if (lane == 0) {
            x0r[c] = v;
            if (x0rh) x0rh[c] = __float2half_rn(v);
        }
    }
}

// x0[r, :] = candidate features of row r and the request columns; zero for
// rows past the request's candidates. Block (r, y) takes row r's columns
// from y · blockDim.x on, a thread per column (every gridDim.y · blockDim.x
// columns): a row's columns spread over several blocks, so one candidate's
// features are not one block's serial work (at 1 candidate on an H200 one
// block of 128 threads took 10.9 µs over 4 columns each).
// `x0h` (optional, row stride `ldh`): the same as fp16, for the GEMMs.
extern "C" __global__ void features_candidate(const unsigned char* const* staging_at, const float* x0r, float* x0,
                                              int ld, __half* x0h, int ldh, int d_total) {
    wait_for_inputs();
    const unsigned char* staging = *staging_at;
    const StagingHeader* h = (const StagingHeader*)staging;
    const InputDesc* descs = (const InputDesc*)(staging + h->descs_at);
    int r = blockIdx.x;
    float* out = x0 + (long long)ld * r;
    __half* out16 = x0h ? x0h + (long long)ldh * r : nullptr;
    const int first = blockIdx.y * blockDim.x + threadIdx.x, step = gridDim.y * blockDim.x;
    if ((u64)r >= h->candidates) {
        for (int c = first; c < d_total; c += step) {
            out[c] = 0.0f;
            if (out16) out16[c] = __float2half_rn(0.0f);
        }
        return;
    }
    for (int c = first; c < d_total; c += step) {
        u64 i = input_of(descs, h->num_inputs, c);
        float v = 0.0f;
        if (i < h->num_inputs)
            v = descs[i].scope == 0 ? x0r[c] : feature(descs[i], staging, r, c - (int)descs[i].x0_offset);
        out[c] = v;
        if (out16) out16[c] = __float2half_rn(v);
    }
}

// ---------------------------------------------------------------- linear

// y[r, out_off + j] = scale[r, j] · act(Σ_{k ∈ ranges} x[r, in_off + k] · W[j, k] + bias[j] + add[j]) + shift[r, j]
// `ranges` holds `nranges` pairs (start, end) of input columns; `scale` and
// `shift` (optional) fuse the DCN cross combine and MaskNet masks.
// `y16` (optional, row stride `ldy16`, a multiple of 8) receives y as fp16
// too, for the GEMMs that read y next: `linear_mma*h` read x from `x16`
// (row stride `ldx16`) instead of `x`. Rounded as the f32 kernels round x,
// so both give the same sums. `y` is null where nothing reads y in f32
// (`f32_unread` in src/gpu/launch_plan.rs): then only y16 is written.
struct LinearArgs {
    const float* x; int ldx; int in_off;
    const void* w; int ldw; int n;
    const u32* ranges; int nranges;
    const float* bias; const float* add; int act; int norm_act;
    float* y; int ldy; int out_off; int rows;
    const float* scale; int ldscale;
    const float* shift; int ldshift;
    __half* y16; int ldy16;
    // x16 holds x·2^x16_exp (0 but for the outer products of a bilinear
    // sum, which could pass fp16's range): the tensor-core kernels round
    // x·2^x16_exp to fp16 and scale their sums back by 2^-x16_exp, exact
    // powers of two; the SIMT kernels read x in f32 and ignore it.
    const __half* x16; int ldx16; int x16_exp;
    // A LayerNorm fused into the epilogue (MaskNet blocks; `gamma` null:
    // none): y = norm_act(LN(row)) over the row's n outputs, γ = gamma, β =
    // beta (`finish_norm`: `stats` and `done` are its scratch in the arena).
    const float* gamma; const float* beta; u32* done; float* stats;
    // A task's logit fused into its tower's last hidden layer (`logits`
    // null: none): logits[row · ldlogits + logit_col] = logit_b + the dot
    // product of the row's n outputs (y, f32) with logit_w (the logit
    // layer's weight row, of the layer's own type) (`finish_logit`; `done`
    // and `stats` are its scratch, as for the LayerNorm: never both).
    const void* logit_w; const float* logit_b; float* logits; int ldlogits; int logit_col;
};

// The epilogue of output `col` of row `row`.
__device__ __forceinline__ void store_output(const LinearArgs& a, int row, int col, float sum) {
    float v = sum;
    if (a.bias) v += a.bias[col];
    if (a.add) v += a.add[col];
    v = activate(v, a.act);
    if (a.scale) v *= row_of(a.scale, a.ldscale, row)[col];
    if (a.shift) v += row_of(a.shift, a.ldshift, row)[col];
    if (a.y) a.y[(long long)a.ldy * row + a.out_off + col] = v;
    if (a.y16 && !a.gamma) a.y16[(long long)a.ldy16 * row + a.out_off + col] = __float2half_rn(v);
}

// Outputs `col` and `col + 1` (col even) of one row with 8-byte accesses;
// `pairs` says every stride and offset is even, so each pair is aligned.
__device__ __forceinline__ void store_pair(const LinearArgs& a, bool pairs, int row, int col, float s0, float s1) {
    if (!pairs || col + 1 >= a.n) {
        store_output(a, row, col, s0);
        if (col + 1 < a.n) store_output(a, row, col + 1, s1);
        return;
    }
    float2 v = make_float2(s0, s1);
    if (a.bias) {
        float2 b = *(const float2*)(a.bias + col);
        v.x += b.x;
        v.y += b.y;
    }
    if (a.add) {
        float2 b = *(const float2*)(a.add + col);
        v.x += b.x;
        v.y += b.y;
    }
    v.x = activate(v.x, a.act);
    v.y = activate(v.y, a.act);
    if (a.scale) {
        float2 m = *(const float2*)(row_of(a.scale, a.ldscale, row) + col);
        v.x *= m.x;
        v.y *= m.y;
    }
    if (a.shift) {
        float2 m = *(const float2*)(row_of(a.shift, a.ldshift, row) + col);
        v.x += m.x;
        v.y += m.y;
    }
    if (a.y) *(float2*)(a.y + (long long)a.ldy * row + a.out_off + col) = v;
    if (a.y16 && !a.gamma) *(__half2*)(a.y16 + (long long)a.ldy16 * row + a.out_off + col) = __floats2half2_rn(v.x, v.y);
}

// ---------------------------------------------------------------- fused LayerNorm

// The LayerNorm fused into a Linear layer's epilogue (`LinearArgs::gamma`),
// for tiles of BM rows, in three parts, so that no block waits for another
// and the result is the same whichever tile size ran:
// 1. every tile, once stored, sums each 16-column chunk of its rows (a
//    half-warp per chunk, shuffles in a fixed order): the chunk's sum and
//    its sum of squared deviations from the chunk's mean, into `stats`
//    (float2 [rows, ceil(n / 16)]). Every tile width is a multiple of 16.
// 2. the tile counts itself done in its band's counter (`done`, one u32
//    per 16 rows, indexed by the band's first row / 16).
// 3. the band's last tile to finish (whichever block that is) merges each
//    row's chunks in column order (the parallel-variance formula about
//    the row's mean), then normalizes the band's rows, every column, by
//    whole warps per row: y = norm_act(γ·(y − mean)·rsqrt(var + 1e-5) + β),
//    and writes y16. The counter goes back to zero for the next launch.
#define NORM_CHUNK 16

// Whether this tile is the last of its band of rows to finish (`done`: a
// counter per 16 rows, indexed by the band's first row / 16): every
// thread's stores are visible device-wide before the tile counts itself
// done (the pattern of the CUDA programming guide's __threadfence
// example); the last tile sets the counter back to zero for the next
// launch. Every thread gets the answer.
__device__ __forceinline__ bool last_of_band(const LinearArgs& a, int row0, int tiles_n, int tid) {
    __shared__ int last;
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        u32* done = a.done + row0 / 16;
        last = atomicAdd(done, 1u) == (u32)(tiles_n - 1);
        if (last) *done = 0;
    }
    __syncthreads();
    if (!last) return false;
    __threadfence();
    return true;
}

// Not inlined: one copy per (BM, THREADS) rather than one in each of the
// GEMM kernels, whose compile time and registers it would add to.
template <int BM, int THREADS>
__device__ MMOE_NOINLINE void finish_norm(const LinearArgs& a, int row0, int col0, int bn, int tiles_n, int tid) {
    static_assert(THREADS % 32 == 0 && BM <= THREADS, "whole warps, a thread per row of the band");
    if (!a.gamma) return;
    __shared__ float row_stats[BM][2];
    const int chunks = (a.n + NORM_CHUNK - 1) / NORM_CHUNK, warp = tid / 32, lane = tid % 32;
    const int half = lane / 16, col_in = lane % 16;
    float2* stats = (float2*)a.stats;
    // The tile's own values, written by this block: visible after a barrier.
    __syncthreads();
    const int tile_chunks = bn / NORM_CHUNK, pairs = BM * tile_chunks;
    // The arguments the loop reads, in registers: its stores to `stats`
    // could alias `a` for all the compiler knows, which would reload them.
    const float* ys = a.y + a.out_off;
    const int ldy = a.ldy, n = a.n, all_rows = a.rows;
    // Four chunks a warp in flight (their loads overlap), not unrolled
    // further: the loop is in every GEMM kernel.
    #pragma unroll 4
    for (int base = 2 * warp; base < pairs; base += 2 * (THREADS / 32)) {
        int pair = base + half;
        int r = row0 + pair / tile_chunks, chunk = col0 / NORM_CHUNK + pair % tile_chunks;
        int c = chunk * NORM_CHUNK + col_in;
        bool in = pair < pairs && r < all_rows && c < n;
        float v = in ? ys[(long long)ldy * r + c] : 0.0f;
        float sum = v;
        for (int s = 8; s > 0; s /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, s);
        int count = min(NORM_CHUNK, n - chunk * NORM_CHUNK);
        float d = in ? v - sum / (float)count : 0.0f;
        float sq = d * d;
        for (int s = 8; s > 0; s /= 2) sq += __shfl_xor_sync(0xffffffffu, sq, s);
        if (col_in == 0 && pair < pairs && r < all_rows && chunk < chunks)
            stats[(long long)r * chunks + chunk] = make_float2(sum, sq);
    }
    if (!last_of_band(a, row0, tiles_n, tid)) return;
    const int rows = min(BM, a.rows - row0);
    if (tid < rows) {
        const float2* s = stats + (long long)(row0 + tid) * chunks;
        float total = 0.0f;
        #pragma unroll 1
        for (int q = 0; q < chunks; ++q) total += __ldcg(&s[q].x);
        float mean = total / (float)a.n, m2 = 0.0f;
        #pragma unroll 1
        for (int q = 0; q < chunks; ++q) {
            float2 cs = __ldcg(&s[q]);
            float count = (float)min(NORM_CHUNK, a.n - q * NORM_CHUNK), d = cs.x / count - mean;
            m2 += cs.y + count * d * d;
        }
        row_stats[tid][0] = mean;
        row_stats[tid][1] = rsqrtf(m2 / (float)a.n + 1e-5f);
    }
    __syncthreads();
    // Whole warps per row, as many as its columns need (up to the block),
    // and as many rows at a time as that leaves warps for.
    const int per_row = min(THREADS, (a.n + 31) / 32 * 32), together = THREADS / per_row;
    if (tid >= together * per_row) return;
    #pragma unroll 1
    for (int r = tid / per_row; r < rows; r += together) {
        const float mean = row_stats[r][0], inv = row_stats[r][1];
        float* y = a.y + (long long)a.ldy * (row0 + r) + a.out_off;
        __half* y16 = a.y16 ? a.y16 + (long long)a.ldy16 * (row0 + r) + a.out_off : nullptr;
        #pragma unroll 1
        for (int c = tid % per_row; c < a.n; c += per_row) {
            float v = activate(fmaf((__ldcg(y + c) - mean) * inv, a.gamma[c], a.beta[c]), a.norm_act);
            y[c] = v;
            if (y16) y16[c] = __float2half_rn(v);
        }
    }
}

template <typename W>
__device__ __forceinline__ float weight_at(const W* w, long long i);
template <>
__device__ __forceinline__ float weight_at<float>(const float* w, long long i) { return w[i]; }
template <>
__device__ __forceinline__ float weight_at<__half>(const __half* w, long long i) { return __half2float(w[i]); }

// A task's logit fused into its tower's last hidden layer
// (`LinearArgs::logits`), for tiles of BM rows, by `finish_norm`'s scheme:
// every tile, once stored, takes the dot product of each 16-column chunk
// of its rows with the logit weights (a half-warp per chunk, shuffles in a
// fixed order) into `stats` (float [rows, ceil(n / 16)]); the band's last
// tile to finish adds each row's chunks in column order, then the bias,
// and writes the row's logit. The same sum at every tile size; where a
// separate logit layer followed, one dependent launch fewer per call.
template <int BM, int THREADS, typename W>
__device__ MMOE_NOINLINE void finish_logit(const LinearArgs& a, int row0, int col0, int bn, int tiles_n, int tid) {
    static_assert(THREADS % 32 == 0 && BM <= THREADS, "whole warps, a thread per row of the band");
    if (!a.logits) return;
    const int chunks = (a.n + NORM_CHUNK - 1) / NORM_CHUNK, warp = tid / 32, lane = tid % 32;
    const int half = lane / 16, col_in = lane % 16;
    const W* lw = (const W*)a.logit_w;
    // The tile's own values, written by this block: visible after a barrier.
    __syncthreads();
    const int tile_chunks = bn / NORM_CHUNK, pairs = BM * tile_chunks;
    // In registers, as in finish_norm.
    const float* ys = a.y + a.out_off;
    float* stats = a.stats;
    const int ldy = a.ldy, n = a.n, all_rows = a.rows;
    #pragma unroll 4
    for (int base = 2 * warp; base < pairs; base += 2 * (THREADS / 32)) {
        int pair = base + half;
        int r = row0 + pair / tile_chunks, chunk = col0 / NORM_CHUNK + pair % tile_chunks;
        int c = chunk * NORM_CHUNK + col_in;
        bool in = pair < pairs && r < all_rows && c < n;
        float v = in ? ys[(long long)ldy * r + c] * weight_at<W>(lw, c) : 0.0f;
        for (int s = 8; s > 0; s /= 2) v += __shfl_xor_sync(0xffffffffu, v, s);
        if (col_in == 0 && pair < pairs && r < all_rows && chunk < chunks) stats[(long long)r * chunks + chunk] = v;
    }
    if (!last_of_band(a, row0, tiles_n, tid)) return;
    const int rows = min(BM, a.rows - row0);
    if (tid < rows) {
        const float* s = a.stats + (long long)(row0 + tid) * chunks;
        float total = 0.0f;
        #pragma unroll 1
        for (int q = 0; q < chunks; ++q) total += __ldcg(&s[q]);
        if (a.logit_b) total += a.logit_b[0];
        a.logits[(long long)(row0 + tid) * a.ldlogits + a.logit_col] = total;
    }
}

// Grouped launches: one launch runs several independent Linear problems (the
// same layer of every expert, say). `tiles[p]` is the first block of problem
// p, ascending; `tiles[count]` is the grid size.
__device__ __forceinline__ int problem_of(const u32* tiles, int count, int block) {
    int p = 0;
    while (p + 1 < count && (int)tiles[p + 1] <= block) ++p;
    return p;
}

// This block's output tile in a grouped launch of BM×BN tiles: its problem,
// the tile's first row and column, and the problem's tiles per row of
// tiles (blocks go row-major over a problem's tiles).
struct BlockTile {
    const LinearArgs& a;
    int row0, col0, tiles_n;
};
template <int BM, int BN>
__device__ __forceinline__ BlockTile block_tile(const LinearArgs* problems, const u32* tiles, int count) {
    int p = problem_of(tiles, count, blockIdx.x);
    const LinearArgs& a = problems[p];
    int local = blockIdx.x - (int)tiles[p];
    int tiles_n = (a.n + BN - 1) / BN;
    return {a, (local / tiles_n) * BM, (local % tiles_n) * BN, tiles_n};
}

// SIMT: 16×16 output tile per block, shared-memory tiles of 16 k.
template <typename W>
__device__ void linear_simt(const LinearArgs* problems, const u32* tiles, int count) {
    __shared__ float xs[16][17];
    __shared__ float ws[16][17];
    const BlockTile tile = block_tile<16, 16>(problems, tiles, count);
    const LinearArgs& a = tile.a;
    int tx = threadIdx.x, ty = threadIdx.y;
    int r = tile.row0 + ty;   // row of x / y
    int j = tile.col0 + tx;   // output
    int jw = tile.col0 + ty;  // weight row this thread loads
    const W* w = (const W*)a.w;
    float acc = 0.0f;
    for (int q = 0; q < a.nranges; ++q) {
        int s = a.ranges[2 * q], e = a.ranges[2 * q + 1];
        for (int k0 = s; k0 < e; k0 += 16) {
            int kx = k0 + tx;
            xs[ty][tx] = (r < a.rows && kx < e) ? row_of(a.x, a.ldx, r)[a.in_off + kx] : 0.0f;
            ws[ty][tx] = (jw < a.n && kx < e) ? weight_at<W>(w, (long long)jw * a.ldw + kx) : 0.0f;
            __syncthreads();
            for (int kk = 0; kk < 16; ++kk) acc += xs[ty][kk] * ws[tx][kk];
            __syncthreads();
        }
    }
    if (r < a.rows && j < a.n) store_output(a, r, j, acc);
    finish_norm<16, 256>(a, tile.row0, tile.col0, 16, tile.tiles_n, ty * 16 + tx);
    finish_logit<16, 256, W>(a, tile.row0, tile.col0, 16, tile.tiles_n, ty * 16 + tx);
}

extern "C" __global__ void linear_simt_f32(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_simt<float>(problems, tiles, count);
}
extern "C" __global__ void linear_simt_f16(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_simt<__half>(problems, tiles, count);
}

// Tensor cores through `mma.sync.m16n8k16` (fp16 inputs, fp32 accumulation).
//
// Fragment layout (PTX ISA, mma.m16n8k16 .f16): with g = lane / 4 and
// t = lane % 4, A registers hold (row g, k 2t..2t+1), (row g+8, k 2t..),
// (row g, k 2t+8..), (row g+8, k 2t+8..); B registers hold (k 2t..2t+1, n g)
// and (k 2t+8.., n g); C holds (row g, n 2t..2t+1) and (row g+8, n 2t..).
// The host emulator (gpu-emu/cpp/cuda_emu.hpp) defines these two from the
// PTX ISA's description instead.
#ifndef MMOE_EMULATE
__device__ __forceinline__ void mma_16816(float* c, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// `ldmatrix.x4`: four 8×8 fp16 matrices from shared memory; lane l gives the
// address of row l % 8 of matrix l / 8 and receives, of each matrix i, the
// pair (row l / 4, columns 2·(l % 4)…) in r[i]: the mma fragment layout.
__device__ __forceinline__ void ldmatrix_x4(u32* r, const __half* p) {
    u32 address = (u32)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}
#endif

__device__ __forceinline__ u32 pack_half2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *(u32*)&h;
}

#define MMA_BK 32
// Shared row stride in halves: 80 bytes keeps ldmatrix rows 16-byte aligned
// and its eight rows of a phase on distinct banks.
#define MMA_LD 40
// The same for stages of BK columns: a row of BK + 8 halves (BK = 64: 144
// bytes, again eight rows on distinct banks).
#define MMA_LD_OF(BK) ((BK) + 8)

// The warp tile of the tensor-core kernels: a block of WARPS_M × WARPS_N
// warps computes a BM×BN output tile; warp (wr, wc) computes the WM×WN tile
// at rows wr·WM…, columns wc·WN… as (WM/16)×(WN/8) mma tiles of 16×8.
// Every loop over the register arrays (acc, fragments, staged values) is
// unrolled: a runtime index would put them in local memory.
template <int BM, int BN, int WARPS_M, int WARPS_N, int BK = MMA_BK>
struct MmaTile {
    static constexpr int LD = MMA_LD_OF(BK);
    static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
    static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // a warp's tile
    static constexpr int MT = WM / 16, NT = WN / 8;             // its 16×8 mma tiles
    static_assert(WM % 16 == 0 && WN % 16 == 0, "whole mma tiles, B in pairs of 8 columns");

    // acc += the stage's x tile (BM × BK) · its W tile (BN × BK)ᵀ.
    // ldmatrix row addresses: A (x) matrices 0–3 are rows 0–7 / 8–15 by
    // columns 0–7 / 8–15 as the mma wants them (a0 a1 a2 a3); B (W) matrices
    // are, for two 8-column tiles j and j+1, columns 0–7 and 8–15 of each.
    static __device__ __forceinline__ void multiply(float (&acc)[MT][NT][4], const __half (*xs)[LD],
                                                    const __half (*ws)[LD], int warp, int lane) {
        const int wr = warp / WARPS_N, wc = warp % WARPS_N;
        const int a_row = (lane % 8) + ((lane / 8) & 1) * 8, a_col = (lane / 16) * 8;
        const int b_row = (lane % 8) + (lane / 16) * 8, b_col = ((lane / 8) & 1) * 8;
        #pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            u32 fa[MT][4];
            #pragma unroll
            for (int m = 0; m < MT; ++m) ldmatrix_x4(fa[m], &xs[wr * WM + m * 16 + a_row][kk + a_col]);
            #pragma unroll
            for (int j = 0; j < NT; j += 2) {
                u32 fb[4];
                ldmatrix_x4(fb, &ws[wc * WN + 8 * j + b_row][kk + b_col]);
                #pragma unroll
                for (int m = 0; m < MT; ++m) {
                    mma_16816(acc[m][j], fa[m], fb);
                    mma_16816(acc[m][j + 1], fa[m], fb + 2);
                }
            }
        }
    }

    // The fused epilogue of the tile at (row0, col0). Each thread holds pairs
    // of adjacent columns (2t, 2t+1) of rows g and g+8.
    static __device__ __forceinline__ void store(const LinearArgs& a, float (&acc)[MT][NT][4], int row0, int col0,
                                                 int warp, int lane) {
        const int wr = warp / WARPS_N, wc = warp % WARPS_N, g = lane / 4, t = lane % 4;
        const bool pairs = ((a.ldy | a.out_off | a.ldscale | a.ldshift | a.ldy16) & 1) == 0;
        const float unscale = ldexpf(1.0f, -a.x16_exp);  // 1 but for scaled inputs: exact
        #pragma unroll
        for (int m = 0; m < MT; ++m)
            #pragma unroll
            for (int j = 0; j < NT; ++j)
                #pragma unroll
                for (int half = 0; half < 2; ++half) {
                    int row = row0 + wr * WM + m * 16 + g + 8 * half;
                    int col = col0 + wc * WN + 8 * j + 2 * t;
                    if (row < a.rows && col < a.n)
                        store_pair(a, pairs, row, col, acc[m][j][2 * half] * unscale,
                                   acc[m][j][2 * half + 1] * unscale);
                }
    }
};

// The K stages of a problem: `bk` columns at a time through each range.
struct StageCursor {
    const u32* ranges;
    int nranges, bk, q = 0, e = 0, k0 = 0;
    __device__ StageCursor(const u32* r, int n, int stage = MMA_BK) : ranges(r), nranges(n), bk(stage) {
        if (n > 0) {
            k0 = r[0];
            e = r[1];
        }
        skip_empty();
    }
    __device__ bool valid() const { return q < nranges; }
    __device__ void skip_empty() {
        while (q < nranges && k0 >= e) {
            ++q;
            if (q < nranges) {
                k0 = ranges[2 * q];
                e = ranges[2 * q + 1];
            }
        }
    }
    __device__ void advance() {
        k0 += bk;
        skip_empty();
    }
};

// Tensor cores, x from the f32 activations: K advances MMA_BK at a time
// through two shared-memory stages; the next stage's x (f32, converted to
// fp16 on the way in) and W (fp16, 16-byte loads) are loaded into registers
// while the current one is multiplied. Every range must start at a
// multiple of 16 (the host checks); x is zeroed past a range's end. W is
// [n_pad (multiple of 128), ldw (multiple of 16)], zero padded.
template <int BM, int BN, int WARPS_M, int WARPS_N>
__device__ void linear_mma(const LinearArgs* problems, const u32* tiles, int count) {
    using Tile = MmaTile<BM, BN, WARPS_M, WARPS_N>;
    constexpr int THREADS = Tile::THREADS;
    constexpr int XV = BM * MMA_BK / 4 / THREADS;  // float4 groups of x each thread stages
    constexpr int WV = BN * MMA_BK / 8 / THREADS;  // 16-byte chunks of W each thread stages
    static_assert(BM * MMA_BK % (4 * THREADS) == 0 && BN * MMA_BK % (8 * THREADS) == 0, "staging covers the tile");
    __shared__ __align__(16) __half xs[2][BM][MMA_LD];
    __shared__ __align__(16) __half ws[2][BN][MMA_LD];
    // The problem stays in global memory (uniform, cached); what the K loop
    // reads is copied to registers once.
    const BlockTile tile = block_tile<BM, BN>(problems, tiles, count);
    const LinearArgs& a = tile.a;
    const float* x = a.x;
    const int ldx = a.ldx, in_off = a.in_off, rows = a.rows, ldw = a.ldw;
    const __half* w = (const __half*)a.w;
    // float4 loads of x need 16-byte aligned rows; ranges start at multiples of 16.
    const bool x_vec = ((ldx | in_off) & 3) == 0;
    const int row0 = tile.row0, col0 = tile.col0, tiles_n = tile.tiles_n;
    int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

    StageCursor at(a.ranges, a.nranges);
    float4 xr[XV];
    uint4 wv[WV];
    auto load = [&]() {
        const int k0 = at.k0, e = at.e;
        // x: group i = tid + THREADS·j is 4 floats (row i / 8, columns 4·(i % 8)…):
        // rows of 32 consecutive floats, coalesced.
        #pragma unroll
        for (int j = 0; j < XV; ++j) {
            int i = tid + THREADS * j;
            int row = row0 + i / 8, k = k0 + 4 * (i % 8);
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (row < rows && k < e) {
                const float* src = row_of(x, ldx, row) + in_off + k;
                if (x_vec && k + 4 <= e) {
                    v = *(const float4*)src;
                } else {
                    v.x = src[0];
                    if (k + 1 < e) v.y = src[1];
                    if (k + 2 < e) v.z = src[2];
                    if (k + 3 < e) v.w = src[3];
                }
            }
            xr[j] = v;
        }
        // W: chunk c = tid + THREADS·j is 8 halves (row c / 4, columns 8·(c % 4)…).
        // A chunk starting before e ends inside the padded row (ldw is a
        // multiple of 16 and k0 of 8); x is zero past e, so its tail is harmless.
        #pragma unroll
        for (int j = 0; j < WV; ++j) {
            int c = tid + THREADS * j;
            int row = col0 + c / 4, k = k0 + 8 * (c % 4);
            wv[j] = k < e ? *(const uint4*)(w + (long long)row * ldw + k) : make_uint4(0, 0, 0, 0);
        }
    };
    // x rounded to fp16 as the x16 copy holds it (scaled by 2^x16_exp).
    const float x_scale = ldexpf(1.0f, a.x16_exp);
    auto store = [&](int buf) {
        #pragma unroll
        for (int j = 0; j < XV; ++j) {
            int i = tid + THREADS * j;
            float4 v = xr[j];
            *(uint2*)&xs[buf][i / 8][4 * (i % 8)] = make_uint2(pack_half2(v.x * x_scale, v.y * x_scale),
                                                               pack_half2(v.z * x_scale, v.w * x_scale));
        }
        #pragma unroll
        for (int j = 0; j < WV; ++j) {
            int c = tid + THREADS * j;
            *(uint4*)&ws[buf][c / 4][8 * (c % 4)] = wv[j];
        }
    };

    float acc[Tile::MT][Tile::NT][4] = {};
    if (at.valid()) {
        load();
        store(0);
    }
    __syncthreads();
    int buf = 0;
    while (at.valid()) {
        at.advance();
        bool more = at.valid();
        if (more) load();
        Tile::multiply(acc, xs[buf], ws[buf], warp, lane);
        // One barrier per stage: the other buffer was last read before the
        // previous barrier.
        if (more) store(buf ^ 1);
        __syncthreads();
        buf ^= 1;
    }
    Tile::store(a, acc, row0, col0, warp, lane);
    finish_norm<BM, THREADS>(a, row0, col0, BN, tiles_n, tid);
    finish_logit<BM, THREADS, __half>(a, row0, col0, BN, tiles_n, tid);
}

// The K stages of `bk` columns through a problem's ranges (each range's
// last stage may be partial).
__device__ __forceinline__ int stage_count(const LinearArgs& a, int bk) {
    int stages = 0;
    for (int q = 0; q < a.nranges; ++q) {
        int s = a.ranges[2 * q], e = a.ranges[2 * q + 1];
        if (e > s) stages += (e - s + bk - 1) / bk;
    }
    return stages;
}

// `cp.async` (sm_80+): 16 bytes from global to shared memory without
// registers; `src_bytes` < 16 copies that many and zero-fills the rest (0:
// nothing is read). Copies are grouped by commit; wait<N> waits until at
// most the N newest groups are in flight (then a barrier makes every
// thread's copies visible). The emulator defines these from the PTX ISA.
#ifndef MMOE_EMULATE
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    u32 address = (u32)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

// Tensor cores, x from the fp16 copy (`x16`) its producer wrote: x and W go
// global → shared memory by cp.async through STAGES stages (STAGES - 1 in
// flight while one is multiplied), no register staging and no conversion.
// As `linear_mma`, ranges start at multiples of 16; besides, in_off and
// ldx16 are multiples of 8 (16-byte rows; the host checks). Same tiles and
// the same order of sums as `linear_mma`, so the same results; with stages
// of BK = 64 columns too (half the stages, each two of 32 in a row: a
// range's stage past its end is zero-filled, adding exact zeros).
// The stages live in `xs` (x, STAGES × BM rows) and `ws` (W, STAGES × BN
// rows): static shared memory (`linear_mma_h`) or dynamic (`linear_mma_hd`).
template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, int BK>
__device__ void linear_mma_h_stages(const LinearArgs* problems, const u32* tiles, int count,
                                    __half (*xs)[BM][MMA_LD_OF(BK)], __half (*ws)[BN][MMA_LD_OF(BK)]) {
    using Tile = MmaTile<BM, BN, WARPS_M, WARPS_N, BK>;
    constexpr int THREADS = Tile::THREADS;
    constexpr int CPR = BK / 8;                // 16-byte chunks per row of a stage
    constexpr int XC = BM * BK / 8 / THREADS;  // 16-byte chunks of x each thread copies per stage
    constexpr int WC = BN * BK / 8 / THREADS;  // and of W
    static_assert(BK % 32 == 0, "stages of whole 32-column steps");
    static_assert(BM * BK % (8 * THREADS) == 0 && BN * BK % (8 * THREADS) == 0, "copies cover the tile");
    static_assert(STAGES >= 2, "one stage in flight at least");
    const BlockTile tile = block_tile<BM, BN>(problems, tiles, count);
    const LinearArgs& a = tile.a;
    const __half* x = a.x16;
    const int ldx = a.ldx16, in_off = a.in_off, rows = a.rows, ldw = a.ldw;
    const __half* w = (const __half*)a.w;
    const int row0 = tile.row0, col0 = tile.col0, tiles_n = tile.tiles_n;
    int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

    const int stages = stage_count(a, BK);
    StageCursor at(a.ranges, a.nranges, BK);
    // Chunk c = tid + THREADS·j of a tile is 8 halves: row c / CPR, columns
    // 8·(c % CPR)… of the stage. x past a range's end (and rows past `rows`)
    // is zero-filled; a W chunk starting before the end ends inside the
    // padded row, and x is zero past the end.
    auto issue = [&](int slot) {
        const int k0 = at.k0, e = at.e;
        #pragma unroll
        for (int j = 0; j < XC; ++j) {
            int c = tid + THREADS * j;
            int row = row0 + c / CPR, k = k0 + 8 * (c % CPR);
            int bytes = row < rows && k < e ? 2 * min(8, e - k) : 0;
            const __half* src = bytes ? x + (long long)ldx * row + in_off + k : x;
            cp_async16(&xs[slot][c / CPR][8 * (c % CPR)], src, bytes);
        }
        #pragma unroll
        for (int j = 0; j < WC; ++j) {
            int c = tid + THREADS * j;
            int row = col0 + c / CPR, k = k0 + 8 * (c % CPR);
            int bytes = k < e ? 16 : 0;
            cp_async16(&ws[slot][c / CPR][8 * (c % CPR)], bytes ? w + (long long)row * ldw + k : w, bytes);
        }
        at.advance();
    };

    float acc[Tile::MT][Tile::NT][4] = {};
    // One group per stage, empty ones too, so wait<STAGES - 2> at stage i
    // always means: stage i has landed.
    #pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < stages) issue(s);
        cp_async_commit();
    }
    for (int i = 0; i < stages; ++i) {
        cp_async_wait<STAGES - 2>();
        // Stage i is visible to every thread, and every thread is done with
        // stage i - 1, whose slot the next copy reuses.
        __syncthreads();
        if (i + STAGES - 1 < stages) issue((i + STAGES - 1) % STAGES);
        cp_async_commit();
        Tile::multiply(acc, xs[i % STAGES], ws[i % STAGES], warp, lane);
    }
    Tile::store(a, acc, row0, col0, warp, lane);
    finish_norm<BM, THREADS>(a, row0, col0, BN, tiles_n, tid);
    finish_logit<BM, THREADS, __half>(a, row0, col0, BN, tiles_n, tid);
}

// Stages in static shared memory (at most 48 KB).
template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, int BK = MMA_BK>
__device__ __forceinline__ void linear_mma_h(const LinearArgs* problems, const u32* tiles, int count) {
    __shared__ __align__(16) __half xs[STAGES][BM][MMA_LD_OF(BK)];
    __shared__ __align__(16) __half ws[STAGES][BN][MMA_LD_OF(BK)];
    linear_mma_h_stages<BM, BN, WARPS_M, WARPS_N, STAGES, BK>(problems, tiles, count, xs, ws);
}

// The dynamic shared memory of a launch (its size set at launch; past 48 KB
// the function's limit is raised first: the runtime does both, from
// `dynamic_shared_bytes` in src/gpu/launch_plan.rs). The emulator checks
// that the launch gave at least `bytes`.
#ifdef MMOE_EMULATE
__device__ __forceinline__ __half* dynamic_shared_halves(int bytes) { return (__half*)emu::dynamic_shared(bytes); }
#else
__device__ __forceinline__ __half* dynamic_shared_halves(int) {
    extern __shared__ __align__(16) __half dynamic_shared[];
    return dynamic_shared;
}
#endif

// Stages in dynamic shared memory: STAGES · (BM + BN) · (BK + 8) · 2 bytes,
// for pipelines deeper than 48 KB allows.
template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, int BK = MMA_BK>
__device__ __forceinline__ void linear_mma_hd(const LinearArgs* problems, const u32* tiles, int count) {
    constexpr int LD = MMA_LD_OF(BK);
    __half* stages = dynamic_shared_halves(STAGES * (BM + BN) * LD * 2);
    auto xs = reinterpret_cast<__half (*)[BM][LD]>(stages);
    auto ws = reinterpret_cast<__half (*)[BN][LD]>(stages + STAGES * BM * LD);
    linear_mma_h_stages<BM, BN, WARPS_M, WARPS_N, STAGES, BK>(problems, tiles, count, xs, ws);
}

extern "C" __global__ void __launch_bounds__(128, 4) linear_mma32(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma<32, 64, 2, 2>(problems, tiles, count);
}
extern "C" __global__ void __launch_bounds__(128, 4) linear_mma64(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma<64, 64, 2, 2>(problems, tiles, count);
}
// Wide tiles (MMOE_GPU_TILES=wide, large buckets): 8 warps on a 128×128
// tile, 64×32 each, read 3/4 of the shared memory (ldmatrix) and half the x
// bytes per mma of the 64×64 tile. ptxas gives it 200 registers (one block
// per SM); bounded to two blocks per SM it spills. On an H200 it lost to the
// 64×64 tile (bench/RESULTS.md, 2026-11-27).
extern "C" __global__ void __launch_bounds__(256, 1) linear_mma128(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma<128, 128, 2, 4>(problems, tiles, count);
}
// The same tiles over the fp16 copies of x (MMOE_GPU_HALF_X, on by
// default): four stages for the 4-warp tiles (30 and 40 KB of shared
// memory), two for the 128×128 one (40 KB: a third would pass the 48 KB of
// static shared memory). On an H200, 2–15% faster end to end than the f32
// inputs up to 1024 candidates in two runs (bench/RESULTS.md, 2026-11-27).
extern "C" __global__ void __launch_bounds__(128, 4) linear_mma32h(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma_h<32, 64, 2, 2, 4>(problems, tiles, count);
}
extern "C" __global__ void __launch_bounds__(128, 4) linear_mma64h(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma_h<64, 64, 2, 2, 4>(problems, tiles, count);
}
extern "C" __global__ void __launch_bounds__(256, 2) linear_mma128h(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma_h<128, 128, 2, 4, 2>(problems, tiles, count);
}
// Rectangular tiles for the tuning to choose from (LaunchPlan::tile_choices):
// 4 warps of 64×32 (128×64) or 32×64 (64×128) read 3/4 of the ldmatrix
// bytes per mma of the 64×64 tile with half its blocks; three stages (45 KB
// of static shared memory). Only ever chosen by timing on the device.
extern "C" __global__ void __launch_bounds__(128, 2) linear_mma128x64h(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma_h<128, 64, 2, 2, 3>(problems, tiles, count);
}
extern "C" __global__ void __launch_bounds__(128, 2) linear_mma64x128h(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma_h<64, 128, 2, 2, 3>(problems, tiles, count);
}
// Stages of 64 columns (for the tuning to choose from): half the stages
// and barriers of a K loop, each with twice the mma work, for small
// buckets whose GEMMs are a chain of stage latencies (10 µs for K = 512 at
// 32 rows on an H200). 32×64 tiles with three stages (41 KB), 64×64 with
// two (37 KB).
extern "C" __global__ void __launch_bounds__(128, 4) linear_mma32k64h(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma_h<32, 64, 2, 2, 3, 64>(problems, tiles, count);
}
extern "C" __global__ void __launch_bounds__(128, 4) linear_mma64k64h(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma_h<64, 64, 2, 2, 2, 64>(problems, tiles, count);
}
// Narrow tiles (for the tuning to choose from): 32×32, 4 warps of 16×16,
// twice the blocks of the 32×64 tile over the same GEMM with half the work
// each, for small buckets whose grids leave most SMs idle and whose blocks
// each run a long serial instruction stream (at 32 rows on an H200, 51
// blocks of 32×64 on 132 SMs, each SM busy a fifth of the kernel's time).
// Stages of 32 columns (six: 31 KB) or of 64 (four: 37 KB); the tile only
// splits the output columns, so the sums are those of every other tile.
extern "C" __global__ void __launch_bounds__(128, 4) linear_mma32x32h(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma_h<32, 32, 2, 2, 6>(problems, tiles, count);
}
extern "C" __global__ void __launch_bounds__(128, 4) linear_mma32x32k64h(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma_h<32, 32, 2, 2, 4, 64>(problems, tiles, count);
}
// Deep pipelines in dynamic shared memory (for the tuning to choose from),
// for large buckets: on an H200 at 1024 rows the 64×64 tile's GEMMs ran at
// 21–31% of the SM's throughput with half their stalls waiting for
// cp.async data, at 22% occupancy, and read each x and W element from L2
// once per 64 columns or rows of output. A 128×128 tile halves those L2
// reads; four stages keep three in flight. 8 warps of 64×32 (80 KB), or 4
// warps of 64×64, which read 2/3 of the ldmatrix bytes per mma of a 64×32
// warp tile (80 KB); and the 128×64 tile with six stages (90 KB). Two
// blocks per SM on sm_90 (228 KB).
extern "C" __global__ void __launch_bounds__(256, 2) linear_mma128x128s4h(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma_hd<128, 128, 2, 4, 4>(problems, tiles, count);
}
extern "C" __global__ void __launch_bounds__(128, 2) linear_mma128x128w4s4h(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma_hd<128, 128, 2, 2, 4>(problems, tiles, count);
}
extern "C" __global__ void __launch_bounds__(128, 2) linear_mma128x64s6h(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma_hd<128, 64, 2, 2, 6>(problems, tiles, count);
}
// Deep pipelines for small buckets (for the tuning to choose from): at 32
// rows on an H200 a GEMM with K = 512 took 6–11 µs, a chain of 16 stages
// each waiting for its copies with two or three others in flight, a few
// KB per SM: the latency, not the work, sets the time. With 16 stages of
// 32 columns in flight (32×32 tiles, 80 KB), 12 (32×64, 90 KB) or 8
// (64×64, 80 KB), a K of 512 or 384 is requested at once and waited for
// about once.
extern "C" __global__ void __launch_bounds__(128, 2) linear_mma32x32s16h(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma_hd<32, 32, 2, 2, 16>(problems, tiles, count);
}
extern "C" __global__ void __launch_bounds__(128, 2) linear_mma32x64s12h(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma_hd<32, 64, 2, 2, 12>(problems, tiles, count);
}
extern "C" __global__ void __launch_bounds__(128, 2) linear_mma64x64s8h(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
    linear_mma_hd<64, 64, 2, 2, 8>(problems, tiles, count);
}

// ---------------------------------------------------------------- warpgroup MMA (sm_90a)

// Hopper's warpgroup MMA (`wgmma.mma_async`, the sm_90a cubin only: the
// other images keep these kernels as empty entries, which the runtime
// never launches, `Kernel::needs_sm90a`). A warpgroup (4 warps) multiplies
// a 64×16 x tile by a 16×128 W tile, both read from shared memory through
// descriptors: a start address, LBO (the byte offset between 8×8 core
// matrices along K) and SBO (between groups of 8 rows), no swizzle, each
// core matrix 128 contiguous bytes (8 rows of 16). The accumulators are
// laid out as mma.sync's C fragment, once per 8 columns: warp w of the
// group holds rows 16w + g and 16w + g + 8, columns 8j + 2t and 8j + 2t + 1
// (g = lane / 4, t = lane % 4) in d[j][0..3]. The PTX ISA's "asynchronous
// warpgroup level matrix" sections; the emulator defines these from them.
// fence.proxy.async makes the shared memory that cp.async wrote (the
// generic proxy) visible to wgmma's reads (the async proxy).
#if !defined(MMOE_EMULATE) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MMOE_WGMMA 1
__device__ __forceinline__ u32 shared_address(const void* p) { return (u32)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_proxy_async_shared() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// d += x · Wᵀ over one k16 step: m64n128k16, f32 += f16 · f16.
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[16][4], u64 desc_x, u64 desc_w) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
        "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, "
        "%42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, "
        "%62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),
          "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]),
          "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]),
          "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]),
          "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]),
          "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]),
          "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]),
          "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]),
          "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]),
          "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
        : "l"(desc_x), "l"(desc_w), "r"(1));
}
#elif defined(MMOE_EMULATE)
#define MMOE_WGMMA 1
#endif

#ifdef MMOE_WGMMA
// A no-swizzle descriptor of the operand at `p` (the emulator decodes the
// same bits from its own shared-memory offsets).
__device__ __forceinline__ u64 wgmma_desc(const __half* p, u32 lbo, u32 sbo) {
    u32 address = shared_address(p);
    return (u64)((address & 0x3FFFF) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32);
}

// Tensor cores through wgmma: a block of WGS warpgroups computes a
// (64·WGS)×128 output tile, warpgroup q its rows 64q…. x and W come
// global → shared by cp.async through STAGES stages of 32 columns, as in
// `linear_mma_h_stages` (the same ranges, zero fill and stage count), but
// laid out as wgmma reads them: the 16-byte chunk c of a tile row r at
// core matrix (r / 8, c), i.e. ((r / 8) · 4 + c) · 128 + (r % 8) · 16
// bytes into the stage (LBO 128, SBO 512). A warp's 32 copies of a stage
// fill 512 contiguous bytes: no bank conflicts. Each stage is two k16
// steps in ascending K, as the mma.sync tiles take them. One stage's MMAs
// stay in flight while the next stage's barrier and copies are issued
// (wait_group 1, as CUTLASS's mainloops): so the copies run STAGES − 2
// stages ahead, not STAGES − 1, because the slot of the stage before the
// current one is still being read. The epilogue is MmaTile's, whose
// fragment layout wgmma's accumulators share.
template <int WGS, int STAGES>
__device__ void linear_wgmma(const LinearArgs* problems, const u32* tiles, int count) {
    constexpr int BM = 64 * WGS, BN = 128, BK = 32, THREADS = 128 * WGS;
    constexpr int CPR = BK / 8;                // 16-byte chunks per row of a stage
    constexpr int XC = BM * CPR / THREADS;     // chunks of x each thread copies per stage
    constexpr int WC = BN * CPR / THREADS;     // and of W
    constexpr int STAGE_X = BM * BK, STAGE_W = BN * BK;  // halves
    constexpr u32 LBO = 128, SBO = 16 * BK;   // bytes
    static_assert(BM * CPR % THREADS == 0 && BN * CPR % THREADS == 0, "copies cover the tile");
    static_assert(STAGES >= 3, "a stage's MMAs and one stage of copies in flight at least");
    constexpr int AHEAD = STAGES - 2;  // stages of copies in flight
    using Tile = MmaTile<BM, BN, 4 * WGS, 1>;
    __half* xs = dynamic_shared_halves(STAGES * (STAGE_X + STAGE_W) * 2);
    __half* ws = xs + STAGES * STAGE_X;
    const BlockTile tile = block_tile<BM, BN>(problems, tiles, count);
    const LinearArgs& a = tile.a;
    const __half* x = a.x16;
    const int ldx = a.ldx16, in_off = a.in_off, rows = a.rows, ldw = a.ldw;
    const __half* w = (const __half*)a.w;
    const int row0 = tile.row0, col0 = tile.col0, tiles_n = tile.tiles_n;
    int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

    const int stages = stage_count(a, BK);
    StageCursor at(a.ranges, a.nranges, BK);
    // A tile row's chunk, in halves from the stage's start.
    auto chunk_at = [](int r, int c) { return ((r / 8) * CPR + c) * 64 + (r % 8) * 8; };
    auto issue = [&](int slot) {
        const int k0 = at.k0, e = at.e;
        #pragma unroll
        for (int j = 0; j < XC; ++j) {
            int c = tid + THREADS * j;
            int r = c / CPR, k = k0 + 8 * (c % CPR);
            int bytes = row0 + r < rows && k < e ? 2 * min(8, e - k) : 0;
            const __half* src = bytes ? x + (long long)ldx * (row0 + r) + in_off + k : x;
            cp_async16(xs + slot * STAGE_X + chunk_at(r, c % CPR), src, bytes);
        }
        #pragma unroll
        for (int j = 0; j < WC; ++j) {
            int c = tid + THREADS * j;
            int r = c / CPR, k = k0 + 8 * (c % CPR);
            int bytes = k < e ? 16 : 0;
            cp_async16(ws + slot * STAGE_W + chunk_at(r, c % CPR), bytes ? w + (long long)(col0 + r) * ldw + k : w,
                       bytes);
        }
        at.advance();
    };

    float acc[1][BN / 8][4] = {};
    #pragma unroll
    for (int s = 0; s < AHEAD; ++s) {
        if (s < stages) issue(s);
        cp_async_commit();
    }
    const int group = warp / 4;
    for (int i = 0; i < stages; ++i) {
        cp_async_wait<AHEAD - 1>();
        fence_proxy_async_shared();
        // Stage i is visible to every thread (and to wgmma), and every
        // warpgroup's MMAs of stage i − 2 are done (each waited for them
        // before this barrier), whose slot the next copy reuses.
        __syncthreads();
        if (i + AHEAD < stages) issue((i + AHEAD) % STAGES);
        cp_async_commit();
        const __half* xg = xs + (i % STAGES) * STAGE_X + group * 64 * BK;
        const __half* wg = ws + (i % STAGES) * STAGE_W;
        wgmma_fence();
        #pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk)
            wgmma_m64n128k16(acc[0], wgmma_desc(xg + 128 * kk, LBO, SBO), wgmma_desc(wg + 128 * kk, LBO, SBO));
        wgmma_commit();
        wgmma_wait<1>();  // stage i − 1's MMAs done; stage i's may run on
    }
    wgmma_wait<0>();
    Tile::store(a, acc, row0, col0, warp, lane);
    finish_norm<BM, THREADS>(a, row0, col0, BN, tiles_n, tid);
    finish_logit<BM, THREADS, __half>(a, row0, col0, BN, tiles_n, tid);
}
#endif

// 128×128 tiles of two warpgroups with four stages (64 KB), and 64×128
// tiles of one with six (72 KB). Why: on an H200 the mma.sync tiles ran
// the expert GEMMs at 21–31% of the SM's throughput at 1024 candidates;
// wgmma issues a 64×128×16 product per instruction and reads its operands
// from shared memory itself (no ldmatrix, no fragment registers).
extern "C" __global__ void __launch_bounds__(256, 2) linear_wgmma128x128(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
#ifdef MMOE_WGMMA
    linear_wgmma<2, 4>(problems, tiles, count);
#endif
}
extern "C" __global__ void __launch_bounds__(128, 2) linear_wgmma64x128(const LinearArgs* problems, const u32* tiles, int count) {
    wait_for_inputs();
#ifdef MMOE_WGMMA
    linear_wgmma<1, 6>(problems, tiles, count);
#endif
}

// ---------------------------------------------------------------- element-wise

// The element-wise kernels below take `out16` (optional, row stride `ldo16`
// in halves): their output as fp16 too, for the GEMMs that read it next.
__device__ __forceinline__ void store_with_half(float* out, int ldo, __half* out16, int ldo16, int r, int c, float v) {
    out[(long long)ldo * r + c] = v;
    if (out16) out16[(long long)ldo16 * r + c] = __float2half_rn(v);
}

// out = x0 ⊙ g: g is a request-level gate, 2·sigmoid already applied by
// its Linear layer (once per request, not once per candidate).
extern "C" __global__ void feature_gate(const float* g, int ldg, const float* x0, int ld0, float* out, int ldo, int width,
                                        int rows, __half* out16, int ldo16) {
    wait_for_inputs();
    int r = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (r >= rows || c >= width) return;
    store_with_half(out, ldo, out16, ldo16, r, c, row_of(x0, ld0, r)[c] * row_of(g, ldg, r)[c]);
}

// out[r, :] = concatenation of input[r, ranges]; `ranges` holds (start, end) pairs.
extern "C" __global__ void gather(const float* in, int ldi, const u32* ranges, int nranges, float* out, int ldo,
                                  int out_off, int rows, __half* out16, int ldo16) {
    wait_for_inputs();
    int r = blockIdx.x;
    if (r >= rows) return;
    int at = 0;
    for (int q = 0; q < nranges; ++q) {
        int s = ranges[2 * q], e = ranges[2 * q + 1];
        for (int c = s + threadIdx.x; c < e; c += blockDim.x)
            store_with_half(out, ldo, out16, ldo16, r, out_off + at + (c - s), row_of(in, ldi, r)[c]);
        at += e - s;
    }
}

// out = act(LN(in)), one block of 128 threads per row; in place is fine (every
// element is read before it is written, after the row's statistics).
extern "C" __global__ void layer_norm(const float* in, int ldi, int in_off, const float* gamma, const float* beta,
                                      int act, float* out, int ldo, int out_off, int width, int rows, __half* out16,
                                      int ldo16) {
    wait_for_inputs();
    __shared__ float partial[2][128];
    int r = blockIdx.x, t = threadIdx.x;
    if (r >= rows) return;
    const float* x = row_of(in, ldi, r) + in_off;
    float sum = 0.0f;
    for (int c = t; c < width; c += 128) sum += x[c];
    partial[0][t] = sum;
    __syncthreads();
    for (int s = 64; s > 0; s >>= 1) {
        if (t < s) partial[0][t] += partial[0][t + s];
        __syncthreads();
    }
    float mean = partial[0][0] / width;
    float sq = 0.0f;
    for (int c = t; c < width; c += 128) {
        float dv = x[c] - mean;
        sq += dv * dv;
    }
    partial[1][t] = sq;
    __syncthreads();
    for (int s = 64; s > 0; s >>= 1) {
        if (t < s) partial[1][t] += partial[1][t + s];
        __syncthreads();
    }
    float inv = rsqrtf(partial[1][0] / width + 1e-5f);
    for (int c = t; c < width; c += 128)
        store_with_half(out, ldo, out16, ldo16, r, out_off + c, activate((x[c] - mean) * inv * gamma[c] + beta[c], act));
}

// FinalMLP: z[r, j·hy + b] = o1[r, j] · o2[r, (j / hx)·hy + b], each head's
// outer product, in the order of the bilinear weight's rows: the bilinear
// sum is then a Linear layer over z on the tensor cores (layout version 2).
// A product of two activations may pass fp16's range where they do not:
// its fp16 copy holds z·2^exp16 (the Linear layer's x16_exp). `out` is
// null when the GEMM reads only the copy (fp16 compute).
extern "C" __global__ void outer_heads(const float* o1, int ld1, const float* o2, int ld2, float* out, int ldo,
                                       int width, int rows, __half* out16, int ldo16, int hx, int hy, int exp16) {
    wait_for_inputs();
    int r = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (r >= rows || c >= width) return;
    int j = c / hy, b = c - j * hy;
    float z = row_of(o1, ld1, r)[j] * row_of(o2, ld2, r)[(j / hx) * hy + b];
    if (out) out[(long long)ldo * r + c] = z;
    if (out16) out16[(long long)ldo16 * r + c] = __float2half_rn(ldexpf(z, exp16));
}

// FinalMLP: out = wx + wy + Σ_h Σ_a Σ_b o1[h·hx+a] · Wxy[(h·hx+a)·(hy·H) + o·hy + b] · o2[h·hy+b]
extern "C" __global__ void bilinear(const float* o1, int ld1, const float* o2, int ld2, const float* wx, int ldx,
                                    const float* wy, int ldy, const float* wxy, int heads, int hx, int hy, float* out,
                                    int ldo, int h_out, int rows) {
    wait_for_inputs();
    int r = blockIdx.x, o = blockIdx.y * blockDim.x + threadIdx.x;
    if (r >= rows || o >= h_out) return;
    const float* a = row_of(o1, ld1, r);
    const float* b = row_of(o2, ld2, r);
    float sum = 0.0f;
    for (int h = 0; h < heads; ++h)
        for (int i = 0; i < hx; ++i) {
            const float* wrow = wxy + (long long)(h * hx + i) * (hy * h_out) + (long long)o * hy;
            float inner = 0.0f;
            for (int k = 0; k < hy; ++k) inner += wrow[k] * b[h * hy + k];
            sum += a[h * hx + i] * inner;
        }
    out[(long long)ldo * r + o] = row_of(wx, ldx, r)[o] + row_of(wy, ldy, r)[o] + sum;
}

// out_t = Σ_i softmax(gate_t)_i · expert_i for every task t over the same
// experts at once. `table` holds (pointer, ld) pairs as u64: the experts,
// then of each task its gate (pointer 0: one expert, no gate), its output
// and the output's fp16 copy (pointer 0: none; ld in halves). A block
// covers columns of one row. With up to MIX_TASKS tasks and MIX_EXPERTS
// experts, thread t of the block computes task t's softmax weights into
// shared memory (the tasks side by side, behind one barrier), then each
// thread reads each expert value once and adds it into every task's sum
// (at 1 candidate on an H200 the kernel took 8.9 µs, mostly the tasks'
// softmaxes and barriers one after another). With more, each thread
// computes the weights itself, task by task. Either way a task's sum is
// Σ_i w_i · e_i in expert order, with the same weights.
#define MIX_EXPERTS 64
#define MIX_TASKS 8
// The softmax of a gate row of n logits: its max and Σ exp(z_i − max).
struct SoftmaxTerms {
    float zmax, total;
};
__device__ __forceinline__ SoftmaxTerms softmax_terms(const float* z, int n) {
    SoftmaxTerms s{z[0], 0.0f};
    for (int i = 1; i < n; ++i) s.zmax = fmaxf(s.zmax, z[i]);
    for (int i = 0; i < n; ++i) s.total += expf(z[i] - s.zmax);
    return s;
}
__device__ __forceinline__ float softmax_weight(const float* z, SoftmaxTerms s, int i) {
    return expf(z[i] - s.zmax) / s.total;
}
// One task's output at (r, c); `entry` is its table entry.
// The f32 output is null where only its fp16 copy is read (`f32_unread`).
__device__ __forceinline__ void mixture_store(const u64* entry, int r, int c, float m) {
    float* out = (float*)entry[2];
    if (out) out[(long long)entry[3] * r + c] = m;
    __half* out16 = (__half*)entry[4];
    if (out16) out16[(long long)entry[5] * r + c] = __float2half_rn(m);
}
extern "C" __global__ void mixture(const u64* table, int num_experts, int tasks, int h, int rows) {
    wait_for_inputs();
    __shared__ float weights[MIX_TASKS][MIX_EXPERTS];
    int r = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    const bool row = r < rows, active = row && c < h;
    const u64* experts = table;
    // Per task: gate, its ld, out, its ld, out's fp16 copy, its ld.
    const u64* entries = table + 2 * num_experts;
    auto expert = [&](int i) { return row_of((const float*)experts[2 * i], (int)experts[2 * i + 1], r)[c]; };
    if (num_experts <= MIX_EXPERTS && tasks <= MIX_TASKS) {
        int own = threadIdx.x;
        if (row && own < tasks) {
            const float* gate = (const float*)entries[6 * own];
            if (gate) {
                const float* z = row_of(gate, (int)entries[6 * own + 1], r);
                SoftmaxTerms s = softmax_terms(z, num_experts);
                for (int i = 0; i < num_experts; ++i) weights[own][i] = softmax_weight(z, s, i);
            }
        }
        // The block's one barrier: every thread reaches it.
        __syncthreads();
        if (!active) return;
        float m[MIX_TASKS];
        #pragma unroll
        for (int t = 0; t < MIX_TASKS; ++t) m[t] = 0.0f;
        for (int i = 0; i < num_experts; ++i) {
            float e = expert(i);
            #pragma unroll
            for (int t = 0; t < MIX_TASKS; ++t)
                if (t < tasks) m[t] += weights[t][i] * e;
        }
        #pragma unroll
        for (int t = 0; t < MIX_TASKS; ++t)
            if (t < tasks) mixture_store(entries + 6 * t, r, c, entries[6 * t] ? m[t] : expert(0));
        return;
    }
    if (!active) return;
    for (int task = 0; task < tasks; ++task) {
        const u64* entry = entries + 6 * task;
        const float* gate = (const float*)entry[0];
        float m = 0.0f;
        if (gate == 0) {
            m = expert(0);
        } else {
            const float* z = row_of(gate, (int)entry[1], r);
            SoftmaxTerms s = softmax_terms(z, num_experts);
            for (int i = 0; i < num_experts; ++i) m += softmax_weight(z, s, i) * expert(i);
        }
        mixture_store(entry, r, c, m);
    }
}

// ---------------------------------------------------------------- task heads

// Gate, softmax, mixture, tower and logit of every task in one launch.
// Block (x, t) takes HEAD_ROWS rows of task t: the gate's logits (a light
// gate's Linear layer, a warp per expert, its lanes over k; or read from
// the gate buffer computed before), softmax weights per row, mixture
// Σ_i w_i · expert_i into shared memory, then each tower layer from one
// shared buffer into the other (a warp per output, its lanes over k), the
// last layer (one output) straight into logits[r · tasks + column].
// `table` (u64 words): (pointer, ld) of each expert; at 2E + t the word
// offset of task t's descriptor: gate buffer pointer (0: none), its ld,
// logit column, layer count L, per layer (W, ldw, bias or 0, n, k); then the
// gate's Linear: W (0: none, the gate buffer or one expert without a gate),
// ldw, bias or 0, add (request part) or 0, add's ld, x (at its first
// column), x's ld, range count, and the (start, end) of each range.
// The host fuses only when E ≤ HEAD_EXPERTS and every width ≤ HEAD_WIDTH.
#define HEAD_ROWS 8
#define HEAD_WIDTH 512
#define HEAD_EXPERTS 32
#define HEAD_THREADS 256

template <typename W>
__device__ void task_heads(const u64* table, int num_experts, int h, float* logits, int tasks, int rows) {
    __shared__ float act[2][HEAD_ROWS][HEAD_WIDTH];
    __shared__ float mix[HEAD_ROWS][HEAD_EXPERTS];
    const u64* task = table + table[2 * num_experts + blockIdx.y];
    const float* gate = (const float*)task[0];
    const int ldg = (int)task[1], column = (int)task[2], layers = (int)task[3];
    const u64* gate_linear = task + 4 + 5 * layers;
    const int row0 = blockIdx.x * HEAD_ROWS;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    if (gate_linear[0]) {
        // mix[r][i] = W_i · x[r, ranges] + bias_i + add_i
        const W* w = (const W*)gate_linear[0];
        const int ldw = (int)gate_linear[1];
        const float* bias = (const float*)gate_linear[2];
        const float* add = (const float*)gate_linear[3];
        const float* x = (const float*)gate_linear[5];
        const int ldx = (int)gate_linear[6], nranges = (int)gate_linear[7];
        const u64* ranges = gate_linear + 8;
        for (int i = warp; i < num_experts; i += HEAD_THREADS / 32) {
            float sum[HEAD_ROWS];
            #pragma unroll
            for (int r = 0; r < HEAD_ROWS; ++r) sum[r] = 0.0f;
            const W* wi = w + (long long)i * ldw;
            for (int q = 0; q < nranges; ++q) {
                const int s = (int)ranges[2 * q], e = (int)ranges[2 * q + 1];
                for (int k = s + lane; k < e; k += 32) {
                    float wv = weight_at<W>(wi, k);
                    #pragma unroll
                    for (int r = 0; r < HEAD_ROWS; ++r)
                        if (row0 + r < rows) sum[r] += wv * row_of(x, ldx, row0 + r)[k];
                }
            }
            #pragma unroll
            for (int r = 0; r < HEAD_ROWS; ++r)
                #pragma unroll
                for (int s = 16; s > 0; s /= 2) sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], s);
            if (lane == 0) {
                float b = (bias ? bias[i] : 0.0f) + (add ? add[i] : 0.0f);
                #pragma unroll
                for (int r = 0; r < HEAD_ROWS; ++r) mix[r][i] = sum[r] + b;
            }
        }
        __syncthreads();
    }
    if (tid < HEAD_ROWS) {
        int r = row0 + tid;
        if ((gate || gate_linear[0]) && r < rows) {
            // Softmax in place when the logits are in mix already (weight i
            // reads only z[i]).
            const float* z = gate_linear[0] ? mix[tid] : row_of(gate, ldg, r);
            SoftmaxTerms s = softmax_terms(z, num_experts);
            for (int i = 0; i < num_experts; ++i) mix[tid][i] = softmax_weight(z, s, i);
        } else {
            for (int i = 0; i < num_experts; ++i) mix[tid][i] = i == 0 ? 1.0f : 0.0f;
        }
    }
    __syncthreads();
    for (int i = tid; i < HEAD_ROWS * h; i += HEAD_THREADS) {
        int rr = i / h, c = i % h, r = row0 + rr;
        float m = 0.0f;
        // Without a gate there is one expert (the plan drops the gate only then).
        if (r < rows)
            for (int e = 0; e < num_experts; ++e)
                m += mix[rr][e] * row_of((const float*)table[2 * e], (int)table[2 * e + 1], r)[c];
        act[0][rr][c] = m;
    }
    __syncthreads();
    int cur = 0;
    for (int l = 0; l < layers; ++l) {
        const u64* layer = task + 4 + 5 * l;
        const W* w = (const W*)layer[0];
        const int ldw = (int)layer[1], n = (int)layer[3], k = (int)layer[4];
        const float* bias = (const float*)layer[2];
        const bool last = l + 1 == layers;
        for (int j = warp; j < n; j += HEAD_THREADS / 32) {
            float sum[HEAD_ROWS];
            #pragma unroll
            for (int r = 0; r < HEAD_ROWS; ++r) sum[r] = 0.0f;
            const W* wj = w + (long long)j * ldw;
            for (int kk = lane; kk < k; kk += 32) {
                float wv = weight_at<W>(wj, kk);
                #pragma unroll
                for (int r = 0; r < HEAD_ROWS; ++r) sum[r] += wv * act[cur][r][kk];
            }
            #pragma unroll
            for (int r = 0; r < HEAD_ROWS; ++r)
                #pragma unroll
                for (int s = 16; s > 0; s /= 2) sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], s);
            if (lane == 0) {
                float b = bias ? bias[j] : 0.0f;
                #pragma unroll
                for (int r = 0; r < HEAD_ROWS; ++r) {
                    float v = sum[r] + b;
                    if (last) {
                        if (row0 + r < rows) logits[(long long)(row0 + r) * tasks + column] = v;
                    } else {
                        act[cur ^ 1][r][j] = fmaxf(v, 0.0f);
                    }
                }
            }
        }
        __syncthreads();
        cur ^= 1;
    }
}

extern "C" __global__ void __launch_bounds__(HEAD_THREADS) task_heads_f16(const u64* table, int num_experts, int h,
                                                                         float* logits, int tasks, int rows) {
    wait_for_inputs();
    task_heads<__half>(table, num_experts, h, logits, tasks, rows);
}
extern "C" __global__ void __launch_bounds__(HEAD_THREADS) task_heads_f32(const u64* table, int num_experts, int h,
                                                                         float* logits, int tasks, int rows) {
    wait_for_inputs();
    task_heads<float>(table, num_experts, h, logits, tasks, rows);
}

// logits[r · tasks + task] = in[r, 0]
extern "C" __global__ void output_logit(const float* in, int ldi, float* logits, int tasks, int task, int rows) {
    wait_for_inputs();
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    logits[(long long)r * tasks + task] = row_of(in, ldi, r)[0];
}
