//! `mmoe bench`: latency and throughput per batch size, end to end (host
//! features in, host scores out), on synthetic requests for the model's
//! config. Prints the machine and settings, a table, and optionally JSON.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmoe::{Model, Scores};

use super::{open_on, session, CliResult, DeviceArgs};

pub struct Settings {
    pub model: PathBuf,
    pub batch: String,
    pub threads: usize,
    pub iters: usize,
    pub max_seconds: f64,
    pub backend: Option<String>,
    pub device: DeviceArgs,
    pub json: Option<PathBuf>,
    pub peak: bool,
    pub kernel: bool,
    pub profile_steps: bool,
    pub staging: bool,
    pub first_call: bool,
    pub phases: bool,
    pub intra: usize,
}

pub struct Row {
    pub batch: usize,
    pub calls: usize,
    pub candidates_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index]
}

/// The median time of `f` in µs, over calls for at least 20 ms.
fn median_us(f: &mut dyn FnMut()) -> f64 {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || start.elapsed() < Duration::from_millis(20) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    percentile(&times, 0.5)
}

/// The GPU path's host side (`--staging`): a request of each batch size
/// packed into the staging buffer, whole and in pieces of the runtime's
/// upload size (the copies to the device left out), against a memcpy of
/// as many bytes, in one call and in copies of `COPY_PIECE` bytes (as the
/// packing copies: one call may bypass the caches, see `COPY_PIECE`), with
/// f32 values and u64 ids (the upload until 2026-11-28), f32 values and
/// u32 ids (fp32 compute's upload now) and fp16 values where
/// `PlanOptions::half_values` allows with u32 ids (fp16 compute's).
/// Plain memory stands for the pinned buffer. Printed, and returned for the
/// JSON report.
fn staging_table(model: &Model, batches: &[usize]) -> Result<serde_json::Value, String> {
    use mmoe::gpu::staging::{
        ids_as_u32, staging_layout, values_as_f16, write_staging, write_staging_in_chunks,
        write_staging_shared, InputTensors, Split, COPY_PIECE, SHARED_PART,
    };
    // Helper threads as the runtime starts them for `MMOE_GPU_PACK_THREADS`
    // (this thread packs too): one less than the cores, at most 3; parked
    // between calls, and spinning for `SPIN` after each (the calls here
    // follow each other at once: the spinning helpers are always awake).
    const SPIN: Duration = Duration::from_micros(100);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = |spin| {
        mmoe::helper_threads::HelperThreads::new((cores - 1).min(3), "mmoe-pack", spin)
            .map_err(|e| format!("cannot start packing helpers: {e}"))
    };
    let (parked, spinning) = (pool(Duration::ZERO)?, pool(SPIN)?);
    let chunk = mmoe::gpu::launch_plan::PlanOptions::default().upload_chunk;
    let formats = [
        ("f32,u64", false, false),
        ("f32,u32", false, true),
        ("f16,u32", true, true),
    ]
    .map(|(name, half, narrow)| {
        let tensors: Vec<InputTensors> = model
            .config()
            .inputs
            .iter()
            .map(|input| InputTensors {
                values_f16: half && values_as_f16(input),
                ids_u32: narrow && ids_as_u32(input),
                ..InputTensors::default()
            })
            .collect();
        (name, tensors)
    });
    println!(
        "staging   the GPU path's request packing on this CPU (median µs; plain memory for pinned;"
    );
    println!("          values,ids: f32,u64 until 2026-11-28; f32,u32 fp32 compute; f16,u32 fp16 compute;");
    println!(
        "          shared: this thread and {} helper thread(s) in parts of {} KiB, parked or spinning {} µs after a call):",
        parked.count(),
        SHARED_PART >> 10,
        SPIN.as_micros()
    );
    println!(
        "{:>9} {:>8} {:>10} {:>10} {:>18} {:>9} {:>16} {:>7} {:>9} {:>9}",
        "batch",
        "format",
        "bytes",
        "memcpy",
        format!("memcpy, {} KiB", COPY_PIECE >> 10),
        "pack",
        format!("pack, {} KiB", chunk >> 10),
        "pieces",
        "parked",
        "spinning"
    );
    let mut rows = serde_json::Map::new();
    for &batch in batches {
        let owned = mmoe::demo::synthetic_request(model.config(), batch, 1);
        let request = owned.as_request();
        for (name, tensors) in &formats {
            let layout = staging_layout(model, tensors, &request).map_err(|e| e.to_string())?;
            let source = vec![1u8; layout.total];
            let mut out = vec![0u8; layout.total];
            let memcpy = median_us(&mut || out.copy_from_slice(std::hint::black_box(&source)));
            let memcpy_pieces = median_us(&mut || {
                for (to, from) in out
                    .chunks_mut(COPY_PIECE)
                    .zip(std::hint::black_box(&source).chunks(COPY_PIECE))
                {
                    to.copy_from_slice(from);
                }
            });
            let mut failed = None;
            let whole = median_us(&mut || {
                if let Err(e) = write_staging(model, tensors, &request, &layout, &mut out) {
                    failed = Some(e);
                }
            });
            let mut pieces = 0usize;
            let in_pieces = median_us(&mut || {
                let mut count = 0;
                let mut hand_over = |_: &[u8], _: usize| {
                    count += 1;
                    Ok(())
                };
                let written = write_staging_in_chunks(
                    model,
                    tensors,
                    &request,
                    &layout,
                    &mut out,
                    chunk,
                    &mut hand_over,
                );
                pieces = count;
                if let Err(e) = written {
                    failed = Some(e);
                }
            });
            let mut shared = |helpers| {
                median_us(&mut || {
                    let written = write_staging_shared(
                        model,
                        tensors,
                        &request,
                        &layout,
                        &mut out,
                        helpers,
                        Split::default(),
                    );
                    if let Err(e) = written {
                        failed = Some(e);
                    }
                })
            };
            let (shared_parked, shared_spinning) = (shared(&parked), shared(&spinning));
            if let Some(e) = failed {
                return Err(e.to_string());
            }
            println!(
                "{:>9} {:>8} {:>10} {:>10.1} {:>18.1} {:>9.1} {:>16.1} {:>7} {:>9.1} {:>9.1}",
                batch,
                name,
                layout.total,
                memcpy,
                memcpy_pieces,
                whole,
                in_pieces,
                pieces,
                shared_parked,
                shared_spinning
            );
            let key = match *name {
                "f32,u64" => batch.to_string(),
                "f32,u32" => format!("{batch}-f32-u32"),
                _ => format!("{batch}-compact"),
            };
            rows.insert(
                key,
                serde_json::json!({"format": name, "bytes": layout.total, "memcpy_us": memcpy,
                    "memcpy_in_pieces_us": memcpy_pieces, "copy_piece_bytes": COPY_PIECE, "pack_us": whole,
                    "pack_in_pieces_us": in_pieces, "pieces": pieces, "piece_bytes": chunk,
                    "pack_shared_parked_us": shared_parked, "pack_shared_spinning_us": shared_spinning,
                    "helper_threads": parked.count(), "helper_spin_us": SPIN.as_micros() as u64,
                    "shared_part_bytes": SHARED_PART}),
            );
        }
    }
    Ok(serde_json::Value::Object(rows))
}

/// The Linear kernel alone (`--kernel`): 512×512 fp16 layers at 16 and 32
/// rows (a batch-16 call, and a candidate tile), with one layer (in L2) and
/// eighteen (9 MB, from L3, as the benchmark model's). Printed, and returned
/// for the JSON report.
fn kernel_table(isa: mmoe::cpu::Isa, peak: Option<f64>) -> serde_json::Value {
    let mut entries = Vec::new();
    for rows in [16, 32] {
        for (layers, place) in [(1, "L2"), (18, "L3")] {
            let gflops = mmoe::cpu::peak::linear_gflops(isa, rows, 512, 512, layers, 2e8);
            let share = peak.map_or(String::new(), |p| {
                format!(" ({:.0}% of peak)", 100.0 * gflops / p)
            });
            println!(
                "kernel    {rows} rows × 512×512 fp16, {layers} layer(s), weights in {place}: {gflops:.1} GFLOP/s{share}"
            );
            entries.push(serde_json::json!({
                "rows": rows, "k": 512, "n": 512, "layers": layers, "weights_in": place, "gflops": gflops,
            }));
        }
    }
    serde_json::Value::Array(entries)
}

/// `--profile-steps`: after a batch size is timed, a separate pass of the
/// same calls on one session with step profiling on; prints where a call's
/// time goes, per step of the CPU program, and returns it for the JSON.
fn profile_steps(
    model: &Arc<Model>,
    settings: &Settings,
    batch: usize,
) -> Result<serde_json::Value, String> {
    let (times, mut session) = timed_calls(model, settings, batch, 1000, |session| {
        session.set_step_profiling(true)
    })?;
    let calls = times.len();
    let profile = session.step_profile();
    session.set_step_profiling(false);
    if profile.is_empty() {
        println!(
            "  (no step profile: the {} backend does not run the CPU program)",
            session.backend().name()
        );
        return Ok(serde_json::Value::Null);
    }
    let total: f64 = profile.iter().map(|(_, d)| d.as_secs_f64()).sum();
    let per_call = |d: Duration| d.as_secs_f64() * 1e6 / calls.max(1) as f64;
    println!(
        "  steps of batch {batch}, {calls} calls, µs per call (sum {:.1}):",
        total * 1e6 / calls.max(1) as f64
    );
    let mut entries = Vec::new();
    for (label, spent) in &profile {
        println!(
            "  {:>10.1} {:>5.1}%  {label}",
            per_call(*spent),
            100.0 * spent.as_secs_f64() / total.max(1e-12)
        );
        entries.push(serde_json::json!({ "step": label, "us_per_call": per_call(*spent) }));
    }
    Ok(serde_json::json!({ "calls": calls, "steps": entries }))
}

/// A new session with the settings' backend and intra-request threads.
fn bench_session(model: &Arc<Model>, settings: &Settings) -> Result<mmoe::Session, String> {
    let mut session = session(model, settings.backend.as_deref())?;
    session.set_threads(settings.intra);
    Ok(session)
}

/// First calls (`--first-call`), per batch size in ascending order: the
/// first call of that size in the process (at the first size, the model's
/// first; on a GPU also the tile timing of its bucket), then over 5 more
/// rounds (medians): a new session's first call, a new session's
/// `warm_up(batch)`, and that session's first call after it; off the GPU
/// also the model opened afresh (as by a reload), a session's warm-up on it,
/// and that session's first call with the page faults it took (the mapped
/// file's pages not yet in this process's page tables). Printed, and
/// returned for the JSON report.
fn first_call_table(
    model: &Arc<Model>,
    settings: &Settings,
    batches: &[usize],
) -> Result<serde_json::Value, String> {
    const ROUNDS: usize = 5;
    let mut sizes = batches.to_vec();
    sizes.sort_unstable();
    sizes.dedup();
    // A fresh model per round costs a GPU upload and tile timing each: CPU only.
    let fresh_models = mmoe::Session::new(model.clone()).backend() != mmoe::Backend::Cuda;
    println!(
        "first calls (µs; medians of {ROUNDS} new sessions, after the first call of each size):"
    );
    println!(
        "{:>7} {:>16} {:>16} {:>12} {:>16} {:>13} {:>16} {:>7}",
        "batch",
        "first in process",
        "cold first",
        "warm_up",
        "first after it",
        "fresh warm_up",
        "first after it",
        "faults"
    );
    let mut entries = Vec::new();
    for batch in sizes {
        let owned = mmoe::demo::synthetic_request(model.config(), batch, 77);
        let request = owned.as_request();
        let mut logits = vec![0.0; batch * model.num_tasks()];
        let mut timed_call = |session: &mut mmoe::Session| -> Result<(f64, i64), String> {
            let faults = page_faults();
            let t0 = Instant::now();
            session
                .score(
                    &request,
                    &mut Scores {
                        logits: Some(&mut logits),
                        probabilities: None,
                    },
                )
                .map_err(|e| e.to_string())?;
            Ok((t0.elapsed().as_secs_f64() * 1e6, page_faults() - faults))
        };
        let new_session = || bench_session(model, settings);
        let first_in_process = timed_call(&mut new_session()?)?.0;
        let (mut cold, mut warm_up, mut after) = (Vec::new(), Vec::new(), Vec::new());
        let (mut fresh_warm_up, mut fresh, mut fresh_faults) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            cold.push(timed_call(&mut new_session()?)?.0);
            let mut warm = new_session()?;
            let t0 = Instant::now();
            warm.warm_up(batch).map_err(|e| e.to_string())?;
            warm_up.push(t0.elapsed().as_secs_f64() * 1e6);
            after.push(timed_call(&mut warm)?.0);
            if fresh_models {
                let reloaded = open_on(&settings.model, false, &settings.device)?;
                let mut session = bench_session(&reloaded, settings)?;
                let t0 = Instant::now();
                session.warm_up(batch).map_err(|e| e.to_string())?;
                fresh_warm_up.push(t0.elapsed().as_secs_f64() * 1e6);
                let (us, faults) = timed_call(&mut session)?;
                fresh.push(us);
                fresh_faults.push(faults as f64);
            }
        }
        let median = |mut v: Vec<f64>| {
            if v.is_empty() {
                return f64::NAN;
            }
            v.sort_by(f64::total_cmp);
            percentile(&v, 0.5)
        };
        let (cold, warm_up, after) = (median(cold), median(warm_up), median(after));
        let (fresh_warm_up, fresh, fresh_faults) =
            (median(fresh_warm_up), median(fresh), median(fresh_faults));
        println!(
            "{batch:>7} {first_in_process:>16.1} {cold:>16.1} {warm_up:>12.1} {after:>16.1} {fresh_warm_up:>13.1} {fresh:>16.1} {fresh_faults:>7.0}"
        );
        entries.push(serde_json::json!({
            "batch": batch,
            "first_in_process_us": first_in_process,
            "cold_first_us": cold,
            "warm_up_us": warm_up,
            "first_after_warm_up_us": after,
            "fresh_model_warm_up_us": fresh_warm_up.is_finite().then_some(fresh_warm_up),
            "fresh_model_first_after_warm_up_us": fresh.is_finite().then_some(fresh),
            "fresh_model_first_after_warm_up_page_faults": fresh_faults.is_finite().then_some(fresh_faults),
        }));
    }
    Ok(serde_json::Value::Array(entries))
}

/// Page faults this thread has taken (minor and major, from
/// `/proc/thread-self/stat`; 0 where there is no such file).
fn page_faults() -> i64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return 0;
    };
    // After the command name's closing parenthesis: state is field 3, minflt
    // field 10 and majflt field 12 (proc(5)).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<i64>().ok());
    field(10).unwrap_or(0) + field(12).unwrap_or(0)
}

/// One phase of a traced GPU call.
#[cfg(feature = "cuda")]
type PhaseField = fn(&mmoe::gpu::CallPhases) -> f64;

/// Where a GPU call's time goes (`--phases`), per batch size: one session,
/// 3 warm-up calls, then up to `settings.iters` calls (or
/// `settings.max_seconds`) traced by CUDA events and host clocks; medians
/// of each phase. Printed, and returned for the JSON report.
#[cfg(feature = "cuda")]
fn phases_table(
    model: &Arc<Model>,
    settings: &Settings,
    batches: &[usize],
) -> Result<serde_json::Value, String> {
    println!("phases    where a GPU call's time goes (µs, medians; host clocks, and CUDA events on the session's stream):");
    println!(
        "{:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>14} {:>13}",
        "batch", "calls", "total", "pack", "launch", "wait", "device upload", "device graph"
    );
    let mut entries = serde_json::Map::new();
    for &batch in batches {
        let mut traced = Ok(());
        let (_, session) = timed_calls(model, settings, batch, 91, |session| {
            traced = session.trace_gpu_phases(settings.iters);
        })?;
        traced.map_err(|e| format!("--phases: {e}"))?;
        let calls = session.gpu_phases();
        if calls.is_empty() {
            return Err(format!("--phases: no GPU call traced at batch {batch}"));
        }
        // Each phase's JSON name and field, in the table's order.
        let fields: [(&str, PhaseField); 6] = [
            ("total_us", |c| c.total_us),
            ("pack_us", |c| c.pack_us),
            ("launch_us", |c| c.launch_us),
            ("wait_us", |c| c.wait_us),
            ("device_upload_us", |c| c.device_upload_us),
            ("device_graph_us", |c| c.device_graph_us),
        ];
        let medians = fields.map(|(_, field)| {
            let mut values: Vec<f64> = calls.iter().map(field).collect();
            values.sort_by(f64::total_cmp);
            percentile(&values, 0.5)
        });
        let [total, pack, launch, wait, upload, graph] = medians;
        println!(
            "{batch:>7} {:>7} {total:>9.1} {pack:>9.1} {launch:>9.1} {wait:>9.1} {upload:>14.1} {graph:>13.1}",
            calls.len()
        );
        let mut entry = serde_json::Map::new();
        entry.insert("calls".into(), calls.len().into());
        for ((name, _), median) in fields.iter().zip(medians) {
            entry.insert((*name).into(), median.into());
        }
        entries.insert(batch.to_string(), entry.into());
    }
    Ok(serde_json::Value::Object(entries))
}

#[cfg(not(feature = "cuda"))]
fn phases_table(
    _model: &Arc<Model>,
    _settings: &Settings,
    _batches: &[usize],
) -> Result<serde_json::Value, String> {
    Err("--phases: this build of mmoe has no GPU support (cargo feature `cuda`)".into())
}

/// One session scoring a synthetic request of `batch` candidates (seed
/// `seed`): 3 warm-up calls, then `before_timing`, then calls until
/// `settings.iters` or `settings.max_seconds`. Returns each timed call's
/// seconds, and the session.
fn timed_calls(
    model: &Arc<Model>,
    settings: &Settings,
    batch: usize,
    seed: u64,
    before_timing: impl FnOnce(&mut mmoe::Session),
) -> Result<(Vec<f64>, mmoe::Session), String> {
    let mut session = bench_session(model, settings)?;
    let owned = mmoe::demo::synthetic_request(model.config(), batch, seed);
    let request = owned.as_request();
    let mut logits = vec![0.0; batch * model.num_tasks()];
    let mut probabilities = vec![0.0; batch * model.num_tasks()];
    let mut call = |session: &mut mmoe::Session| {
        session
            .score(
                &request,
                &mut Scores {
                    logits: Some(&mut logits),
                    probabilities: Some(&mut probabilities),
                },
            )
            .map_err(|e| e.to_string())
    };
    for _ in 0..3 {
        call(&mut session)?;
    }
    before_timing(&mut session);
    let budget = Duration::from_secs_f64(settings.max_seconds);
    let mut times = Vec::with_capacity(settings.iters);
    let start = Instant::now();
    while times.len() < settings.iters && start.elapsed() < budget {
        let t0 = Instant::now();
        call(&mut session)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok((times, session))
}

/// Times one batch size on `threads` threads, each with its own session.
fn measure(model: &Arc<Model>, settings: &Settings, batch: usize) -> Result<Row, String> {
    let results: Vec<Result<Vec<f64>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..settings.threads)
            .map(|t| {
                scope.spawn(move || {
                    timed_calls(model, settings, batch, 1000 + t as u64, |_| {})
                        .map(|(times, _)| times)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a benchmark thread panicked".into()))
            })
            .collect()
    });
    let mut all = Vec::new();
    let mut busiest = 0.0f64;
    let mut calls = 0;
    for r in results {
        let times = r?;
        busiest = busiest.max(times.iter().sum());
        calls += times.len();
        all.extend(times);
    }
    all.sort_by(f64::total_cmp);
    // Throughput: candidates scored by all threads over the longest thread's
    // busy time.
    let candidates_per_s = (calls * batch) as f64 / busiest.max(1e-12);
    Ok(Row {
        batch,
        calls,
        candidates_per_s,
        p50_us: percentile(&all, 0.50) * 1e6,
        p99_us: percentile(&all, 0.99) * 1e6,
    })
}

pub fn run(settings: &Settings) -> CliResult {
    let batches: Vec<usize> = settings
        .batch
        .split(',')
        .map(|b| match b.trim().parse::<usize>() {
            Ok(n) if n > mmoe::MAX_CANDIDATES => Err(format!(
                "--batch: {n} is above the limit of {} candidates per request",
                mmoe::MAX_CANDIDATES
            )),
            Ok(n) => Ok(n),
            Err(_) => Err(format!("--batch: `{b}` is not a batch size")),
        })
        .collect::<Result<_, _>>()?;
    // Each thread is started, each intra-request thread too.
    for (flag, n) in [
        ("--threads", settings.threads),
        ("--intra-threads", settings.intra),
    ] {
        if !(1..=mmoe::MAX_THREADS).contains(&n) {
            return Err(format!(
                "{flag} must be 1 to {}, got {n}",
                mmoe::MAX_THREADS
            ));
        }
    }
    if !(settings.max_seconds.is_finite()
        && settings.max_seconds >= 0.0
        && settings.max_seconds <= 1e6)
    {
        return Err(format!(
            "--max-seconds must be 0 to 1000000, got {}",
            settings.max_seconds
        ));
    }
    let model = open_on(&settings.model, false, &settings.device)?;
    let backend = match &settings.backend {
        Some(b) => b.clone(),
        None => mmoe::Session::new(model.clone())
            .backend()
            .name()
            .to_string(),
    };
    println!(
        "machine   {} ({} CPUs visible)",
        cpu_name(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "model     {} ({}, {})",
        model.name(),
        settings.model.display(),
        model.dtype().name()
    );
    println!(
        "settings  backend {backend}, device {}, cpu mode {}, threads {} (each splitting a request over {}), up to {} calls or {} s per batch",
        model.device_note(),
        model.cpu_mode_note(),
        settings.threads,
        settings.intra,
        settings.iters,
        settings.max_seconds
    );
    let isa = mmoe::cpu::Isa::detected().map_err(|e| e.to_string())?;
    let flops = model.program().flops_per_candidate();
    let flops_full = model.program().flops_without_dedup();
    println!(
        "work      {:.2} MFLOP per candidate executed ({:.2} without request-level dedup); CPU kernels {}",
        flops as f64 / 1e6,
        flops_full as f64 / 1e6,
        isa.name()
    );
    let peak = settings.peak.then(|| mmoe::cpu::peak::fma_gflops(isa));
    if let Some(peak) = peak {
        println!(
            "peak      {peak:.1} GFLOP/s fp32 FMA, one thread ({})",
            isa.name()
        );
    }
    let kernel = settings.kernel.then(|| kernel_table(isa, peak));
    let staging = match settings.staging {
        true => Some(staging_table(&model, &batches)?),
        false => None,
    };
    let first_calls = match settings.first_call {
        true => Some(first_call_table(&model, settings, &batches)?),
        false => None,
    };
    let phases = match settings.phases {
        true => Some(phases_table(&model, settings, &batches)?),
        false => None,
    };
    println!(
        "{:>7} {:>8} {:>14} {:>11} {:>11} {:>9} {:>7}",
        "batch", "calls", "candidates/s", "p50 µs", "p99 µs", "GFLOP/s", "% peak"
    );
    let mut rows = Vec::new();
    let mut profiles = serde_json::Map::new();
    for &batch in &batches {
        let row = measure(&model, settings, batch)?;
        let gflops =
            row.candidates_per_s * flops as f64 / 1e9 / (settings.threads * settings.intra) as f64;
        let share = peak.map_or("-".to_string(), |p| format!("{:.0}", 100.0 * gflops / p));
        println!(
            "{:>7} {:>8} {:>14.0} {:>11.1} {:>11.1} {:>9.1} {:>7}",
            row.batch, row.calls, row.candidates_per_s, row.p50_us, row.p99_us, gflops, share
        );
        if settings.profile_steps {
            profiles.insert(batch.to_string(), profile_steps(&model, settings, batch)?);
        }
        rows.push(row);
    }
    if let Some(path) = &settings.json {
        let results: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|r| {
                (
                    r.batch.to_string(),
                    serde_json::json!({"candidates_per_s": r.candidates_per_s, "p50_us": r.p50_us, "p99_us": r.p99_us, "calls": r.calls}),
                )
            })
            .collect();
        let report = serde_json::json!({
            "machine": cpu_name(),
            "model": model.name(),
            "dtype": model.dtype().name(),
            "backend": backend,
            "device": model.device_note(),
            "cpu_mode": model.cpu_mode().name(),
            "threads": settings.threads,
            "threads_per_request": settings.intra,
            "isa": isa.name(),
            "flops_per_candidate": flops,
            "flops_per_candidate_without_dedup": flops_full,
            "peak_gflops": peak,
            "kernel": kernel,
            "staging": staging,
            "first_calls": first_calls,
            "phases": phases,
            "step_profiles": profiles,
            "results": results,
        });
        std::fs::write(
            path,
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}
