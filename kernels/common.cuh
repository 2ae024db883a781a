// Shared definitions of the mmoe CUDA kernels. Compiled by NVRTC (no host
// headers): fixed-width types are spelled out here.
#pragma once

#ifndef MMOE_EMULATE  // gpu-emu/ compiles the kernels for the host
#include <cuda_fp16.h>
#endif

// A device function compiled once rather than inlined into each caller
// (the emulator's host compiler spells it its own way; libstdc++ uses the
// name `__noinline__` itself).
#ifdef MMOE_EMULATE
#define MMOE_NOINLINE __attribute__((noinline))
#else
#define MMOE_NOINLINE __noinline__
#endif

typedef unsigned long long u64;
typedef unsigned int u32;

// One input's description for the feature kernels, written by the host into
// the request's staging buffer (see src/gpu/staging.rs, which mirrors it).
struct InputDesc {
    u64 table;      // sparse: embedding table, [rows, dim], f32 or fp16 (FLAG_TABLE_F16)
    u64 mean;       // dense with standardize: f32 [dim]
    u64 std;        // dense with standardize: f32 [dim]
    u64 rows;       // sparse: table rows
    u32 kind;       // 0 dense, 1 sparse
    u32 scope;      // 0 request, 1 candidate
    u32 dim;
    u32 x0_offset;  // column of x0 where the input starts
    u32 flags;      // FLAG_*
    float clip;
    u32 values;     // dense: index of its first value (4-byte slot) in the float region;
                    // sparse: index of its first offset in the offset region
    u32 ids;        // sparse: index of its first id (4-byte slot) in the id region
};

#define FLAG_LOG1P 1u
#define FLAG_STANDARDIZE 2u
#define FLAG_CLIP 4u
#define FLAG_MISSING_ZERO 8u
#define FLAG_MEAN 16u
#define FLAG_TABLE_F16 32u  // the embedding table is fp16 (as in an fp16 file)
#define FLAG_VALUES_F16 64u  // dense values are fp16, two to a slot of the f32 region
#define FLAG_IDS_U32 128u    // ids are u32, reduced mod rows by the host (else u64)

// The staging buffer starts with this header; byte offsets are from its start.
struct StagingHeader {
    u64 candidates;
    u64 num_inputs;
    u64 floats_at;   // dense values: f32, or fp16 (FLAG_VALUES_F16)
    u64 offsets_at;  // u32 CSR offsets
    u64 ids_at;      // ids: u32 (FLAG_IDS_U32) or u64 (at an even 4-byte slot)
    u64 descs_at;    // InputDesc[num_inputs]
};

// A buffer's row stride is 0 for a per-request buffer: every row reads row 0.
__device__ __forceinline__ const float* row_of(const float* base, int ld, int r) {
    return base + (long long)ld * r;
}

// Activation codes (Act::code in src/program.rs): 0 none, 1 relu, 2 2·sigmoid.
__device__ __forceinline__ float activate(float v, int act) {
    if (act == 1) return fmaxf(v, 0.0f);
    if (act == 2) return 2.0f / (1.0f + expf(-v));
    return v;
}

