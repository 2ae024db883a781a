// Kernels that test the emulator itself (gpu-emu/tests/emulator.rs): it must
// expose a missing barrier and a missing cp.async wait, refuse a warp
// operation that lanes skip, and stop a wgmma that misses one of its fences.

// 64 threads: each writes its slot (t + salt), then reads the other warp's.
// Shared memory keeps what an earlier launch left (as on a GPU): a new salt
// tells those values apart.
extern "C" __global__ void selftest_exchange(float* out, int with_barrier, int salt) {
    __shared__ float slots[64];
    int t = threadIdx.x;
    slots[t] = (float)(t + salt);
    if (with_barrier) __syncthreads();
    out[t] = slots[(t + 32) % 64];
}

// Half of each warp exits before a shuffle the other half waits in.
extern "C" __global__ void selftest_exited_lanes(float* out) {
    int t = threadIdx.x;
    if (t % 32 >= 16) return;
    out[t] = __shfl_xor_sync(0xffffffffu, (float)t, 1);
}

// A full-warp butterfly sum: every lane gets Σ lane = 496.
extern "C" __global__ void selftest_shuffle_sum(float* out) {
    float v = (float)(threadIdx.x % 32);
    for (int s = 16; s > 0; s /= 2) v += __shfl_xor_sync(0xffffffffu, v, s);
    out[threadIdx.x] = v;
}

// A float4 load from an address 4 bytes past a 16-byte boundary: a GPU
// faults; the emulator (UBSan's alignment check) must abort.
extern "C" __global__ void selftest_misaligned(float* out, const float* in) {
    float4 v = *(const float4*)(in + 1);
    out[threadIdx.x] = v.x;
}

// out[t] = in[index]: past the end of `in`, the guard page must fault.
extern "C" __global__ void selftest_read(float* out, const float* in, int index) {
    out[threadIdx.x] = in[index];
}

// cp.async: thread t of block b copies in[128·b + 4t …] (16 bytes; 8 for
// t = 31, the rest zero-filled) into shared memory, waits for it (or not),
// meets the others at a barrier, and copies shared memory to out[128·b …].
extern "C" __global__ void selftest_cp_async(float* out, const float* in, int wait) {
    __shared__ __align__(16) float stage[128];
    int t = threadIdx.x, b = blockIdx.x;
    cp_async16(&stage[4 * t], in + 128 * b + 4 * t, t == 31 ? 8 : 16);
    cp_async_commit();
    if (wait) cp_async_wait<0>();
    __syncthreads();
    for (int i = t; i < 128; i += 32) out[128 * b + i] = stage[i];
}

// Each thread writes its slot of the launch's dynamic shared memory, meets
// the others at a barrier and reads its neighbour's: the launch must give
// 4 · blockDim.x bytes.
extern "C" __global__ void selftest_dynamic_shared(float* out) {
    float* slots = (float*)dynamic_shared_halves(4 * (int)blockDim.x);
    int t = threadIdx.x;
    slots[t] = (float)t;
    __syncthreads();
    out[t] = slots[(t + 1) % blockDim.x];
}

// One wgmma m64n128k16 by one warpgroup (128 threads): out (64×128 f32,
// row-major) = x (64×16 fp16) · wᵀ (w: 128×16 fp16), both row-major in
// global memory, copied by cp.async into the no-swizzle layout (16-byte
// chunk c of row r at core matrix (r / 8, c): LBO 128 bytes, SBO 256).
// `proxy_fence` 0 leaves out the fence.proxy.async and `mma_fence` 0 the
// wgmma.fence: each must stop the emulator.
extern "C" __global__ void selftest_wgmma(float* out, const __half* x, const __half* w, int proxy_fence, int mma_fence) {
#ifdef MMOE_WGMMA
    __half* xs = dynamic_shared_halves(2 * (64 + 128) * 16);
    __half* ws = xs + 64 * 16;
    int t = threadIdx.x;
    auto chunk_at = [](int r, int c) { return ((r / 8) * 2 + c) * 64 + (r % 8) * 8; };
    for (int i = t; i < 64 * 2; i += 128) cp_async16(xs + chunk_at(i / 2, i % 2), x + 8 * i, 16);
    for (int i = t; i < 128 * 2; i += 128) cp_async16(ws + chunk_at(i / 2, i % 2), w + 8 * i, 16);
    cp_async_commit();
    cp_async_wait<0>();
    if (proxy_fence) fence_proxy_async_shared();
    __syncthreads();
    float d[16][4] = {};
    if (mma_fence) wgmma_fence();
    wgmma_m64n128k16(d, wgmma_desc(xs, 128, 256), wgmma_desc(ws, 128, 256));
    wgmma_commit();
    wgmma_wait<0>();
    int warp = t / 32, g = t % 32 / 4, q = t % 4;
    for (int j = 0; j < 16; ++j)
        for (int i = 0; i < 4; ++i) out[(16 * warp + g + 8 * (i / 2)) * 128 + 8 * j + 2 * q + i % 2] = d[j][i];
#endif
}
