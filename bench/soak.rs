//! Soak: threads score requests of random sizes through one engine for a
//! while, as an ad server would, while the engine reloads every second,
//! alternating between two models and, every few reloads, trying a corrupt
//! file (which must fail while the old model keeps serving). Reports, per
//! interval, calls, failures, p50/p99 latency and resident memory, then a
//! verdict: no failed call, every corrupt reload refused, every checked
//! result exactly one model's scores, and resident memory flat.
//!
//!   cargo run --release --example soak -- --model-a A.mmoe --model-b B.mmoe \
//!       [--threads 8] [--seconds 600] [--report-every 30] [--json out.json]
//!
//! Exits 1 when the verdict fails.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mmoe::{Engine, OpenOptions, Scores};

struct Args {
    model_a: PathBuf,
    model_b: PathBuf,
    threads: usize,
    seconds: u64,
    report_every: u64,
    corrupt_every: u64,
    max_candidates: usize,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        model_a: PathBuf::new(),
        model_b: PathBuf::new(),
        threads: 8,
        seconds: 600,
        report_every: 30,
        corrupt_every: 7,
        max_candidates: 512,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: `{v}` is not a number"))
        };
        match flag.as_str() {
            "--model-a" => args.model_a = value()?.into(),
            "--model-b" => args.model_b = value()?.into(),
            "--threads" => args.threads = number(value()?)?.max(1) as usize,
            "--seconds" => args.seconds = number(value()?)?,
            "--report-every" => args.report_every = number(value()?)?.max(1),
            "--corrupt-every" => args.corrupt_every = number(value()?)?.max(1),
            "--max-candidates" => args.max_candidates = number(value()?)?.max(1) as usize,
            "--json" => args.json = Some(value()?.into()),
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    if args.model_a.as_os_str().is_empty() || args.model_b.as_os_str().is_empty() {
        return Err("--model-a and --model-b are required".into());
    }
    Ok(args)
}

/// Resident set size in bytes (Linux), 0 elsewhere.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Interval {
    end_s: f64,
    calls: usize,
    failures: u64,
    p50_us: f64,
    p99_us: f64,
    rss_mib: f64,
    generation: u64,
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("soak: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    let engine =
        Arc::new(Engine::open(&args.model_a, OpenOptions::default()).map_err(|e| e.to_string())?);
    let config = engine.model().config().clone();
    let other = Engine::open(&args.model_b, OpenOptions::default()).map_err(|e| e.to_string())?;
    if other.model().config() != &config {
        return Err("the two models must share a config (same inputs and tasks)".into());
    }
    let tasks = config.tasks.len();
    // Requests of random sizes, made once (skewed towards small ones, as
    // traffic is); request 0 is checked against both models' scores.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let requests: Vec<mmoe::request::OwnedRequest> = (0..64)
        .map(|i| {
            let r = next();
            let n = if i == 0 {
                37
            } else {
                (1 + (r % args.max_candidates as u64) as usize) >> ((r >> 60) % 4)
            };
            mmoe::demo::synthetic_request(&config, n.max(1), r)
        })
        .collect();
    let expected: Vec<Vec<f32>> = [&engine, &Arc::new(other)]
        .iter()
        .map(|e| {
            let mut out = vec![0.0; requests[0].candidates * tasks];
            e.session()
                .score(
                    &requests[0].as_request(),
                    &mut Scores {
                        logits: Some(&mut out),
                        probabilities: None,
                    },
                )
                .map(|_| out)
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;

    let stop = AtomicBool::new(false);
    let failures = AtomicU64::new(0);
    let mismatches = AtomicU64::new(0);
    let latencies: Vec<Mutex<Vec<f64>>> =
        (0..args.threads).map(|_| Mutex::new(Vec::new())).collect();
    let corrupt =
        std::env::temp_dir().join(format!("mmoe-soak-corrupt-{}.mmoe", std::process::id()));
    let pristine = std::fs::read(&args.model_a).map_err(|e| e.to_string())?;
    let (mut reloads, mut refused, mut wrongly_accepted) = (0u64, 0u64, 0u64);
    let mut intervals: Vec<Interval> = Vec::new();
    let start = Instant::now();
    let rss_start = rss_bytes();

    println!(
        "soak: {} threads, {} s, reload every 1 s (every {}th a corrupt file), requests of 1–{} candidates",
        args.threads, args.seconds, args.corrupt_every, args.max_candidates
    );
    println!(
        "model A {} / model B {} ({})",
        args.model_a.display(),
        args.model_b.display(),
        config.name
    );
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "t (s)", "calls", "failures", "p50 µs", "p99 µs", "RSS MiB", "reloads"
    );

    std::thread::scope(|scope| -> Result<(), String> {
        for t in 0..args.threads {
            let (engine, stop, failures, mismatches) = (&engine, &stop, &failures, &mismatches);
            let (requests, expected, latencies) = (&requests, &expected, &latencies);
            scope.spawn(move || {
                let mut session = engine.session();
                let mut logits = vec![0.0f32; args.max_candidates.max(37) * tasks];
                let mut pick = (t as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                while !stop.load(Ordering::Relaxed) {
                    pick ^= pick << 13;
                    pick ^= pick >> 7;
                    pick ^= pick << 17;
                    let index = (pick % requests.len() as u64) as usize;
                    let request = &requests[index];
                    let out = &mut logits[..request.candidates * tasks];
                    let t0 = Instant::now();
                    let result = session.score(
                        &request.as_request(),
                        &mut Scores {
                            logits: Some(out),
                            probabilities: None,
                        },
                    );
                    let elapsed = t0.elapsed().as_secs_f64() * 1e6;
                    match result {
                        Ok(_) => {
                            if index == 0
                                && out != expected[0].as_slice()
                                && out != expected[1].as_slice()
                            {
                                mismatches.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if let Ok(mut l) = latencies[t].lock() {
                        l.push(elapsed);
                    }
                }
            });
        }

        let mut next_report = args.report_every;
        let mut second = 0u64;
        while second < args.seconds {
            second += 1;
            let wake = start + Duration::from_secs(second);
            std::thread::sleep(wake.saturating_duration_since(Instant::now()));
            if second.is_multiple_of(args.corrupt_every) {
                // A corrupt copy of model A: one byte of its config changed.
                let mut bytes = pristine.clone();
                let at = 200 + (second as usize * 31) % 1000;
                bytes[at] ^= 0x20;
                std::fs::write(&corrupt, &bytes).map_err(|e| e.to_string())?;
                let before = engine.model().content_hash();
                match engine.reload(&corrupt) {
                    Err(_) if engine.model().content_hash() == before => refused += 1,
                    _ => wrongly_accepted += 1,
                }
            } else {
                let path = if reloads % 2 == 0 {
                    &args.model_b
                } else {
                    &args.model_a
                };
                engine
                    .reload(path)
                    .map_err(|e| format!("reload of {}: {e}", path.display()))?;
                reloads += 1;
            }
            if second >= next_report || second == args.seconds {
                next_report += args.report_every;
                let mut all = Vec::new();
                for l in &latencies {
                    if let Ok(mut l) = l.lock() {
                        all.append(&mut l);
                    }
                }
                all.sort_by(f64::total_cmp);
                let interval = Interval {
                    end_s: start.elapsed().as_secs_f64(),
                    calls: all.len(),
                    failures: failures.load(Ordering::Relaxed),
                    p50_us: percentile(&all, 0.5),
                    p99_us: percentile(&all, 0.99),
                    rss_mib: rss_bytes() as f64 / (1 << 20) as f64,
                    generation: engine.generation(),
                };
                println!(
                    "{:>8.0} {:>9} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9}",
                    interval.end_s,
                    interval.calls,
                    interval.failures,
                    interval.p50_us,
                    interval.p99_us,
                    interval.rss_mib,
                    interval.generation
                );
                intervals.push(interval);
            }
        }
        stop.store(true, Ordering::Relaxed);
        Ok(())
    })?;
    let _ = std::fs::remove_file(&corrupt);

    let calls: usize = intervals.iter().map(|i| i.calls).sum();
    let failed = failures.load(Ordering::Relaxed);
    let mismatched = mismatches.load(Ordering::Relaxed);
    // Flat memory: the last interval within 10% (and 16 MiB) of the first
    // full one (the first covers warm-up: scratch growing to its largest
    // request, the second model mapped).
    let baseline = intervals.first().map_or(0.0, |i| i.rss_mib);
    let last = intervals.last().map_or(0.0, |i| i.rss_mib);
    let peak = intervals.iter().map(|i| i.rss_mib).fold(0.0, f64::max);
    let flat = last <= baseline * 1.10 + 16.0;
    println!(
        "{calls} calls, {failed} failed, {mismatched} checked results of neither model; {reloads} reloads, {refused} corrupt reloads refused, {wrongly_accepted} accepted; RSS {:.1} MiB at start, {baseline:.1} after the first interval, {last:.1} at the end (peak {peak:.1}): {}",
        rss_start as f64 / (1 << 20) as f64,
        if flat { "flat" } else { "GROWING" }
    );
    if let Some(path) = &args.json {
        let rows: Vec<String> = intervals
            .iter()
            .map(|i| {
                format!(
                    "{{\"t_s\": {:.1}, \"calls\": {}, \"failures\": {}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"rss_mib\": {:.1}, \"generation\": {}}}",
                    i.end_s, i.calls, i.failures, i.p50_us, i.p99_us, i.rss_mib, i.generation
                )
            })
            .collect();
        let json = format!(
            "{{\"threads\": {}, \"seconds\": {}, \"calls\": {calls}, \"failures\": {failed}, \"mismatches\": {mismatched}, \"reloads\": {reloads}, \"corrupt_refused\": {refused}, \"corrupt_accepted\": {wrongly_accepted}, \"rss_flat\": {flat}, \"intervals\": [\n  {}\n]}}\n",
            args.threads,
            args.seconds,
            rows.join(",\n  ")
        );
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if failed > 0 || mismatched > 0 || wrongly_accepted > 0 || !flat {
        return Err("verdict: FAILED".into());
    }
    println!("verdict: ok");
    Ok(())
}
