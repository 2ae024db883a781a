//! The GPU path of mmoe run on the CPU, to test it where there is no GPU.
//!
//! `kernels/mmoe.cu` is compiled for the host (`cpp/`: the CUDA builtins,
//! inline-PTX tensor-core operations and a fiber scheduler that runs each
//! block's threads with real barrier semantics), and [`EmuModel::score`]
//! runs the same launch plan, tensor images, tables and argument values as
//! the CUDA runtime (`mmoe::gpu::binding`), with host memory standing in for
//! device memory. What it checks: the kernels' indexing, fragment layouts,
//! barriers and epilogues, and the launch plan that drives them. What it
//! cannot: timing, memory-model races between blocks, the driver's JIT.
//!
//! It is slow (every thread is a fiber; a warp operation is two switches per
//! lane): small models and a few dozen candidates per call.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use mmoe::gpu::binding::{
    input_tensors, launch_values, pointer_table, problem_table, range_table, tensor_image, Regions,
    TensorImage,
};
use mmoe::gpu::launch_plan::{
    bucket, dynamic_shared_bytes, is_linear, DeviceWeight, LaunchPlan, PlanOptions, Precision,
};
use mmoe::gpu::staging::{staging_layout, write_staging};
use mmoe::{Model, Request};

pub mod memory;
use memory::DeviceMemory;

mod ffi {
    extern "C" {
        pub fn mmoe_emu_launch(
            name: *const std::ffi::c_char,
            grid: *const u32,
            block: *const u32,
            shared_bytes: u32,
            reverse_blocks: i32,
            args: *const u64,
            nargs: i32,
            error: *mut std::ffi::c_char,
            error_len: usize,
        ) -> i32;
    }
}

/// Runs kernel `name` (an entry of `kernels/mmoe.cu`) on the host, with
/// `shared_bytes` of dynamic shared memory, its blocks one after another in
/// ascending order, or descending with `reverse_blocks`.
///
/// # Safety
/// `args` must be the kernel's arguments (pointers as addresses, ints
/// sign-extended), every pointer valid for what the kernel reads and writes
/// over `grid` × `block`.
pub unsafe fn launch(
    name: &str,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    shared_bytes: u32,
    reverse_blocks: bool,
    args: &[u64],
) -> Result<(), String> {
    let name_c = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    let grid = [grid.0, grid.1, grid.2];
    let block = [block.0, block.1, block.2];
    let mut error = vec![0 as std::ffi::c_char; 512];
    // SAFETY: the strings and arrays outlive the call, `error` holds
    // error.len() bytes; the kernel's memory is the caller's promise.
    let rc = unsafe {
        ffi::mmoe_emu_launch(
            name_c.as_ptr(),
            grid.as_ptr(),
            block.as_ptr(),
            shared_bytes,
            i32::from(reverse_blocks),
            args.as_ptr(),
            args.len() as i32,
            error.as_mut_ptr(),
            error.len(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: the C side wrote a NUL-terminated message into `error`.
    let message = unsafe { std::ffi::CStr::from_ptr(error.as_ptr()) };
    Err(message.to_string_lossy().into_owned())
}

thread_local! {
    /// This thread's calls of [`EmuModel::score`] so far. The launch order
    /// flips with each, and the blocks of a call's launch `i` run in
    /// descending order when `i` plus this is odd: two calls in a row (a
    /// test's own thread) run both launch orders and each launch's blocks
    /// both ways.
    static CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A model's tensors as the device would hold them, in host memory.
pub struct EmuModel {
    model: Arc<Model>,
    precision: Precision,
    options: PlanOptions,
    // Owned here; `addresses` point into them.
    _images: Vec<DeviceMemory>,
    addresses: Vec<u64>,
    weights: Vec<DeviceWeight>,
    /// Inputs whose ids go as u64 although their tables would allow u32
    /// (`with_u64_ids`).
    u64_ids: Vec<usize>,
    /// Every grouped GEMM launched twice in a row (`with_repeated_gemms`).
    repeat_gemms: bool,
    /// Each bucket's arena, kept from call to call as a session keeps it on
    /// the device (zeroed once, when allocated): what a call leaves there
    /// (the fused epilogues' counters, say) is what the next one finds.
    /// (Keyed by rows and length.)
    arenas: RefCell<HashMap<(usize, usize), DeviceMemory>>,
}

impl EmuModel {
    pub fn new(model: Arc<Model>, precision: Precision, options: PlanOptions) -> EmuModel {
        let count = model.plan().tensors.len();
        let (mut images, mut weights) = (Vec::with_capacity(count), Vec::with_capacity(count));
        for id in 0..count {
            let (image, weight) = tensor_image(&model, id, precision);
            images.push(match image {
                TensorImage::F32(v) => DeviceMemory::from_slice(&v),
                TensorImage::F16(v) => DeviceMemory::from_slice(&v),
            });
            weights.push(weight);
        }
        let addresses = images.iter_mut().map(|m| m.address()).collect();
        EmuModel {
            model,
            precision,
            options,
            _images: images,
            addresses,
            weights,
            u64_ids: Vec::new(),
            repeat_gemms: false,
            arenas: RefCell::new(HashMap::new()),
        }
    }

    /// The same, with every Linear launch run twice in a row, as the
    /// runtime's tile timing runs them on the device between captures: a
    /// GEMM must leave what it reads, and its own scratch (the fused
    /// LayerNorm's counters), as it found them.
    pub fn with_repeated_gemms(mut self) -> EmuModel {
        self.repeat_gemms = true;
        self
    }

    /// The same, with the ids of `inputs` uploaded as u64, as the runtime
    /// uploads those of a table of 2³² rows or more (no test table is that
    /// large), so the kernels' u64 id path runs.
    pub fn with_u64_ids(mut self, inputs: &[usize]) -> EmuModel {
        self.u64_ids = inputs.to_vec();
        self
    }

    /// The launch plan the CUDA runtime would capture for `capacity` rows.
    pub fn plan(&self, capacity: usize) -> LaunchPlan {
        LaunchPlan::new(
            self.model.program(),
            capacity,
            self.precision,
            self.options,
            &|id| self.weights[id],
        )
    }

    /// Scores a valid request as the CUDA runtime does (same bucket, plan,
    /// staging and launches): logits `[candidates × tasks]`.
    pub fn score(&self, request: &Request<'_>) -> Result<Vec<f32>, String> {
        self.score_with_tiles(request, &|_, _| 0)
    }

    /// As [`EmuModel::score`], with launch `i`'s tile choice
    /// `pick(i, choices)` (`LaunchPlan::tile_choices`; 0 is the plan's own),
    /// as the runtime's tuning may choose.
    pub fn score_with_tiles(
        &self,
        request: &Request<'_>,
        pick: &dyn Fn(usize, usize) -> usize,
    ) -> Result<Vec<f32>, String> {
        let model = &self.model;
        request
            .validate(model.config())
            .map_err(|e| e.to_string())?;
        let n = request.candidates();
        let tasks = model.num_tasks();
        if n == 0 {
            return Ok(Vec::new());
        }
        let capacity = bucket(n);
        let mut plan = self.plan(capacity);
        plan.choose_all_tiles(pick);
        plan.check_launch_shapes()?;
        let mut inputs = input_tensors(
            model,
            &self.addresses,
            self.options.values_go_as_f16(self.precision),
        );
        for &index in &self.u64_ids {
            if let Some(input) = inputs.get_mut(index) {
                input.ids_u32 = false;
            }
        }
        let layout = staging_layout(model, &inputs, request).map_err(|e| e.to_string())?;
        let mut staging = DeviceMemory::zeroed(layout.total);
        write_staging(model, &inputs, request, &layout, staging.bytes_mut())
            .map_err(|e| e.to_string())?;
        // The kernels read the staging buffer's address from a cell, as on
        // the device, where the session's buffer can grow under its graphs.
        let mut staging_cell = DeviceMemory::from_slice(&[staging.address()]);
        let mut arenas = self.arenas.borrow_mut();
        let arena = arenas
            .entry((capacity, plan.arena_len))
            .or_insert_with(|| DeviceMemory::zeroed(4 * plan.arena_len));
        let mut logits = DeviceMemory::zeroed(4 * capacity * tasks);
        let mut ranges = DeviceMemory::from_slice(&range_table(&plan));
        let arena_at = arena.address();
        let mut pointers =
            DeviceMemory::from_slice(&pointer_table(&plan, arena_at, &self.addresses));
        let mut regions = Regions {
            tensors: &self.addresses,
            arena: arena_at,
            ranges: ranges.address(),
            pointers: pointers.address(),
            problems: 0,
            staging_cell: staging_cell.address(),
            logits: logits.address(),
        };
        let mut problems = DeviceMemory::from_slice(&problem_table(&plan, &regions));
        regions.problems = problems.address();
        let values = launch_values(&plan, &regions);
        // The launches in an order the graph branches allow (streams.rs):
        // the plan's order, or side streams first, flipped every call, so a
        // dependency the branches miss changes the logits.
        let calls = CALLS.with(|calls| calls.replace(calls.get() + 1));
        let from_last = calls % 2 == 1;
        let order = plan.streams.execution_order(from_last);
        if order.len() != plan.launches.len() {
            return Err(format!(
                "the stream schedule runs {} of {} launches",
                order.len(),
                plan.launches.len()
            ));
        }
        for (position, at) in order.into_iter().enumerate() {
            let (step, values) = (&plan.launches[at], &values[at]);
            let reverse_blocks = (position + calls) % 2 == 1;
            let words: Vec<u64> = values.iter().map(|v| v.word()).collect();
            let shared = dynamic_shared_bytes(step.kernel);
            let runs = if self.repeat_gemms && is_linear(step.kernel) {
                2
            } else {
                1
            };
            for run in 0..runs {
                // SAFETY: the plan's arguments for its kernels, resolved
                // into memory owned here (arena, tables, staging, logits) or
                // by this model (tensor images), sized by the plan for
                // `capacity` rows, exactly as the CUDA runtime binds them.
                unsafe {
                    launch(
                        step.kernel.entry(),
                        step.grid,
                        step.block,
                        shared,
                        reverse_blocks != (run == 1),
                        &words,
                    )
                }?;
            }
        }
        Ok(logits.read(n * tasks))
    }
}
