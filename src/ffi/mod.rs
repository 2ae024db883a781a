//! The stable C ABI (`include/mmoe.h`, generated from this module by
//! cbindgen in `build.rs`). Conventions:
//!
//! - Every function returns an `mmoe_status` (0 is success) unless it cannot
//!   fail; on failure `mmoe_last_error` gives this thread's message, naming
//!   the input, candidate, tensor or file at fault.
//! - Outputs are written only on success.
//! - Every `*_open` / `*_new` has a `*_free` that accepts NULL.
//! - A pointer with a length of 0 may be NULL (an empty array).
#![allow(non_camel_case_types)]
// These functions are called from C, where `unsafe` does not exist; their
// pointer contracts are in their docs (and the header), and every pointer is
// checked for NULL and alignment before use.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod boundary;

use std::ffi::{c_char, CStr};
use std::path::PathBuf;
use std::sync::Arc;

use boundary::{call, invalid};

use crate::config::{InputKind, Scope};
use crate::cpu::CpuMode;
use crate::engine::{Engine, EngineSession};
use crate::error::{Error, Result};
use crate::gpu::Device;
use crate::model::{GpuPrecision, Model, OpenOptions};
use crate::request::Request;
use crate::session::Scores;

/// Status codes. Values are fixed and never reused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum mmoe_status {
    MMOE_STATUS_OK = 0,
    /// A file could not be read.
    MMOE_STATUS_IO = 1,
    /// The model's config breaks the model contract.
    MMOE_STATUS_CONFIG = 2,
    /// A tensor is missing, extra, misshaped or out of range.
    MMOE_STATUS_TENSOR = 3,
    /// The model file is malformed, truncated or of another version.
    MMOE_STATUS_FORMAT = 4,
    /// A checksum does not match (corrupt file).
    MMOE_STATUS_CHECKSUM = 5,
    /// The request is invalid (lengths, CSR offsets, NaN where not allowed).
    MMOE_STATUS_REQUEST = 6,
    /// An argument is invalid (NULL pointer, wrong output length, index).
    MMOE_STATUS_ARGUMENT = 7,
    /// The GPU path is unavailable or failed.
    MMOE_STATUS_DEVICE = 8,
    /// A bug in mmoe was caught at the boundary; the process is intact.
    MMOE_STATUS_INTERNAL = 9,
}

/// Where a model runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum mmoe_device {
    MMOE_DEVICE_CPU = 0,
    /// The CUDA device `device_ordinal`; an error without one.
    MMOE_DEVICE_CUDA = 1,
    /// CUDA when usable, else the CPU.
    MMOE_DEVICE_AUTO = 2,
}

/// Arithmetic of the CPU path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum mmoe_compute_mode {
    /// fp32 accumulation (the default; the parity target).
    MMOE_COMPUTE_EXACT = 0,
    /// AVX512-BF16 dot products where the CPU has them and they are faster
    /// than fp32 FMAs, else exact (`MMOE_CPU_BF16=always`: wherever it has them).
    MMOE_COMPUTE_BF16 = 1,
}

/// Arithmetic of the GPU path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum mmoe_gpu_precision {
    MMOE_GPU_F16 = 0,
    MMOE_GPU_F32 = 1,
}

/// An input's kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum mmoe_input_kind {
    MMOE_INPUT_DENSE = 0,
    MMOE_INPUT_SPARSE = 1,
}

/// An input's scope.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum mmoe_scope {
    /// One value per request.
    MMOE_SCOPE_REQUEST = 0,
    /// One value per candidate.
    MMOE_SCOPE_CANDIDATE = 1,
}

/// How to open an engine. Start from `mmoe_open_options_default()`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mmoe_open_options {
    pub device: mmoe_device,
    pub device_ordinal: u32,
    pub compute_mode: mmoe_compute_mode,
    pub gpu_precision: mmoe_gpu_precision,
    /// Threads each session splits a request's candidates over (CPU); 0 or 1:
    /// none; at most 256.
    pub threads: u32,
    /// Nonzero: check every tensor checksum at open and reload.
    pub verify_checksums: u32,
}

/// `mmoe_open_options` as C fills it, its enum fields read as integers: a
/// value outside an enum (an uninitialised field, a newer header) is then an
/// error, where reading it as a Rust enum would be undefined behaviour.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawOpenOptions {
    device: u32,
    device_ordinal: u32,
    compute_mode: u32,
    gpu_precision: u32,
    threads: u32,
    verify_checksums: u32,
}

// The two structs must have one layout (a C enum is an int here).
const _: () = assert!(
    std::mem::size_of::<RawOpenOptions>() == std::mem::size_of::<mmoe_open_options>()
        && std::mem::align_of::<RawOpenOptions>() == std::mem::align_of::<mmoe_open_options>()
        && std::mem::size_of::<mmoe_device>() == 4
        && std::mem::size_of::<mmoe_compute_mode>() == 4
        && std::mem::size_of::<mmoe_gpu_precision>() == 4
);

impl From<mmoe_open_options> for RawOpenOptions {
    fn from(options: mmoe_open_options) -> RawOpenOptions {
        RawOpenOptions {
            device: options.device as u32,
            device_ordinal: options.device_ordinal,
            compute_mode: options.compute_mode as u32,
            gpu_precision: options.gpu_precision as u32,
            threads: options.threads,
            verify_checksums: options.verify_checksums,
        }
    }
}

impl RawOpenOptions {
    /// The engine's options, each enum field checked.
    fn open_options(&self) -> Result<OpenOptions> {
        let cuda = Device::Cuda(self.device_ordinal as usize);
        let devices = [("CPU", Device::Cpu), ("CUDA", cuda), ("AUTO", Device::Auto)];
        let precisions = [("F16", GpuPrecision::F16), ("F32", GpuPrecision::F32)];
        let modes = [("EXACT", CpuMode::Exact), ("BF16", CpuMode::Bf16)];
        Ok(OpenOptions {
            verify_checksums: self.verify_checksums != 0,
            device: enum_field("device", "mmoe_device", self.device, &devices)?,
            gpu_precision: enum_field(
                "gpu_precision",
                "mmoe_gpu_precision",
                self.gpu_precision,
                &precisions,
            )?,
            cpu_mode: enum_field(
                "compute_mode",
                "mmoe_compute_mode",
                self.compute_mode,
                &modes,
            )?,
            // MMOE_CPU_BF16=always does it from C, C++ and Java.
            bf16_even_if_slower: false,
        })
    }

    /// Intra-request threads per session, at most [`crate::MAX_THREADS`].
    fn threads(&self) -> Result<usize> {
        let threads = self.threads as usize;
        if threads > crate::MAX_THREADS {
            return Err(invalid(format!(
                "options.threads {threads} is above the limit of {} threads per session",
                crate::MAX_THREADS
            )));
        }
        Ok(threads.max(1))
    }
}

/// The value of C enum field `options.<field>` (of type `type_name`, whose
/// values are the indices of `variants`), or an error listing them.
fn enum_field<T: Copy>(
    field: &str,
    type_name: &str,
    value: u32,
    variants: &[(&str, T)],
) -> Result<T> {
    variants
        .get(value as usize)
        .map(|&(_, v)| v)
        .ok_or_else(|| {
            let listed: Vec<String> = variants
                .iter()
                .enumerate()
                .map(|(i, (name, _))| format!("{i} {name}"))
                .collect();
            invalid(format!(
                "options.{field} {value} is not an {type_name} ({})",
                listed.join(", ")
            ))
        })
}

/// One input's features in a request. Set `dense`/`dense_len` for a dense
/// input (`dim` floats for request scope, `candidates × dim` row-major for
/// candidate scope; NaN marks a missing value), or `ids`/`ids_len` and
/// `offsets`/`offsets_len` for a sparse one (CSR: bag b is
/// `ids[offsets[b]..offsets[b+1]]`; one bag for request scope, one per
/// candidate otherwise).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mmoe_feature {
    /// The input's index in the model (see `mmoe_engine_input_index`).
    pub input: u32,
    pub dense: *const f32,
    pub dense_len: usize,
    pub ids: *const u64,
    pub ids_len: usize,
    pub offsets: *const u32,
    pub offsets_len: usize,
}

/// What a caller needs to know about one input.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mmoe_input_info {
    pub kind: mmoe_input_kind,
    pub scope: mmoe_scope,
    pub dim: usize,
}

/// An engine: thread-safe, owns the current model, reloadable.
pub struct mmoe_engine {
    _private: [u8; 0],
}

/// A session: scratch for one thread at a time, bound to one engine.
pub struct mmoe_session {
    _private: [u8; 0],
}

/// What the opaque handles point to. Each is a `Box` made by its `_open` /
/// `_new` and released only by its `_free`.
struct EngineHandle {
    engine: Arc<Engine>,
    /// Intra-request threads of the sessions it creates.
    threads: usize,
}
struct SessionHandle {
    session: EngineSession,
    /// The storage of the last request's features, reused by the next call
    /// (emptied: it borrows nothing between calls).
    request: Request<'static>,
}

// The header promises an engine to any thread at once and a session to one
// thread at a time, whichever it is.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_and_sync::<EngineHandle>();
    send::<SessionHandle>();
};

fn engine_ref<'a>(engine: *const mmoe_engine) -> Result<&'a EngineHandle> {
    // SAFETY: non-null engine pointers come from mmoe_engine_open (a Box of
    // EngineHandle) and stay valid until mmoe_engine_free, as the header
    // requires of callers.
    unsafe { (engine as *const EngineHandle).as_ref() }.ok_or_else(|| invalid("engine is NULL"))
}

fn session_mut<'a>(session: *mut mmoe_session) -> Result<&'a mut SessionHandle> {
    // SAFETY: non-null session pointers come from mmoe_session_new (a Box of
    // SessionHandle), are valid until mmoe_session_free and, as the header
    // requires, are used by one thread at a time.
    unsafe { (session as *mut SessionHandle).as_mut() }.ok_or_else(|| invalid("session is NULL"))
}

/// A length no array can have (over `isize::MAX` bytes, e.g. a `n - 1` that
/// wrapped) is an error: a slice of it would be undefined behaviour.
fn check_length<T>(len: usize, what: &impl std::fmt::Display) -> Result<()> {
    if len > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(invalid(format!(
            "{what} has length {len}, more than memory can hold"
        )));
    }
    Ok(())
}

/// The bytes `[ptr, ptr + len elements)`, to check that arrays do not
/// overlap; empty for NULL or a length of 0.
fn byte_range<T>(ptr: *const T, len: usize) -> std::ops::Range<usize> {
    let start = ptr as usize;
    match ptr.is_null() || len == 0 {
        true => start..start,
        false => start..start.saturating_add(len.saturating_mul(std::mem::size_of::<T>())),
    }
}

fn overlap(a: &std::ops::Range<usize>, b: &std::ops::Range<usize>) -> bool {
    // An empty array shares no byte with anything, wherever it points.
    !a.is_empty() && !b.is_empty() && a.start < b.end && b.start < a.end
}

/// A slice from a C pointer and length; `(NULL, 0)` is empty.
fn slice<'a, T>(ptr: *const T, len: usize, what: impl std::fmt::Display) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(invalid(format!("{what} is NULL with length {len}")));
    }
    if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(invalid(format!(
            "{what} is not aligned for its element type"
        )));
    }
    check_length::<T>(len, &what)?;
    // SAFETY: non-null, aligned, at most isize::MAX bytes, and the caller promises `len` readable
    // elements that outlive the call (header contract).
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

fn slice_mut<'a, T>(
    ptr: *mut T,
    len: usize,
    what: impl std::fmt::Display,
) -> Result<Option<&'a mut [T]>> {
    if ptr.is_null() {
        return if len == 0 {
            Ok(None)
        } else {
            Err(invalid(format!("{what} is NULL with length {len}")))
        };
    }
    if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(invalid(format!(
            "{what} is not aligned for its element type"
        )));
    }
    check_length::<T>(len, &what)?;
    // SAFETY: non-null, aligned, at most isize::MAX bytes, and the caller promises `len` writable
    // elements, not aliased during the call (header contract).
    Ok(Some(unsafe { std::slice::from_raw_parts_mut(ptr, len) }))
}

fn path(text: *const c_char) -> Result<PathBuf> {
    if text.is_null() {
        return Err(invalid("path is NULL"));
    }
    // SAFETY: non-null, and the caller promises a NUL-terminated string.
    let text = unsafe { CStr::from_ptr(text) };
    let text = text
        .to_str()
        .map_err(|_| invalid("path is not valid UTF-8"))?;
    Ok(PathBuf::from(text))
}

/// Copies `text` and a NUL into `buf` (when `buf_len` > 0, truncating) and
/// stores the full length (without NUL) in `out_len` when not NULL.
fn copy_text(text: &str, buf: *mut c_char, buf_len: usize, out_len: *mut usize) -> Result<()> {
    if buf_len > 0 && buf.is_null() {
        return Err(invalid("buffer is NULL with a nonzero length"));
    }
    if !out_len.is_null() {
        // SAFETY: non-null, the caller passes a writable size_t.
        unsafe { *out_len = text.len() };
    }
    if buf_len > 0 {
        let n = text.len().min(buf_len - 1);
        // SAFETY: `buf` holds `buf_len` bytes (caller contract); n + 1 ≤ buf_len.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr() as *const c_char, buf, n);
            *buf.add(n) = 0;
        }
    }
    Ok(())
}

/// A text of the serving model, copied as `copy_text` copies.
fn model_text(
    engine: *const mmoe_engine,
    text: fn(&Model) -> &str,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> mmoe_status {
    call(|| {
        copy_text(
            text(&engine_ref(engine)?.engine.model()),
            buf,
            buf_len,
            out_len,
        )
    })
}

fn write_out<T>(out: *mut T, value: T, what: &str) -> Result<()> {
    if out.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-null; the caller passes a writable location of type T.
    unsafe { out.write(value) };
    Ok(())
}

/// The library version, `MAJOR * 10000 + MINOR * 100 + PATCH` (matches
/// `MMOE_VERSION_NUMBER` of the header the caller compiled against).
#[no_mangle]
pub extern "C" fn mmoe_version_number() -> u32 {
    version_number()
}

pub(crate) fn version_number() -> u32 {
    let part = |s: &str| s.parse::<u32>().unwrap_or(0);
    part(env!("CARGO_PKG_VERSION_MAJOR")) * 10000
        + part(env!("CARGO_PKG_VERSION_MINOR")) * 100
        + part(env!("CARGO_PKG_VERSION_PATCH"))
}

/// The library version as text (static, never freed).
#[no_mangle]
pub extern "C" fn mmoe_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// The ABI version: changes only when the C ABI breaks (see the soname
/// policy in README.md). Compare with `MMOE_ABI_VERSION`.
#[no_mangle]
pub extern "C" fn mmoe_abi_version() -> u32 {
    ABI_VERSION
}

pub(crate) const ABI_VERSION: u32 = 1;

/// A short, static description of a status code (an `mmoe_status`; any
/// other value gives "unknown status").
#[no_mangle]
pub extern "C" fn mmoe_status_str(status: u32) -> *const c_char {
    // An integer, not the enum: C may pass any value, and a Rust enum
    // outside its variants is undefined behaviour.
    let text: &'static str = match status {
        0 => "ok\0",
        1 => "i/o error\0",
        2 => "invalid model config\0",
        3 => "invalid tensor\0",
        4 => "invalid model file\0",
        5 => "checksum mismatch\0",
        6 => "invalid request\0",
        7 => "invalid argument\0",
        8 => "device error\0",
        9 => "internal error\0",
        _ => "unknown status\0",
    };
    text.as_ptr() as *const c_char
}

/// Copies the message of this thread's last failed call into `buf` (up to
/// `buf_len - 1` bytes and a NUL; `buf` may be NULL when `buf_len` is 0) and
/// returns the message's full length, so a caller can size its buffer.
#[no_mangle]
pub extern "C" fn mmoe_last_error(buf: *mut c_char, buf_len: usize) -> usize {
    boundary::with_last_error(|message| {
        let _ = copy_text(message, buf, buf_len, std::ptr::null_mut());
        message.len()
    })
}

/// Default open options: CPU, exact mode, one thread, no checksum pass.
#[no_mangle]
pub extern "C" fn mmoe_open_options_default() -> mmoe_open_options {
    mmoe_open_options {
        device: mmoe_device::MMOE_DEVICE_CPU,
        device_ordinal: 0,
        compute_mode: mmoe_compute_mode::MMOE_COMPUTE_EXACT,
        gpu_precision: mmoe_gpu_precision::MMOE_GPU_F16,
        threads: 1,
        verify_checksums: 0,
    }
}

/// Opens the model file `path` into a new engine (`*out`, release with
/// `mmoe_engine_free`). `options` may be NULL for the defaults. The engine
/// is thread-safe: any thread may create sessions, reload, or query it.
/// The file must not be modified in place while open (replace it by rename).
#[no_mangle]
pub extern "C" fn mmoe_engine_open(
    path_utf8: *const c_char,
    options: *const mmoe_open_options,
    out: *mut *mut mmoe_engine,
) -> mmoe_status {
    call(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        if !(options as usize).is_multiple_of(std::mem::align_of::<RawOpenOptions>()) {
            return Err(invalid("options is not aligned for mmoe_open_options"));
        }
        // SAFETY: NULL or a valid options struct (caller contract), read
        // through a struct of the same layout whose fields are integers.
        let options = unsafe { (options as *const RawOpenOptions).as_ref() }
            .copied()
            .unwrap_or_else(|| mmoe_open_options_default().into());
        let threads = options.threads()?;
        let engine = Engine::open(path(path_utf8)?, options.open_options()?)?;
        let handle = Box::new(EngineHandle {
            engine: Arc::new(engine),
            threads,
        });
        write_out(out, Box::into_raw(handle) as *mut mmoe_engine, "out")
    })
}

/// Releases an engine (NULL is fine). Sessions keep what they use alive, so
/// an engine may be freed before its sessions; no call on `engine` may run
/// concurrently with or after this one.
#[no_mangle]
pub extern "C" fn mmoe_engine_free(engine: *mut mmoe_engine) {
    if engine.is_null() {
        return;
    }
    let _ = call(|| {
        // SAFETY: made by mmoe_engine_open as a Box<EngineHandle>; freed once.
        drop(unsafe { Box::from_raw(engine as *mut EngineHandle) });
        Ok(())
    });
}

/// Opens and validates `path` beside the serving model, then swaps it in.
/// Calls in flight finish on the model they started with. On failure the
/// old model keeps serving and `mmoe_last_error` says why. Thread-safe.
#[no_mangle]
pub extern "C" fn mmoe_engine_reload(
    engine: *const mmoe_engine,
    path_utf8: *const c_char,
) -> mmoe_status {
    call(|| engine_ref(engine)?.engine.reload(path(path_utf8)?))
}

/// Makes every later `mmoe_engine_reload` warm up the new model for
/// requests of up to `max_candidates` candidates (at most 65536) before it
/// serves (0, the default: no warm-up). The reloading thread prepares one
/// session per live session (scratch; on a GPU, every batch bucket's graph
/// and the tile timing). After the swap it hands one to each session that
/// scored, when it is idle or its call in flight ends (waiting up to 100
/// ms in all), and frees that session's old-model session itself; a
/// session still busy then takes one at its first call on the new model.
/// So no scoring thread pays for the new model's first calls. A warm-up
/// that fails fails the reload. Thread-safe.
#[no_mangle]
pub extern "C" fn mmoe_engine_set_warm_up(
    engine: *const mmoe_engine,
    max_candidates: usize,
) -> mmoe_status {
    call(|| engine_ref(engine)?.engine.set_warm_up(max_candidates))
}

/// The number of successful reloads so far. A reload changes it in the
/// same step as it swaps the model, so several calls that read the model
/// (`mmoe_engine_num_tasks`, then each `mmoe_engine_task_name`, ...) saw
/// one model when the generation read before them equals the one read after
/// them; otherwise read them again.
#[no_mangle]
pub extern "C" fn mmoe_engine_generation(engine: *const mmoe_engine, out: *mut u64) -> mmoe_status {
    call(|| write_out(out, engine_ref(engine)?.engine.generation(), "out"))
}

/// The serving model's content hash (changes with any byte of the model).
#[no_mangle]
pub extern "C" fn mmoe_engine_content_hash(
    engine: *const mmoe_engine,
    out: *mut u64,
) -> mmoe_status {
    call(|| {
        write_out(
            out,
            engine_ref(engine)?.engine.model().content_hash(),
            "out",
        )
    })
}

/// The serving model's name (copied as `mmoe_last_error` copies text).
#[no_mangle]
pub extern "C" fn mmoe_engine_model_name(
    engine: *const mmoe_engine,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> mmoe_status {
    model_text(engine, Model::name, buf, buf_len, out_len)
}

/// Where the serving model scores: `MMOE_DEVICE_CPU` or `MMOE_DEVICE_CUDA`,
/// never AUTO, and the CUDA device's ordinal in `out_ordinal` (0 for the
/// CPU; NULL when not wanted). An engine opened with AUTO tells here which
/// it got, after each reload too: a reload whose GPU upload fails serves
/// from the CPU (`mmoe_engine_device_note` says why), which a server may
/// want to count or alert on.
#[no_mangle]
pub extern "C" fn mmoe_engine_device(
    engine: *const mmoe_engine,
    out_device: *mut mmoe_device,
    out_ordinal: *mut u32,
) -> mmoe_status {
    call(|| {
        let model = engine_ref(engine)?.engine.model();
        let (device, ordinal) = match model.device() {
            Device::Cuda(ordinal) => (
                mmoe_device::MMOE_DEVICE_CUDA,
                u32::try_from(ordinal).unwrap_or(u32::MAX),
            ),
            Device::Cpu | Device::Auto => (mmoe_device::MMOE_DEVICE_CPU, 0),
        };
        write_out(out_device, device, "out_device")?;
        if !out_ordinal.is_null() {
            write_out(out_ordinal, ordinal, "out_ordinal")?;
        }
        Ok(())
    })
}

/// Where the serving model scores, in words for a log: `cpu`,
/// `cuda:0 (device name, precision, kernels)`, or `cpu (auto: why)` when
/// AUTO found no usable GPU (copied as `mmoe_last_error` copies text).
#[no_mangle]
pub extern "C" fn mmoe_engine_device_note(
    engine: *const mmoe_engine,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> mmoe_status {
    model_text(engine, Model::device_note, buf, buf_len, out_len)
}

/// The number of tasks (scores per candidate) of the serving model. A
/// reload may change it: size outputs again when `mmoe_engine_generation`
/// changes (a call whose outputs have the old size fails with ARGUMENT and
/// writes nothing).
#[no_mangle]
pub extern "C" fn mmoe_engine_num_tasks(
    engine: *const mmoe_engine,
    out: *mut usize,
) -> mmoe_status {
    call(|| write_out(out, engine_ref(engine)?.engine.model().num_tasks(), "out"))
}

/// The name of task `index`.
#[no_mangle]
pub extern "C" fn mmoe_engine_task_name(
    engine: *const mmoe_engine,
    index: usize,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> mmoe_status {
    call(|| {
        let model = engine_ref(engine)?.engine.model();
        let task = model.config().tasks.get(index).ok_or_else(|| {
            invalid(format!(
                "task index {index} out of range ({} tasks)",
                model.num_tasks()
            ))
        })?;
        copy_text(&task.name, buf, buf_len, out_len)
    })
}

/// The number of inputs of the serving model.
#[no_mangle]
pub extern "C" fn mmoe_engine_num_inputs(
    engine: *const mmoe_engine,
    out: *mut usize,
) -> mmoe_status {
    call(|| {
        write_out(
            out,
            engine_ref(engine)?.engine.model().config().inputs.len(),
            "out",
        )
    })
}

/// Kind, scope and dim of input `index`.
#[no_mangle]
pub extern "C" fn mmoe_engine_input_info(
    engine: *const mmoe_engine,
    index: usize,
    out: *mut mmoe_input_info,
) -> mmoe_status {
    call(|| {
        let model = engine_ref(engine)?.engine.model();
        let inputs = &model.config().inputs;
        let input = inputs.get(index).ok_or_else(|| {
            invalid(format!(
                "input index {index} out of range ({} inputs)",
                inputs.len()
            ))
        })?;
        let info = mmoe_input_info {
            kind: match input.kind {
                InputKind::Dense => mmoe_input_kind::MMOE_INPUT_DENSE,
                InputKind::Sparse => mmoe_input_kind::MMOE_INPUT_SPARSE,
            },
            scope: match input.scope {
                Scope::Request => mmoe_scope::MMOE_SCOPE_REQUEST,
                Scope::Candidate => mmoe_scope::MMOE_SCOPE_CANDIDATE,
            },
            dim: input.dim,
        };
        write_out(out, info, "out")
    })
}

/// The name of input `index`.
#[no_mangle]
pub extern "C" fn mmoe_engine_input_name(
    engine: *const mmoe_engine,
    index: usize,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> mmoe_status {
    call(|| {
        let model = engine_ref(engine)?.engine.model();
        let inputs = &model.config().inputs;
        let input = inputs.get(index).ok_or_else(|| {
            invalid(format!(
                "input index {index} out of range ({} inputs)",
                inputs.len()
            ))
        })?;
        copy_text(&input.name, buf, buf_len, out_len)
    })
}

/// The index of the input named `name` (NUL-terminated UTF-8).
#[no_mangle]
pub extern "C" fn mmoe_engine_input_index(
    engine: *const mmoe_engine,
    name: *const c_char,
    out: *mut u32,
) -> mmoe_status {
    call(|| {
        if name.is_null() {
            return Err(invalid("name is NULL"));
        }
        // SAFETY: non-null NUL-terminated string (caller contract).
        let name = unsafe { CStr::from_ptr(name) }
            .to_str()
            .map_err(|_| invalid("name is not valid UTF-8"))?;
        let index = engine_ref(engine)?.engine.model().input_index(name)?;
        write_out(out, index as u32, "out")
    })
}

/// A new session on `engine` (`*out`, release with `mmoe_session_free`).
/// A session may be used by one thread at a time; create one per thread.
#[no_mangle]
pub extern "C" fn mmoe_session_new(
    engine: *const mmoe_engine,
    out: *mut *mut mmoe_session,
) -> mmoe_status {
    call(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        let handle = engine_ref(engine)?;
        let mut session = handle.engine.session();
        session.set_threads(handle.threads);
        let handle = Box::new(SessionHandle {
            session,
            request: Request::default(),
        });
        write_out(out, Box::into_raw(handle) as *mut mmoe_session, "out")
    })
}

/// Releases a session (NULL is fine).
#[no_mangle]
pub extern "C" fn mmoe_session_free(session: *mut mmoe_session) {
    if session.is_null() {
        return;
    }
    let _ = call(|| {
        // SAFETY: made by mmoe_session_new as a Box<SessionHandle>; freed once.
        drop(unsafe { Box::from_raw(session as *mut SessionHandle) });
        Ok(())
    });
}

/// Prepares `session` for requests of up to `max_candidates` candidates (at
/// most 65536) on the engine's current model, so that the first real
/// requests do not pay for it: scratch memory on the CPU; on a GPU, the
/// graph of every batch bucket up to that size (and the model's tile
/// timing). Call it once per session before traffic. For reloads, see
/// `mmoe_engine_set_warm_up`. 0 does nothing.
#[no_mangle]
pub extern "C" fn mmoe_session_warm_up(
    session: *mut mmoe_session,
    max_candidates: usize,
) -> mmoe_status {
    call(|| session_mut(session)?.session.warm_up(max_candidates))
}

/// Scores a request of `candidates` candidates on the engine's current model.
///
/// `features` holds one entry per input of the model (`num_features` of
/// them, in any order). `logits` and `probabilities` each receive
/// `candidates × tasks` floats, row-major (candidate, task); either may be
/// NULL with length 0 when not wanted, and a given one must have exactly that
/// length; they may overlap neither each other nor any input array. At most
/// 16777216 candidates. All arrays are borrowed for the duration of the call
/// only. Nothing is written unless the call succeeds. Not thread-safe per
/// session.
#[no_mangle]
pub extern "C" fn mmoe_session_score(
    session: *mut mmoe_session,
    candidates: usize,
    features: *const mmoe_feature,
    num_features: usize,
    logits: *mut f32,
    logits_len: usize,
    probabilities: *mut f32,
    probabilities_len: usize,
) -> mmoe_status {
    call(|| {
        let session = session_mut(session)?;
        // The outputs are written through `&mut` slices, which may alias
        // nothing else of the call: check before making any of them.
        let outputs = [
            ("logits", byte_range(logits, logits_len)),
            (
                "probabilities",
                byte_range(probabilities, probabilities_len),
            ),
        ];
        if overlap(&outputs[0].1, &outputs[1].1) {
            return Err(invalid("logits and probabilities overlap"));
        }
        let not_in_outputs =
            |range: std::ops::Range<usize>, what: &dyn std::fmt::Display| match outputs
                .iter()
                .find(|(_, output)| overlap(output, &range))
            {
                Some((output, _)) => Err(invalid(format!("{what} overlaps {output}"))),
                None => Ok(()),
            };
        not_in_outputs(byte_range(features, num_features), &"features")?;
        let features = slice(features, num_features, "features")?;
        let model = session.session.engine().model();
        let inputs = model.config().inputs.len();
        // Covariance lends the kept storage this call's lifetime.
        let mut request: Request<'_> = std::mem::take(&mut session.request);
        request.reset(candidates);
        // Every path, failed ones too, puts the storage back for the next call.
        let scored = (|| -> Result<()> {
            for (i, f) in features.iter().enumerate() {
                // Names for error messages, formatted only when one is made.
                let at = |field: &'static str| FeatureField(i, field);
                let index = f.input as usize;
                if index >= inputs {
                    return Err(Error::request(format!(
                        "features[{i}].input is {index}, but model `{}` has {inputs} inputs",
                        model.name()
                    )));
                }
                not_in_outputs(byte_range(f.dense, f.dense_len), &at("dense"))?;
                not_in_outputs(byte_range(f.ids, f.ids_len), &at("ids"))?;
                not_in_outputs(byte_range(f.offsets, f.offsets_len), &at("offsets"))?;
                let dense = slice(f.dense, f.dense_len, at("dense"))?;
                let ids = slice(f.ids, f.ids_len, at("ids"))?;
                let offsets = slice(f.offsets, f.offsets_len, at("offsets"))?;
                if !matches!(request.feature(index), crate::request::Feature::Unset) {
                    return Err(Error::request(format!(
                        "features[{i}]: input {index} is given twice"
                    )));
                }
                if f.offsets_len > 0 || f.ids_len > 0 {
                    if f.dense_len > 0 {
                        return Err(Error::request(format!(
                            "features[{i}]: both dense values and sparse ids are set"
                        )));
                    }
                    request.set_sparse(index, ids, offsets);
                } else {
                    request.set_dense(index, dense);
                }
            }
            let mut scores = Scores {
                logits: slice_mut(logits, logits_len, "logits")?,
                probabilities: slice_mut(probabilities, probabilities_len, "probabilities")?,
            };
            session.session.score(&request, &mut scores).map(|_| ())
        })();
        session.request = request.recycle();
        scored
    })
}

/// `features[i].field`, for error messages.
struct FeatureField(usize, &'static str);

impl std::fmt::Display for FeatureField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "features[{}].{}", self.0, self.1)
    }
}
