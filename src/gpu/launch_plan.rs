//! The lowered program turned into kernel launches for one batch capacity:
//! which kernel runs each step, its grid, and its arguments as symbolic
//! locations (arena offsets, tensors, the staging buffer). The runtime
//! resolves the locations to device addresses and captures the launches in a
//! CUDA graph. Plain Rust, unit-tested without a GPU.
//!
//! Launches are levelled by their data dependencies, and the Linear layers of
//! one level (the same layer of every expert, the gates, the towers of every
//! task) run as one grouped launch: a graph of a dozen kernels instead of one
//! per layer, each with enough blocks to fill the device.

use super::streams::{stream_schedule, StreamSchedule};
use crate::plan::TensorId;
use crate::program::{Act, BufId, Program, Step, View};

/// How Linear layers compute on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// fp16 weights and inputs on tensor cores, fp32 accumulation.
    F16,
    /// fp32 weights and arithmetic (the parity baseline on the device).
    F32,
}

/// The kernels of `kernels/mmoe.cu`, by entry name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    FeaturesRequest,
    FeaturesCandidate,
    LinearSimtF32,
    LinearSimtF16,
    LinearMma32,
    LinearMma64,
    LinearMma128,
    LinearMma32H,
    LinearMma64H,
    LinearMma128H,
    LinearMma128x64H,
    LinearMma64x128H,
    LinearMma32K64H,
    LinearMma64K64H,
    LinearMma32x32H,
    LinearMma32x32K64H,
    LinearMma128x128S4H,
    LinearMma128x128W4S4H,
    LinearMma128x64S6H,
    LinearMma32x32S16H,
    LinearMma32x64S12H,
    LinearMma64x64S8H,
    LinearWgmma128x128,
    LinearWgmma64x128,
    FeatureGate,
    Gather,
    LayerNorm,
    OuterHeads,
    Bilinear,
    Mixture,
    TaskHeadsF16,
    TaskHeadsF32,
    OutputLogit,
}

impl Kernel {
    pub const ALL: [Kernel; 33] = [
        Kernel::FeaturesRequest,
        Kernel::FeaturesCandidate,
        Kernel::LinearSimtF32,
        Kernel::LinearSimtF16,
        Kernel::LinearMma32,
        Kernel::LinearMma64,
        Kernel::LinearMma128,
        Kernel::LinearMma32H,
        Kernel::LinearMma64H,
        Kernel::LinearMma128H,
        Kernel::LinearMma128x64H,
        Kernel::LinearMma64x128H,
        Kernel::LinearMma32K64H,
        Kernel::LinearMma64K64H,
        Kernel::LinearMma32x32H,
        Kernel::LinearMma32x32K64H,
        Kernel::LinearMma128x128S4H,
        Kernel::LinearMma128x128W4S4H,
        Kernel::LinearMma128x64S6H,
        Kernel::LinearMma32x32S16H,
        Kernel::LinearMma32x64S12H,
        Kernel::LinearMma64x64S8H,
        Kernel::LinearWgmma128x128,
        Kernel::LinearWgmma64x128,
        Kernel::FeatureGate,
        Kernel::Gather,
        Kernel::LayerNorm,
        Kernel::OuterHeads,
        Kernel::Bilinear,
        Kernel::Mixture,
        Kernel::TaskHeadsF16,
        Kernel::TaskHeadsF32,
        Kernel::OutputLogit,
    ];

    /// Its place in [`Kernel::ALL`] (declaration order; tested), where the
    /// runtime keeps its loaded function.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn entry(self) -> &'static str {
        match self {
            Kernel::FeaturesRequest => "features_request",
            Kernel::FeaturesCandidate => "features_candidate",
            Kernel::LinearSimtF32 => "linear_simt_f32",
            Kernel::LinearSimtF16 => "linear_simt_f16",
            Kernel::LinearMma32 => "linear_mma32",
            Kernel::LinearMma64 => "linear_mma64",
            Kernel::LinearMma128 => "linear_mma128",
            Kernel::LinearMma32H => "linear_mma32h",
            Kernel::LinearMma64H => "linear_mma64h",
            Kernel::LinearMma128H => "linear_mma128h",
            Kernel::LinearMma128x64H => "linear_mma128x64h",
            Kernel::LinearMma64x128H => "linear_mma64x128h",
            Kernel::LinearMma32K64H => "linear_mma32k64h",
            Kernel::LinearMma64K64H => "linear_mma64k64h",
            Kernel::LinearMma32x32H => "linear_mma32x32h",
            Kernel::LinearMma32x32K64H => "linear_mma32x32k64h",
            Kernel::LinearMma128x128S4H => "linear_mma128x128s4h",
            Kernel::LinearMma128x128W4S4H => "linear_mma128x128w4s4h",
            Kernel::LinearMma128x64S6H => "linear_mma128x64s6h",
            Kernel::LinearMma32x32S16H => "linear_mma32x32s16h",
            Kernel::LinearMma32x64S12H => "linear_mma32x64s12h",
            Kernel::LinearMma64x64S8H => "linear_mma64x64s8h",
            Kernel::LinearWgmma128x128 => "linear_wgmma128x128",
            Kernel::LinearWgmma64x128 => "linear_wgmma64x128",
            Kernel::FeatureGate => "feature_gate",
            Kernel::Gather => "gather",
            Kernel::LayerNorm => "layer_norm",
            Kernel::OuterHeads => "outer_heads",
            Kernel::Bilinear => "bilinear",
            Kernel::Mixture => "mixture",
            Kernel::TaskHeadsF16 => "task_heads_f16",
            Kernel::TaskHeadsF32 => "task_heads_f32",
            Kernel::OutputLogit => "output_logit",
        }
    }
}

/// Where a pointer argument points; resolved by the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// f32 element offset in the session's activation arena.
    Arena(usize),
    /// A model tensor on the device.
    Tensor(TensorId),
    /// u32 element offset in the session's range table.
    Ranges(usize),
    /// u64 element offset in the session's pointer table.
    Pointers(usize),
    /// Index in the session's table of Linear problems (`LinearArgs`).
    Problems(usize),
    /// The session's cell holding the staging buffer's address (the buffer
    /// grows with the requests; the cell, baked into graphs, stays put).
    StagingCell,
    /// The bucket's logits.
    Logits,
    Null,
}

/// `struct LinearArgs` of `kernels/mmoe.cu`, with symbolic pointers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearLaunch {
    pub x: Loc,
    pub ldx: i32,
    pub in_off: i32,
    pub w: Loc,
    pub ldw: i32,
    pub n: i32,
    pub ranges: Loc,
    pub nranges: i32,
    pub bias: Loc,
    pub add: Loc,
    /// Activation code (`Act::code`).
    pub act: i32,
    pub y: Loc,
    pub ldy: i32,
    pub out_off: i32,
    pub rows: i32,
    pub scale: Loc,
    pub ldscale: i32,
    pub shift: Loc,
    pub ldshift: i32,
    /// The fp16 copy of y (`Loc::Null`: none), row stride in halves.
    pub y16: Loc,
    pub ldy16: i32,
    /// The fp16 copy of x that the `…H` kernels read, row stride in halves.
    pub x16: Loc,
    pub ldx16: i32,
    /// The tensor-core kernels read x as fp16 of x·2^x16_exp and scale
    /// their sums back ([`half_exponent`]).
    pub x16_exp: i32,
    /// A LayerNorm fused into the epilogue (`PlanOptions::fused_norm`):
    /// γ and β (`Loc::Null`: none), the activation after it, and its
    /// scratch in the arena: a u32 counter per 16 rows (`done`, zero
    /// between launches) and a float2 per row and 16 columns (`stats`).
    pub gamma: Loc,
    pub beta: Loc,
    pub norm_act: i32,
    pub done: Loc,
    pub stats: Loc,
    /// A task's logit fused into the epilogue (`PlanOptions::fused_logit`):
    /// the logit layer's weight row and bias, and where the logit goes
    /// (`Loc::Logits`, `ldlogits` = tasks, column `logit_col`; `logits`
    /// `Loc::Null`: none). Its scratch is `done` and `stats` (a float per
    /// row and 16 columns), never used by a fused LayerNorm as well.
    pub logit_w: Loc,
    pub logit_b: Loc,
    pub logits: Loc,
    pub ldlogits: i32,
    pub logit_col: i32,
}

/// The power of two at which the outer products of a bilinear sum go to
/// fp16: 2^-6. They are products of two activations, so they may pass
/// fp16's range where the activations do not; scaled, every value from
/// 2^-8 to 2^22 (about 4·10^6) keeps fp16's full precision, and the
/// scaling and its undoing are exact.
pub const OUTER_HEADS_X16_EXP: i32 = -6;

/// The exponent of the scale `buf`'s fp16 copy (and the tensor cores'
/// view of it) holds its values at: [`OUTER_HEADS_X16_EXP`] for the outer
/// products of a bilinear sum, else 0.
fn half_exponent(program: &Program, buf: BufId) -> i32 {
    let outer = program
        .candidate_steps
        .iter()
        .any(|s| matches!(s, Step::OuterHeads { out, .. } if *out == buf));
    if outer {
        OUTER_HEADS_X16_EXP
    } else {
        0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    Ptr(Loc),
    I32(i32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub kernel: Kernel,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub args: Vec<Arg>,
    /// Arena buffers the launch reads and writes (every problem of a group).
    pub reads: Vec<BufId>,
    pub writes: Vec<BufId>,
    /// The Linear problems of a grouped launch (indices into `problems`).
    pub problems: std::ops::Range<usize>,
    /// The launches before scheduling that this one runs, in lowering order
    /// (for the tests of the schedule).
    pub origin: Vec<usize>,
}

/// A launch before scheduling: one step's kernel, or one Linear problem
/// with its number of blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pending {
    launch: Launch,
    group: Option<Group>,
}

/// What a launch contributes to a grouped launch of its level.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Group {
    /// A Linear problem and its number of blocks.
    Linear(Box<LinearLaunch>, u32),
    /// One task's mixture: tasks over the same experts run as one launch
    /// that reads each expert value once.
    Mixture(MixtureTask),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct MixtureTask {
    experts: Vec<BufId>,
    gate: Option<BufId>,
    out: BufId,
    /// Row stride of `out` and its width.
    ldo: usize,
    h: usize,
}

/// An entry of the session's pointer table (expert lists of mixtures).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointerEntry {
    Arena(usize),
    Tensor(TensorId),
    Value(u64),
}

/// How a Linear weight is laid out on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceWeight {
    /// Row stride in elements.
    pub ldw: usize,
}

/// Row stride of fp16 weights on the device: columns padded to 16.
pub fn f16_ldw(k: usize) -> usize {
    k.div_ceil(16) * 16
}

/// Rows of fp16 weights on the device: padded to the widest MMA tile (128).
pub fn f16_rows(n: usize) -> usize {
    n.div_ceil(128) * 128
}

/// A buffer's place in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub offset: usize,
    /// Row stride passed to kernels: 0 for per-request buffers (broadcast).
    pub ld: usize,
    pub rows: usize,
}

/// A tile size a grouped tensor-core launch can run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileChoice {
    pub kernel: Kernel,
    /// Its tile table: u32 offset in `ranges`.
    pub tiles: usize,
    /// Blocks of the launch.
    pub blocks: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchPlan {
    /// Candidate rows every launch computes (the batch bucket).
    pub capacity: usize,
    pub placements: Vec<Placement>,
    /// Per buffer, whether it has no f32 values in the arena (only its
    /// fp16 copy: [`f32_unread`]); its placement then holds no memory and
    /// its address is `Loc::Null`.
    pub f32_unread: Vec<bool>,
    /// Per buffer, its fp16 copy for the GEMMs that read it, if it has one
    /// (`offset` in f32 elements of the arena, `ld` in halves).
    pub halves: Vec<Option<Placement>>,
    pub arena_len: usize,
    pub ranges: Vec<u32>,
    pub pointers: Vec<PointerEntry>,
    /// Linear problems, uploaded as `LinearArgs` once per bucket.
    pub problems: Vec<LinearLaunch>,
    pub launches: Vec<Launch>,
    /// How the launches are captured: on which streams, with which waits.
    pub streams: StreamSchedule,
    /// Per launch, the tensor-core kernels it can run with (the tile sizes
    /// over the same input kind), each with its tile table; empty for other
    /// launches. The runtime times them on the device (`choose_tiles`).
    pub tile_choices: Vec<Vec<TileChoice>>,
    tiles: Tiles,
    /// `PlanOptions::fused_norm`.
    fused_norm: bool,
    /// The logit layers fused into their towers' last hidden layers
    /// (`PlanOptions::fused_logit`).
    fused_logits: Vec<LogitFusion>,
    pending: Vec<Pending>,
    /// Per buffer, the task whose logit column its one writer (a Linear of
    /// one output) writes straight into (`logit_writers`): no copy launch.
    logit_columns: Vec<Option<usize>>,
    /// The launches in lowering order, before scheduling.
    #[cfg(test)]
    unscheduled: Vec<Launch>,
}

/// CUDA's limits on a launch's shape, the same on every GPU the kernels
/// build for: blocks along the grid's x, y and z axes, threads along the
/// block's, and threads a block.
pub const MAX_GRID: [u32; 3] = [i32::MAX as u32, 65_535, 65_535];
pub const MAX_BLOCK: [u32; 3] = [1024, 1024, 64];
pub const MAX_BLOCK_THREADS: u32 = 1024;

/// Why CUDA would refuse a launch of `grid` blocks of `block` threads
/// (`CUDA_ERROR_INVALID_VALUE`), or `None`.
pub fn launch_shape_error(grid: (u32, u32, u32), block: (u32, u32, u32)) -> Option<String> {
    let grid = [grid.0, grid.1, grid.2];
    let block = [block.0, block.1, block.2];
    let threads = block.iter().map(|&b| u64::from(b)).product::<u64>();
    if grid.contains(&0) || block.contains(&0) {
        Some(format!("grid {grid:?} of blocks {block:?} is empty"))
    } else if grid.iter().zip(MAX_GRID).any(|(&g, max)| g > max) {
        Some(format!("grid {grid:?} exceeds CUDA's {MAX_GRID:?} blocks"))
    } else if block.iter().zip(MAX_BLOCK).any(|(&b, max)| b > max)
        || threads > u64::from(MAX_BLOCK_THREADS)
    {
        Some(format!(
            "block {block:?} exceeds CUDA's {MAX_BLOCK:?} threads ({MAX_BLOCK_THREADS} in all)"
        ))
    } else {
        None
    }
}

/// The batch bucket for `n` candidates: a power of two, at least 32.
pub fn bucket(n: usize) -> usize {
    n.max(32).next_power_of_two()
}

/// The GPU path's choices besides precision (kernels of the launch plan,
/// graph branches, tile tuning, request upload), each with an environment
/// variable (`PlanOptions::from_env`) so the GPU check can compare the
/// choices in one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    pub tiles: Tiles,
    /// Light gate, softmax, mixture, tower and logit of every task in one
    /// launch (`task_heads`; `MMOE_GPU_FUSED_HEADS=1`). Off by default: the
    /// gates in the grouped GEMMs, one mixture launch and the towers'
    /// grouped GEMMs (then with a logit copy per task) were faster at every
    /// batch on an H200 (2026-11-27, bench/RESULTS.md: 331 µs against 381
    /// µs at 1024 candidates of the benchmark model, 89 against 124 at one).
    pub fused_heads: bool,
    /// fp16 GEMM inputs (on by default): the producers of every buffer a
    /// tensor-core Linear reads as x (`half_copies`) also write it as fp16,
    /// and the GEMM copies it to shared memory by `cp.async`
    /// through a multi-stage pipeline (`linear_mma*h`), with the same
    /// results. `MMOE_GPU_HALF_X=0`: every GEMM converts the f32
    /// activations itself (the kernels timed on an H200).
    pub half_x: bool,
    /// With fp16 GEMM inputs, a buffer whose f32 values nothing reads
    /// keeps only its fp16 copy ([`f32_unread`]; on by default;
    /// `MMOE_GPU_HALF_ONLY=0`: every buffer keeps its f32 values, as timed
    /// on an H200 on 2026-11-27). The same logits either way.
    pub half_only: bool,
    /// Graph branches: the launches are captured on up to this many streams
    /// (`streams::stream_schedule`), so independent ones run concurrently
    /// (default 4). `MMOE_GPU_STREAMS=1`: one stream, the launches in order
    /// (as timed on an H200).
    pub streams: usize,
    /// Tile sizes timed on the device (default on): when a bucket's graph is
    /// captured, each grouped GEMM runs with each tile size it can take
    /// (`LaunchPlan::tile_choices`) and keeps the fastest; every choice
    /// gives the same logits. `MMOE_GPU_TUNE=0`: the plan's tiles;
    /// `MMOE_GPU_TUNE=log`: tuned, and the times printed to stderr;
    /// `MMOE_GPU_TUNE=choice=K`: choice K of each launch, untimed (tests).
    pub tune: Tune,
    /// The request's upload in pieces of this many bytes (default 1 MiB),
    /// each copied to the device as soon as it is written, so the copy of
    /// the front overlaps the packing of the rest; 0: one copy once the
    /// whole request is written. `MMOE_GPU_UPLOAD_CHUNK` (KiB). On an H200
    /// (2026-11-27) 256 KiB pieces slowed the packing itself in one run
    /// (1024 candidates: 139 µs against 105 µs with one copy); 1 MiB pieces
    /// and one copy differed by less than two runs of the same setting.
    pub upload_chunk: usize,
    /// The pinned staging buffer the request is packed into is
    /// write-combined (`MMOE_GPU_STAGING_WC=1`) rather than cached (the
    /// default, as `cudaMallocHost` and PyTorch's pinned memory). Stores to
    /// write-combined memory bypass the caches and go at the core's
    /// streaming-store rate. On the H200 machine (2026-11-27) packing 1.25
    /// MB into it took 97 µs (13 GB/s), as long as one memcpy of as many
    /// bytes into ordinary memory (102 µs; glibc's memcpy streams past the
    /// caches above a size set by the cache sizes), while 313 KB copied at
    /// 31 GB/s. The staging copies go in pieces below that size
    /// (`staging::COPY_PIECE`), which helps only with cached memory. Not yet
    /// timed on a GPU: the GPU check compares both.
    pub staging_write_combined: bool,
    /// With fp16 compute, the values of candidate-scope dense inputs whose
    /// transform is at most a clip are rounded to fp16 on the host and
    /// uploaded so (`staging::values_as_f16`; on by default;
    /// `MMOE_GPU_HALF_VALUES=0`: f32). The tensor-core GEMMs read them as
    /// fp16 either way; the kernels that read x0 in f32 (the SIMT GEMM of
    /// columns not aligned to 16, the DCN cross combine, MaskNet's
    /// LayerNorm, FinalMLP's feature gate) now see the rounded value, and a
    /// value beyond ±65504 without a clip is ±inf for them too, as it
    /// always was for the tensor cores. The benchmark model's request
    /// shrinks from 1,136 to 625 bytes a candidate (ids as u32 either way),
    /// which is what the host writes into pinned memory and the device
    /// reads. Ignored with fp32 compute.
    pub half_values: bool,
    /// Programmatic dependent launch (`MMOE_GPU_PDL=1`; compute capability
    /// 9.0 with the sm_90a cubin loaded, ignored otherwise): every kernel is
    /// launched so that it may start while the one before it on its
    /// stream still runs, and waits in its first instruction
    /// (`griddepcontrol.wait`) for it to finish; it then lets the next one
    /// launch. The launch and block scheduling of each kernel overlap the
    /// previous one's, which matters where a graph is a chain of short
    /// kernels (at 32 rows on an H200 a GEMM's SMs were busy for 3,000 of
    /// its 14,000 cycles). Off until timed on a GPU: the check compares.
    pub pdl: bool,
    /// Hopper's warpgroup MMA among the tile choices (`MMOE_GPU_WGMMA=1`;
    /// the sm_90a cubin only, ignored otherwise; off until checked and
    /// timed on a GPU): `linear_wgmma128x128` and `linear_wgmma64x128`,
    /// which the tuning times with the others and takes where faster.
    /// Their sums over K go in the same k16 steps in the same order as the
    /// mma.sync tiles'; whether the tensor cores add each step's 16
    /// products as mma.sync does, for logits identical at every choice, is
    /// for the GPU tests to show.
    pub wgmma: bool,
    /// MaskNet's LayerNorm after a Linear layer fused into the GEMM's
    /// epilogue (`MMOE_GPU_FUSED_NORM=1`; off until checked and timed on a
    /// GPU): every tile sums its rows' 16-column chunks, and the last tile
    /// of a band of rows to finish normalizes the band (`finish_norm` in
    /// `kernels/mmoe.cu`), where a separate `layer_norm` launch (a block
    /// per row) followed the GEMM: one dependent launch fewer per MaskNet
    /// block. The statistics are summed in another order than the
    /// separate kernel's (the logits differ in the last bits; the same at
    /// every tile size).
    pub fused_norm: bool,
    /// Each task's logit fused into the epilogue of its tower's last hidden
    /// layer (`MMOE_GPU_FUSED_LOGIT=1`; off until checked and timed on a
    /// GPU): every tile takes the dot products of its rows' 16-column
    /// chunks with the logit weights, and the last tile of a band of rows
    /// to finish adds them up (`finish_logit` in `kernels/mmoe.cu`), where
    /// a logit layer (a GEMM of one output column) followed: the last
    /// dependent launch of a call. The logit is summed from the hidden
    /// layer's f32 values, where the logit layer read their fp16 copy (the
    /// logits differ in the last bits; the same at every tile size).
    pub fused_logit: bool,
    /// Helper threads that pack large requests into the staging buffer
    /// with the calling thread (`MMOE_GPU_PACK_THREADS`; default 0: the
    /// calling thread alone). Started once per model on the device and
    /// shared by its sessions ([`crate::helper_threads`]); a request of
    /// [`super::staging::SHARED_MIN_BYTES`] or more past its descriptors is
    /// written in parts of [`super::staging::SHARED_PART`] bytes by the
    /// caller and whichever helpers join, then uploaded in one copy. Why:
    /// on the H200 machine (2026-11-27) one thread packed 1,024 candidates
    /// of the benchmark model in 97–139 µs, the target for a whole call
    /// being 100. Off until timed there: on the development machine's two
    /// vCPUs a parked helper woke 20–50 µs late, which cost more than it
    /// saved at 1,024 candidates (`bench/RESULTS.md`).
    pub pack_threads: usize,
    /// How long a packing helper spins after each request, watching for
    /// the next, before it parks (`MMOE_GPU_PACK_SPIN_US`; default 0). A
    /// spinning helper joins the next request at once; the cost is a core
    /// busy for that long after each call.
    pub pack_spin_us: u64,
    /// Which compiled kernels the driver loads: the cubin made for the
    /// device when there is one (default), else the PTX it compiles.
    /// `MMOE_GPU_KERNELS=ptx`: always the PTX.
    pub kernels: super::kernel_image::KernelForm,
}

/// Whether the runtime times the tile choices of a bucket's GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tune {
    Off,
    On,
    /// On, and each bucket's times and choices printed to stderr.
    Log,
    /// Choice `k` (modulo their number) of each launch's tile choices,
    /// untimed: how the GPU tests run every tile size.
    Choice(usize),
}

impl Default for PlanOptions {
    fn default() -> PlanOptions {
        PlanOptions {
            tiles: Tiles::Standard,
            fused_heads: false,
            half_x: true,
            half_only: true,
            streams: 4,
            tune: Tune::On,
            upload_chunk: 1 << 20,
            staging_write_combined: false,
            half_values: true,
            pdl: false,
            wgmma: false,
            fused_norm: false,
            fused_logit: false,
            pack_threads: 0,
            pack_spin_us: 0,
            kernels: super::kernel_image::KernelForm::Auto,
        }
    }
}

impl PlanOptions {
    /// Whether the inputs `staging::values_as_f16` allows go as fp16 with
    /// this precision.
    pub fn values_go_as_f16(&self, precision: Precision) -> bool {
        self.half_values && precision == Precision::F16
    }

    /// The defaults, changed by `MMOE_GPU_TILES` (`standard`, `wide`),
    /// `MMOE_GPU_FUSED_HEADS`, `MMOE_GPU_HALF_X`, `MMOE_GPU_HALF_ONLY`,
    /// `MMOE_GPU_STAGING_WC`,
    /// `MMOE_GPU_HALF_VALUES`, `MMOE_GPU_PDL`, `MMOE_GPU_WGMMA`, `MMOE_GPU_FUSED_NORM` and
    /// `MMOE_GPU_FUSED_LOGIT` (`0`, `1`),
    /// `MMOE_GPU_STREAMS` (1 to 8), `MMOE_GPU_TUNE` (`0`, `1`, `log`,
    /// `choice=K`), `MMOE_GPU_UPLOAD_CHUNK` (KiB), `MMOE_GPU_PACK_THREADS`
    /// (0 to 64), `MMOE_GPU_PACK_SPIN_US` (µs) and `MMOE_GPU_KERNELS`
    /// (`auto`, `ptx`); an unknown value is an error.
    pub fn from_env() -> Result<PlanOptions, String> {
        let mut options = PlanOptions::default();
        if let Ok(value) = std::env::var("MMOE_GPU_TILES") {
            options.tiles = Tiles::parse(&value).ok_or_else(|| {
                format!("MMOE_GPU_TILES is `{value}`: expected `standard` or `wide`")
            })?;
        }
        let switch = |name: &str, value: String| match value.as_str() {
            "0" => Ok(false),
            "1" => Ok(true),
            _ => Err(format!("{name} is `{value}`: expected `0` or `1`")),
        };
        let switches = [
            ("MMOE_GPU_FUSED_HEADS", &mut options.fused_heads),
            ("MMOE_GPU_HALF_X", &mut options.half_x),
            ("MMOE_GPU_HALF_ONLY", &mut options.half_only),
            ("MMOE_GPU_STAGING_WC", &mut options.staging_write_combined),
            ("MMOE_GPU_HALF_VALUES", &mut options.half_values),
            ("MMOE_GPU_PDL", &mut options.pdl),
            ("MMOE_GPU_WGMMA", &mut options.wgmma),
            ("MMOE_GPU_FUSED_NORM", &mut options.fused_norm),
            ("MMOE_GPU_FUSED_LOGIT", &mut options.fused_logit),
        ];
        for (name, field) in switches {
            if let Ok(value) = std::env::var(name) {
                *field = switch(name, value)?;
            }
        }
        if let Ok(value) = std::env::var("MMOE_GPU_TUNE") {
            options.tune = match value.as_str() {
                "0" => Tune::Off,
                "1" => Tune::On,
                "log" => Tune::Log,
                _ => match value.strip_prefix("choice=").map(str::parse) {
                    Some(Ok(k)) => Tune::Choice(k),
                    _ => {
                        return Err(format!(
                            "MMOE_GPU_TUNE is `{value}`: expected `0`, `1`, `log` or `choice=K`"
                        ))
                    }
                },
            };
        }
        if let Ok(value) = std::env::var("MMOE_GPU_UPLOAD_CHUNK") {
            options.upload_chunk = value
                .parse::<usize>()
                .ok()
                .and_then(|kib| kib.checked_mul(1024))
                .ok_or_else(|| {
                    format!("MMOE_GPU_UPLOAD_CHUNK is `{value}`: expected KiB (0: one copy)")
                })?;
        }
        if let Ok(value) = std::env::var("MMOE_GPU_KERNELS") {
            options.kernels = super::kernel_image::KernelForm::parse(&value).ok_or_else(|| {
                format!("MMOE_GPU_KERNELS is `{value}`: expected `auto` or `ptx`")
            })?;
        }
        if let Ok(value) = std::env::var("MMOE_GPU_PACK_THREADS") {
            options.pack_threads =
                value.parse().ok().filter(|n| *n <= 64).ok_or_else(|| {
                    format!("MMOE_GPU_PACK_THREADS is `{value}`: expected 0 to 64")
                })?;
        }
        if let Ok(value) = std::env::var("MMOE_GPU_PACK_SPIN_US") {
            options.pack_spin_us = value
                .parse()
                .ok()
                .filter(|us| *us <= 1_000_000)
                .ok_or_else(|| {
                    format!("MMOE_GPU_PACK_SPIN_US is `{value}`: expected 0 to 1000000 (µs)")
                })?;
        }
        if let Ok(value) = std::env::var("MMOE_GPU_STREAMS") {
            options.streams = value
                .parse()
                .ok()
                .filter(|n| (1..=8).contains(n))
                .ok_or_else(|| format!("MMOE_GPU_STREAMS is `{value}`: expected 1 to 8"))?;
        }
        Ok(options)
    }
}

/// Which tensor-core tiles the Linear layers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiles {
    /// 32×64 tiles (4 warps) for buckets of up to 32 rows, 64×64 above: the
    /// kernels measured on an H200.
    Standard,
    /// As `Standard`, and 128×128 tiles (8 warps) for buckets of `from_rows`
    /// rows or more. Timed on an H200 (2026-11-27) and slower than `Standard`
    /// at 1024 candidates, so opt-in: `MMOE_GPU_TILES=wide` selects it (from
    /// 512 rows) so the GPU check can compare both.
    Wide { from_rows: usize },
}

impl Tiles {
    /// `standard` or `wide` (the values of `MMOE_GPU_TILES`).
    pub fn parse(text: &str) -> Option<Tiles> {
        match text {
            "standard" => Some(Tiles::Standard),
            "wide" => Some(Tiles::Wide { from_rows: 512 }),
            _ => None,
        }
    }

    /// The tensor-core kernel for a bucket, over fp16 copies of x (`half`)
    /// or the f32 activations.
    fn mma_kernel(self, capacity: usize, half: bool) -> Kernel {
        match (self, half) {
            (Tiles::Wide { from_rows }, false) if capacity >= from_rows => Kernel::LinearMma128,
            (Tiles::Wide { from_rows }, true) if capacity >= from_rows => Kernel::LinearMma128H,
            (_, false) if capacity <= 32 => Kernel::LinearMma32,
            (_, true) if capacity <= 32 => Kernel::LinearMma32H,
            (_, false) => Kernel::LinearMma64,
            (_, true) => Kernel::LinearMma64H,
        }
    }
}

/// A tensor-core kernel's output tile (rows, columns) and threads per block.
pub fn mma_tile(kernel: Kernel) -> Option<(usize, usize, u32)> {
    match kernel {
        Kernel::LinearMma32
        | Kernel::LinearMma32H
        | Kernel::LinearMma32K64H
        | Kernel::LinearMma32x64S12H => Some((32, 64, 128)),
        Kernel::LinearMma64
        | Kernel::LinearMma64H
        | Kernel::LinearMma64K64H
        | Kernel::LinearMma64x64S8H => Some((64, 64, 128)),
        Kernel::LinearMma128 | Kernel::LinearMma128H | Kernel::LinearMma128x128S4H => {
            Some((128, 128, 256))
        }
        Kernel::LinearMma128x128W4S4H => Some((128, 128, 128)),
        Kernel::LinearWgmma128x128 => Some((128, 128, 256)),
        Kernel::LinearWgmma64x128 => Some((64, 128, 128)),
        Kernel::LinearMma128x64H | Kernel::LinearMma128x64S6H => Some((128, 64, 128)),
        Kernel::LinearMma64x128H => Some((64, 128, 128)),
        Kernel::LinearMma32x32H | Kernel::LinearMma32x32K64H | Kernel::LinearMma32x32S16H => {
            Some((32, 32, 128))
        }
        _ => None,
    }
}

/// The dynamic shared memory a kernel's launch gives it, in bytes: the
/// deep-pipeline tiles keep their stages there (`linear_mma_hd` in
/// kernels/mmoe.cu: stages · (BM + BN) · (BK + 8) halves); every other
/// kernel has only static shared memory. The emulator checks the kernels'
/// own sizes against these.
pub fn dynamic_shared_bytes(kernel: Kernel) -> u32 {
    let stages_of = |stages: u32, bm: u32, bn: u32, bk: u32| stages * (bm + bn) * (bk + 8) * 2;
    match kernel {
        Kernel::LinearMma128x128S4H | Kernel::LinearMma128x128W4S4H => stages_of(4, 128, 128, 32),
        Kernel::LinearMma128x64S6H => stages_of(6, 128, 64, 32),
        Kernel::LinearMma32x32S16H => stages_of(16, 32, 32, 32),
        Kernel::LinearMma32x64S12H => stages_of(12, 32, 64, 32),
        Kernel::LinearMma64x64S8H => stages_of(8, 64, 64, 32),
        // `linear_wgmma`: stages · (BM + BN) · 32 halves, no padding.
        Kernel::LinearWgmma128x128 => 4 * (128 + 128) * 32 * 2,
        Kernel::LinearWgmma64x128 => 6 * (64 + 128) * 32 * 2,
        _ => 0,
    }
}

/// Blocks of a Linear problem of `rows` × `n` under `kernel`. Counts past
/// u32 (terabytes of outputs) saturate, as do the sums of a group's counts
/// in its tile table: `check_launch_shapes` refuses any grid past 2³¹ − 1.
pub fn linear_blocks(kernel: Kernel, rows: usize, n: usize) -> u32 {
    let (bm, bn, _) = mma_tile(kernel).unwrap_or((16, 16, 256));
    let blocks = rows.div_ceil(bm).saturating_mul(n.div_ceil(bn));
    u32::try_from(blocks).unwrap_or(u32::MAX)
}

/// The buffers a group of launches reads and writes (sorted, once each) and
/// the launches it stands for.
fn merged<'a>(launches: impl Iterator<Item = &'a Launch>) -> (Vec<BufId>, Vec<BufId>, Vec<usize>) {
    let (mut reads, mut writes, mut origin) = (Vec::new(), Vec::new(), Vec::new());
    for launch in launches {
        reads.extend(&launch.reads);
        writes.extend(&launch.writes);
        origin.extend(&launch.origin);
    }
    reads.sort_unstable();
    reads.dedup();
    writes.sort_unstable();
    writes.dedup();
    (reads, writes, origin)
}

pub fn is_linear(kernel: Kernel) -> bool {
    matches!(kernel, Kernel::LinearSimtF32 | Kernel::LinearSimtF16) || mma_tile(kernel).is_some()
}

/// The half-precision (`x16`) form of the tensor-core kernels.
pub fn reads_half_x(kernel: Kernel) -> bool {
    matches!(
        kernel,
        Kernel::LinearMma32H
            | Kernel::LinearMma64H
            | Kernel::LinearMma128H
            | Kernel::LinearMma128x64H
            | Kernel::LinearMma64x128H
            | Kernel::LinearMma32K64H
            | Kernel::LinearMma64K64H
            | Kernel::LinearMma32x32H
            | Kernel::LinearMma32x32K64H
            | Kernel::LinearMma128x128S4H
            | Kernel::LinearMma128x128W4S4H
            | Kernel::LinearMma128x64S6H
            | Kernel::LinearMma32x32S16H
            | Kernel::LinearMma32x64S12H
            | Kernel::LinearMma64x64S8H
            | Kernel::LinearWgmma128x128
            | Kernel::LinearWgmma64x128
    )
}

/// The kernels only the sm_90a cubin holds (Hopper's warpgroup MMA); the
/// other kernel images keep them as empty entries, never launched.
pub fn needs_sm90a(kernel: Kernel) -> bool {
    matches!(
        kernel,
        Kernel::LinearWgmma128x128 | Kernel::LinearWgmma64x128
    )
}

/// Which buffers get an fp16 copy: those that a tensor-core Linear of
/// `steps` reads as x (ranges at multiples of 16, columns from a multiple
/// of 8: 16-byte rows for `cp.async`) and that only steps able to write the
/// copy write (features, Linear epilogues, LayerNorm, gathers and copies,
/// FinalMLP feature gates and outer products, mixtures; a bilinear
/// output is f32 only, and its readers convert as before).
fn half_copies<'a>(buffers: usize, steps: impl Iterator<Item = &'a Step>) -> Vec<bool> {
    let mut read_as_x = vec![false; buffers];
    let mut other_writer = vec![false; buffers];
    for step in steps {
        if let Step::Linear {
            input, k_ranges, ..
        } = step
        {
            let aligned = k_ranges
                .as_deref()
                .is_none_or(|r| r.iter().all(|r| r.start % 16 == 0));
            if aligned && input.offset % 8 == 0 {
                read_as_x[input.buf] = true;
            }
        }
        if let (Step::Bilinear { .. }, Some(out)) = (step, written(step)) {
            other_writer[out] = true;
        }
    }
    read_as_x
        .iter()
        .zip(&other_writer)
        .map(|(&read, &other)| read && !other)
        .collect()
}

/// Per buffer, whether its f32 values go unread, so that it needs only
/// its fp16 copy (`wanted`: the buffers given one). That is a candidate
/// buffer that only Linear layers without a LayerNorm after them,
/// FinalMLP's outer products or the mixtures write (their kernels skip a
/// null f32 output), and that only tensor-core GEMMs read, as x, through
/// the copy (the condition of [`half_copies`]): an MLP's hidden layers,
/// the last cross layer of a stacked DCN, the towers' inputs and hidden
/// layers, the outer products. A Linear that reads it as `add`, `scale`
/// or `shift`, and every other step, reads f32, and so do the steps fused
/// into the task heads or into an epilogue (`fused`: indices of candidate
/// steps; a fused logit layer's epilogue reads the hidden layer's f32
/// values). Writing only the copy saves the f32 stores (4 of the 6 bytes
/// an element) and their memory.
fn f32_unread(program: &Program, wanted: &[bool], fused: &dyn Fn(usize) -> bool) -> Vec<bool> {
    let buffers = &program.buffers;
    let mut unread: Vec<bool> = (0..buffers.len())
        .map(|b| wanted[b] && !buffers[b].per_request)
        .collect();
    let request = program.request_steps.iter().map(|s| (false, s));
    let candidate = program.candidate_steps.iter().enumerate();
    let steps = request.chain(candidate.map(|(i, s)| (fused(i), s)));
    for (in_head, step) in steps {
        if let Some(out) = written(step) {
            let plain = matches!(
                step,
                Step::Linear { norm: None, .. } | Step::OuterHeads { .. } | Step::Mixture { .. }
            );
            if !plain || in_head {
                unread[out] = false;
            }
        }
        match step {
            Step::Linear {
                input,
                k_ranges,
                add,
                scale,
                shift,
                ..
            } => {
                let aligned = k_ranges
                    .as_deref()
                    .is_none_or(|r| r.iter().all(|r| r.start % 16 == 0));
                if in_head || !aligned || input.offset % 8 != 0 {
                    unread[input.buf] = false;
                }
                for b in [add, scale, shift].into_iter().flatten() {
                    unread[*b] = false;
                }
            }
            _ => {
                for b in read(step) {
                    unread[b] = false;
                }
            }
        }
    }
    unread
}

const BLOCK: u32 = 128;

fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}

/// One task's gate (its last Linear layer), softmax, mixture, tower and
/// logit, fused into the `task_heads` launch.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TaskHead {
    gate: Option<BufId>,
    /// The gate's last Linear layer (a light gate's only one), computed in
    /// the head; `None`: a gate buffer computed before, or no gate.
    gate_linear: Option<GateLinear>,
    experts: Vec<BufId>,
    column: usize,
    /// Tower layers, the last one the logit.
    layers: Vec<HeadLayer>,
    /// The candidate steps it replaces (gate Linear, mixture, tower, output).
    steps: Vec<usize>,
    /// The buffers those steps wrote (no longer written: nothing else may
    /// read them).
    writes: Vec<BufId>,
}

/// A gate's last Linear layer (`Step::Linear` without activation, scale,
/// shift or norm): `W · input[ranges] + bias + add`. Its input is x0 (or
/// its gathered subset) for a light gate, the last hidden layer for an MLP
/// gate.
#[derive(Clone, Debug, PartialEq, Eq)]
struct GateLinear {
    input: View,
    ranges: Vec<std::ops::Range<usize>>,
    weight: TensorId,
    ldw: usize,
    bias: Option<TensorId>,
    /// The request part of a split gate (a per-request buffer).
    add: Option<BufId>,
}

/// The buffers a step reads.
fn read(step: &Step) -> Vec<BufId> {
    match step {
        Step::RequestFeatures { .. } | Step::Constant { .. } => Vec::new(),
        Step::CandidateFeatures { request, .. } => vec![*request],
        Step::Linear {
            input,
            add,
            scale,
            shift,
            ..
        } => [Some(input.buf), *add, *scale, *shift]
            .into_iter()
            .flatten()
            .collect(),
        Step::LayerNorm { input, .. } => vec![input.buf],
        Step::FeatureGate { g, x0, .. } => vec![*g, *x0],
        Step::Gather { input, .. } | Step::Copy { input, .. } => vec![*input],
        Step::OuterHeads { o1, o2, .. } => vec![*o1, *o2],
        Step::Bilinear { o1, o2, wx, wy, .. } => vec![*o1, *o2, *wx, *wy],
        Step::Mixture { gate, experts, .. } => gate.iter().chain(experts).copied().collect(),
        Step::Output { input, .. } => vec![*input],
    }
}

/// Per buffer, the task whose logit column it can be written to directly:
/// a candidate buffer of width 1 that one Linear writes whole (no
/// LayerNorm after it) and only that task's `Step::Output` reads. The
/// Linear then writes the bucket's logits (row stride: the tasks) and the
/// copy launch goes.
fn logit_writers<'a>(
    program: &Program,
    steps: impl Iterator<Item = &'a Step> + Clone,
) -> Vec<Option<usize>> {
    let mut columns = vec![None; program.buffers.len()];
    for step in steps.clone() {
        let Step::Output { input, task } = step else {
            continue;
        };
        let buffer = &program.buffers[*input];
        let readers = steps.clone().filter(|s| read(s).contains(input)).count();
        let writers: Vec<&Step> = steps
            .clone()
            .filter(|s| written(s) == Some(*input))
            .collect();
        let direct = matches!(
            writers[..],
            [Step::Linear { n: 1, norm: None, out, .. }] if out.offset == 0
        );
        if direct && readers == 1 && buffer.width == 1 && !buffer.per_request {
            columns[*input] = Some(*task);
        }
    }
    columns
}

/// A task's logit layer fused into the epilogue of its tower's last hidden
/// layer (`PlanOptions::fused_logit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LogitFusion {
    /// Candidate steps: the logit layer and the output of its logit.
    logit: usize,
    output: usize,
    /// The hidden layer's output, which its epilogue turns into the logit.
    hidden_buf: BufId,
    task: usize,
    weight: TensorId,
    bias: Option<TensorId>,
}

/// The logit layers that can be fused into the layer before them: a task's
/// output written by a Linear layer of one column and nothing else (no
/// activation, shift or LayerNorm), over the whole of a candidate buffer
/// that one Linear layer without a LayerNorm writes whole and that only
/// the logit layer reads. Towers without hidden layers (the logit layer
/// reads the mixture) keep their logit layers.
fn logit_fusions(program: &Program) -> Vec<LogitFusion> {
    let steps = &program.candidate_steps;
    let all = || program.request_steps.iter().chain(steps);
    let readers = |b: BufId| all().filter(|s| read(s).contains(&b)).count();
    let writers = |b: BufId| all().filter(|s| written(s) == Some(b)).count();
    let writer = |b: BufId| steps.iter().position(|s| written(s) == Some(b));
    let mut fusions = Vec::new();
    for (output, step) in steps.iter().enumerate() {
        let Step::Output {
            input: logit_buf,
            task,
        } = step
        else {
            continue;
        };
        let Some(logit) = writer(*logit_buf) else {
            continue;
        };
        let Step::Linear {
            input,
            k_ranges: None,
            weight,
            n: 1,
            bias,
            add: None,
            act: Act::None,
            scale: None,
            shift: None,
            norm: None,
            out,
        } = &steps[logit]
        else {
            continue;
        };
        let Some(hidden) = writer(input.buf) else {
            continue;
        };
        let Step::Linear {
            n,
            norm: None,
            out: hidden_out,
            ..
        } = &steps[hidden]
        else {
            continue;
        };
        let buffer = &program.buffers[input.buf];
        let whole = input.offset == 0
            && input.width == buffer.width
            && hidden_out.offset == 0
            && *n == buffer.width
            && out.offset == 0
            && program.buffers[*logit_buf].width == 1;
        let alone = readers(*logit_buf) == 1
            && writers(*logit_buf) == 1
            && readers(input.buf) == 1
            && writers(input.buf) == 1;
        let per_candidate = !buffer.per_request && !program.buffers[*logit_buf].per_request;
        if whole && alone && per_candidate {
            fusions.push(LogitFusion {
                logit,
                output,
                hidden_buf: input.buf,
                task: *task,
                weight: *weight,
                bias: *bias,
            });
        }
    }
    fusions
}

/// The buffer a step writes.
fn written(step: &Step) -> Option<BufId> {
    match step {
        Step::RequestFeatures { out } | Step::CandidateFeatures { out, .. } => Some(*out),
        Step::Linear { out, .. } | Step::LayerNorm { out, .. } | Step::Copy { out, .. } => {
            Some(out.buf)
        }
        Step::FeatureGate { out, .. }
        | Step::Gather { out, .. }
        | Step::Constant { out, .. }
        | Step::OuterHeads { out, .. }
        | Step::Bilinear { out, .. }
        | Step::Mixture { out, .. } => Some(*out),
        Step::Output { .. } => None,
    }
}

/// The Linear step that writes `gate` (whole, and alone), if it can run in
/// the head.
fn gate_linear(
    program: &Program,
    gate: BufId,
    experts: usize,
    weight: &dyn Fn(TensorId) -> DeviceWeight,
) -> Option<(usize, GateLinear)> {
    let writes_gate = |s: &Step| written(s) == Some(gate);
    if program.request_steps.iter().any(writes_gate) {
        return None;
    }
    let writers: Vec<usize> = (0..program.candidate_steps.len())
        .filter(|&i| writes_gate(&program.candidate_steps[i]))
        .collect();
    let [at] = writers[..] else { return None };
    let Step::Linear {
        input,
        k_ranges,
        weight: w,
        n,
        bias,
        add,
        act: Act::None,
        scale: None,
        shift: None,
        norm: None,
        out,
    } = &program.candidate_steps[at]
    else {
        return None;
    };
    let whole = out.offset == 0 && out.width == program.buffers[gate].width;
    let add_fits = add.is_none_or(|a| program.buffers[a].per_request);
    if !whole || *n != experts || !add_fits {
        return None;
    }
    let ranges = k_ranges.clone().unwrap_or_else(|| vec![0..input.width]);
    Some((
        at,
        GateLinear {
            input: *input,
            ranges,
            weight: *w,
            ldw: weight(*w).ldw,
            bias: *bias,
            add: *add,
        },
    ))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HeadLayer {
    weight: TensorId,
    ldw: usize,
    bias: Option<TensorId>,
    n: usize,
    k: usize,
    act: Act,
}

/// Limits of the `task_heads` kernel (`kernels/mmoe.cu`).
const HEAD_ROWS: usize = 8;
const HEAD_WIDTH: usize = 512;
const HEAD_EXPERTS: usize = 32;
const HEAD_THREADS: u32 = 256;

/// Every task's mixture → tower → output chain as a fused head, or none
/// when a task's chain is not the plain one (`Step::Mixture`, then Linear
/// layers each reading the whole previous buffer, relu on all but the last,
/// which has one output, then `Step::Output`) or exceeds the kernel's limits.
fn task_heads(program: &Program, weight: &dyn Fn(TensorId) -> DeviceWeight) -> Vec<TaskHead> {
    let steps = &program.candidate_steps;
    let mut heads = Vec::new();
    let mut i = 0;
    while i < steps.len() {
        let Step::Mixture { gate, experts, out } = &steps[i] else {
            i += 1;
            continue;
        };
        let start = i;
        let (mut input, mut width) = (*out, program.buffers[*out].width);
        let gate_fits = gate.is_none_or(|g| program.buffers[g].width == experts.len());
        let experts_fit = experts.iter().all(|&e| program.buffers[e].width == width);
        let fits = experts.len() <= HEAD_EXPERTS && width <= HEAD_WIDTH && gate_fits && experts_fit;
        let mut writes = vec![*out];
        let mut layers = Vec::new();
        i += 1;
        while let Some(Step::Linear {
            input: view,
            k_ranges: None,
            weight: w,
            n,
            bias,
            add: None,
            act,
            scale: None,
            shift: None,
            norm: None,
            out,
        }) = steps.get(i)
        {
            let whole = view.buf == input && view.offset == 0 && view.width == width;
            let whole_out = out.offset == 0 && out.width == program.buffers[out.buf].width;
            let ldw = weight(*w).ldw;
            if !whole || !whole_out || *n > HEAD_WIDTH || ldw < width {
                return Vec::new();
            }
            layers.push(HeadLayer {
                weight: *w,
                ldw,
                bias: *bias,
                n: *n,
                k: width,
                act: *act,
            });
            (input, width) = (out.buf, *n);
            writes.push(out.buf);
            i += 1;
        }
        let Some(Step::Output { input: logit, task }) = steps.get(i) else {
            return Vec::new();
        };
        let mut replaced: Vec<usize> = (start..i + 1).collect();
        let gate_linear = gate.and_then(|g| gate_linear(program, g, experts.len(), weight));
        if let (Some(g), Some((at, _))) = (gate, &gate_linear) {
            replaced.push(*at);
            writes.push(*g);
        }
        let last = layers.len().checked_sub(1);
        let acts_fit = layers.iter().enumerate().all(|(j, l)| {
            l.act
                == if Some(j) == last {
                    Act::None
                } else {
                    Act::Relu
                }
        });
        if *logit != input || !fits || !acts_fit || width != 1 || layers.is_empty() {
            return Vec::new();
        }
        heads.push(TaskHead {
            gate: *gate,
            gate_linear: gate_linear.map(|(_, g)| g),
            experts: experts.clone(),
            column: *task,
            layers,
            steps: replaced,
            writes,
        });
        i += 1;
    }
    // Every task, over the same experts (one table of experts).
    let all_same = heads.windows(2).all(|w| w[0].experts == w[1].experts);
    if heads.len() != program.tasks || !all_same {
        return Vec::new();
    }
    heads
}

impl LaunchPlan {
    pub fn new(
        program: &Program,
        capacity: usize,
        precision: Precision,
        options: PlanOptions,
        weight: &dyn Fn(TensorId) -> DeviceWeight,
    ) -> LaunchPlan {
        let heads = if options.fused_heads {
            task_heads(program, weight)
        } else {
            Vec::new()
        };
        let fused_logits = if options.fused_logit && heads.is_empty() {
            logit_fusions(program)
        } else {
            Vec::new()
        };
        // Candidate steps that do not run as launches of their own: those of
        // the task heads, and the logit layers fused into an epilogue (with
        // their outputs).
        let fused = |i: usize| {
            heads.iter().any(|h| h.steps.contains(&i))
                || fused_logits.iter().any(|f| f.logit == i || f.output == i)
        };
        let lowered = || {
            let candidate = program.candidate_steps.iter().enumerate();
            let candidate = candidate.filter(move |(i, _)| !fused(*i)).map(|(_, s)| s);
            program.request_steps.iter().chain(candidate)
        };
        let wanted = if precision == Precision::F16 && options.half_x {
            half_copies(program.buffers.len(), lowered())
        } else {
            vec![false; program.buffers.len()]
        };
        let f32_unread = if options.half_only {
            f32_unread(program, &wanted, &fused)
        } else {
            vec![false; program.buffers.len()]
        };
        let mut placements = Vec::with_capacity(program.buffers.len());
        let mut offset = 0;
        for (buf, buffer) in program.buffers.iter().enumerate() {
            let rows = if buffer.per_request { 1 } else { capacity };
            placements.push(Placement {
                offset,
                ld: if buffer.per_request { 0 } else { buffer.width },
                rows,
            });
            // 64-element (256-byte) alignment for every buffer; none for
            // f32 values nothing reads.
            if !f32_unread[buf] {
                offset += (rows * buffer.width).div_ceil(64) * 64;
            }
        }
        // The fp16 copies, after the f32 buffers: rows of a multiple of 8
        // halves (16 bytes), 256-byte aligned.
        let mut halves = vec![None; program.buffers.len()];
        if precision == Precision::F16 && options.half_x {
            for (buf, buffer) in program.buffers.iter().enumerate() {
                if !wanted[buf] {
                    continue;
                }
                let rows = if buffer.per_request { 1 } else { capacity };
                let stride = buffer.width.next_multiple_of(8);
                halves[buf] = Some(Placement {
                    offset,
                    ld: if buffer.per_request { 0 } else { stride },
                    rows,
                });
                offset += (rows * stride).div_ceil(2).div_ceil(64) * 64;
            }
        }
        let logit_columns = logit_writers(program, lowered());
        let mut plan = LaunchPlan {
            capacity,
            placements,
            f32_unread,
            halves,
            arena_len: offset.max(64),
            ranges: Vec::new(),
            pointers: Vec::new(),
            problems: Vec::new(),
            launches: Vec::new(),
            streams: StreamSchedule::default(),
            tile_choices: Vec::new(),
            tiles: options.tiles,
            fused_norm: options.fused_norm,
            fused_logits: fused_logits.clone(),
            pending: Vec::new(),
            logit_columns,
            #[cfg(test)]
            unscheduled: Vec::new(),
        };
        for step in lowered() {
            plan.lower(program, step, precision, weight);
        }
        if !heads.is_empty() {
            // The program lowers each task's chain on its own; should a step
            // outside it ever read one of its buffers, plan the plain launches.
            let fused_writes: Vec<BufId> = heads.iter().flat_map(|h| h.writes.clone()).collect();
            let read_elsewhere = plan
                .pending
                .iter()
                .any(|p| p.launch.reads.iter().any(|b| fused_writes.contains(b)));
            if read_elsewhere {
                let plain = PlanOptions {
                    fused_heads: false,
                    ..options
                };
                return LaunchPlan::new(program, capacity, precision, plain, weight);
            }
            plan.push_task_heads(program, &heads, precision);
        }
        for (i, p) in plan.pending.iter_mut().enumerate() {
            p.launch.origin = vec![i];
        }
        #[cfg(test)]
        {
            plan.unscheduled = plan.pending.iter().map(|p| p.launch.clone()).collect();
        }
        plan.schedule(program.buffers.len());
        plan.streams = stream_schedule(&plan.launches, options.streams);
        plan.tile_choices = (0..plan.launches.len())
            .map(|i| plan.push_tile_choices(i))
            .collect();
        plan
    }

    /// Orders the pending launches by dependency level (a launch runs after
    /// every earlier launch that writes what it reads, or reads or writes
    /// what it writes) and merges the Linear problems of a level that share
    /// a kernel into one launch.
    fn schedule(&mut self, buffers: usize) {
        let pending = std::mem::take(&mut self.pending);
        // Per buffer: the first level at which it may be read (after its last
        // writer) and written (after its last reader and writer).
        let mut readable = vec![0usize; buffers];
        let mut writable = vec![0usize; buffers];
        let mut levels = Vec::with_capacity(pending.len());
        for p in &pending {
            let level = p
                .launch
                .reads
                .iter()
                .map(|&b| readable[b])
                .chain(p.launch.writes.iter().map(|&b| writable[b]))
                .max()
                .unwrap_or(0);
            for &b in &p.launch.reads {
                writable[b] = writable[b].max(level + 1);
            }
            for &b in &p.launch.writes {
                readable[b] = level + 1;
                writable[b] = level + 1;
            }
            levels.push(level);
        }
        let depth = levels.iter().max().map_or(0, |l| l + 1);
        let mut by_level: Vec<Vec<Pending>> = (0..depth).map(|_| Vec::new()).collect();
        for (p, level) in pending.into_iter().zip(levels) {
            by_level[level].push(p);
        }
        type Member = (LinearLaunch, u32, Launch);
        for level in by_level {
            // Grouped Linear launches first, in order of first appearance.
            let mut groups: Vec<(Kernel, Vec<Member>)> = Vec::new();
            let mut mixtures: Vec<Vec<(MixtureTask, Launch)>> = Vec::new();
            let mut others = Vec::new();
            for p in level {
                match p.group {
                    Some(Group::Linear(problem, blocks)) => {
                        let member = (*problem, blocks, p.launch);
                        match groups.iter_mut().find(|(k, _)| *k == member.2.kernel) {
                            Some((_, members)) => members.push(member),
                            None => groups.push((member.2.kernel, vec![member])),
                        }
                    }
                    Some(Group::Mixture(task)) => {
                        let same = |m: &&mut Vec<(MixtureTask, Launch)>| {
                            m[0].0.experts == task.experts && m[0].0.h == task.h
                        };
                        match mixtures.iter_mut().find(same) {
                            Some(members) => members.push((task, p.launch)),
                            None => mixtures.push(vec![(task, p.launch)]),
                        }
                    }
                    None => others.push(p.launch),
                }
            }
            for (kernel, members) in groups {
                self.push_group(kernel, members);
            }
            for members in mixtures {
                self.push_mixture(members);
            }
            self.launches.extend(others);
        }
    }

    /// A buffer's (pointer, row stride) in the pointer table; (0, 0) for none.
    fn push_buffer_entry(&mut self, buf: Option<BufId>) {
        match buf {
            Some(b) => {
                self.pointers.push(self.pointer_entry(b, 0));
                self.pointers
                    .push(PointerEntry::Value(self.placements[b].ld as u64));
            }
            None => self.pointers.extend([PointerEntry::Value(0); 2]),
        }
    }

    /// The pointer-table entry of column `column` of buffer `b`'s f32
    /// values: null for a buffer without them (`f32_unread` keeps those of
    /// every reader of a pointer table; a null read faults, where an
    /// offset past it would read another buffer).
    fn pointer_entry(&self, b: BufId, column: usize) -> PointerEntry {
        match self.at(b) {
            Loc::Arena(offset) => PointerEntry::Arena(offset + column),
            _ => PointerEntry::Value(0),
        }
    }

    /// One launch for the mixtures of several tasks over the same experts.
    /// Its pointer table holds (pointer, ld) of each expert, then of each
    /// task its gate (pointer 0 without one), its output and the output's
    /// fp16 copy (pointer 0 without one; ld in halves).
    fn push_mixture(&mut self, members: Vec<(MixtureTask, Launch)>) {
        let table = self.pointers.len();
        let first = &members[0].0;
        let (h, experts) = (first.h, first.experts.clone());
        for &e in &experts {
            self.push_buffer_entry(Some(e));
        }
        let mut rows = 1;
        for (task, _) in &members {
            self.push_buffer_entry(task.gate);
            // Null where only the fp16 copy is read (`f32_unread`).
            self.pointers.push(self.pointer_entry(task.out, 0));
            self.pointers.push(PointerEntry::Value(task.ldo as u64));
            match self.halves[task.out] {
                Some(half) => self.pointers.extend([
                    PointerEntry::Arena(half.offset),
                    PointerEntry::Value(half.ld as u64),
                ]),
                None => self.pointers.extend([PointerEntry::Value(0); 2]),
            }
            rows = rows.max(self.placements[task.out].rows);
        }
        let (reads, writes, origin) = merged(members.iter().map(|m| &m.1));
        self.launches.push(Launch {
            kernel: Kernel::Mixture,
            grid: (rows as u32, blocks(h, BLOCK as usize), 1),
            block: (BLOCK, 1, 1),
            args: vec![
                Arg::Ptr(Loc::Pointers(table)),
                Arg::I32(experts.len() as i32),
                Arg::I32(members.len() as i32),
                Arg::I32(h as i32),
                Arg::I32(rows as i32),
            ],
            reads,
            writes,
            problems: 0..0,
            origin,
        });
    }

    /// The `task_heads` launch: its table is experts (pointer, ld), the
    /// word offset of each task's descriptor, then the descriptors.
    fn push_task_heads(&mut self, program: &Program, heads: &[TaskHead], precision: Precision) {
        let table = self.pointers.len();
        let experts = &heads[0].experts;
        for &e in experts {
            self.push_buffer_entry(Some(e));
        }
        let offsets_at = self.pointers.len();
        self.pointers
            .extend(heads.iter().map(|_| PointerEntry::Value(0)));
        let mut reads: Vec<BufId> = experts.clone();
        let tensor_or_0 =
            |t: Option<TensorId>| t.map_or(PointerEntry::Value(0), PointerEntry::Tensor);
        for (t, head) in heads.iter().enumerate() {
            self.pointers[offsets_at + t] =
                PointerEntry::Value((self.pointers.len() - table) as u64);
            // A gate computed here has no buffer: pointer 0, as without a gate.
            let gate_buffer = head.gate.filter(|_| head.gate_linear.is_none());
            self.push_buffer_entry(gate_buffer);
            reads.extend(gate_buffer);
            self.pointers.push(PointerEntry::Value(head.column as u64));
            self.pointers
                .push(PointerEntry::Value(head.layers.len() as u64));
            for layer in &head.layers {
                self.pointers.push(PointerEntry::Tensor(layer.weight));
                self.pointers.push(PointerEntry::Value(layer.ldw as u64));
                self.pointers.push(tensor_or_0(layer.bias));
                self.pointers.push(PointerEntry::Value(layer.n as u64));
                self.pointers.push(PointerEntry::Value(layer.k as u64));
            }
            let Some(g) = &head.gate_linear else {
                self.pointers.push(PointerEntry::Value(0));
                continue;
            };
            self.pointers.push(PointerEntry::Tensor(g.weight));
            self.pointers.push(PointerEntry::Value(g.ldw as u64));
            self.pointers.push(tensor_or_0(g.bias));
            self.push_buffer_entry(g.add);
            let x = self.placements[g.input.buf];
            self.pointers
                .push(self.pointer_entry(g.input.buf, g.input.offset));
            self.pointers.push(PointerEntry::Value(x.ld as u64));
            self.pointers
                .push(PointerEntry::Value(g.ranges.len() as u64));
            for r in &g.ranges {
                self.pointers.push(PointerEntry::Value(r.start as u64));
                self.pointers.push(PointerEntry::Value(r.end as u64));
            }
            reads.push(g.input.buf);
            reads.extend(g.add);
        }
        reads.sort_unstable();
        reads.dedup();
        let rows = self.capacity;
        let kernel = match precision {
            Precision::F16 => Kernel::TaskHeadsF16,
            Precision::F32 => Kernel::TaskHeadsF32,
        };
        self.push(
            kernel,
            (blocks(rows, HEAD_ROWS), heads.len() as u32, 1),
            (HEAD_THREADS, 1, 1),
            vec![
                Arg::Ptr(Loc::Pointers(table)),
                Arg::I32(experts.len() as i32),
                Arg::I32(program.buffers[experts[0]].width as i32),
                Arg::Ptr(Loc::Logits),
                Arg::I32(program.tasks as i32),
                Arg::I32(rows as i32),
            ],
            reads,
            Vec::new(),
        );
    }

    fn push_group(&mut self, kernel: Kernel, members: Vec<(LinearLaunch, u32, Launch)>) {
        let first_problem = self.problems.len();
        let tiles_at = self.ranges.len();
        let mut total = 0u32;
        for (problem, blocks, _) in &members {
            self.ranges.push(total);
            total = total.saturating_add(*blocks);
            self.problems.push(*problem);
        }
        self.ranges.push(total);
        let (reads, writes, origin) = merged(members.iter().map(|m| &m.2));
        let count = self.problems.len() - first_problem;
        let block = match mma_tile(kernel) {
            Some((_, _, threads)) => (threads, 1, 1),
            None => (16, 16, 1),
        };
        self.launches.push(Launch {
            kernel,
            grid: (total.max(1), 1, 1),
            block,
            args: vec![
                Arg::Ptr(Loc::Problems(first_problem)),
                Arg::Ptr(Loc::Ranges(tiles_at)),
                Arg::I32(count as i32),
            ],
            reads,
            writes,
            problems: first_problem..self.problems.len(),
            origin,
        });
    }

    /// The tile sizes launch `i` can run with, if it is a tensor-core Linear
    /// launch: its own kernel (and tile table) first, then the other tile
    /// sizes over the same input kind, each with a tile table appended to
    /// `ranges`.
    fn push_tile_choices(&mut self, i: usize) -> Vec<TileChoice> {
        let launch = &self.launches[i];
        if mma_tile(launch.kernel).is_none() {
            return Vec::new();
        }
        // The tensor-core kernels over the same input kind, in
        // `Kernel::ALL`'s order (the order of `MMOE_GPU_TUNE=choice=K`).
        let half = reads_half_x(launch.kernel);
        let family = Kernel::ALL
            .into_iter()
            .filter(|&k| mma_tile(k).is_some() && reads_half_x(k) == half);
        let Arg::Ptr(Loc::Ranges(tiles)) = launch.args[1] else {
            return Vec::new();
        };
        let (own, problems) = (launch.kernel, launch.problems.clone());
        let mut choices = vec![TileChoice {
            kernel: own,
            tiles,
            blocks: launch.grid.0,
        }];
        for kernel in family.filter(|&k| k != own) {
            let tiles = self.ranges.len();
            let mut total = 0u32;
            for problem in &self.problems[problems.clone()] {
                self.ranges.push(total);
                total = total.saturating_add(linear_blocks(
                    kernel,
                    problem.rows as usize,
                    problem.n as usize,
                ));
            }
            self.ranges.push(total);
            choices.push(TileChoice {
                kernel,
                tiles,
                blocks: total,
            });
        }
        choices
    }

    /// Runs every launch with a tile choice with choice `pick(i, choices)`
    /// (modulo its number of choices).
    pub fn choose_all_tiles(&mut self, pick: &dyn Fn(usize, usize) -> usize) {
        for i in 0..self.launches.len() {
            let choices = self.tile_choices[i].len();
            if choices > 1 {
                self.choose_tiles(i, pick(i, choices) % choices);
            }
        }
    }

    /// Runs launch `i` with its tile choice `choice` (an index into
    /// `tile_choices[i]`): kernel, grid, block and tile table.
    pub fn choose_tiles(&mut self, i: usize, choice: usize) {
        let Some(&TileChoice {
            kernel,
            tiles,
            blocks,
        }) = self.tile_choices.get(i).and_then(|c| c.get(choice))
        else {
            return;
        };
        let launch = &mut self.launches[i];
        launch.kernel = kernel;
        launch.grid = (blocks.max(1), 1, 1);
        if let Some((_, _, threads)) = mma_tile(kernel) {
            launch.block = (threads, 1, 1);
        }
        launch.args[1] = Arg::Ptr(Loc::Ranges(tiles));
    }

    /// `Err` naming the first launch, or tile choice of one, whose shape
    /// CUDA would refuse ([`launch_shape_error`]): a kernel that puts rows
    /// on the grid's y axis fails from 65,536 rows on, for instance.
    pub fn check_launch_shapes(&self) -> Result<(), String> {
        for (i, launch) in self.launches.iter().enumerate() {
            let choices = self.tile_choices.get(i).into_iter().flatten();
            let shapes = std::iter::once((launch.kernel, launch.grid, launch.block)).chain(
                choices.map(|c| {
                    let block = mma_tile(c.kernel).map_or(launch.block, |(_, _, t)| (t, 1, 1));
                    (c.kernel, (c.blocks.max(1), 1, 1), block)
                }),
            );
            for (kernel, grid, block) in shapes {
                if let Some(why) = launch_shape_error(grid, block) {
                    return Err(format!(
                        "launch {i} ({}) of the {}-row plan: {why}",
                        kernel.entry(),
                        self.capacity
                    ));
                }
            }
        }
        Ok(())
    }

    fn at(&self, buf: BufId) -> Loc {
        if self.f32_unread[buf] {
            return Loc::Null;
        }
        Loc::Arena(self.placements[buf].offset)
    }

    /// A buffer's fp16 copy and its row stride in halves (`Loc::Null`: none).
    fn half(&self, buf: BufId) -> (Loc, i32) {
        self.halves[buf].map_or((Loc::Null, 0), |h| (Loc::Arena(h.offset), h.ld as i32))
    }

    fn ld(&self, buf: BufId) -> i32 {
        self.placements[buf].ld as i32
    }

    fn rows(&self, buf: BufId) -> usize {
        self.placements[buf].rows
    }

    /// Storage row stride (the real width, also for per-request buffers).
    fn stride(&self, program: &Program, buf: BufId) -> i32 {
        program.buffers[buf].width as i32
    }

    fn ranges(&mut self, ranges: &[std::ops::Range<usize>]) -> (Loc, i32) {
        let at = self.ranges.len();
        for r in ranges {
            self.ranges.push(r.start as u32);
            self.ranges.push(r.end as u32);
        }
        (Loc::Ranges(at), ranges.len() as i32)
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        kernel: Kernel,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        args: Vec<Arg>,
        reads: Vec<BufId>,
        writes: Vec<BufId>,
    ) {
        self.pending.push(Pending {
            launch: Launch {
                kernel,
                grid,
                block,
                args,
                reads,
                writes,
                problems: 0..0,
                origin: Vec::new(),
            },
            group: None,
        });
    }

    /// `input` is an arena buffer (`source`) or a tensor.
    #[allow(clippy::too_many_arguments)]
    fn gather(
        &mut self,
        program: &Program,
        input: Loc,
        source: Option<BufId>,
        ldi: i32,
        ranges: &[std::ops::Range<usize>],
        out: View,
    ) {
        let (table, count) = self.ranges(ranges);
        let rows = self.rows(out.buf);
        let ldo = self.stride(program, out.buf);
        let (half, ldh) = self.half(out.buf);
        self.push(
            Kernel::Gather,
            (rows as u32, 1, 1),
            (BLOCK, 1, 1),
            vec![
                Arg::Ptr(input),
                Arg::I32(ldi),
                Arg::Ptr(table),
                Arg::I32(count),
                Arg::Ptr(self.at(out.buf)),
                Arg::I32(ldo),
                Arg::I32(out.offset as i32),
                Arg::I32(rows as i32),
                Arg::Ptr(half),
                Arg::I32(ldh),
            ],
            source.into_iter().collect(),
            vec![out.buf],
        );
    }

    /// `len` f32 (or u32) elements of scratch at the end of the arena,
    /// zeroed with it.
    fn scratch(&mut self, len: usize) -> Loc {
        let at = self.arena_len;
        self.arena_len += len.div_ceil(64) * 64;
        Loc::Arena(at)
    }

    fn layer_norm(
        &mut self,
        program: &Program,
        input: View,
        out: View,
        gamma: TensorId,
        beta: TensorId,
        act: Act,
    ) {
        let rows = self.rows(out.buf);
        let (half, ldh) = self.half(out.buf);
        let args = vec![
            Arg::Ptr(self.at(input.buf)),
            Arg::I32(self.ld(input.buf)),
            Arg::I32(input.offset as i32),
            Arg::Ptr(Loc::Tensor(gamma)),
            Arg::Ptr(Loc::Tensor(beta)),
            Arg::I32(act.code()),
            Arg::Ptr(self.at(out.buf)),
            Arg::I32(self.stride(program, out.buf)),
            Arg::I32(out.offset as i32),
            Arg::I32(input.width as i32),
            Arg::I32(rows as i32),
            Arg::Ptr(half),
            Arg::I32(ldh),
        ];
        self.push(
            Kernel::LayerNorm,
            (rows as u32, 1, 1),
            (BLOCK, 1, 1),
            args,
            vec![input.buf],
            vec![out.buf],
        );
    }

    /// A kernel over `out`'s elements, a thread each: its arguments are
    /// (pointer, ld) of each input and of `out`, width, rows, the fp16 copy
    /// of `out` (pointer, ld), then `extra`.
    fn elementwise(
        &mut self,
        program: &Program,
        kernel: Kernel,
        inputs: &[BufId],
        out: BufId,
        extra: &[Arg],
    ) {
        let width = program.buffers[out].width;
        let rows = self.rows(out);
        let mut args = Vec::new();
        for &b in inputs {
            args.push(Arg::Ptr(self.at(b)));
            args.push(Arg::I32(self.ld(b)));
        }
        args.push(Arg::Ptr(self.at(out)));
        args.push(Arg::I32(self.stride(program, out)));
        args.push(Arg::I32(width as i32));
        args.push(Arg::I32(rows as i32));
        let (half, ldh) = self.half(out);
        args.push(Arg::Ptr(half));
        args.push(Arg::I32(ldh));
        args.extend_from_slice(extra);
        self.push(
            kernel,
            (rows as u32, blocks(width, BLOCK as usize), 1),
            (BLOCK, 1, 1),
            args,
            inputs.to_vec(),
            vec![out],
        );
    }

    fn lower(
        &mut self,
        program: &Program,
        step: &Step,
        precision: Precision,
        weight: &dyn Fn(TensorId) -> DeviceWeight,
    ) {
        let d = program.d as i32;
        match step {
            Step::RequestFeatures { out } => {
                // A warp per column, 8 per block.
                self.push(
                    Kernel::FeaturesRequest,
                    (blocks(program.d, 8), 1, 1),
                    (256, 1, 1),
                    vec![
                        Arg::Ptr(Loc::StagingCell),
                        Arg::Ptr(self.at(*out)),
                        Arg::Ptr(self.half(*out).0),
                        Arg::I32(d),
                    ],
                    Vec::new(),
                    vec![*out],
                );
            }
            Step::CandidateFeatures { request, out } => {
                let (half, ldh) = self.half(*out);
                let args = vec![
                    Arg::Ptr(Loc::StagingCell),
                    Arg::Ptr(self.at(*request)),
                    Arg::Ptr(self.at(*out)),
                    Arg::I32(self.stride(program, *out)),
                    Arg::Ptr(half),
                    Arg::I32(ldh),
                    Arg::I32(d),
                ];
                // A block per row and BLOCK columns: a thread per column.
                self.push(
                    Kernel::FeaturesCandidate,
                    (self.rows(*out) as u32, blocks(program.d, BLOCK as usize), 1),
                    (BLOCK, 1, 1),
                    args,
                    vec![*request],
                    vec![*out],
                );
            }
            Step::Linear {
                input,
                k_ranges,
                weight: w,
                n,
                bias,
                add,
                act,
                scale,
                shift,
                norm,
                out,
            } => {
                let whole = [0..input.width];
                let ranges = k_ranges.as_deref().unwrap_or(&whole);
                let aligned = ranges.iter().all(|r| r.start % 16 == 0);
                // `half_copies` gave the input its fp16 copy only when the
                // columns start on a multiple of 8.
                let (x16, ldx16) = self.half(input.buf);
                let half = x16 != Loc::Null && input.offset % 8 == 0;
                let kernel = match precision {
                    Precision::F32 => Kernel::LinearSimtF32,
                    Precision::F16 if aligned => self.tiles.mma_kernel(self.capacity, half),
                    Precision::F16 => Kernel::LinearSimtF16,
                };
                let (x16, ldx16) = if reads_half_x(kernel) {
                    (x16, ldx16)
                } else {
                    (Loc::Null, 0)
                };
                // With a separate LayerNorm after it, the LayerNorm writes
                // the copy (a fused one writes it at the end of the epilogue).
                let fused_norm = norm.filter(|_| self.fused_norm);
                let separate_norm = norm.filter(|_| !self.fused_norm);
                let (y16, ldy16) = if separate_norm.is_some() {
                    (Loc::Null, 0)
                } else {
                    self.half(out.buf)
                };
                // A task's logit layer writes its column of the logits.
                let (y, ldy, out_off) = match self.logit_columns[out.buf] {
                    Some(task) => (Loc::Logits, program.tasks as i32, task as i32),
                    None => (
                        self.at(out.buf),
                        self.stride(program, out.buf),
                        out.offset as i32,
                    ),
                };
                let (table, count) = self.ranges(ranges);
                let rows = self.rows(out.buf);
                let fused_logit = self
                    .fused_logits
                    .iter()
                    .find(|f| f.hidden_buf == out.buf)
                    .copied();
                // Scratch of a fused LayerNorm (a float2 per row and 16
                // columns) or a fused logit (a float): never both (a
                // LayerNorm's layer is no tower's last hidden layer).
                let per_chunk = match (fused_norm, fused_logit) {
                    (Some(_), _) => 2,
                    (None, Some(_)) => 1,
                    (None, None) => 0,
                };
                let (done, stats) = match per_chunk {
                    0 => (Loc::Null, Loc::Null),
                    floats => (
                        self.scratch(rows.div_ceil(16)),
                        self.scratch(rows * floats * n.div_ceil(16)),
                    ),
                };
                let args = LinearLaunch {
                    x: self.at(input.buf),
                    ldx: self.stride(program, input.buf),
                    in_off: input.offset as i32,
                    w: Loc::Tensor(*w),
                    ldw: weight(*w).ldw as i32,
                    n: *n as i32,
                    ranges: table,
                    nranges: count,
                    bias: bias.map_or(Loc::Null, Loc::Tensor),
                    add: add.map_or(Loc::Null, |a| self.at(a)),
                    act: act.code(),
                    y,
                    ldy,
                    out_off,
                    rows: rows as i32,
                    scale: scale.map_or(Loc::Null, |b| self.at(b)),
                    ldscale: scale.map_or(0, |b| self.ld(b)),
                    shift: shift.map_or(Loc::Null, |b| self.at(b)),
                    ldshift: shift.map_or(0, |b| self.ld(b)),
                    y16,
                    ldy16,
                    x16,
                    ldx16,
                    x16_exp: half_exponent(program, input.buf),
                    gamma: fused_norm.map_or(Loc::Null, |f| Loc::Tensor(f.gamma)),
                    beta: fused_norm.map_or(Loc::Null, |f| Loc::Tensor(f.beta)),
                    norm_act: fused_norm.map_or(0, |f| f.act.code()),
                    done,
                    stats,
                    logit_w: fused_logit.map_or(Loc::Null, |f| Loc::Tensor(f.weight)),
                    logit_b: fused_logit
                        .and_then(|f| f.bias)
                        .map_or(Loc::Null, Loc::Tensor),
                    logits: fused_logit.map_or(Loc::Null, |_| Loc::Logits),
                    ldlogits: program.tasks as i32,
                    logit_col: fused_logit.map_or(0, |f| f.task as i32),
                };
                self.pending.push(Pending {
                    launch: Launch {
                        kernel,
                        grid: (0, 0, 0),
                        block: (0, 0, 0),
                        args: Vec::new(),
                        reads: read(step),
                        writes: vec![out.buf],
                        problems: 0..0,
                        origin: Vec::new(),
                    },
                    group: Some(Group::Linear(
                        Box::new(args),
                        linear_blocks(kernel, rows, *n),
                    )),
                });
                if let Some(norm) = separate_norm {
                    // LayerNorm of the output rows, in place.
                    self.layer_norm(program, *out, *out, norm.gamma, norm.beta, norm.act);
                }
            }
            Step::FeatureGate { g, x0, out } => {
                self.elementwise(program, Kernel::FeatureGate, &[*g, *x0], *out, &[])
            }
            Step::OuterHeads { o1, o2, heads, out } => {
                let (hx, hy) = (
                    program.buffers[*o1].width / heads,
                    program.buffers[*o2].width / heads,
                );
                let exp16 = Arg::I32(OUTER_HEADS_X16_EXP);
                let extra = [Arg::I32(hx as i32), Arg::I32(hy as i32), exp16];
                self.elementwise(program, Kernel::OuterHeads, &[*o1, *o2], *out, &extra);
            }
            Step::LayerNorm {
                input,
                gamma,
                beta,
                act,
                out,
            } => self.layer_norm(program, *input, *out, *gamma, *beta, *act),
            Step::Gather { input, ranges, out } => {
                let loc = self.at(*input);
                let ld = self.ld(*input);
                let view = View {
                    buf: *out,
                    offset: 0,
                    width: program.buffers[*out].width,
                };
                self.gather(program, loc, Some(*input), ld, ranges, view);
            }
            Step::Copy { input, out } => {
                let width = program.buffers[*input].width;
                let (loc, ld) = (self.at(*input), self.ld(*input));
                self.gather(program, loc, Some(*input), ld, &[0..width], *out);
            }
            Step::Constant { tensor, out } => {
                let width = program.buffers[*out].width;
                let view = View {
                    buf: *out,
                    offset: 0,
                    width,
                };
                self.gather(program, Loc::Tensor(*tensor), None, 0, &[0..width], view);
            }
            Step::Bilinear {
                o1,
                o2,
                wx,
                wy,
                w_xy,
                heads,
                out,
            } => {
                let h_out = program.buffers[*out].width;
                let rows = self.rows(*out);
                let (hx, hy) = (
                    program.buffers[*o1].width / heads,
                    program.buffers[*o2].width / heads,
                );
                let args = vec![
                    Arg::Ptr(self.at(*o1)),
                    Arg::I32(self.ld(*o1)),
                    Arg::Ptr(self.at(*o2)),
                    Arg::I32(self.ld(*o2)),
                    Arg::Ptr(self.at(*wx)),
                    Arg::I32(self.ld(*wx)),
                    Arg::Ptr(self.at(*wy)),
                    Arg::I32(self.ld(*wy)),
                    Arg::Ptr(Loc::Tensor(*w_xy)),
                    Arg::I32(*heads as i32),
                    Arg::I32(hx as i32),
                    Arg::I32(hy as i32),
                    Arg::Ptr(self.at(*out)),
                    Arg::I32(self.stride(program, *out)),
                    Arg::I32(h_out as i32),
                    Arg::I32(rows as i32),
                ];
                self.push(
                    Kernel::Bilinear,
                    (rows as u32, blocks(h_out, BLOCK as usize), 1),
                    (BLOCK, 1, 1),
                    args,
                    vec![*o1, *o2, *wx, *wy],
                    vec![*out],
                );
            }
            Step::Mixture { gate, experts, out } => {
                let reads = gate.iter().chain(experts).copied().collect();
                self.pending.push(Pending {
                    launch: Launch {
                        kernel: Kernel::Mixture,
                        grid: (0, 0, 0),
                        block: (0, 0, 0),
                        args: Vec::new(),
                        reads,
                        writes: vec![*out],
                        problems: 0..0,
                        origin: Vec::new(),
                    },
                    group: Some(Group::Mixture(MixtureTask {
                        experts: experts.clone(),
                        gate: *gate,
                        out: *out,
                        ldo: self.stride(program, *out) as usize,
                        h: program.buffers[*out].width,
                    })),
                });
            }
            // Written by its Linear already.
            Step::Output { input, .. } if self.logit_columns[*input].is_some() => {}
            Step::Output { input, task } => {
                let rows = self.capacity;
                let args = vec![
                    Arg::Ptr(self.at(*input)),
                    Arg::I32(self.ld(*input)),
                    Arg::Ptr(Loc::Logits),
                    Arg::I32(program.tasks as i32),
                    Arg::I32(*task as i32),
                    Arg::I32(rows as i32),
                ];
                // Each task writes its own column of the logits: no ordering.
                self.push(
                    Kernel::OutputLogit,
                    (blocks(rows, BLOCK as usize), 1, 1),
                    (BLOCK, 1, 1),
                    args,
                    vec![*input],
                    Vec::new(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::gpu::streams::{check_schedule, depends};
    use crate::plan::Plan;
    use crate::program::{Buffer, Norm};

    fn bench_program() -> Program {
        let config = Config::parse(crate::demo::BENCH_MODEL_JSON).unwrap();
        let plan = Plan::build(&config, &|_| None).unwrap();
        Program::lower(&config, &plan)
    }

    /// The program of `config`, its learned FinalMLP contexts 4 wide.
    fn program_of(config: &Config) -> Program {
        let plan =
            Plan::build(config, &|name| name.ends_with("ctx_bias").then(|| vec![4])).unwrap();
        Program::lower(config, &plan)
    }

    /// The runtime finds a kernel's function at `index()`: ALL must be in
    /// declaration order, every kernel once.
    #[test]
    fn kernel_index_is_its_place_in_all() {
        for (place, kernel) in Kernel::ALL.iter().enumerate() {
            assert_eq!(kernel.index(), place, "{kernel:?}");
        }
    }

    /// Every launch and tile choice keeps within CUDA's grid and block
    /// limits up to the largest bucket (`MAX_CANDIDATES` rows), for models
    /// with every row-per-block kernel: the mixture, MaskNet's gate and
    /// FinalMLP's outer products (layout 2) and direct bilinear sum
    /// (layout 1). Rows on the grid's y axis failed from 65,536 rows on.
    #[test]
    fn launch_shapes_keep_within_cuda_limits_at_every_bucket() {
        let small = include_str!("../../tests/common/small_config.json");
        let weight = |_| DeviceWeight { ldw: 512 };
        let mut kernels = std::collections::BTreeSet::new();
        for json in [small, crate::demo::BENCH_MODEL_JSON] {
            let config = Config::parse(json).unwrap();
            let plan =
                Plan::build(&config, &|name| name.ends_with("ctx_bias").then(|| vec![4])).unwrap();
            for version in [1, crate::format::LAYOUT_VERSION] {
                let program = Program::lower_for_layout(&config, &plan, version);
                for capacity in [32, 1 << 15, 1 << 16, 1 << 17, bucket(crate::MAX_CANDIDATES)] {
                    for fused_heads in [false, true] {
                        let options = PlanOptions {
                            fused_heads,
                            ..PlanOptions::default()
                        };
                        for precision in [Precision::F16, Precision::F32] {
                            let lp =
                                LaunchPlan::new(&program, capacity, precision, options, &weight);
                            if let Err(e) = lp.check_launch_shapes() {
                                panic!("{e}");
                            }
                            kernels.extend(lp.launches.iter().map(|l| l.kernel.entry()));
                        }
                    }
                }
            }
        }
        for kernel in ["mixture", "feature_gate", "outer_heads", "bilinear"] {
            assert!(kernels.contains(kernel), "no {kernel} launch planned");
        }
    }

    /// Block counts past u32 saturate rather than wrap, so that the grid
    /// check refuses them instead of launching a few blocks.
    #[test]
    fn block_counts_saturate_past_u32() {
        for kernel in Kernel::ALL {
            assert_eq!(
                linear_blocks(kernel, 1 << 40, 1 << 20),
                u32::MAX,
                "{kernel:?}"
            );
            assert!(linear_blocks(kernel, 64, 64) >= 1);
        }
        assert!(launch_shape_error((u32::MAX, 1, 1), (128, 1, 1)).is_some());
    }

    #[test]
    fn launch_shape_error_names_each_limit() {
        assert_eq!(launch_shape_error((1 << 20, 65_535, 1), (128, 1, 1)), None);
        for (grid, block) in [
            ((1, 65_536, 1), (128, 1, 1)),
            ((1, 1, 65_536), (128, 1, 1)),
            ((1 << 31, 1, 1), (128, 1, 1)),
            ((0, 1, 1), (128, 1, 1)),
            ((1, 1, 1), (1025, 1, 1)),
            ((1, 1, 1), (64, 32, 1)),
            ((1, 1, 1), (1, 1, 65)),
        ] {
            assert!(
                launch_shape_error(grid, block).is_some(),
                "{grid:?} {block:?}"
            );
        }
    }

    #[test]
    fn buckets_are_powers_of_two_from_32() {
        assert_eq!(bucket(1), 32);
        assert_eq!(bucket(32), 32);
        assert_eq!(bucket(33), 64);
        assert_eq!(bucket(1000), 1024);
        assert_eq!(bucket(4096), 4096);
    }

    #[test]
    fn bench_model_runs_every_layer_on_tensor_cores_in_few_launches() {
        let program = bench_program();
        let wide = Tiles::Wide { from_rows: 512 };
        let cases = [
            (
                32,
                Tiles::Standard,
                Kernel::LinearMma32,
                Kernel::LinearMma32H,
            ),
            (
                256,
                Tiles::Standard,
                Kernel::LinearMma64,
                Kernel::LinearMma64H,
            ),
            (
                1024,
                Tiles::Standard,
                Kernel::LinearMma64,
                Kernel::LinearMma64H,
            ),
            (32, wide, Kernel::LinearMma32, Kernel::LinearMma32H),
            (256, wide, Kernel::LinearMma64, Kernel::LinearMma64H),
            (1024, wide, Kernel::LinearMma128, Kernel::LinearMma128H),
        ];
        for ((capacity, tiles, f32_x, half_x), half) in
            cases.into_iter().flat_map(|c| [(c, false), (c, true)])
        {
            let options = PlanOptions {
                tiles,
                fused_heads: false,
                half_x: half,
                ..PlanOptions::default()
            };
            let plan = LaunchPlan::new(&program, capacity, Precision::F16, options, &|_| {
                DeviceWeight { ldw: 512 }
            });
            let linear: Vec<&Launch> = plan
                .launches
                .iter()
                .filter(|l| is_linear(l.kernel))
                .collect();
            // The benchmark model's input widths are multiples of 16: no
            // fallback to SIMT. With fp16 inputs, every GEMM reads an fp16
            // copy, the towers' first layers the one the mixture writes.
            let mut f32_inputs = 0;
            for l in &linear {
                let problems = &plan.problems[l.problems.clone()];
                if l.kernel == half_x {
                    assert!(half);
                    assert!(problems
                        .iter()
                        .all(|p| p.x16 != Loc::Null && p.ldx16 % 8 == 0));
                } else {
                    assert_eq!(l.kernel, f32_x);
                    assert!(problems.iter().all(|p| p.x16 == Loc::Null));
                    f32_inputs += problems.len();
                }
            }
            assert_eq!(f32_inputs, if half { 0 } else { 38 });
            let kernel = |l: &Launch| l.kernel;
            // Every problem is in exactly one launch, and each launch's tile
            // table adds up its problems' blocks.
            let mut covered = 0;
            for l in &linear {
                let [Arg::Ptr(Loc::Problems(first)), Arg::Ptr(Loc::Ranges(tiles)), Arg::I32(count)] =
                    l.args[..]
                else {
                    panic!("{l:?}")
                };
                assert_eq!(first..first + count as usize, l.problems);
                let mut total = 0;
                for (i, problem) in plan.problems[l.problems.clone()].iter().enumerate() {
                    assert_eq!(plan.ranges[tiles + i], total);
                    // Candidate-phase problems compute the whole bucket; request-phase ones one row.
                    assert!(
                        problem.rows == capacity as i32 || problem.rows == 1,
                        "{problem:?}"
                    );
                    total += linear_blocks(kernel(l), problem.rows as usize, problem.n as usize);
                }
                assert_eq!(plan.ranges[tiles + count as usize], total);
                assert_eq!(l.grid, (total, 1, 1));
                let threads = if matches!(kernel(l), Kernel::LinearMma128 | Kernel::LinearMma128H) {
                    256
                } else {
                    128
                };
                assert_eq!(l.block, (threads, 1, 1));
                covered += count as usize;
            }
            assert_eq!(covered, plan.problems.len());
            // 38 Linear problems: the request parts of the 9 first layers
            // (4 DCN cross layers, 2 MLPs, 3 gates), those 9 layers, the 6
            // second layers, 2 × 4 DCN deep layers and 2 × 3 tower layers; in
            // 7 grouped launches; the 3 tasks' mixtures in one; the towers'
            // last layers write the logits (no copy launches): 10 launches
            // in all (43 before grouping).
            assert_eq!(plan.unscheduled.len(), 43);
            assert_eq!(plan.problems.len(), 38);
            assert_eq!(linear.len(), 7);
            let mixtures: Vec<&Launch> = plan
                .launches
                .iter()
                .filter(|l| l.kernel == Kernel::Mixture)
                .collect();
            assert_eq!(mixtures.len(), 1);
            assert_eq!(mixtures[0].args[2], Arg::I32(3));
            assert_eq!(plan.launches.len(), 10);
            let outputs = plan
                .launches
                .iter()
                .filter(|l| l.kernel == Kernel::OutputLogit)
                .count();
            assert_eq!(outputs, 0);
            let logit_layers: Vec<&LinearLaunch> = plan
                .problems
                .iter()
                .filter(|p| p.y == Loc::Logits)
                .collect();
            assert_eq!(logit_layers.len(), 3);
            for (task, p) in logit_layers.iter().enumerate() {
                assert_eq!(
                    (p.n, p.ldy, p.out_off, p.y16),
                    (1, 3, task as i32, Loc::Null)
                );
            }
            // Buffers never overlap and are 256-byte aligned (those without
            // f32 values hold no memory).
            let mut spans: Vec<(usize, usize)> = plan
                .placements
                .iter()
                .zip(&program.buffers)
                .zip(&plan.f32_unread)
                .filter(|(_, &unread)| !unread)
                .map(|((p, b), _)| (p.offset, p.offset + p.rows * b.width))
                .collect();
            spans.sort();
            for w in spans.windows(2) {
                assert!(w[0].1 <= w[1].0);
                assert_eq!(w[1].0 % 64, 0);
            }
            assert!(spans.last().unwrap().1 <= plan.arena_len);
        }
    }

    /// The schedule runs every launch after each earlier one it depends on
    /// (read after write, write after read, write after write), never in the
    /// same grouped launch; and it runs every launch exactly once.
    #[test]
    fn schedule_respects_every_dependency() {
        let small = include_str!("../../tests/common/small_config.json");
        for json in [small, crate::demo::BENCH_MODEL_JSON] {
            let config = Config::parse(json).unwrap();
            let program = program_of(&config);
            let plain = PlanOptions {
                fused_heads: false,
                ..PlanOptions::default()
            };
            let fused_norm = PlanOptions {
                fused_norm: true,
                ..plain
            };
            for (precision, options) in [
                (Precision::F16, plain),
                (Precision::F32, plain),
                (Precision::F16, PlanOptions::default()),
                (Precision::F16, fused_norm),
                (Precision::F32, fused_norm),
            ] {
                let lp = LaunchPlan::new(&program, 64, precision, options, &|_| DeviceWeight {
                    ldw: 1024,
                });
                let mut position = vec![usize::MAX; lp.unscheduled.len()];
                for (at, launch) in lp.launches.iter().enumerate() {
                    for &o in &launch.origin {
                        assert_eq!(position[o], usize::MAX, "launch {o} scheduled twice");
                        position[o] = at;
                    }
                }
                assert!(
                    position.iter().all(|&p| p != usize::MAX),
                    "a launch was dropped"
                );
                let mut dependencies = 0;
                for (j, later) in lp.unscheduled.iter().enumerate() {
                    for (i, earlier) in lp.unscheduled[..j].iter().enumerate() {
                        if depends(earlier, later) {
                            dependencies += 1;
                            assert!(
                                position[i] < position[j],
                                "{}: {:?} (#{i}) must run before {:?} (#{j})",
                                config.name,
                                earlier.kernel,
                                later.kernel
                            );
                        }
                    }
                }
                assert!(dependencies > 10);
                // Grouping happened: fewer launches than Linear problems.
                assert!(lp.launches.len() < lp.unscheduled.len());
                // The graph branches keep every dependency, with any number
                // of streams.
                for streams in 1..=4 {
                    let schedule = stream_schedule(&lp.launches, streams);
                    check_schedule(&lp.launches, &schedule);
                    assert!(schedule.streams <= streams);
                }
                check_schedule(&lp.launches, &lp.streams);
            }
        }
    }

    /// With fp16 GEMM inputs, the buffers that only Linear layers or the
    /// mixtures write and only tensor-core GEMMs read as x keep only their
    /// fp16 copy: in the benchmark model each stacked DCN's last cross
    /// layer and first deep layer, each MLP's hidden layer, each task's
    /// mixture and each tower's hidden layer (16 buffers, 6,272 f32 a
    /// row). Each is read only by launches of half-input kernels, as x:
    /// never as add, scale or shift, nor by a step fused into the task
    /// heads (which keeps the towers' layers). With f32 inputs, fp32
    /// compute or `half_only` off, every buffer keeps its f32 values.
    #[test]
    fn buffers_only_gemms_read_keep_only_their_fp16_copy() {
        let program = bench_program();
        let weight = |_| DeviceWeight { ldw: 512 };
        let plain = PlanOptions::default();
        let fused_heads = PlanOptions {
            fused_heads: true,
            ..plain
        };
        let f32_inputs = PlanOptions {
            half_x: false,
            ..plain
        };
        let f32_kept = PlanOptions {
            half_only: false,
            ..plain
        };
        for capacity in [32, 1024] {
            for (precision, options, buffers, floats) in [
                (Precision::F16, plain, 16, 6272),
                (Precision::F16, fused_heads, 10, 5120),
                (Precision::F16, f32_inputs, 0, 0),
                (Precision::F16, f32_kept, 0, 0),
                (Precision::F32, plain, 0, 0),
            ] {
                let lp = LaunchPlan::new(&program, capacity, precision, options, &weight);
                let unread: Vec<BufId> = (0..program.buffers.len())
                    .filter(|&b| lp.f32_unread[b])
                    .collect();
                let width: usize = unread.iter().map(|&b| program.buffers[b].width).sum();
                assert_eq!((unread.len(), width), (buffers, floats), "{options:?}");
                for &b in &unread {
                    assert!(lp.halves[b].is_some());
                    assert_eq!(lp.at(b), Loc::Null);
                    for (i, launch) in lp.launches.iter().enumerate() {
                        if !launch.reads.contains(&b) {
                            continue;
                        }
                        assert!(reads_half_x(launch.kernel), "{:?}", launch.kernel);
                        // Every tile size the runtime may pick reads fp16 too.
                        for choice in &lp.tile_choices[i] {
                            assert!(reads_half_x(choice.kernel), "{choice:?}");
                        }
                    }
                    for step in program.request_steps.iter().chain(&program.candidate_steps) {
                        if let Step::Linear {
                            add, scale, shift, ..
                        } = step
                        {
                            assert!(![add, scale, shift].contains(&&Some(b)));
                        } else {
                            assert!(!read(step).contains(&b), "{step:?}");
                        }
                    }
                }
            }
        }
    }

    /// With the LayerNorm fused (`PlanOptions::fused_norm`), each MaskNet
    /// block's hidden layer carries γ, β and its activation, writes its
    /// fp16 copy itself, and has its own scratch past the buffers: a
    /// counter per 16 rows and a float2 per row and 16 columns, apart from
    /// every other problem's, inside the (zeroed) arena.
    #[test]
    fn fused_layer_norms_get_their_own_scratch() {
        let config = Config::parse(include_str!("../../tests/common/small_config.json")).unwrap();
        let program = program_of(&config);
        let weight = |_| DeviceWeight { ldw: 1024 };
        let separate = PlanOptions::default();
        let fused = PlanOptions {
            fused_norm: true,
            ..separate
        };
        for precision in [Precision::F16, Precision::F32] {
            for capacity in [32, 256] {
                let apart = LaunchPlan::new(&program, capacity, precision, separate, &weight);
                let lp = LaunchPlan::new(&program, capacity, precision, fused, &weight);
                assert!(apart.problems.iter().all(|p| p.gamma == Loc::Null));
                let normed: Vec<&LinearLaunch> = lp
                    .problems
                    .iter()
                    .filter(|p| p.gamma != Loc::Null)
                    .collect();
                // The small config's MaskNet has two blocks.
                assert_eq!(normed.len(), 2);
                let mut spans = Vec::new();
                for p in normed {
                    assert_ne!(p.beta, Loc::Null);
                    assert_eq!(p.norm_act, Act::Relu.code());
                    // The buffer's fp16 copy, if a GEMM reads one.
                    let buf = (0..lp.placements.len()).find(|&b| lp.at(b) == p.y).unwrap();
                    assert_eq!(p.y16, lp.half(buf).0);
                    let (Loc::Arena(done), Loc::Arena(stats)) = (p.done, p.stats) else {
                        panic!("scratch outside the arena: {p:?}");
                    };
                    let chunks = (p.n as usize).div_ceil(16);
                    spans.push((done, done + capacity.div_ceil(16)));
                    spans.push((stats, stats + capacity * 2 * chunks));
                }
                spans.sort_unstable();
                assert!(spans[0].0 >= apart.arena_len, "{spans:?}");
                assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "{spans:?}");
                assert!(spans[spans.len() - 1].1 <= lp.arena_len);
            }
        }
    }

    /// With the logits fused (`PlanOptions::fused_logit`), the benchmark
    /// model's three towers' hidden layers write the logits (columns 0, 1,
    /// 2, from each task's logit weight and bias), no logit layer or copy
    /// is left, the hidden layers keep their f32 values (the epilogue
    /// reads them) and no fp16 copy (nothing else reads them), and each has
    /// its own scratch past every buffer: a counter per 16 rows and a float
    /// per row and 16 columns.
    #[test]
    fn fused_logits_replace_the_logit_layers_with_their_own_scratch() {
        let config = Config::parse(crate::demo::BENCH_MODEL_JSON).unwrap();
        let plan = Plan::build(&config, &|_| None).unwrap();
        let program = Program::lower(&config, &plan);
        let name = |id: TensorId| plan.tensors[id].name.as_str();
        let weight = |_| DeviceWeight { ldw: 1024 };
        let fused = PlanOptions {
            fused_logit: true,
            ..PlanOptions::default()
        };
        for precision in [Precision::F16, Precision::F32] {
            for capacity in [32, 256] {
                let lp = LaunchPlan::new(&program, capacity, precision, fused, &weight);
                assert!(lp.problems.iter().all(|p| p.y != Loc::Logits));
                assert!(lp.launches.iter().all(|l| l.kernel != Kernel::OutputLogit));
                let fused: Vec<&LinearLaunch> = lp
                    .problems
                    .iter()
                    .filter(|p| p.logits != Loc::Null)
                    .collect();
                let columns: Vec<i32> = fused.iter().map(|p| p.logit_col).collect();
                assert_eq!(columns, [0, 1, 2]);
                let mut ends = Vec::new();
                for (buf, buffer) in program.buffers.iter().enumerate() {
                    let place = &lp.placements[buf];
                    if !lp.f32_unread[buf] {
                        ends.push(place.offset + place.rows * buffer.width);
                    }
                    if let Some(half) = &lp.halves[buf] {
                        ends.push(half.offset + (half.rows * half.ld.max(8)).div_ceil(2));
                    }
                }
                let buffers_end = ends.into_iter().max().unwrap();
                let mut spans = Vec::new();
                for p in fused {
                    assert_eq!(p.logits, Loc::Logits);
                    assert_eq!(p.ldlogits, 3);
                    assert_eq!((p.n, p.gamma), (128, Loc::Null));
                    let Loc::Tensor(w) = p.logit_w else {
                        panic!("logit weight {:?}", p.logit_w);
                    };
                    // The tower's second Linear layer: its logit layer.
                    let task = &config.tasks[p.logit_col as usize].name;
                    assert_eq!(name(w), format!("tasks.{task}.tower.1.weight"));
                    let Loc::Tensor(b) = p.logit_b else {
                        panic!("logit bias {:?}", p.logit_b);
                    };
                    assert_eq!(name(b), name(w).replace(".weight", ".bias"));
                    let buf = (0..lp.placements.len()).find(|&b| lp.at(b) == p.y).unwrap();
                    assert!(!lp.f32_unread[buf]);
                    assert_eq!(lp.half(buf).0, Loc::Null);
                    assert_eq!(p.y16, Loc::Null);
                    let (Loc::Arena(done), Loc::Arena(stats)) = (p.done, p.stats) else {
                        panic!("scratch outside the arena: {p:?}");
                    };
                    spans.push((done, done + capacity.div_ceil(16)));
                    spans.push((stats, stats + capacity * 128 / 16));
                }
                spans.sort_unstable();
                assert!(spans[0].0 >= buffers_end, "{spans:?}");
                assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "{spans:?}");
                assert!(spans[spans.len() - 1].1 <= lp.arena_len);
            }
        }
    }

    /// `logit_fusions` fuses the benchmark model's three logit layers, and
    /// refuses the first task's once its logit layer or hidden layer is
    /// anything else than a whole Linear of one column after a whole
    /// hidden layer that only it reads: an activation, column ranges or an
    /// offset on the logit layer, a LayerNorm on the hidden layer, another
    /// reader or writer of the hidden buffer, a per-request logit buffer.
    #[test]
    fn logit_fusions_refuse_what_they_cannot_fuse() {
        let program = bench_program();
        let fusions = logit_fusions(&program);
        assert_eq!(
            fusions.iter().map(|f| f.task).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        let first = fusions[0];
        let hidden = program
            .candidate_steps
            .iter()
            .position(|s| written(s) == Some(first.hidden_buf))
            .unwrap();
        let logit_buf = written(&program.candidate_steps[first.logit]).unwrap();
        let width = program.buffers[first.hidden_buf].width;
        type Mutation = Box<dyn Fn(&mut Program)>;
        let mutations: Vec<(&str, Mutation)> = vec![
            (
                "an activation on the logit layer",
                Box::new(move |p| {
                    if let Step::Linear { act, .. } = &mut p.candidate_steps[first.logit] {
                        *act = Act::Relu;
                    }
                }),
            ),
            (
                "column ranges on the logit layer",
                Box::new(move |p| {
                    if let Step::Linear { k_ranges, .. } = &mut p.candidate_steps[first.logit] {
                        *k_ranges = Some(vec![0..width]);
                    }
                }),
            ),
            (
                "an offset on the logit layer's input",
                Box::new(move |p| {
                    if let Step::Linear { input, .. } = &mut p.candidate_steps[first.logit] {
                        input.offset = 16;
                        input.width -= 16;
                    }
                }),
            ),
            (
                "a LayerNorm on the hidden layer",
                Box::new(move |p| {
                    if let Step::Linear { norm, weight, .. } = &mut p.candidate_steps[hidden] {
                        *norm = Some(Norm {
                            gamma: *weight,
                            beta: *weight,
                            act: Act::None,
                        });
                    }
                }),
            ),
            (
                "another reader of the hidden buffer",
                Box::new(move |p| {
                    p.buffers.push(Buffer {
                        width,
                        per_request: false,
                    });
                    let out = View {
                        buf: p.buffers.len() - 1,
                        offset: 0,
                        width,
                    };
                    let input = first.hidden_buf;
                    p.candidate_steps.push(Step::Copy { input, out });
                }),
            ),
            (
                "another writer of the hidden buffer",
                Box::new(move |p| {
                    let out = View {
                        buf: first.hidden_buf,
                        offset: 0,
                        width,
                    };
                    p.candidate_steps
                        .insert(hidden, Step::Copy { input: 0, out });
                }),
            ),
            (
                "a per-request logit buffer",
                Box::new(move |p| p.buffers[logit_buf].per_request = true),
            ),
        ];
        for (what, mutate) in mutations {
            let mut changed = program.clone();
            mutate(&mut changed);
            let same = (changed.candidate_steps == program.candidate_steps)
                && (changed.buffers == program.buffers);
            assert!(!same, "{what}: nothing changed");
            let tasks: Vec<usize> = logit_fusions(&changed).iter().map(|f| f.task).collect();
            assert_eq!(tasks, [1, 2], "{what}");
        }
    }

    /// The benchmark model's graph with fused task heads has one branch:
    /// the request part of the first layers (one row) beside the candidate
    /// features, joined before the first candidate GEMM; with one stream,
    /// the launches in order. (Unfused, the towers branch too:
    /// `schedule_respects_every_dependency`.)
    #[test]
    fn bench_model_runs_the_request_gemm_beside_the_candidate_features() {
        let program = bench_program();
        let weight = |_| DeviceWeight { ldw: 512 };
        let fused = PlanOptions {
            fused_heads: true,
            ..PlanOptions::default()
        };
        for capacity in [32, 1024] {
            let plan = LaunchPlan::new(&program, capacity, Precision::F16, fused, &weight);
            let kernels: Vec<Kernel> = plan.launches.iter().map(|l| l.kernel).collect();
            let position = |kernel| kernels.iter().position(|&k| k == kernel).unwrap();
            let stream_of = |launch| plan.streams.stream_of(launch);
            let features = position(Kernel::FeaturesCandidate);
            // The request GEMM: the Linear launch whose problems have one row.
            let request_gemm = (0..plan.launches.len())
                .find(|&i| {
                    is_linear(plan.launches[i].kernel)
                        && plan.problems[plan.launches[i].problems.clone()]
                            .iter()
                            .all(|p| p.rows == 1)
                })
                .unwrap();
            assert_eq!(plan.streams.streams, 2);
            assert_ne!(stream_of(features), stream_of(request_gemm));
            // Every other launch on stream 0; one fork, one join before the
            // first candidate GEMM, one join at the end (redundant there).
            for i in 0..plan.launches.len() {
                if i != features && i != request_gemm {
                    assert_eq!(stream_of(i), Some(0), "{:?}", plan.launches[i].kernel);
                }
            }
            let waits = plan
                .streams
                .ops
                .iter()
                .filter(|op| matches!(op, crate::gpu::streams::StreamOp::Wait { .. }))
                .count();
            assert_eq!(waits, 3, "{:?}", plan.streams.ops);
            check_schedule(&plan.launches, &plan.streams);
            let order = plan.streams.execution_order(true);
            assert!(
                order.iter().position(|&l| l == features)
                    < order.iter().position(|&l| l == request_gemm)
            );
            let one = PlanOptions {
                streams: 1,
                ..fused
            };
            let plan = LaunchPlan::new(&program, capacity, Precision::F16, one, &weight);
            assert_eq!(plan.streams.streams, 1);
            assert_eq!(
                plan.streams.execution_order(true),
                (0..plan.launches.len()).collect::<Vec<_>>()
            );
        }
    }

    /// Every grouped tensor-core launch can run with the tile sizes of its
    /// input kind; choosing one switches kernel, grid, block and tile
    /// table together, and the table adds up the problems' blocks at that
    /// tile size. Other launches have no choice.
    #[test]
    fn tile_choices_switch_kernel_grid_and_tile_table_together() {
        let program = bench_program();
        let weight = |_| DeviceWeight { ldw: 512 };
        for half_x in [true, false] {
            let options = PlanOptions {
                half_x,
                ..PlanOptions::default()
            };
            let mut plan = LaunchPlan::new(&program, 1024, Precision::F16, options, &weight);
            let mut with_choices = 0;
            for i in 0..plan.launches.len() {
                let choices = plan.tile_choices[i].clone();
                if !is_linear(plan.launches[i].kernel) {
                    assert!(choices.is_empty());
                    continue;
                }
                with_choices += 1;
                // fp16 inputs: also the 128×64 and 64×128 tiles, the
                // 64-column stages of 32×64 and 64×64 tiles, 32×32 tiles
                // with 32- and 64-column stages, and the deep pipelines in
                // dynamic shared memory (128×128 of 8 or 4 warps, 128×64;
                // 32×32, 32×64 and 64×64 with 16, 12 and 8 stages), and the
                // warpgroup-MMA tiles (128×128, 64×128; sm_90a only).
                // (The towers read the mixture's fp16 copy.)
                let half = reads_half_x(plan.launches[i].kernel);
                assert_eq!(half, half_x, "{:?}", plan.launches[i].kernel);
                assert_eq!(choices.len(), if half { 17 } else { 3 });
                assert_eq!(choices[0].kernel, plan.launches[i].kernel);
                assert!(choices
                    .iter()
                    .all(|c| reads_half_x(c.kernel) == half && mma_tile(c.kernel).is_some()));
                for (c, choice) in choices.iter().enumerate() {
                    plan.choose_tiles(i, c);
                    let launch = &plan.launches[i];
                    assert_eq!(launch.kernel, choice.kernel);
                    assert_eq!(launch.grid, (choice.blocks, 1, 1));
                    assert_eq!(launch.block.0, mma_tile(choice.kernel).unwrap().2);
                    assert_eq!(launch.args[1], Arg::Ptr(Loc::Ranges(choice.tiles)));
                    let mut total = 0;
                    for (p, problem) in plan.problems[launch.problems.clone()].iter().enumerate() {
                        assert_eq!(plan.ranges[choice.tiles + p], total);
                        total +=
                            linear_blocks(choice.kernel, problem.rows as usize, problem.n as usize);
                    }
                    assert_eq!(plan.ranges[choice.tiles + launch.problems.len()], total);
                    assert_eq!(total, choice.blocks);
                }
                plan.choose_tiles(i, 0);
            }
            assert_eq!(with_choices, 7);
        }
    }

    /// The candidate features run a thread per x0 column of each row: the
    /// grid's second dimension covers the columns once, at every size.
    #[test]
    fn candidate_features_take_a_thread_per_column() {
        let program = bench_program();
        let weight = |_| DeviceWeight { ldw: 512 };
        for capacity in [32, 1024] {
            let plan = LaunchPlan::new(
                &program,
                capacity,
                Precision::F16,
                PlanOptions::default(),
                &weight,
            );
            let features = plan
                .launches
                .iter()
                .find(|l| l.kernel == Kernel::FeaturesCandidate)
                .unwrap();
            let (rows, parts, _) = features.grid;
            assert_eq!(rows as usize, plan.capacity, "a block per row");
            let columns = parts * features.block.0;
            assert!(
                columns as usize >= program.d && (columns - features.block.0) < program.d as u32
            );
        }
    }

    /// The deep-pipeline tiles keep their stages in dynamic shared memory
    /// because they need more than the 48 KB of static shared memory, and
    /// no more than the 99 KB a block may opt into on every GPU from
    /// compute capability 8.0 (8.6 and 8.9 allow the least); no other
    /// kernel takes any.
    #[test]
    fn dynamic_shared_memory_only_where_static_would_not_fit() {
        for kernel in Kernel::ALL {
            let bytes = dynamic_shared_bytes(kernel);
            let deep = matches!(
                kernel,
                Kernel::LinearMma128x128S4H
                    | Kernel::LinearMma128x128W4S4H
                    | Kernel::LinearMma128x64S6H
                    | Kernel::LinearMma32x32S16H
                    | Kernel::LinearMma32x64S12H
                    | Kernel::LinearMma64x64S8H
                    | Kernel::LinearWgmma128x128
                    | Kernel::LinearWgmma64x128
            );
            assert_eq!(bytes > 0, deep, "{kernel:?}");
            if deep {
                assert!(
                    bytes > 48 * 1024 && bytes <= 99 * 1024,
                    "{kernel:?}: {bytes} bytes"
                );
                assert!(
                    reads_half_x(kernel) && mma_tile(kernel).is_some(),
                    "{kernel:?}"
                );
            }
        }
    }

    /// Every pointer argument of every launch stays inside what it points to,
    /// for models of every expert type, both precisions and several buckets.
    #[test]
    fn every_launch_addresses_memory_it_owns() {
        let small = include_str!("../../tests/common/small_config.json");
        let mut configs = vec![
            Config::parse(small).unwrap(),
            Config::parse(crate::demo::BENCH_MODEL_JSON).unwrap(),
        ];
        // MaskNet serial without head, FinalMLP with learned contexts.
        let variant = small
            .replace(
                r#""mode": "parallel", "blocks": [5, 6], "mask_hidden": 7, "head": [8]"#,
                r#""mode": "serial", "blocks": [5, 8], "mask_hidden": 7, "head": []"#,
            )
            .replace(r#""fs2_context": ["a"]"#, r#""fs2_context": []"#);
        configs.push(Config::parse(&variant).unwrap());
        for config in &configs {
            let plan =
                Plan::build(config, &|name| name.ends_with("ctx_bias").then(|| vec![4])).unwrap();
            let program = Program::lower(config, &plan);
            for precision in [Precision::F16, Precision::F32] {
                for (capacity, tiles, fused_heads, half_x) in [
                    (32, Tiles::Standard, false, false),
                    (256, Tiles::Standard, false, true),
                    (256, Tiles::Wide { from_rows: 256 }, false, false),
                    (256, Tiles::Wide { from_rows: 256 }, false, true),
                    (32, Tiles::Standard, true, true),
                ] {
                    let launch_plan = LaunchPlan::new(
                        &program,
                        capacity,
                        precision,
                        PlanOptions {
                            tiles,
                            fused_heads,
                            half_x,
                            ..PlanOptions::default()
                        },
                        &|id| {
                            let version = crate::format::LAYOUT_VERSION;
                            let k = plan.tensors[id].linear_shape(version).map_or(0, |(_, k)| k);
                            DeviceWeight {
                                ldw: match precision {
                                    Precision::F16 => f16_ldw(k),
                                    Precision::F32 => k,
                                },
                            }
                        },
                    );
                    let arena = launch_plan.arena_len;
                    // The fp16 copies: 256-byte aligned rows of a multiple
                    // of 8 halves, after the f32 buffers, disjoint, inside
                    // the arena.
                    let f32_end = launch_plan
                        .placements
                        .iter()
                        .zip(&program.buffers)
                        .zip(&launch_plan.f32_unread)
                        .filter(|(_, &unread)| !unread)
                        .map(|((p, b), _)| p.offset + p.rows * b.width)
                        .max()
                        .unwrap_or(0);
                    let mut half_end = f32_end;
                    for (h, b) in launch_plan.halves.iter().zip(&program.buffers) {
                        let Some(h) = h else { continue };
                        assert_eq!(precision, Precision::F16);
                        assert!(half_x);
                        assert!(h.offset % 64 == 0 && h.ld % 8 == 0 && h.offset >= half_end);
                        half_end = h.offset + (h.rows * b.width.next_multiple_of(8)).div_ceil(2);
                    }
                    assert!(half_end <= arena);
                    // An fp16 access, in halves.
                    let in_half_arena = |loc: Loc, rows: i32, ld: i32, cols: i32| {
                        if let Loc::Arena(offset) = loc {
                            assert!(offset >= f32_end && ld % 8 == 0);
                            let rows = if ld == 0 { 1 } else { rows.max(1) } as usize;
                            let end = 2 * offset + (rows - 1) * ld as usize + cols as usize;
                            assert!(
                                end <= 2 * arena,
                                "{}: fp16 access past the arena",
                                config.name
                            );
                        }
                    };
                    let in_arena = |loc: Loc, rows: i32, ld: i32, cols: i32| {
                        if let Loc::Arena(offset) = loc {
                            let rows = if ld == 0 { 1 } else { rows.max(1) } as usize;
                            let end =
                                offset + (rows - 1) * ld.max(0) as usize + cols.max(0) as usize;
                            assert!(
                                end <= arena,
                                "{}: arena access to {end} of {arena}",
                                config.name
                            );
                        }
                    };
                    let mut logit_layers = 0;
                    for launch in launch_plan.launches.iter().filter(|l| is_linear(l.kernel)) {
                        for a in &launch_plan.problems[launch.problems.clone()] {
                            let k_end = launch_plan.ranges[match a.ranges {
                                Loc::Ranges(at) => at,
                                _ => panic!("ranges live in the range table"),
                            }..]
                                .chunks(2)
                                .take(a.nranges as usize)
                                .map(|r| r[1] as i32)
                                .max()
                                .unwrap_or(0);
                            in_arena(a.x, a.rows, a.ldx, a.in_off + k_end);
                            in_arena(a.y, a.rows, a.ldy, a.out_off + a.n);
                            in_arena(a.scale, a.rows, a.ldscale, a.n);
                            in_arena(a.shift, a.rows, a.ldshift, a.n);
                            in_arena(a.add, 1, 0, a.n);
                            if a.y == Loc::Logits {
                                // A task's column of the bucket's logits.
                                assert_eq!(a.ldy, program.tasks as i32);
                                assert!(a.out_off + a.n <= a.ldy && a.rows == capacity as i32);
                                assert_eq!(a.y16, Loc::Null);
                                logit_layers += 1;
                            }
                            in_half_arena(a.y16, a.rows, a.ldy16, a.out_off + a.n);
                            in_half_arena(a.x16, a.rows, a.ldx16, a.in_off + k_end);
                            assert_eq!(a.x16 != Loc::Null, reads_half_x(launch.kernel));
                            if reads_half_x(launch.kernel) {
                                assert!(a.in_off % 8 == 0, "16-byte rows for cp.async");
                            }
                            assert!(a.rows == capacity as i32 || a.rows == 1);
                            if mma_tile(launch.kernel).is_some() {
                                assert!(a.ldw % 16 == 0, "mma needs 16-padded rows");
                            }
                        }
                    }
                    for entry in &launch_plan.pointers {
                        match *entry {
                            PointerEntry::Arena(offset) => assert!(offset < arena),
                            PointerEntry::Tensor(id) => assert!(id < plan.tensors.len()),
                            PointerEntry::Value(_) => {}
                        }
                    }
                    // Each task's logit comes from a Linear or a copy launch
                    // (fused heads: from the head).
                    let copies = launch_plan
                        .launches
                        .iter()
                        .filter(|l| l.kernel == Kernel::OutputLogit)
                        .count();
                    if !fused_heads {
                        assert_eq!(logit_layers + copies, program.tasks, "{}", config.name);
                    }
                }
            }
        }
    }

    #[test]
    fn fused_heads_replace_mixtures_towers_and_logit_copies() {
        let program = bench_program();
        // Unfused by default (the faster on an H200).
        let unfused = PlanOptions::default();
        assert!(!unfused.fused_heads);
        let weight = |_| DeviceWeight { ldw: 512 };
        let fused = PlanOptions {
            fused_heads: true,
            ..unfused
        };
        let plain = LaunchPlan::new(&program, 256, Precision::F16, unfused, &weight);
        let plan = LaunchPlan::new(&program, 256, Precision::F16, fused, &weight);
        let count =
            |plan: &LaunchPlan, kernel| plan.launches.iter().filter(|l| l.kernel == kernel).count();
        assert_eq!(count(&plan, Kernel::TaskHeadsF16), 1);
        assert_eq!(count(&plan, Kernel::Mixture), 0);
        assert_eq!(count(&plan, Kernel::OutputLogit), 0);
        // The towers' two grouped GEMMs (the second writing the logits)
        // and the mixture become one launch, and the gates' candidate parts
        // run in it too; the problems left are the experts' and the gates'
        // request parts.
        assert_eq!(plain.launches.len(), 10);
        assert_eq!(plan.launches.len(), 8);
        assert_eq!(plan.problems.len(), plain.problems.len() - 6 - 3);
        let gates: Vec<BufId> = program
            .candidate_steps
            .iter()
            .filter_map(|s| match s {
                Step::Mixture { gate, .. } => *gate,
                _ => None,
            })
            .collect();
        assert_eq!(gates.len(), 3);
        assert!(plan
            .problems
            .iter()
            .all(|p| gates.iter().all(|&g| p.y != plan.at(g))));
        let heads = plan
            .launches
            .iter()
            .find(|l| l.kernel == Kernel::TaskHeadsF16)
            .unwrap();
        assert_eq!(heads.grid, (256 / HEAD_ROWS as u32, 3, 1));
        // Its table: 6 experts, 3 task offsets, then per task 4 words, 5
        // per layer (tower [128] and the logit: 2 layers) and the gate's
        // Linear: 8 words and its 2 ranges of candidate columns of x0
        // (ad_dense, then the ad_sparse inputs).
        let Arg::Ptr(Loc::Pointers(table)) = heads.args[0] else {
            panic!("{heads:?}")
        };
        assert_eq!(
            plan.pointers.len() - table,
            2 * 6 + 3 + 3 * (4 + 2 * 5 + 8 + 2 * 2)
        );
        // It runs last, after every gate and expert.
        assert_eq!(
            plan.launches.last().map(|l| l.kernel),
            Some(Kernel::TaskHeadsF16)
        );
        // Too narrow a weight image (or a width past the kernel's limit):
        // no fusion, the plain launches.
        let narrow = LaunchPlan::new(&program, 256, Precision::F16, fused, &|_| DeviceWeight {
            ldw: 16,
        });
        assert_eq!(narrow.launches, plain.launches);
        // A step outside the chains reading a mixture: no fusion either.
        let mut program = program;
        let mixture = program
            .candidate_steps
            .iter()
            .find_map(|s| match s {
                Step::Mixture { out, .. } => Some(*out),
                _ => None,
            })
            .unwrap();
        program.buffers.push(program.buffers[mixture].clone());
        let copy = View {
            buf: program.buffers.len() - 1,
            offset: 0,
            width: program.buffers[mixture].width,
        };
        program.candidate_steps.push(Step::Copy {
            input: mixture,
            out: copy,
        });
        let read = LaunchPlan::new(&program, 256, Precision::F16, fused, &weight);
        assert_eq!(count(&read, Kernel::TaskHeadsF16), 0);
        assert_eq!(count(&read, Kernel::Mixture), 1);
    }

    /// The variables are read by the CUDA runtime only (no other test reads
    /// them), so setting them here races with nothing.
    #[test]
    fn plan_options_come_from_the_environment_and_bad_values_are_named() {
        std::env::set_var("MMOE_GPU_TILES", "wide");
        std::env::set_var("MMOE_GPU_FUSED_HEADS", "1");
        std::env::set_var("MMOE_GPU_HALF_X", "0");
        std::env::set_var("MMOE_GPU_STREAMS", "1");
        std::env::set_var("MMOE_GPU_TUNE", "log");
        std::env::set_var("MMOE_GPU_UPLOAD_CHUNK", "0");
        std::env::set_var("MMOE_GPU_KERNELS", "ptx");
        std::env::set_var("MMOE_GPU_STAGING_WC", "1");
        std::env::set_var("MMOE_GPU_PDL", "1");
        std::env::set_var("MMOE_GPU_WGMMA", "1");
        std::env::set_var("MMOE_GPU_HALF_VALUES", "0");
        std::env::set_var("MMOE_GPU_FUSED_NORM", "1");
        std::env::set_var("MMOE_GPU_FUSED_LOGIT", "1");
        std::env::set_var("MMOE_GPU_HALF_ONLY", "0");
        std::env::set_var("MMOE_GPU_PACK_THREADS", "3");
        std::env::set_var("MMOE_GPU_PACK_SPIN_US", "150");
        let options = PlanOptions::from_env();
        std::env::set_var("MMOE_GPU_PACK_THREADS", "65");
        let bad_threads = PlanOptions::from_env();
        std::env::remove_var("MMOE_GPU_PACK_THREADS");
        std::env::set_var("MMOE_GPU_PACK_SPIN_US", "1ms");
        let bad_spin = PlanOptions::from_env();
        std::env::remove_var("MMOE_GPU_PACK_SPIN_US");
        std::env::set_var("MMOE_GPU_FUSED_LOGIT", "2");
        let bad_logit = PlanOptions::from_env();
        std::env::remove_var("MMOE_GPU_FUSED_LOGIT");
        std::env::set_var("MMOE_GPU_HALF_ONLY", "no");
        let bad_half_only = PlanOptions::from_env();
        std::env::remove_var("MMOE_GPU_HALF_ONLY");
        std::env::set_var("MMOE_GPU_FUSED_NORM", "yes");
        let bad_norm = PlanOptions::from_env();
        std::env::remove_var("MMOE_GPU_FUSED_NORM");
        std::env::set_var("MMOE_GPU_HALF_VALUES", "2");
        let bad_inputs = PlanOptions::from_env();
        std::env::remove_var("MMOE_GPU_HALF_VALUES");
        std::env::set_var("MMOE_GPU_PDL", "on");
        let bad_pdl = PlanOptions::from_env();
        std::env::remove_var("MMOE_GPU_PDL");
        std::env::set_var("MMOE_GPU_WGMMA", "hopper");
        let bad_wgmma = PlanOptions::from_env();
        std::env::remove_var("MMOE_GPU_WGMMA");
        std::env::set_var("MMOE_GPU_STAGING_WC", "yes");
        let bad_staging = PlanOptions::from_env();
        std::env::remove_var("MMOE_GPU_STAGING_WC");
        std::env::set_var("MMOE_GPU_KERNELS", "cubin");
        let bad_kernels = PlanOptions::from_env();
        std::env::remove_var("MMOE_GPU_KERNELS");
        std::env::set_var("MMOE_GPU_UPLOAD_CHUNK", "-1");
        let bad_chunk = PlanOptions::from_env();
        std::env::remove_var("MMOE_GPU_UPLOAD_CHUNK");
        std::env::set_var("MMOE_GPU_STREAMS", "9");
        let bad_streams = PlanOptions::from_env();
        std::env::remove_var("MMOE_GPU_STREAMS");
        std::env::set_var("MMOE_GPU_TUNE", "fast");
        let bad_tune = PlanOptions::from_env();
        std::env::set_var("MMOE_GPU_TUNE", "choice=2");
        let choice = PlanOptions::from_env().map(|o| o.tune);
        std::env::remove_var("MMOE_GPU_TUNE");
        assert_eq!(choice, Ok(Tune::Choice(2)));
        std::env::set_var("MMOE_GPU_TILES", "huge");
        let bad_tiles = PlanOptions::from_env();
        std::env::set_var("MMOE_GPU_TILES", "standard");
        std::env::set_var("MMOE_GPU_FUSED_HEADS", "yes");
        let bad_heads = PlanOptions::from_env();
        std::env::set_var("MMOE_GPU_FUSED_HEADS", "0");
        std::env::set_var("MMOE_GPU_HALF_X", "true");
        let bad_half = PlanOptions::from_env();
        std::env::remove_var("MMOE_GPU_TILES");
        std::env::remove_var("MMOE_GPU_FUSED_HEADS");
        std::env::remove_var("MMOE_GPU_HALF_X");
        assert_eq!(
            options,
            Ok(PlanOptions {
                tiles: Tiles::Wide { from_rows: 512 },
                fused_heads: true,
                half_x: false,
                half_only: false,
                streams: 1,
                tune: Tune::Log,
                upload_chunk: 0,
                staging_write_combined: true,
                half_values: false,
                pdl: true,
                wgmma: true,
                fused_norm: true,
                fused_logit: true,
                pack_threads: 3,
                pack_spin_us: 150,
                kernels: crate::gpu::kernel_image::KernelForm::Ptx,
            })
        );
        let default = PlanOptions::default();
        assert!(default.values_go_as_f16(Precision::F16));
        assert!(!default.values_go_as_f16(Precision::F32));
        for (result, expected) in [
            (bad_chunk, "MMOE_GPU_UPLOAD_CHUNK is `-1`"),
            (bad_kernels, "MMOE_GPU_KERNELS is `cubin`"),
            (bad_tune, "MMOE_GPU_TUNE is `fast`"),
            (bad_streams, "MMOE_GPU_STREAMS is `9`"),
            (bad_tiles, "MMOE_GPU_TILES is `huge`"),
            (bad_heads, "MMOE_GPU_FUSED_HEADS is `yes`"),
            (bad_half, "MMOE_GPU_HALF_X is `true`"),
            (bad_staging, "MMOE_GPU_STAGING_WC is `yes`"),
            (bad_pdl, "MMOE_GPU_PDL is `on`"),
            (bad_wgmma, "MMOE_GPU_WGMMA is `hopper`"),
            (bad_inputs, "MMOE_GPU_HALF_VALUES is `2`"),
            (bad_norm, "MMOE_GPU_FUSED_NORM is `yes`"),
            (bad_logit, "MMOE_GPU_FUSED_LOGIT is `2`"),
            (bad_half_only, "MMOE_GPU_HALF_ONLY is `no`"),
            (bad_threads, "MMOE_GPU_PACK_THREADS is `65`"),
            (bad_spin, "MMOE_GPU_PACK_SPIN_US is `1ms`"),
        ] {
            let err = result.unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        assert_eq!(PlanOptions::from_env(), Ok(PlanOptions::default()));
    }

    #[test]
    fn unaligned_ranges_fall_back_to_simt_and_fp32_never_uses_mma() {
        let config = Config::parse(
            r#"{"name": "t", "expert_dim": 4,
            "inputs": [{"name": "u", "kind": "dense", "scope": "request", "dim": 3},
                       {"name": "a", "kind": "dense", "scope": "candidate", "dim": 5}],
            "experts": [{"name": "m", "type": "mlp", "hidden": [4]}],
            "tasks": [{"name": "click"}]}"#,
        )
        .unwrap();
        let plan = Plan::build(&config, &|_| None).unwrap();
        let program = Program::lower(&config, &plan);
        let f16 = LaunchPlan::new(
            &program,
            32,
            Precision::F16,
            PlanOptions::default(),
            &|_| DeviceWeight { ldw: 16 },
        );
        // The candidate part of the first layer reads columns 3..8: not 16-aligned.
        assert!(f16
            .launches
            .iter()
            .any(|l| l.kernel == Kernel::LinearSimtF16));
        let f32 = LaunchPlan::new(
            &program,
            32,
            Precision::F32,
            PlanOptions::default(),
            &|_| DeviceWeight { ldw: 8 },
        );
        assert!(f32.launches.iter().all(|l| !matches!(
            l.kernel,
            Kernel::LinearMma32
                | Kernel::LinearMma64
                | Kernel::LinearMma128
                | Kernel::LinearSimtF16
        )));
    }
}
