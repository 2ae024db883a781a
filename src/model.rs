//! An open model: the memory-mapped packed file, its validated layout and
//! plan. Opening maps the file and reads only its header, config and tensor
//! table; tensor data is read in place, never copied.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use half::f16;
use memmap2::Mmap;

use crate::config::{Config, InputKind, Scope};
use crate::cpu::CpuMode;
use crate::error::{Error, Result};
use crate::format::reader::{self, PackedLayout, TensorEntry};
use crate::format::{DType, Layout};
use crate::gpu::Device;
use crate::plan::{Plan, TensorId};
use crate::program::Program;

/// How to open a model.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Check every tensor's checksum at open (reads the whole file once).
    pub verify_checksums: bool,
    /// Where to score: the CPU (default), a CUDA device, or CUDA when usable.
    pub device: Device,
    /// Arithmetic of the GPU path's Linear layers.
    pub gpu_precision: GpuPrecision,
    /// Arithmetic of the CPU path.
    pub cpu_mode: CpuMode,
    /// With `cpu_mode: Bf16`, run the bf16 kernel wherever the CPU has
    /// AVX512-BF16, even where its dot products are not faster than fp32
    /// FMAs and exact would be both faster and closer (tests, accuracy
    /// studies). The environment variable `MMOE_CPU_BF16=always` does the
    /// same for every model a process opens.
    pub bf16_even_if_slower: bool,
}

/// Arithmetic of the GPU path's Linear layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuPrecision {
    /// fp16 tensor cores with fp32 accumulation.
    #[default]
    F16,
    /// fp32 throughout.
    F32,
}

/// A tensor's elements, in the file's dtype, borrowed from the map.
#[derive(Clone, Copy, Debug)]
pub enum Values<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
}

impl Values<'_> {
    pub fn len(&self) -> usize {
        match self {
            Values::F16(v) => v.len(),
            Values::F32(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i` as f32.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Values::F16(v) => v[i].to_f32(),
            Values::F32(v) => v[i],
        }
    }
    /// Hints the CPU to start loading elements `start..start + len`: their
    /// first and last cache line, which covers an embedding row of up to 64
    /// bytes wherever it lies (and the ends of a longer one); out-of-range
    /// elements are ignored.
    #[inline]
    pub fn prefetch(&self, start: usize, len: usize) {
        fn ends<T>(v: &[T], start: usize, last: usize) {
            [start, last]
                .iter()
                .filter_map(|&i| v.get(i))
                .for_each(crate::cpu::prefetch);
        }
        let last = start + len.max(1) - 1;
        match self {
            Values::F16(v) => ends(v, start, last),
            Values::F32(v) => ends(v, start, last),
        }
    }
    /// Copies elements `start..start + out.len()` into `out` as f32.
    pub fn read_into(&self, start: usize, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        match self {
            Values::F16(v) => v[start..start + out.len()].convert_to_f32_slice(out),
            Values::F32(v) => out.copy_from_slice(&v[start..start + out.len()]),
        }
    }
}

/// What a caller needs to know about one input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputInfo {
    pub name: String,
    pub kind: InputKind,
    pub scope: Scope,
    pub dim: usize,
}

/// An open, validated model. Cheap to share: wrap it in an [`Arc`].
pub struct Model {
    path: PathBuf,
    map: Mmap,
    layout: PackedLayout,
    program: Program,
    /// Weights uploaded to a CUDA device, when the model was opened on one.
    #[cfg(feature = "cuda")]
    gpu: Option<Arc<crate::gpu::GpuModel>>,
    /// Where the model scores (`Cpu` or `Cuda`, never `Auto`).
    device: Device,
    /// Where the model scores, and for `Device::Auto` why.
    device_note: String,
    /// The CPU mode in effect, and its note (why bf16 fell back).
    cpu_mode: CpuMode,
    cpu_mode_note: String,
    /// bf16 mode: each Linear weight in the bf16 pair layout (by tensor id).
    bf16_weights: Vec<Option<Vec<u16>>>,
    /// [`Model::touch_pages`]'s one pass over the map.
    pages_touched: Once,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("name", &self.layout.config.name)
            .field("dtype", &self.layout.dtype)
            .finish()
    }
}

impl Model {
    /// Maps and validates a packed model file.
    ///
    /// The file must not be modified or truncated while the model is open
    /// (replace a model by writing a new file and renaming it over the old
    /// one, as `mmoe pack` does): a mapped file that shrinks under the process
    /// faults it, as with any memory-mapped reader.
    pub fn open(path: impl AsRef<Path>, options: &OpenOptions) -> Result<Arc<Model>> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io("cannot open model", path, e))?;
        crate::error::refuse_directory(&file, path)?;
        // SAFETY: the map is read-only and lives as long as the Model. Its
        // contents are validated by `reader::parse` before any tensor is
        // read; the remaining contract (no truncation while open) is the
        // documented contract of `Model::open`.
        let map =
            unsafe { Mmap::map(&file) }.map_err(|e| Error::io("cannot map model", path, e))?;
        let layout = reader::parse(&map).map_err(|e| e.context(path.display()))?;
        // Every typed view handed out later is a cast of these ranges; prove
        // each cast valid once, here.
        for tensor in &layout.tensors {
            let bytes = &map[tensor.bytes.clone()];
            let ok = match layout.dtype {
                DType::F16 => bytemuck::try_cast_slice::<u8, f16>(bytes).is_ok(),
                DType::F32 => bytemuck::try_cast_slice::<u8, f32>(bytes).is_ok(),
            };
            if !ok {
                return Err(Error::format(format!(
                    "{}: tensor `{}` is misaligned in memory",
                    path.display(),
                    tensor.name
                )));
            }
        }
        if options.verify_checksums {
            reader::verify_checksums(&map, &layout).map_err(|e| e.context(path.display()))?;
        }
        let program =
            Program::lower_for_layout(&layout.config, &layout.plan, layout.header.layout_version);
        let mut model = Model {
            path: path.to_path_buf(),
            map,
            layout,
            program,
            #[cfg(feature = "cuda")]
            gpu: None,
            device: Device::Cpu,
            device_note: "cpu".into(),
            cpu_mode: CpuMode::Exact,
            cpu_mode_note: "exact".into(),
            bf16_weights: Vec::new(),
            pages_touched: Once::new(),
        };
        let forced = options.bf16_even_if_slower
            || std::env::var("MMOE_CPU_BF16").is_ok_and(|v| v == "always");
        model.set_cpu_mode(options.cpu_mode, forced);
        model
            .attach_device(options)
            .map_err(|e| e.context(path.display()))?;
        Ok(Arc::new(model))
    }

    /// Prepares the CPU mode: the bf16 mode converts every Linear weight
    /// once (owned memory, beside the map), or falls back to exact where
    /// the CPU lacks AVX512-BF16 or, unless `forced`, where its bf16 dot
    /// products are not faster than fp32 FMAs (`bf16::dot_speed`).
    fn set_cpu_mode(&mut self, mode: CpuMode, forced: bool) {
        if mode == CpuMode::Exact {
            return;
        }
        let Some(speed) = crate::cpu::bf16::dot_speed() else {
            self.cpu_mode_note = "exact (bf16 requested; this CPU lacks AVX512-BF16)".into();
            return;
        };
        if !forced && !speed.bf16_faster() {
            self.cpu_mode_note = format!(
                "exact (bf16 requested; this CPU's bf16 dot products run at {:.0} GFLOP/s against {:.0} for fp32 FMAs, so exact is faster; MMOE_CPU_BF16=always runs bf16 anyway)",
                speed.bf16, speed.fp32
            );
            return;
        }
        self.bf16_weights = (0..self.layout.plan.tensors.len())
            .map(|id| {
                self.linear_shape(id)
                    .map(|(n, k)| crate::cpu::bf16::convert_weight(&self.values(id), n, k))
            })
            .collect();
        self.cpu_mode = CpuMode::Bf16;
        self.cpu_mode_note = "bf16".into();
    }

    /// The CPU mode in effect.
    pub fn cpu_mode(&self) -> CpuMode {
        self.cpu_mode
    }

    /// The CPU mode in effect, with why a requested bf16 fell back.
    pub fn cpu_mode_note(&self) -> &str {
        &self.cpu_mode_note
    }

    /// A Linear weight in the bf16 pair layout, in the bf16 mode.
    pub fn bf16_weight(&self, id: TensorId) -> Option<&[u16]> {
        self.bf16_weights.get(id).and_then(|w| w.as_deref())
    }

    /// Uploads the weights to the GPU the options ask for; with `Auto`, a
    /// failure falls back to the CPU and is noted.
    fn attach_device(&mut self, options: &OpenOptions) -> Result<()> {
        let ordinal = match options.device {
            Device::Cpu => return Ok(()),
            Device::Cuda(ordinal) => ordinal,
            Device::Auto => 0,
        };
        match self.upload(ordinal, options.gpu_precision) {
            Ok(note) => {
                self.device = Device::Cuda(ordinal);
                self.device_note = note;
                Ok(())
            }
            Err(e) if options.device == Device::Auto => {
                self.device_note = format!("cpu (auto: {e})");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    #[cfg(feature = "cuda")]
    fn upload(&mut self, ordinal: usize, precision: GpuPrecision) -> Result<String> {
        crate::gpu::check_device(ordinal)?;
        let precision = match precision {
            GpuPrecision::F16 => crate::gpu::Precision::F16,
            GpuPrecision::F32 => crate::gpu::Precision::F32,
        };
        let gpu = crate::gpu::GpuModel::new(self, ordinal, precision)?;
        let note = format!(
            "cuda:{ordinal} ({}, {:?}, {})",
            gpu.device_name(),
            precision,
            gpu.kernels()
        );
        self.gpu = Some(Arc::new(gpu));
        Ok(note)
    }

    #[cfg(not(feature = "cuda"))]
    fn upload(&mut self, ordinal: usize, _precision: GpuPrecision) -> Result<String> {
        crate::gpu::check_device(ordinal).map(|_| String::new())
    }

    /// The model's weights on a CUDA device, when it was opened on one.
    #[cfg(feature = "cuda")]
    pub fn gpu(&self) -> Option<&Arc<crate::gpu::GpuModel>> {
        self.gpu.as_ref()
    }

    /// Where the model scores: `Cpu` or `Cuda(ordinal)`, never `Auto` (a
    /// model opened with `Auto` says which it got; `device_note` says why).
    pub fn device(&self) -> Device {
        self.device
    }

    /// Where the model scores (`cpu`, `cuda:0 (…)`, or `cpu (auto: why)`).
    pub fn device_note(&self) -> &str {
        &self.device_note
    }

    /// Reads one byte of every page of the mapped file, once per model, so
    /// that scoring calls do not fault pages in: the embedding rows a
    /// request gathers are spread over the tables, and a warm-up request
    /// (empty bags) reads none of them. A page not in the page cache is read
    /// from disk here, on the warming thread, rather than in a call. A
    /// second caller waits for the first one's pass. A file larger than half
    /// the memory available (to the host, and to a memory-limited cgroup) is
    /// not read: its pages would evict one another (and others' pages) for
    /// minutes of disk reads, and it is served from disk as calls need its
    /// pages (`worth_reading`).
    pub fn touch_pages(&self) {
        self.pages_touched.call_once(|| self.read_every_page());
    }

    fn read_every_page(&self) {
        if !worth_reading(self.map.len() as u64, mem_available()) {
            return;
        }
        // Linux 5.14 and later fill the page tables in one call, instead of
        // a fault per 16 pages (the kernel's fault-around).
        #[cfg(target_os = "linux")]
        match self.map.advise(memmap2::Advice::PopulateRead) {
            Ok(()) => return,
            // A kernel before 5.14: touch the pages instead.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            // The file cannot be read (EIO, or EFAULT for a file truncated
            // under the map): reading it here would raise SIGBUS. Scoring
            // would meet the same; leave it to the documented contract.
            Err(_) => return,
        }
        // 4 KiB is the smallest page size of the targets we build for; a
        // larger page is touched several times, which costs nothing more.
        const PAGE: usize = 4096;
        let sum = self
            .map
            .iter()
            .step_by(PAGE)
            .fold(0u8, |sum, &byte| sum.wrapping_add(byte));
        std::hint::black_box(sum);
    }

    /// Checks every tensor's checksum (reads the whole file).
    pub fn verify(&self) -> Result<()> {
        reader::verify_checksums(&self.map, &self.layout)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn config(&self) -> &Config {
        &self.layout.config
    }
    pub fn plan(&self) -> &Plan {
        &self.layout.plan
    }
    /// Each input with its index and its plan (offset in x0, tensors).
    pub fn input_plans(
        &self,
    ) -> impl Iterator<Item = (usize, &crate::config::Input, &crate::plan::InputPlan)> {
        self.config()
            .inputs
            .iter()
            .zip(&self.plan().inputs)
            .enumerate()
            .map(|(index, (input, plan))| (index, input, plan))
    }
    /// The plan lowered into the steps the fast backends execute.
    pub fn program(&self) -> &Program {
        &self.program
    }
    pub fn dtype(&self) -> DType {
        self.layout.dtype
    }
    pub fn name(&self) -> &str {
        &self.layout.config.name
    }
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }
    /// A hash of the whole content (config, table and, through the table's
    /// per-tensor checksums, every weight).
    pub fn content_hash(&self) -> u64 {
        self.layout.header.meta_checksum
    }
    /// The file's tensor layout version (`docs/FORMAT.md`).
    pub fn layout_version(&self) -> u32 {
        self.layout.header.layout_version
    }
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.layout.tensors
    }
    pub fn task_names(&self) -> Vec<&str> {
        self.config()
            .tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect()
    }
    pub fn num_tasks(&self) -> usize {
        self.config().tasks.len()
    }
    pub fn inputs(&self) -> Vec<InputInfo> {
        self.config()
            .inputs
            .iter()
            .map(|i| InputInfo {
                name: i.name.clone(),
                kind: i.kind,
                scope: i.scope,
                dim: i.dim,
            })
            .collect()
    }

    /// The index of the input `name`, or an error listing the model's inputs.
    pub fn input_index(&self, name: &str) -> Result<usize> {
        self.config().input_index(name).ok_or_else(|| {
            let known: Vec<&str> = self
                .config()
                .inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect();
            Error::request(format!(
                "unknown input `{name}`; model `{}` has inputs: {}",
                self.name(),
                known.join(", ")
            ))
        })
    }

    /// The elements of tensor `id`, as stored.
    pub fn values(&self, id: TensorId) -> Values<'_> {
        let bytes = &self.map[self.layout.tensors[id].bytes.clone()];
        // Casts were checked at open; they cannot fail here.
        match self.layout.dtype {
            DType::F16 => Values::F16(bytemuck::cast_slice(bytes)),
            DType::F32 => Values::F32(bytemuck::cast_slice(bytes)),
        }
    }

    /// The layout tensor `id` is stored in.
    pub fn layout_of(&self, id: TensorId) -> Layout {
        self.layout.tensors[id].layout
    }

    /// `(n, k)` of a tensor the program reads as a Linear weight `[n, k]`
    /// ([`crate::plan::TensorSpec::linear_shape`] in this file's layout version).
    pub fn linear_shape(&self, id: TensorId) -> Option<(usize, usize)> {
        self.layout.plan.tensors[id].linear_shape(self.layout.header.layout_version)
    }
}

/// Whether a warm-up reads a model file of `file_bytes` into memory: when it
/// fits in half of `available` (`mem_available`: Linux's `MemAvailable`,
/// which counts page cache it can reclaim, such as an old model's pages
/// during a reload, and a container's own limit), or when the available
/// memory is unknown.
fn worth_reading(file_bytes: u64, available: Option<u64>) -> bool {
    available.is_none_or(|bytes| file_bytes <= bytes / 2)
}

/// The memory this process may still fill, in bytes: the least of Linux's
/// `MemAvailable` and, in a memory-limited cgroup (a container), the limit
/// less the working set. None elsewhere or when neither is readable.
fn mem_available() -> Option<u64> {
    let host = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_mem_available(&text));
    host.into_iter().chain(cgroup_headroom()).min()
}

/// The cgroup's limit less its working set (usage less inactive page
/// cache, as the kubelet counts it), from cgroup v2 or v1's memory
/// controller; None without a limit.
fn cgroup_headroom() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |dir: &Path, name: &str| std::fs::read_to_string(dir.join(name)).ok();
    // The process's own folder, or the mount's root inside a cgroup namespace.
    let folder = |mount: &str, path: &str| {
        let own = Path::new(mount).join(path.trim_start_matches('/'));
        if own.is_dir() {
            own
        } else {
            PathBuf::from(mount)
        }
    };
    for line in own.lines() {
        let mut fields = line.splitn(3, ':');
        let (controllers, path) = match (fields.next(), fields.next(), fields.next()) {
            (Some(_), Some(controllers), Some(path)) => (controllers, path),
            _ => continue,
        };
        if controllers.is_empty() {
            let dir = folder("/sys/fs/cgroup", path);
            if let (Some(max), Some(current), Some(stat)) = (
                read(&dir, "memory.max"),
                read(&dir, "memory.current"),
                read(&dir, "memory.stat"),
            ) {
                return headroom(&max, &current, &stat, "inactive_file");
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            let dir = folder("/sys/fs/cgroup/memory", path);
            return headroom(
                &read(&dir, "memory.limit_in_bytes")?,
                &read(&dir, "memory.usage_in_bytes")?,
                &read(&dir, "memory.stat")?,
                "total_inactive_file",
            );
        }
    }
    None
}

/// `limit` less (`usage` less the `inactive_key` line of `stat`); None for
/// no limit (`max`, or v1's near-2^63 "unlimited").
fn headroom(limit: &str, usage: &str, stat: &str, inactive_key: &str) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok()?;
    if limit >= 1 << 62 {
        return None;
    }
    let usage: u64 = usage.trim().parse().ok()?;
    let inactive = stat
        .lines()
        .find_map(|line| line.strip_prefix(inactive_key)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(limit.saturating_sub(usage.saturating_sub(inactive)))
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line["MemAvailable:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod page_read_tests {
    use super::*;

    #[test]
    fn a_file_is_read_when_it_fits_in_half_the_available_memory() {
        const GIB: u64 = 1 << 30;
        assert!(worth_reading(4 * GIB, Some(8 * GIB)));
        assert!(!worth_reading(4 * GIB + 1, Some(8 * GIB)));
        assert!(!worth_reading(100 * GIB, Some(64 * GIB)));
        assert!(worth_reading(100 * GIB, None));
        assert!(!worth_reading(1, Some(0)));
    }

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let meminfo = "MemTotal:       24575188 kB\nMemFree:        22000000 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(23_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: x kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: 5 MB\n"), None);
        #[cfg(target_os = "linux")]
        assert!(mem_available().is_some_and(|bytes| bytes > 0));
    }

    #[test]
    fn a_cgroup_limit_counts_its_working_set() {
        let stat = "anon 100\ninactive_file 300\nactive_file 50\n";
        // 1000 − (700 − 300)
        assert_eq!(
            headroom("1000\n", "700\n", stat, "inactive_file"),
            Some(600)
        );
        assert_eq!(headroom("max\n", "700\n", stat, "inactive_file"), None);
        assert_eq!(
            headroom("9223372036854771712\n", "700", "", "total_inactive_file"),
            None
        );
        // No inactive line: all usage counts; usage over the limit: none left.
        assert_eq!(headroom("1000", "700", "", "inactive_file"), Some(300));
        assert_eq!(headroom("1000", "1700", "", "inactive_file"), Some(0));
        // v1 names the line `total_inactive_file`; `inactive_file` is another.
        let v1 = "inactive_file 1\ntotal_inactive_file 300\n";
        assert_eq!(
            headroom("1000", "700", v1, "total_inactive_file"),
            Some(600)
        );
    }
}
