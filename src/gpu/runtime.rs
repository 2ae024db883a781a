//! The CUDA runtime of the GPU path, through cudarc with dynamic loading:
//! weights uploaded once per model (shared by sessions), and per session a
//! stream, a pinned staging buffer, an activation arena and one CUDA graph per
//! batch bucket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use cudarc::driver::sys::{
    CUevent_flags, CUfunction_attribute, CUgraphInstantiate_flags, CUstreamCaptureMode,
};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream, DevicePtr,
    DeviceRepr, LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use half::f16;

use super::binding::{
    input_tensors, launch_values, pointer_table, problem_table, range_table, tensor_image,
    ArgValue, LinearArgs, Regions, TensorImage,
};
use super::kernel_image::{kernel_image, KernelImage, PTX};
use super::launch_plan::{
    bucket, dynamic_shared_bytes, needs_sm90a, DeviceWeight, Kernel, Launch, LaunchPlan,
    PlanOptions, Precision, Tune,
};
use super::staging::{
    staging_layout, write_staging_in_chunks, write_staging_shared, InputTensors, Split,
};
use super::streams::StreamOp;
use crate::error::{Error, ErrorKind, Result};
use crate::helper_threads::HelperThreads;
use crate::model::Model;
use crate::request::Request;

fn cuda_error(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::new(ErrorKind::Device, format!("CUDA: {what}: {e:?}"))
}

// SAFETY: a plain #[repr(C)] struct of integers with the exact layout of the
// kernel's parameter struct (checked by size and field order in binding.rs).
unsafe impl DeviceRepr for LinearArgs {}

enum DeviceTensor {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
}

/// A bucket's tile choices once timed (`GpuModel::tuned`).
type TunedSlot = Arc<Mutex<Option<Vec<usize>>>>;

/// A model's weights on one device, shared by every session on it.
pub struct GpuModel {
    ctx: Arc<CudaContext>,
    upload_stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    functions: Vec<CudaFunction>,
    /// Per kernel (`Kernel::ALL`), whether it can launch here: the
    /// deep-pipeline tiles need their dynamic shared memory allowed, which
    /// a device with less shared memory per block refuses.
    launchable: Vec<bool>,
    tensors: Vec<DeviceTensor>,
    pointers: Vec<u64>,
    weights: Vec<DeviceWeight>,
    precision: Precision,
    options: PlanOptions,
    device_name: String,
    /// Which compiled kernels the driver loaded, in words.
    kernels: String,
    /// Kernels launched with programmatic dependent launch
    /// (`PlanOptions::pdl`, and the sm_90a cubin loaded: its kernels wait
    /// for their inputs in their first instruction).
    pdl: bool,
    /// Per bucket, the tile choice `tune` kept for each launch: the first
    /// session to capture a bucket times them, holding the bucket's lock,
    /// and the others wait for the result and reuse it (sessions timing
    /// side by side would each time the other's launches too).
    tuned: Mutex<HashMap<usize, TunedSlot>>,
    /// Threads that help the sessions pack large requests
    /// (`PlanOptions::pack_threads`; none by default).
    packers: Option<HelperThreads>,
}

impl GpuModel {
    /// Uploads `model` to device `ordinal`. The caller has checked that the
    /// driver library is present (cudarc panics otherwise).
    pub fn new(model: &Model, ordinal: usize, precision: Precision) -> Result<GpuModel> {
        let options = PlanOptions::from_env().map_err(|e| Error::new(ErrorKind::Device, e))?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| cuda_error(&format!("cannot open device {ordinal}"), e))?;
        // SAFETY: each session uses one stream of its own and synchronizes it
        // before reading results; the weights are uploaded and synchronized
        // before any session exists. cudarc's per-slice events are not needed.
        unsafe { ctx.disable_event_tracking() };
        let device_name = ctx.name().unwrap_or_else(|_| "unknown".into());
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| cuda_error("compute capability", e))?;
        if major < 8 {
            return Err(Error::new(
                ErrorKind::Device,
                format!("CUDA device {ordinal} ({device_name}) has compute capability {major}.{minor}; the kernels need 8.0 or newer"),
            ));
        }
        let (module, loaded, kernels) =
            load_kernels(&ctx, kernel_image(major, minor, options.kernels))?;
        let sm90a = matches!(loaded, KernelImage::Cubin("sm_90a", _));
        let pdl = options.pdl && sm90a;
        let kernels = match pdl {
            true => format!("{kernels}, programmatic dependent launch"),
            false => kernels,
        };
        let functions = Kernel::ALL
            .iter()
            .map(|k| {
                module
                    .load_function(k.entry())
                    .map_err(|e| cuda_error(k.entry(), e))
            })
            .collect::<Result<Vec<_>>>()?;
        // Past 48 KB a kernel's dynamic shared memory must be allowed first
        // (in the model's context, current on this thread).
        ctx.bind_to_thread()
            .map_err(|e| cuda_error("bind context", e))?;
        // The warpgroup-MMA kernels are empty entries in every image but
        // the sm_90a cubin, and opt-in there.
        let launchable = Kernel::ALL
            .iter()
            .zip(&functions)
            .map(|(&kernel, function)| match dynamic_shared_bytes(kernel) {
                _ if needs_sm90a(kernel) && !(sm90a && options.wgmma) => false,
                0 => true,
                bytes => function
                    .set_attribute(
                        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        bytes as i32,
                    )
                    .is_ok(),
            })
            .collect();
        let stream = ctx.new_stream().map_err(|e| cuda_error("stream", e))?;
        let count = model.plan().tensors.len();
        let mut tensors = Vec::with_capacity(count);
        let mut weights = Vec::with_capacity(count);
        for id in 0..count {
            let (image, weight) = tensor_image(model, id, precision);
            let tensor = match image {
                TensorImage::F16(host) => DeviceTensor::F16(
                    stream
                        .clone_htod(&host)
                        .map_err(|e| cuda_error("upload", e))?,
                ),
                TensorImage::F32(host) => DeviceTensor::F32(
                    stream
                        .clone_htod(&host)
                        .map_err(|e| cuda_error("upload", e))?,
                ),
            };
            tensors.push(tensor);
            weights.push(weight);
        }
        stream.synchronize().map_err(|e| cuda_error("upload", e))?;
        let packers = match options.pack_threads {
            0 => None,
            count => {
                let spin = std::time::Duration::from_micros(options.pack_spin_us);
                Some(HelperThreads::new(count, "mmoe-pack", spin).map_err(|e| {
                    Error::new(
                        ErrorKind::Device,
                        format!(
                            "cannot start {count} packing threads (MMOE_GPU_PACK_THREADS): {e}"
                        ),
                    )
                })?)
            }
        };
        let pointers = tensors
            .iter()
            .map(|t| match t {
                DeviceTensor::F32(s) => s.device_ptr(&stream).0,
                DeviceTensor::F16(s) => s.device_ptr(&stream).0,
            })
            .collect();
        Ok(GpuModel {
            ctx,
            upload_stream: stream,
            _module: module,
            functions,
            launchable,
            tensors,
            pointers,
            weights,
            precision,
            options,
            device_name,
            kernels,
            pdl,
            tuned: Mutex::new(HashMap::new()),
            packers,
        })
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Which compiled kernels the driver loaded (`sm_90a cubin`, …).
    pub fn kernels(&self) -> &str {
        &self.kernels
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    fn function_index(kernel: Kernel) -> usize {
        kernel.index()
    }

    /// Whether `kernel` can launch on this device (see `launchable`).
    fn can_launch(&self, kernel: Kernel) -> bool {
        self.launchable[Self::function_index(kernel)]
    }
}

/// Launches `launch` on `stream` with programmatic dependent launch
/// (`PlanOptions::pdl`): it may start before the kernel ahead of it on the
/// stream ends, and its first instruction waits for that kernel.
fn launch_dependent(
    function: &CudaFunction,
    launch: &Launch,
    values: &[ArgValue],
    stream: &CudaStream,
) -> Result<()> {
    use cudarc::driver::sys;
    let mut params: Vec<*mut std::ffi::c_void> = values
        .iter()
        .map(|value| match value {
            ArgValue::U64(v) => v as *const u64 as *mut std::ffi::c_void,
            ArgValue::I32(v) => v as *const i32 as *mut std::ffi::c_void,
        })
        .collect();
    // SAFETY: an all-zero attribute value is a valid union (its largest
    // member is a byte array); one integer member is then set.
    let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
    value.programmaticStreamSerializationAllowed = 1;
    let mut attribute = sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
        pad: [0; 4],
        value,
    };
    let (grid, block) = (launch.grid, launch.block);
    let config = sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: block.0,
        blockDimY: block.1,
        blockDimZ: block.2,
        sharedMemBytes: dynamic_shared_bytes(launch.kernel),
        hStream: stream.cu_stream(),
        attrs: &mut attribute,
        numAttrs: 1,
    };
    // SAFETY: as in `GpuSession::launch`: the arguments match the kernel's
    // parameters in type and order, and every pointer among them is into
    // memory this session or its model owns. `params` points at `values`,
    // which outlive the call (the driver copies the arguments at launch and
    // at capture); `config` and `attribute` live across the call.
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            function.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
    .map_err(|e| cuda_error(launch.kernel.entry(), e))
}

/// Loads `image` into `ctx`, or the PTX if a cubin does not load (a driver
/// that refuses it); returns the module, the image loaded and what was
/// loaded, in words.
fn load_kernels(
    ctx: &Arc<CudaContext>,
    image: KernelImage,
) -> Result<(Arc<CudaModule>, KernelImage, String)> {
    let ptx = |note: String| {
        ctx.load_module(Ptx::from_src(PTX))
            .map(|module| (module, KernelImage::Ptx, note))
            .map_err(|e| {
                cuda_error(
                    "cannot load the kernels' PTX (is the driver older than CUDA 13.0?)",
                    e,
                )
            })
    };
    match image {
        // The driver reads the image in place: a copy is aligned as malloc
        // aligns, which an ELF image wants.
        KernelImage::Cubin(_, bytes) => match ctx.load_module(Ptx::from_binary(bytes.to_vec())) {
            Ok(module) => Ok((module, image, image.describe())),
            Err(e) => ptx(format!(
                "{} (the {} did not load: {e:?})",
                KernelImage::Ptx.describe(),
                image.describe()
            )),
        },
        KernelImage::Ptx => ptx(image.describe()),
    }
}

impl Drop for GpuModel {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        let _ = self.upload_stream.synchronize();
        self.tensors.clear();
    }
}

/// Device memory of one batch capacity, and its graph. The graph ends with
/// the download of the bucket's logits into its own pinned buffer.
struct Bucket {
    _arena: CudaSlice<f32>,
    _ranges: CudaSlice<u32>,
    _pointers: CudaSlice<u64>,
    _problems: CudaSlice<LinearArgs>,
    _logits: CudaSlice<f32>,
    pinned_logits: PinnedHostSlice<f32>,
    graph: Graph,
}

/// A captured graph that may move between threads with its session (a
/// reload prepares sessions for the threads that score).
struct Graph(CudaGraph);

// SAFETY: `CudaGraph` holds raw graph handles, which CUDA lets any thread
// use while the graph's context is current. The session binds its context
// before every launch and capture (`score`), `CudaGraph::launch` binds it
// too, and `GpuSession`'s drop binds it before its buckets (and their
// graphs) are destroyed. A session is used by one thread at a time (`&mut`).
unsafe impl Send for Graph {}

/// Where one call's time went (`GpuSession::trace_phases`; `mmoe bench
/// --phases`), µs. The host figures are wall-clock spans of `score`; the
/// device figures are CUDA event times on the session's stream.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CallPhases {
    /// Host: the request written into pinned memory, the upload pieces
    /// issued as it goes (with the bucket and staging checks before it).
    pub pack_us: f64,
    /// Host: the graph launch call.
    pub launch_us: f64,
    /// Host: the synchronize after it, until the logits are in.
    pub wait_us: f64,
    /// Host: the whole call, logits copied out included.
    pub total_us: f64,
    /// Device: from the stream passing the call's first event (as the
    /// packing starts) to the last upload piece landing.
    pub device_upload_us: f64,
    /// Device: the graph, the download of the logits included.
    pub device_graph_us: f64,
}

/// The events and records of a phase trace: three timing events recorded
/// on the stream in each call, and room for a fixed number of calls
/// (reserved up front: tracing allocates nothing per call).
struct PhaseTrace {
    started: CudaEvent,
    uploaded: CudaEvent,
    done: CudaEvent,
    calls: Vec<CallPhases>,
}

/// Per-thread GPU scoring state.
pub struct GpuSession {
    gpu: Arc<GpuModel>,
    stream: Arc<CudaStream>,
    /// The graph branches' streams besides `stream` (created at the first
    /// capture that uses them; they only ever record into a graph).
    side_streams: Vec<Arc<CudaStream>>,
    input_tensors: Vec<InputTensors>,
    pinned_staging: Option<PinnedHostSlice<u8>>,
    device_staging: Option<CudaSlice<u8>>,
    /// The address of `device_staging`, where the graphs' feature kernels
    /// read it: the staging buffer grows (a request with more ids) without
    /// the graphs, which hold the cell's address, being captured again.
    staging_cell: CudaSlice<u64>,
    buckets: HashMap<usize, Bucket>,
    /// Off unless `trace_phases` turned it on (a benchmark's breakdown).
    phases: Option<PhaseTrace>,
}

impl Drop for GpuSession {
    /// Binds the context on the dropping thread (which may not be the one
    /// that scored) and waits for the stream, before the buckets' graphs
    /// and memory are destroyed.
    fn drop(&mut self) {
        // A second try when the first returns an error some drop stored in
        // the context (cudarc returns it before binding).
        if self.gpu.ctx.bind_to_thread().is_err() {
            let _ = self.gpu.ctx.bind_to_thread();
        }
        // A stream left capturing would fail the frees below: they are
        // enqueued on it.
        abandon_capture(&self.stream);
        let _ = self.stream.synchronize();
        // The graphs launch the model's kernels: destroy them before `gpu`,
        // the first field, may drop the last reference to the model and
        // unload its module.
        self.buckets.clear();
        self.side_streams.clear();
    }
}

/// Waits for its stream if dropped while the thread panics.
struct SyncOnUnwind<'s>(&'s CudaStream);

impl Drop for SyncOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.0.synchronize();
        }
    }
}

/// Ends a capture left open on `stream` and destroys what it recorded.
/// cudarc's `end_capture` returns before ending it when the context holds
/// an error that some drop stored (`bind_to_thread` reports it first), and
/// a stream left capturing fails every later operation enqueued on it.
fn abandon_capture(stream: &CudaStream) {
    use cudarc::driver::result;
    if !capturing(stream) {
        return;
    }
    // SAFETY: the stream is alive (borrowed); a graph that ending the
    // capture returns was never instantiated and belongs to no one else,
    // so it is destroyed here and not used again.
    unsafe {
        if let Ok(graph) = result::stream::end_capture(stream.cu_stream()) {
            if !graph.is_null() {
                let _ = result::graph::destroy(graph);
            }
        }
    }
}

/// Whether `stream` is (or may be) capturing, asked of the stream itself:
/// cudarc's `capture_status` would first return (and clear) an error some
/// drop stored in the context.
fn capturing(stream: &CudaStream) -> bool {
    // SAFETY: the stream is alive (borrowed); the call only reads its status.
    let status = unsafe { cudarc::driver::result::stream::is_capturing(stream.cu_stream()) };
    !matches!(
        status,
        Ok(cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    )
}

impl GpuSession {
    pub fn new(gpu: Arc<GpuModel>, model: &Model) -> Result<GpuSession> {
        gpu.ctx
            .bind_to_thread()
            .map_err(|e| cuda_error("bind context", e))?;
        let stream = gpu.ctx.new_stream().map_err(|e| cuda_error("stream", e))?;
        let input_tensors = input_tensors(
            model,
            &gpu.pointers,
            gpu.options.values_go_as_f16(gpu.precision),
        );
        let staging_cell = stream
            .alloc_zeros::<u64>(1)
            .map_err(|e| cuda_error("staging cell", e))?;
        Ok(GpuSession {
            gpu,
            stream,
            side_streams: Vec::new(),
            input_tensors,
            pinned_staging: None,
            device_staging: None,
            staging_cell,
            buckets: HashMap::new(),
            phases: None,
        })
    }

    /// Records where the time of each of the next `calls` calls goes
    /// (`phases`); a later call starts a new trace.
    pub fn trace_phases(&mut self, calls: usize) -> Result<()> {
        let ctx = &self.gpu.ctx;
        ctx.bind_to_thread()
            .map_err(|e| cuda_error("bind context", e))?;
        let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let event = || ctx.new_event(timing).map_err(|e| cuda_error("event", e));
        self.phases = Some(PhaseTrace {
            started: event()?,
            uploaded: event()?,
            done: event()?,
            calls: Vec::with_capacity(calls),
        });
        Ok(())
    }

    /// The calls traced since `trace_phases`, in order.
    pub fn phases(&self) -> &[CallPhases] {
        self.phases.as_ref().map_or(&[], |p| &p.calls)
    }

    /// Whether the session's stream is (or may be) still capturing a graph,
    /// as after a capture that failed half-way: then no call on it can work.
    pub fn stuck_in_capture(&self) -> bool {
        capturing(&self.stream)
    }

    /// Scores a validated request into `logits` (`[candidates × tasks]`).
    pub fn score(
        &mut self,
        model: &Model,
        request: &Request<'_>,
        logits: &mut [f32],
    ) -> Result<()> {
        let entered = self.phases.is_some().then(Instant::now);
        let gpu = self.gpu.clone();
        gpu.ctx
            .bind_to_thread()
            .map_err(|e| cuda_error("bind context", e))?;
        let layout = staging_layout(model, &self.input_tensors, request)?;
        let n = request.candidates();
        if n == 0 {
            return Ok(());
        }
        let capacity = bucket(n);
        let tasks = model.num_tasks();
        // Staging first: the cell must point at a buffer before any launch.
        self.ensure_staging(layout.total)?;
        self.ensure_bucket(model, capacity)?;
        let used = layout.total;
        let (Some(pinned), Some(device_staging)) =
            (self.pinned_staging.as_mut(), self.device_staging.as_ref())
        else {
            return Err(Error::new(
                ErrorKind::Device,
                "GPU session's staging buffers are missing",
            ));
        };
        let host = pinned
            .as_mut_slice()
            .map_err(|e| cuda_error("staging", e))?;
        // Straight into pinned memory (the request's features are copied
        // once), each piece copied to the device as soon as it is written.
        let stream = self.stream.cu_stream();
        let device_at = device_staging.device_ptr(&self.stream).0;
        let mut upload = |bytes: &[u8], at: usize| {
            // SAFETY: `bytes` is a piece of the pinned buffer at offset `at`
            // and the device staging buffer holds at least as many bytes
            // (ensure_staging); the pinned buffer outlives the copy, which the
            // synchronize below waits for, and is not written again before.
            unsafe {
                cudarc::driver::result::memcpy_htod_async(device_at + at as u64, bytes, stream)
            }
            .map_err(|e| cuda_error("upload request", e))
        };
        let chunk = match gpu.options.upload_chunk {
            0 => usize::MAX,
            bytes => bytes,
        };
        let record = |event: Option<&CudaEvent>, stream: &CudaStream| match event {
            Some(event) => event
                .record(stream)
                .map_err(|e| cuda_error("record event", e)),
            None => Ok(()),
        };
        record(self.phases.as_ref().map(|p| &p.started), &self.stream)?;
        // Should anything from here on panic, the copies and the graph read
        // the pinned buffer still: a session caught by the C API's unwind
        // guard is used again, and its next call would write over them.
        let _in_flight = SyncOnUnwind(&self.stream);
        let written = match &gpu.packers {
            // Shared with the helpers, then uploaded in one copy.
            Some(helpers) if Split::default().applies(&layout) => write_staging_shared(
                model,
                &self.input_tensors,
                request,
                &layout,
                &mut host[..used],
                helpers,
                Split::default(),
            )
            .and_then(|()| upload(&host[..used], 0)),
            _ => write_staging_in_chunks(
                model,
                &self.input_tensors,
                request,
                &layout,
                &mut host[..used],
                chunk,
                &mut upload,
            ),
        };
        if let Err(e) = written {
            // Copies already issued read the pinned buffer: let them finish
            // before it can be written or freed again.
            let _ = self.stream.synchronize();
            return Err(e);
        }
        let packed = entered.map(|_| Instant::now());
        let Some(bucket) = self.buckets.get(&capacity) else {
            let _ = self.stream.synchronize();
            return Err(Error::new(
                ErrorKind::Device,
                format!("GPU session has no graph for its {capacity}-row bucket"),
            ));
        };
        let recorded = record(self.phases.as_ref().map(|p| &p.uploaded), &self.stream);
        if let Err(e) = recorded.and_then(|()| {
            bucket
                .graph
                .0
                .launch()
                .map_err(|e| cuda_error("graph launch", e))
        }) {
            // The upload pieces may still be reading the pinned buffer.
            let _ = self.stream.synchronize();
            return Err(e);
        }
        let launched = entered.map(|_| Instant::now());
        if let Err(e) = record(self.phases.as_ref().map(|p| &p.done), &self.stream) {
            // The graph and the upload pieces may still be running.
            let _ = self.stream.synchronize();
            return Err(e);
        }
        // The graph ends with the download of the bucket's logits into the
        // pinned buffer.
        self.stream
            .synchronize()
            .map_err(|e| cuda_error("synchronize", e))?;
        let synchronized = entered.map(|_| Instant::now());
        let out = bucket
            .pinned_logits
            .as_slice()
            .map_err(|e| cuda_error("logits", e))?;
        logits.copy_from_slice(&out[..n * tasks]);
        if let (Some(trace), Some(entered), Some(packed), Some(launched), Some(synchronized)) = (
            self.phases.as_mut(),
            entered,
            packed,
            launched,
            synchronized,
        ) {
            let us = |from: Instant, to: Instant| (to - from).as_secs_f64() * 1e6;
            let device_us = |from: &CudaEvent, to: &CudaEvent| {
                from.elapsed_ms(to)
                    .map(|ms| 1e3 * ms as f64)
                    .map_err(|e| cuda_error("phase timing", e))
            };
            let phases = CallPhases {
                pack_us: us(entered, packed),
                launch_us: us(packed, launched),
                wait_us: us(launched, synchronized),
                total_us: us(entered, Instant::now()),
                device_upload_us: device_us(&trace.started, &trace.uploaded)?,
                device_graph_us: device_us(&trace.uploaded, &trace.done)?,
            };
            if trace.calls.len() < trace.calls.capacity() {
                trace.calls.push(phases);
            }
        }
        Ok(())
    }

    /// Grows the staging buffers to hold `staging_bytes` (to the next power
    /// of two) and points the staging cell at the new device buffer. The
    /// captured graphs stay valid: they read the buffer through the cell.
    fn ensure_staging(&mut self, staging_bytes: usize) -> Result<()> {
        if self
            .device_staging
            .as_ref()
            .is_some_and(|s| s.len() >= staging_bytes)
        {
            return Ok(());
        }
        let bytes = staging_bytes.next_power_of_two().max(1 << 16);
        // The new buffers first: a failed allocation leaves the old ones and
        // the cell as they were. (Nothing is in flight: every call ends
        // synchronized.)
        // Cached unless the options ask for write-combined memory (see
        // `PlanOptions::staging_write_combined`).
        let flags = if self.gpu.options.staging_write_combined {
            cudarc::driver::sys::CU_MEMHOSTALLOC_WRITECOMBINED
        } else {
            0
        };
        // SAFETY: plain host memory of `bytes` u8, pinned for DMA.
        let pinned = unsafe { self.gpu.ctx.alloc_pinned_with_flags::<u8>(bytes, flags) }
            .map_err(|e| cuda_error("pinned staging", e))?;
        let device = self
            .stream
            .alloc_zeros::<u8>(bytes)
            .map_err(|e| cuda_error("device staging", e))?;
        let address = [device.device_ptr(&self.stream).0];
        let pointed = self
            .stream
            .memcpy_htod(&address, &mut self.staging_cell)
            .and_then(|()| self.stream.synchronize());
        if let Err(e) = pointed {
            // The cell may hold the new buffer's address, and that buffer is
            // freed on return: drop the old ones too, so that the next call
            // grows them again and points the cell at what it allocates.
            self.pinned_staging = None;
            self.device_staging = None;
            return Err(cuda_error("staging cell", e));
        }
        self.pinned_staging = Some(pinned);
        self.device_staging = Some(device);
        Ok(())
    }

    /// Captures the graph of `capacity` rows unless the session has it.
    fn ensure_bucket(&mut self, model: &Model, capacity: usize) -> Result<()> {
        if !self.buckets.contains_key(&capacity) {
            let bucket = self.capture(model, capacity)?;
            self.buckets.insert(capacity, bucket);
        }
        Ok(())
    }

    /// Allocates a bucket's memory and captures its launches in a graph.
    fn capture(&mut self, model: &Model, capacity: usize) -> Result<Bucket> {
        let gpu = self.gpu.clone();
        let mut plan = LaunchPlan::new(
            model.program(),
            capacity,
            gpu.precision,
            gpu.options,
            &|id| gpu.weights[id],
        );
        plan.check_launch_shapes()
            .map_err(|why| Error::new(ErrorKind::Device, format!("CUDA: {why}")))?;
        let stream = &self.stream.clone();
        let arena = stream
            .alloc_zeros::<f32>(plan.arena_len)
            .map_err(|e| cuda_error("activation memory", e))?;
        let ranges = stream
            .clone_htod(&range_table(&plan))
            .map_err(|e| cuda_error("range table", e))?;
        let arena_ptr = arena.device_ptr(stream).0;
        let pointers = stream
            .clone_htod(&pointer_table(&plan, arena_ptr, &gpu.pointers))
            .map_err(|e| cuda_error("pointer table", e))?;
        let logits_len = capacity * model.num_tasks();
        let device_logits = stream
            .alloc_zeros::<f32>(logits_len)
            .map_err(|e| cuda_error("device logits", e))?;
        // SAFETY: plain host memory of `logits_len` f32, pinned for DMA,
        // readable (no write-combining) since the host reads the scores.
        let mut pinned_logits = unsafe { gpu.ctx.alloc_pinned_with_flags::<f32>(logits_len, 0) }
            .map_err(|e| cuda_error("pinned logits", e))?;
        stream
            .synchronize()
            .map_err(|e| cuda_error("synchronize", e))?;
        let mut regions = Regions {
            tensors: &gpu.pointers,
            arena: arena_ptr,
            ranges: ranges.device_ptr(stream).0,
            pointers: pointers.device_ptr(stream).0,
            problems: 0,
            staging_cell: self.staging_cell.device_ptr(stream).0,
            logits: device_logits.device_ptr(stream).0,
        };
        let problems = stream
            .clone_htod(&problem_table(&plan, &regions))
            .map_err(|e| cuda_error("Linear problem table", e))?;
        stream
            .synchronize()
            .map_err(|e| cuda_error("synchronize", e))?;
        regions.problems = problems.device_ptr(stream).0;
        match gpu.options.tune {
            Tune::Off => {}
            Tune::Choice(k) => plan.choose_all_tiles(&|_, _| k),
            Tune::On | Tune::Log => {
                let slot = {
                    let mut tuned = gpu.tuned.lock().unwrap_or_else(PoisonError::into_inner);
                    tuned.entry(capacity).or_default().clone()
                };
                let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
                let chosen = match &*slot {
                    Some(chosen) => chosen.clone(),
                    None => {
                        // A failure leaves the slot empty: the next capture
                        // times again.
                        let chosen = self.tune(&mut plan, &regions)?;
                        *slot = Some(chosen.clone());
                        chosen
                    }
                };
                plan.choose_all_tiles(&|i, _| chosen[i]);
            }
        }
        // A choice this device cannot launch (`MMOE_GPU_TUNE=choice=K`)
        // falls back to the plan's own.
        for i in 0..plan.launches.len() {
            if !gpu.can_launch(plan.launches[i].kernel) {
                plan.choose_tiles(i, 0);
            }
        }
        // Resolve every argument and create every stream and event before
        // capture, so nothing allocates while the streams record.
        let resolved = launch_values(&plan, &regions);
        while self.side_streams.len() + 1 < plan.streams.streams {
            let side = gpu.ctx.new_stream().map_err(|e| cuda_error("stream", e))?;
            self.side_streams.push(side);
        }
        let streams: Vec<&Arc<CudaStream>> = std::iter::once(&self.stream)
            .chain(&self.side_streams)
            .collect();
        let events = (0..plan.streams.events)
            .map(|_| gpu.ctx.new_event(None))
            .collect::<std::result::Result<Vec<CudaEvent>, _>>()
            .map_err(|e| cuda_error("event", e))?;
        let device_logits_at = regions.logits;
        let host_logits = pinned_logits
            .as_mut_slice()
            .map_err(|e| cuda_error("logits", e))?;
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| cuda_error("begin capture", e))?;
        // The graph branches: the side streams join the capture by waiting
        // on events of streams in it, and stream 0 waits for each of them
        // last (streams.rs), so the capture ends joined.
        let mut recorded = Ok(());
        for op in &plan.streams.ops {
            recorded = match *op {
                StreamOp::Launch { launch, stream } => Self::launch(
                    &gpu,
                    &plan.launches[launch],
                    &resolved[launch],
                    streams[stream],
                ),
                StreamOp::Record { stream, event } => events[event]
                    .record(streams[stream])
                    .map_err(|e| cuda_error("record event", e)),
                StreamOp::Wait { stream, event } => streams[stream]
                    .wait(&events[event])
                    .map_err(|e| cuda_error("wait event", e)),
            };
            if recorded.is_err() {
                break;
            }
        }
        if recorded.is_ok() {
            // SAFETY: both buffers hold `logits_len` floats and belong to
            // the bucket, which drops its graph with them; every replay is
            // synchronized before the host reads the pinned buffer.
            recorded = unsafe {
                cudarc::driver::result::memcpy_dtoh_async(
                    host_logits,
                    device_logits_at,
                    stream.cu_stream(),
                )
            }
            .map_err(|e| cuda_error("download scores", e));
        }
        let graph = stream.end_capture(CUgraphInstantiate_flags(0));
        if graph.is_err() {
            abandon_capture(stream);
        }
        if let Err(e) = recorded {
            // A failed capture may leave a side stream in it: start afresh.
            self.side_streams.clear();
            return Err(e);
        }
        let graph = graph
            .map_err(|e| cuda_error("end capture", e))?
            .ok_or_else(|| Error::new(ErrorKind::Device, "CUDA: graph capture recorded nothing"))?;
        // Set the graph up on the device now rather than at its first launch.
        graph.upload().map_err(|e| cuda_error("graph upload", e))?;
        Ok(Bucket {
            _arena: arena,
            _ranges: ranges,
            _pointers: pointers,
            _problems: problems,
            _logits: device_logits,
            pinned_logits,
            graph: Graph(graph),
        })
    }

    /// Launches one launch of the plan on `stream` (recorded into the graph
    /// while the stream captures).
    fn launch(
        gpu: &GpuModel,
        launch: &Launch,
        values: &[ArgValue],
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        let function = &gpu.functions[GpuModel::function_index(launch.kernel)];
        if gpu.pdl {
            return launch_dependent(function, launch, values, stream);
        }
        let mut builder = stream.launch_builder(function);
        for value in values {
            match value {
                ArgValue::U64(v) => builder.arg(v),
                ArgValue::I32(v) => builder.arg(v),
            };
        }
        let config = LaunchConfig {
            grid_dim: launch.grid,
            block_dim: launch.block,
            shared_mem_bytes: dynamic_shared_bytes(launch.kernel),
        };
        // SAFETY: the arguments match the kernel's parameters (types and
        // order come from LaunchPlan, which mirrors kernels/mmoe.cu); every
        // pointer is into memory this session or its model owns, sized by
        // the plan for the bucket's rows.
        unsafe { builder.launch(config) }
            .map(|_| ())
            .map_err(|e| cuda_error(launch.kernel.entry(), e))
    }

    /// Times each grouped GEMM of `plan` with each tile size it can take
    /// (`LaunchPlan::tile_choices`) on this device, outside any graph (16
    /// runs; 2 for a choice that already takes 1.5 times the fastest so
    /// far), and keeps the fastest, the plan's own unless another is
    /// faster by 3% (a launch shorter than the host's launch overhead
    /// times the same at every size). Every choice gives the same logits,
    /// and each launch only writes its own outputs, which the graph
    /// recomputes on every call.
    /// Returns the choice kept for each launch (0 where it has none).
    fn tune(&self, plan: &mut LaunchPlan, regions: &Regions<'_>) -> Result<Vec<usize>> {
        const REPEATS: u32 = 16;
        const PROBE: u32 = 2;
        let ctx = &self.gpu.ctx;
        let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let start = ctx.new_event(timing).map_err(|e| cuda_error("event", e))?;
        let end = ctx.new_event(timing).map_err(|e| cuda_error("event", e))?;
        let stream = &self.stream;
        let mut chosen = vec![0; plan.launches.len()];
        for i in 0..plan.launches.len() {
            let choices = plan.tile_choices[i].len();
            if choices < 2 {
                continue;
            }
            let mut times = Vec::with_capacity(choices);
            let mut fastest_so_far = f32::INFINITY;
            for choice in 0..choices {
                if !self.gpu.can_launch(plan.tile_choices[i][choice].kernel) {
                    times.push(f32::INFINITY);
                    continue;
                }
                plan.choose_tiles(i, choice);
                let values = launch_values(plan, regions);
                let launch = &plan.launches[i];
                // µs per run of `runs` launches in a row.
                let timed = |runs: u32| -> Result<f32> {
                    start
                        .record(stream)
                        .map_err(|e| cuda_error("record event", e))?;
                    for _ in 0..runs {
                        Self::launch(&self.gpu, launch, &values[i], stream)?;
                    }
                    end.record(stream)
                        .map_err(|e| cuda_error("record event", e))?;
                    let ms = start
                        .elapsed_ms(&end)
                        .map_err(|e| cuda_error("tile timing", e))?;
                    Ok(1000.0 * ms / runs as f32)
                };
                // One run first: caches and the kernel's first-launch costs.
                // A choice the device refuses to launch (its resources, say)
                // is passed over; the plan's own must launch.
                if let Err(e) = Self::launch(&self.gpu, launch, &values[i], stream) {
                    let e = e.context(format_args!(
                        "tile timing, {}-row bucket, launch {i}, choice {choice}",
                        plan.capacity
                    ));
                    if choice == 0 {
                        return Err(e);
                    }
                    if self.gpu.options.tune == Tune::Log {
                        eprintln!("mmoe: GPU tiles: passed over: {}", e.message());
                    }
                    times.push(f32::INFINITY);
                    continue;
                }
                // Then a probe: a choice already half as slow again as the
                // fastest so far cannot win and is not timed further (15
                // choices per GEMM over fp16 inputs: at large buckets the
                // timing's runs add up).
                let probe = timed(PROBE)?;
                let time = if probe > 1.5 * fastest_so_far {
                    probe
                } else {
                    timed(REPEATS)?
                };
                fastest_so_far = fastest_so_far.min(time);
                times.push(time);
            }
            let fastest = (0..choices)
                .min_by(|&a, &b| times[a].total_cmp(&times[b]))
                .unwrap_or(0);
            let best = if times[fastest] < 0.97 * times[0] {
                fastest
            } else {
                0
            };
            plan.choose_tiles(i, best);
            chosen[i] = best;
            if self.gpu.options.tune == Tune::Log {
                let tried: Vec<String> = plan.tile_choices[i]
                    .iter()
                    .zip(&times)
                    .map(|(c, t)| format!("{} {t:.1} µs", c.kernel.entry()))
                    .collect();
                eprintln!(
                    "mmoe: GPU tiles, {}-row bucket, launch {i} ({} problems): {} -> {}",
                    plan.capacity,
                    plan.launches[i].problems.len(),
                    tried.join(", "),
                    plan.launches[i].kernel.entry()
                );
            }
        }
        Ok(chosen)
    }
}
