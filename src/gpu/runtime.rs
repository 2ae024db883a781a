//! The CUDA runtime of the GPU path, through cudarc with dynamic loading:
//! weights uploaded once per model (shared by sessions), and per session a
//! stream, a pinned staging buffer, an activation arena and one CUDA graph per
//! batch bucket.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use half::f16;

use super::launch_plan::{
    bucket, f16_ldw, f16_rows, Arg, DeviceWeight, Kernel, LaunchPlan, LinearLaunch, Loc,
    PointerEntry, Precision,
};
use super::staging::{staging_layout, write_staging, InputTensors};
use crate::error::{Error, ErrorKind, Result};
use crate::format::PANEL;
use crate::model::{Model, Values};
use crate::plan::TensorRole;
use crate::request::Request;

/// The kernels, compiled ahead of time by `scripts/build_kernels.py`.
const PTX: &str = include_str!("../../kernels/ptx/mmoe.ptx");

fn cuda_error(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::new(ErrorKind::Device, format!("CUDA: {what}: {e:?}"))
}

/// `struct LinearArgs` of `kernels/mmoe.cu`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct LinearArgs {
    x: u64,
    ldx: i32,
    in_off: i32,
    w: u64,
    ldw: i32,
    n: i32,
    ranges: u64,
    nranges: i32,
    _pad0: i32,
    bias: u64,
    add: u64,
    act: i32,
    _pad1: i32,
    y: u64,
    ldy: i32,
    out_off: i32,
    rows: i32,
    _pad2: i32,
    scale: u64,
    ldscale: i32,
    _pad3: i32,
    shift: u64,
    ldshift: i32,
    _pad4: i32,
}
const _: () = assert!(std::mem::size_of::<LinearArgs>() == 128);

// SAFETY: a plain #[repr(C)] struct of integers with the exact layout of the
// kernel's parameter struct (checked by size above and field order).
unsafe impl DeviceRepr for LinearArgs {}

enum DeviceTensor {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
}

/// A model's weights on one device, shared by every session on it.
pub struct GpuModel {
    ctx: Arc<CudaContext>,
    upload_stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    functions: Vec<CudaFunction>,
    tensors: Vec<DeviceTensor>,
    pointers: Vec<u64>,
    weights: Vec<DeviceWeight>,
    precision: Precision,
    device_name: String,
}

impl GpuModel {
    /// Uploads `model` to device `ordinal`. The caller has checked that the
    /// driver library is present (cudarc panics otherwise).
    pub fn new(model: &Model, ordinal: usize, precision: Precision) -> Result<GpuModel> {
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
        let module = ctx.load_module(Ptx::from_src(PTX)).map_err(|e| {
            cuda_error(
                "cannot load the kernels' PTX (is the driver older than CUDA 13.0?)",
                e,
            )
        })?;
        let functions = Kernel::ALL
            .iter()
            .map(|k| {
                module
                    .load_function(k.entry())
                    .map_err(|e| cuda_error(k.entry(), e))
            })
            .collect::<Result<Vec<_>>>()?;
        let stream = ctx.new_stream().map_err(|e| cuda_error("stream", e))?;
        let plan = model.plan();
        let mut tensors = Vec::with_capacity(plan.tensors.len());
        let mut weights = Vec::with_capacity(plan.tensors.len());
        for (id, spec) in plan.tensors.iter().enumerate() {
            let values = model.values(id);
            let (tensor, weight) = if spec.role == TensorRole::LinearWeight {
                let (n, k) = (spec.shape[0], spec.shape[1]);
                match precision {
                    Precision::F16 => {
                        let (rows, ldw) = (f16_rows(n), f16_ldw(k));
                        let host = row_major(&values, n, k, rows, ldw, f16::from_f32);
                        let slice = stream
                            .clone_htod(&host)
                            .map_err(|e| cuda_error("upload", e))?;
                        (DeviceTensor::F16(slice), DeviceWeight { ldw })
                    }
                    Precision::F32 => {
                        let host = row_major(&values, n, k, n, k, |v| v);
                        let slice = stream
                            .clone_htod(&host)
                            .map_err(|e| cuda_error("upload", e))?;
                        (DeviceTensor::F32(slice), DeviceWeight { ldw: k })
                    }
                }
            } else {
                let mut host = vec![0.0f32; values.len().max(1)];
                values.read_into(0, &mut host[..values.len()]);
                let slice = stream
                    .clone_htod(&host)
                    .map_err(|e| cuda_error("upload", e))?;
                (DeviceTensor::F32(slice), DeviceWeight { ldw: 0 })
            };
            tensors.push(tensor);
            weights.push(weight);
        }
        stream.synchronize().map_err(|e| cuda_error("upload", e))?;
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
            tensors,
            pointers,
            weights,
            precision,
            device_name,
        })
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    fn input_tensors(&self, model: &Model) -> Vec<InputTensors> {
        let ptr = |id: Option<usize>| id.map_or(0, |id| self.pointers[id]);
        model
            .plan()
            .inputs
            .iter()
            .map(|i| InputTensors {
                table: ptr(i.embedding),
                mean: ptr(i.mean),
                std: ptr(i.std),
            })
            .collect()
    }
}

impl Drop for GpuModel {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        let _ = self.upload_stream.synchronize();
        self.tensors.clear();
    }
}

/// A Linear weight from the file's panel layout into row-major
/// `[rows, ldw]`, zero padded.
fn row_major<T: Copy + Default>(
    values: &Values<'_>,
    n: usize,
    k: usize,
    rows: usize,
    ldw: usize,
    convert: impl Fn(f32) -> T,
) -> Vec<T> {
    let mut out = vec![T::default(); rows * ldw];
    for i in 0..n {
        for kk in 0..k {
            let v = values.get((i / PANEL) * k * PANEL + kk * PANEL + i % PANEL);
            out[i * ldw + kk] = convert(v);
        }
    }
    out
}

/// Device memory of one batch capacity, and its graph.
struct Bucket {
    _arena: CudaSlice<f32>,
    _ranges: CudaSlice<u32>,
    _pointers: CudaSlice<u64>,
    _problems: CudaSlice<LinearArgs>,
    graph: CudaGraph,
}

/// Per-thread GPU scoring state.
pub struct GpuSession {
    gpu: Arc<GpuModel>,
    stream: Arc<CudaStream>,
    input_tensors: Vec<InputTensors>,
    pinned_staging: Option<PinnedHostSlice<u8>>,
    device_staging: Option<CudaSlice<u8>>,
    logits: Option<CudaSlice<f32>>,
    pinned_logits: Option<PinnedHostSlice<f32>>,
    buckets: HashMap<usize, Bucket>,
}

impl GpuSession {
    pub fn new(gpu: Arc<GpuModel>, model: &Model) -> Result<GpuSession> {
        gpu.ctx
            .bind_to_thread()
            .map_err(|e| cuda_error("bind context", e))?;
        let stream = gpu.ctx.new_stream().map_err(|e| cuda_error("stream", e))?;
        let input_tensors = gpu.input_tensors(model);
        Ok(GpuSession {
            gpu,
            stream,
            input_tensors,
            pinned_staging: None,
            device_staging: None,
            logits: None,
            pinned_logits: None,
            buckets: HashMap::new(),
        })
    }

    /// Scores a validated request into `logits` (`[candidates × tasks]`).
    pub fn score(
        &mut self,
        model: &Model,
        request: &Request<'_>,
        logits: &mut [f32],
    ) -> Result<()> {
        let gpu = self.gpu.clone();
        gpu.ctx
            .bind_to_thread()
            .map_err(|e| cuda_error("bind context", e))?;
        let layout = staging_layout(model, request)?;
        let n = request.candidates();
        if n == 0 {
            return Ok(());
        }
        let capacity = bucket(n);
        let tasks = model.num_tasks();
        self.ensure_io(layout.total, capacity * tasks)?;
        if !self.buckets.contains_key(&capacity) {
            let bucket = self.capture(model, capacity)?;
            self.buckets.insert(capacity, bucket);
        }
        let used = layout.total;
        let (Some(pinned), Some(device_staging), Some(device_logits), Some(pinned_logits)) = (
            self.pinned_staging.as_mut(),
            self.device_staging.as_ref(),
            self.logits.as_ref(),
            self.pinned_logits.as_mut(),
        ) else {
            return Err(Error::new(
                ErrorKind::Device,
                "GPU session buffers are missing",
            ));
        };
        let host = pinned
            .as_mut_slice()
            .map_err(|e| cuda_error("staging", e))?;
        // Straight into pinned memory: the request's features are copied once.
        write_staging(
            model,
            &self.input_tensors,
            request,
            &layout,
            &mut host[..used],
        )?;
        let stream = self.stream.cu_stream();
        // SAFETY: the pinned buffer holds at least `used` bytes, the device
        // staging buffer at least as many (ensure_io); both outlive the
        // stream's work, which is synchronized below before returning.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(
                device_staging.device_ptr(&self.stream).0,
                &host[..used],
                stream,
            )
        }
        .map_err(|e| cuda_error("upload request", e))?;
        let bucket = &self.buckets[&capacity];
        bucket
            .graph
            .launch()
            .map_err(|e| cuda_error("graph launch", e))?;
        let out = pinned_logits
            .as_mut_slice()
            .map_err(|e| cuda_error("logits", e))?;
        // SAFETY: `out` holds capacity × tasks floats, the device buffer as
        // many; the copy completes before the synchronize below returns.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(
                &mut out[..n * tasks],
                device_logits.device_ptr(&self.stream).0,
                stream,
            )
        }
        .map_err(|e| cuda_error("download scores", e))?;
        self.stream
            .synchronize()
            .map_err(|e| cuda_error("synchronize", e))?;
        logits.copy_from_slice(&out[..n * tasks]);
        Ok(())
    }

    /// Grows the staging and output buffers; growing drops the captured
    /// graphs, which hold the old addresses.
    fn ensure_io(&mut self, staging_bytes: usize, logits_len: usize) -> Result<()> {
        let ctx = &self.gpu.ctx;
        let staging_ok = self
            .device_staging
            .as_ref()
            .is_some_and(|s| s.len() >= staging_bytes);
        let logits_ok = self.logits.as_ref().is_some_and(|s| s.len() >= logits_len);
        if staging_ok && logits_ok {
            return Ok(());
        }
        self.buckets.clear();
        if !staging_ok {
            let bytes = staging_bytes.next_power_of_two().max(1 << 16);
            // SAFETY: plain host memory of `bytes` u8, pinned for DMA.
            self.pinned_staging = Some(
                unsafe { ctx.alloc_pinned::<u8>(bytes) }
                    .map_err(|e| cuda_error("pinned staging", e))?,
            );
            self.device_staging = Some(
                self.stream
                    .alloc_zeros::<u8>(bytes)
                    .map_err(|e| cuda_error("device staging", e))?,
            );
        }
        if !logits_ok {
            let len = logits_len.next_power_of_two();
            // SAFETY: plain host memory of `len` f32, pinned for DMA, readable
            // (no write-combining) since the host reads the scores.
            self.pinned_logits = Some(
                unsafe { ctx.alloc_pinned_with_flags::<f32>(len, 0) }
                    .map_err(|e| cuda_error("pinned logits", e))?,
            );
            self.logits = Some(
                self.stream
                    .alloc_zeros::<f32>(len)
                    .map_err(|e| cuda_error("device logits", e))?,
            );
        }
        Ok(())
    }

    /// Allocates a bucket's memory and captures its launches in a graph.
    fn capture(&self, model: &Model, capacity: usize) -> Result<Bucket> {
        let gpu = &self.gpu;
        let plan = LaunchPlan::new(model.program(), capacity, gpu.precision, &|id| {
            gpu.weights[id]
        });
        let stream = &self.stream;
        let arena = stream
            .alloc_zeros::<f32>(plan.arena_len)
            .map_err(|e| cuda_error("activation memory", e))?;
        let ranges_host = if plan.ranges.is_empty() {
            vec![0u32]
        } else {
            plan.ranges.clone()
        };
        let ranges = stream
            .clone_htod(&ranges_host)
            .map_err(|e| cuda_error("range table", e))?;
        let arena_ptr = arena.device_ptr(stream).0;
        let pointers_host: Vec<u64> = plan
            .pointers
            .iter()
            .map(|p| match *p {
                PointerEntry::Arena(offset) => arena_ptr + 4 * offset as u64,
                PointerEntry::Value(v) => v,
            })
            .chain(std::iter::once(0))
            .collect();
        let pointers = stream
            .clone_htod(&pointers_host)
            .map_err(|e| cuda_error("pointer table", e))?;
        stream
            .synchronize()
            .map_err(|e| cuda_error("synchronize", e))?;
        let staging = self
            .device_staging
            .as_ref()
            .map_or(0, |s| s.device_ptr(stream).0);
        let logits = self.logits.as_ref().map_or(0, |s| s.device_ptr(stream).0);
        let (ranges_ptr, pointers_ptr) =
            (ranges.device_ptr(stream).0, pointers.device_ptr(stream).0);
        let base = |loc: Loc| -> u64 {
            match loc {
                Loc::Arena(offset) => arena_ptr + 4 * offset as u64,
                Loc::Tensor(id) => gpu.pointers[id],
                Loc::Ranges(offset) => ranges_ptr + 4 * offset as u64,
                Loc::Pointers(offset) => pointers_ptr + 8 * offset as u64,
                Loc::Staging => staging,
                Loc::Logits => logits,
                Loc::Problems(_) | Loc::Null => 0,
            }
        };
        let mut problems_host: Vec<LinearArgs> = plan
            .problems
            .iter()
            .map(|l| linear_args(l, &base))
            .collect();
        if problems_host.is_empty() {
            problems_host.push(LinearArgs::default());
        }
        let problems = stream
            .clone_htod(&problems_host)
            .map_err(|e| cuda_error("Linear problem table", e))?;
        stream
            .synchronize()
            .map_err(|e| cuda_error("synchronize", e))?;
        let problems_ptr = problems.device_ptr(stream).0;
        let resolve = |loc: Loc| -> u64 {
            match loc {
                Loc::Problems(index) => {
                    problems_ptr + (std::mem::size_of::<LinearArgs>() * index) as u64
                }
                other => base(other),
            }
        };
        // Resolve every argument before capture, so nothing allocates while
        // the stream records.
        enum Value {
            U64(u64),
            I32(i32),
        }
        let resolved: Vec<Vec<Value>> = plan
            .launches
            .iter()
            .map(|launch| {
                launch
                    .args
                    .iter()
                    .map(|arg| match *arg {
                        Arg::Ptr(loc) => Value::U64(resolve(loc)),
                        Arg::I32(v) => Value::I32(v),
                    })
                    .collect()
            })
            .collect();
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| cuda_error("begin capture", e))?;
        let mut launched = Ok(());
        for (launch, values) in plan.launches.iter().zip(&resolved) {
            let function = &gpu.functions[Kernel::ALL
                .iter()
                .position(|k| *k == launch.kernel)
                .unwrap_or(0)];
            let mut builder = stream.launch_builder(function);
            for value in values {
                match value {
                    Value::U64(v) => builder.arg(v),
                    Value::I32(v) => builder.arg(v),
                };
            }
            let config = LaunchConfig {
                grid_dim: launch.grid,
                block_dim: launch.block,
                shared_mem_bytes: 0,
            };
            // SAFETY: the arguments match the kernel's parameters (types and
            // order come from LaunchPlan, which mirrors kernels/mmoe.cu); every
            // pointer is into memory this session or its model owns, sized by
            // the plan for `capacity` rows.
            if let Err(e) = unsafe { builder.launch(config) } {
                launched = Err(cuda_error(launch.kernel.entry(), e));
                break;
            }
        }
        let graph = stream
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(|e| cuda_error("end capture", e))?;
        launched?;
        let graph = graph
            .ok_or_else(|| Error::new(ErrorKind::Device, "CUDA: graph capture recorded nothing"))?;
        Ok(Bucket {
            _arena: arena,
            _ranges: ranges,
            _pointers: pointers,
            _problems: problems,
            graph,
        })
    }
}

fn linear_args(l: &LinearLaunch, resolve: &dyn Fn(Loc) -> u64) -> LinearArgs {
    LinearArgs {
        x: resolve(l.x),
        ldx: l.ldx,
        in_off: l.in_off,
        w: resolve(l.w),
        ldw: l.ldw,
        n: l.n,
        ranges: resolve(l.ranges),
        nranges: l.nranges,
        _pad0: 0,
        bias: resolve(l.bias),
        add: resolve(l.add),
        act: l.act,
        _pad1: 0,
        y: resolve(l.y),
        ldy: l.ldy,
        out_off: l.out_off,
        rows: l.rows,
        _pad2: 0,
        scale: resolve(l.scale),
        ldscale: l.ldscale,
        _pad3: 0,
        shift: resolve(l.shift),
        ldshift: l.ldshift,
        _pad4: 0,
    }
}
