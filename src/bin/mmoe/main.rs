//! The `mmoe` command line: pack, inspect, verify and score models, and a
//! demo on the bundled benchmark-shaped model.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use mmoe::format::safetensors_source::SafetensorsSource;
use mmoe::format::writer::{self, TensorSource};
use mmoe::{
    jsonl, Backend, Config, DType, Device, GpuPrecision, Model, OpenOptions, Scores, Session,
};

mod bench;
#[cfg(feature = "datasets")]
mod data;
#[cfg(feature = "datasets")]
mod dataset;

#[derive(Parser)]
#[command(
    name = "mmoe",
    version,
    about = "Embedded multi-task MMoE ranking engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pack a config and a safetensors file into one model file.
    Pack {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Stored dtype: f16 (default) or f32 (for precision comparisons).
        #[arg(long, default_value = "f16")]
        dtype: String,
        /// Tensor layout version to write: the newest by default; 1 for
        /// engines that read only version 1 (docs/FORMAT.md).
        #[arg(long, default_value_t = mmoe::format::LAYOUT_VERSION)]
        layout_version: u32,
    },
    /// Print a packed model's config, tensors, sizes and dtypes, and the
    /// device and compute mode it opens with.
    Inspect {
        model: PathBuf,
        /// Print the config as JSON.
        #[arg(long)]
        config: bool,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Check every checksum of a packed model.
    Verify { model: PathBuf },
    /// Score requests, one JSON object per line, into answers, one per line.
    Score {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        requests: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// reference (the scalar oracle), cpu (the fast path) or cuda;
        /// default: the model's device.
        #[arg(long)]
        backend: Option<String>,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Measure latency and throughput per batch size (end to end: host
    /// features in, host scores out), with synthetic requests.
    Bench {
        #[arg(long)]
        model: PathBuf,
        /// Batch sizes, comma-separated.
        #[arg(long, default_value = "1,16,64,256,1024")]
        batch: String,
        /// Threads, each with its own session, scoring at once.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Timed calls per batch size and thread (after warm-up).
        #[arg(long, default_value_t = 200)]
        iters: usize,
        /// Stop a batch size after this many seconds of timed calls.
        #[arg(long, default_value_t = 5.0)]
        max_seconds: f64,
        /// reference, cpu or cuda; default: the model's device.
        #[arg(long)]
        backend: Option<String>,
        #[command(flatten)]
        device: DeviceArgs,
        /// Write the results as one JSON object to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also measure this machine's fp32 FMA peak and report % of it.
        #[arg(long)]
        peak: bool,
        /// Also time the Linear kernel alone (512×512 fp16 layers; weights
        /// in L2 and streaming from L3), to set against the model's figures.
        #[arg(long)]
        kernel: bool,
        /// After each batch size, time each step of the CPU program in a
        /// separate pass and print where a call's time goes.
        #[arg(long)]
        profile_steps: bool,
        /// Also time the GPU path's host side: packing each batch's request
        /// into the staging buffer, whole and in upload pieces, against a
        /// memcpy of as many bytes (no GPU needed).
        #[arg(long)]
        staging: bool,
        /// Also time first calls, before the table: a new session's first
        /// call, `Session::warm_up` for the batch size, and the first call
        /// after it (batch sizes in ascending order; the first call of each
        /// size in the process apart: the model's first touch, and on a GPU
        /// the tile timing).
        #[arg(long)]
        first_call: bool,
        /// Also break GPU calls down, before the table: packing and upload
        /// on the host, the graph launch, the wait, and the upload and
        /// graph on the device (CUDA events).
        #[arg(long)]
        phases: bool,
        /// Threads each request's candidates are split over (CPU).
        #[arg(long, default_value_t = 1)]
        intra_threads: usize,
    },
    /// Build, pack and score the bundled demo model (benchmark shape).
    Demo {
        /// Candidates in the demo request.
        #[arg(long, default_value_t = 300)]
        candidates: usize,
        /// Where to write the packed demo model.
        #[arg(long)]
        out: Option<PathBuf>,
        /// How many top candidates to show per task.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Seed of the deterministic weights (another seed, another model of
        /// the same shape).
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// A config (JSON) to build instead of the bundled benchmark shape,
        /// with the same kind of deterministic synthetic weights.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Tensor layout version of the packed demo model.
        #[arg(long, default_value_t = mmoe::format::LAYOUT_VERSION)]
        layout_version: u32,
    },
    /// Generate synthetic ads-engagement impression logs (Parquet) for a
    /// model's inputs and tasks (docs/SYNTHETIC.md).
    #[cfg(feature = "datasets")]
    Synth(data::SynthArgs),
    /// Score a Parquet impression table with a model: one logit column per
    /// task (teacher scoring for distillation).
    #[cfg(feature = "datasets")]
    ScoreDataset(data::ScoreArgs),
    /// AUC, log loss and calibration per task and view type for one or two
    /// models; for two, the AUC difference with a bootstrap interval.
    #[cfg(feature = "datasets")]
    Eval(data::EvalArgs),
}

/// Output piped into a reader that stops early (`mmoe inspect m | head`)
/// ends the program quietly, as for other Unix tools, instead of a panic in
/// `println!`.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of SIGPIPE at the start of
    // main, before any thread exists; no handler is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pack {
            config,
            weights,
            out,
            dtype,
            layout_version,
        } => pack(&config, &weights, &out, &dtype, layout_version),
        Command::Inspect {
            model,
            config,
            device,
        } => inspect(&model, config, &device),
        Command::Verify { model } => verify(&model),
        Command::Score {
            model,
            requests,
            out,
            backend,
            device,
        } => score(&model, &requests, &out, backend.as_deref(), &device),
        Command::Bench {
            model,
            batch,
            threads,
            iters,
            max_seconds,
            backend,
            device,
            json,
            peak,
            kernel,
            profile_steps,
            staging,
            first_call,
            phases,
            intra_threads,
        } => bench::run(&bench::Settings {
            peak,
            kernel,
            profile_steps,
            staging,
            first_call,
            phases,
            intra: intra_threads,
            model,
            batch,
            threads,
            iters,
            max_seconds,
            backend,
            device,
            json,
        }),
        Command::Demo {
            candidates,
            out,
            top,
            seed,
            config,
            layout_version,
        } => demo(
            candidates,
            out,
            top,
            seed,
            config.as_deref(),
            layout_version,
        ),
        #[cfg(feature = "datasets")]
        Command::Synth(args) => data::synth(&args),
        #[cfg(feature = "datasets")]
        Command::ScoreDataset(args) => data::score_dataset(&args),
        #[cfg(feature = "datasets")]
        Command::Eval(args) => data::eval(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mmoe: {e}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<ExitCode, String>;

fn progress_bar(total_hint: u64) -> ProgressBar {
    // Only large models get a bar; small ones pack in a blink.
    if total_hint < (64 << 20) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total_hint);
    bar.set_style(
        ProgressStyle::with_template(
            "packing {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn pack_with_progress(
    config: &Config,
    source: &dyn TensorSource,
    dtype: DType,
    out: &Path,
    hint: u64,
    layout_version: u32,
) -> Result<u64, String> {
    let bar = progress_bar(hint);
    let mut report = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let summary = writer::pack_for_layout(config, source, dtype, out, &mut report, layout_version)
        .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    Ok(summary.file_len)
}

fn pack(config: &Path, weights: &Path, out: &Path, dtype: &str, layout_version: u32) -> CliResult {
    let dtype =
        DType::parse(dtype).ok_or_else(|| format!("--dtype {dtype}: expected f16 or f32"))?;
    let config = read_config(config)?;
    let source = SafetensorsSource::open(weights).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let len = pack_with_progress(
        &config,
        &source,
        dtype,
        out,
        source.data_bytes(),
        layout_version,
    )?;
    eprintln!(
        "packed `{}` into {} ({}, {}, {:.2} s)",
        config.name,
        out.display(),
        dtype.name(),
        human_bytes(len),
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// A config file, parsed and checked; errors name the file.
fn read_config(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn open(path: &Path, verify: bool) -> Result<std::sync::Arc<Model>, String> {
    open_on(path, verify, &DeviceArgs::default())
}

/// Where to run: `--device cpu|cuda|cuda:N|auto`, `--precision f16|f32`.
#[derive(clap::Args, Clone, Debug)]
struct DeviceArgs {
    /// cpu, cuda, cuda:N or auto (CUDA when usable, else the CPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Arithmetic of the GPU's Linear layers: f16 (tensor cores) or f32.
    #[arg(long, default_value = "f16")]
    precision: String,
    /// Arithmetic of the CPU path: exact (fp32 accumulation) or bf16
    /// (AVX512-BF16 dot products; falls back to exact without them).
    #[arg(long, default_value = "exact")]
    mode: String,
}

impl Default for DeviceArgs {
    fn default() -> Self {
        DeviceArgs {
            device: "cpu".into(),
            precision: "f16".into(),
            mode: "exact".into(),
        }
    }
}

fn open_on(
    path: &Path,
    verify: bool,
    device: &DeviceArgs,
) -> Result<std::sync::Arc<Model>, String> {
    let mut options = open_options(device)?;
    options.verify_checksums = verify;
    Model::open(path, &options).map_err(|e| e.to_string())
}

/// The open options the device flags ask for.
fn open_options(device: &DeviceArgs) -> Result<OpenOptions, String> {
    let parsed = Device::parse(&device.device).ok_or_else(|| {
        format!(
            "--device {}: expected cpu, cuda, cuda:N or auto",
            device.device
        )
    })?;
    let precision = match device.precision.as_str() {
        "f16" => GpuPrecision::F16,
        "f32" => GpuPrecision::F32,
        other => return Err(format!("--precision {other}: expected f16 or f32")),
    };
    let cpu_mode = mmoe::CpuMode::parse(&device.mode)
        .ok_or_else(|| format!("--mode {}: expected exact or bf16", device.mode))?;
    Ok(OpenOptions {
        verify_checksums: false,
        device: parsed,
        gpu_precision: precision,
        cpu_mode,
        // MMOE_CPU_BF16=always, read by Model::open.
        bf16_even_if_slower: false,
    })
}

fn inspect(path: &Path, print_config: bool, device: &DeviceArgs) -> CliResult {
    let model = open_on(path, false, device)?;
    let config = model.config();
    if print_config {
        let pretty = serde_json::to_string_pretty(config).map_err(|e| e.to_string())?;
        println!("{pretty}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("model      {}", config.name);
    println!(
        "file       {} ({})",
        path.display(),
        human_bytes(model.file_len())
    );
    println!(
        "dtype      {}, layout version {}",
        model.dtype().name(),
        model.layout_version()
    );
    println!("device     {}", model.device_note());
    println!(
        "cpu        mode {}, kernels {}",
        model.cpu_mode_note(),
        mmoe::cpu::Isa::detected().map_or_else(|e| e.to_string(), |i| i.name().to_string())
    );
    println!("hash       {:016x}", model.content_hash());
    println!(
        "x0 width   {}    expert_dim {}",
        model.plan().d,
        model.plan().h
    );
    println!("inputs");
    for input in model.inputs() {
        println!(
            "  {:<24} {:?} {:?} dim {}",
            input.name, input.kind, input.scope, input.dim
        );
    }
    println!("experts");
    for expert in &config.experts {
        println!("  {:<24} {}", expert.name, expert.kind.type_name());
    }
    println!("tasks      {}", model.task_names().join(", "));
    println!("tensors    {}", model.tensors().len());
    for t in model.tensors() {
        println!(
            "  {:<44} {:<14} {:<4} {:<9} {:>10} @ {}",
            t.name,
            format!("{:?}", t.shape),
            t.dtype.name(),
            t.layout.name(),
            human_bytes(t.bytes.len() as u64),
            t.bytes.start
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(path: &Path) -> CliResult {
    let start = Instant::now();
    let model = open(path, true)?;
    println!(
        "ok: {} tensors, {} verified in {:.3} s",
        model.tensors().len(),
        human_bytes(model.file_len()),
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn parse_backend(name: &str) -> Result<Backend, String> {
    Backend::parse(name).ok_or_else(|| format!("--backend {name}: expected reference, cpu or cuda"))
}

/// Refuses an output file that is one of the command's inputs (the same
/// path, a symbolic or a hard link): creating it would empty that input
/// while it is read (or mapped: a bus error).
pub(crate) fn refuse_out_among_inputs(out: &Path, inputs: &[&Path]) -> Result<(), String> {
    for input in inputs {
        if same_file(out, input) {
            return Err(format!(
                "--out {} is the input {}: write the output to another file",
                out.display(),
                input.display()
            ));
        }
    }
    Ok(())
}

/// Whether `a` and `b` are one existing file: the same device and inode
/// (through any path, symbolic or hard link).
#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether `a` and `b` are one existing file, by canonical path (hard
/// links not seen).
#[cfg(not(unix))]
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A session with the named backend, or the model's own.
fn session(model: &std::sync::Arc<Model>, backend: Option<&str>) -> Result<Session, String> {
    Ok(match backend {
        Some(name) => Session::with_backend(model.clone(), parse_backend(name)?),
        None => Session::new(model.clone()),
    })
}

fn score(
    model_path: &Path,
    requests: &Path,
    out: &Path,
    backend: Option<&str>,
    device: &DeviceArgs,
) -> CliResult {
    refuse_out_among_inputs(out, &[model_path, requests])?;
    let model = open_on(model_path, false, device)?;
    let tasks = model.num_tasks();
    let input = std::fs::File::open(requests)
        .map_err(|e| format!("cannot open {}: {e}", requests.display()))?;
    let output =
        std::fs::File::create(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut output = BufWriter::new(output);
    let mut session = session(&model, backend)?;
    if let Some(name) = backend {
        // A backend the model cannot run on (cuda on a model opened on the
        // CPU) fails once here, not on every line.
        session
            .warm_up(1)
            .map_err(|e| format!("--backend {name}: {e}"))?;
    }
    let (mut good, mut bad) = (0usize, 0usize);
    let (mut logits, mut probabilities) = (Vec::new(), Vec::new());
    for (index, line) in std::io::BufReader::new(input).split(b'\n').enumerate() {
        let number = index + 1;
        let mut bytes =
            line.map_err(|e| format!("cannot read {} line {number}: {e}", requests.display()))?;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        // A byte-order mark that some editors write at the file's start.
        if number == 1 && bytes.starts_with(b"\xEF\xBB\xBF") {
            bytes.drain(..3);
        }
        // A line that is not UTF-8 is one bad line, answered as such; the
        // lines after it are scored.
        let line = std::str::from_utf8(&bytes).map_err(|e| {
            mmoe::Error::request(format!("not valid UTF-8 (byte {})", e.valid_up_to()))
        });
        if line.as_ref().is_ok_and(|line| line.trim().is_empty()) {
            continue;
        }
        let result = line
            .and_then(|line| jsonl::parse_request(line, model.config()))
            .and_then(|owned| {
                let n = owned.candidates * tasks;
                logits.resize(n, 0.0);
                probabilities.resize(n, 0.0);
                session.score(
                    &owned.as_request(),
                    &mut Scores {
                        logits: Some(&mut logits),
                        probabilities: Some(&mut probabilities),
                    },
                )
            });
        let text = match result {
            Ok(()) => {
                good += 1;
                jsonl::format_answer(&logits, &probabilities, tasks)
            }
            Err(e) => {
                bad += 1;
                eprintln!("mmoe score: {}: line {number}: {e}", requests.display());
                jsonl::format_error(number, &e)
            }
        };
        writeln!(output, "{text}").map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    }
    output
        .flush()
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let calls: Vec<String> = mmoe::cpu::Isa::ALL
        .iter()
        .map(|&isa| format!("{} {}", isa.name(), mmoe::cpu::calls(isa)))
        .chain(std::iter::once(format!("bf16 {}", mmoe::cpu::bf16_calls())))
        .collect();
    eprintln!(
        "scored {good} request(s), {bad} failed; cpu kernel calls: {}",
        calls.join(", ")
    );
    // As `score-dataset`: 3 when some requests failed and the rest were
    // scored, 1 when the command itself failed.
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn demo(
    candidates: usize,
    out: Option<PathBuf>,
    top: usize,
    seed: u64,
    config: Option<&Path>,
    layout_version: u32,
) -> CliResult {
    let config = match config {
        None => Config::parse(mmoe::demo::BENCH_MODEL_JSON).map_err(|e| e.to_string())?,
        Some(path) => read_config(path)?,
    };
    if candidates > mmoe::MAX_CANDIDATES {
        return Err(format!(
            "--candidates {candidates}: above the limit of {} per request",
            mmoe::MAX_CANDIDATES
        ));
    }
    let out = out.unwrap_or_else(|| std::env::temp_dir().join("mmoe-demo.mmoe"));
    println!(
        "mmoe demo: model `{}` ({} inputs, {} experts, {} tasks, x0 width {})",
        config.name,
        config.inputs.len(),
        config.experts.len(),
        config.tasks.len(),
        config.x0_dim()
    );

    let start = Instant::now();
    let tensors = mmoe::demo::synthetic_tensors(&config, seed).map_err(|e| e.to_string())?;
    let len = pack_with_progress(&config, &tensors, DType::F16, &out, 0, layout_version)?;
    println!(
        "packed     {} ({}, fp16) in {:.2} s",
        out.display(),
        human_bytes(len),
        start.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    let model = open(&out, false)?;
    println!(
        "opened     in {:.3} ms (memory-mapped, zero copy)",
        start.elapsed().as_secs_f64() * 1e3
    );

    let owned = mmoe::demo::synthetic_request(&config, candidates, 11);
    let request = owned.as_request();
    let tasks = model.num_tasks();
    let mut session = Session::new(model.clone());
    let mut logits = vec![0.0; candidates * tasks];
    let mut probabilities = vec![0.0; candidates * tasks];
    let mut times = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        session
            .score(
                &request,
                &mut Scores {
                    logits: Some(&mut logits),
                    probabilities: Some(&mut probabilities),
                },
            )
            .map_err(|e| e.to_string())?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];

    for (t, task) in model.task_names().iter().enumerate() {
        let mut order: Vec<usize> = (0..candidates).collect();
        order.sort_by(|&a, &b| {
            probabilities[b * tasks + t].total_cmp(&probabilities[a * tasks + t])
        });
        let shown: Vec<String> = order
            .iter()
            .take(top)
            .map(|&c| format!("#{c} {:.4}", probabilities[c * tasks + t]))
            .collect();
        println!("top {task:<11} {}", shown.join("   "));
    }
    println!(
        "latency    {candidates} candidates in {:.2} ms (median of 3, {:?} backend, 1 thread) = {:.0} candidates/s",
        median * 1e3,
        session.backend(),
        candidates as f64 / median
    );
    println!(
        "build      {} ({}), {} CPU(s) visible",
        env!("MMOE_BUILD_TARGET"),
        env!("MMOE_BUILD_PROFILE"),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    Ok(ExitCode::SUCCESS)
}

fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", n / (1u64 << 30) as f64)
    } else if n >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", n / (1u64 << 20) as f64)
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}
