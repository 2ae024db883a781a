//! `mmoe synth`, `mmoe score-dataset` and `mmoe eval`: the dataset side
//! (docs/DATASETS.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::dataset::eval::{self, EvalOptions};
use crate::dataset::score::{logit_column, score_table, MAX_BAD_ROWS_KEPT};
use crate::dataset::synth::{synthesize, SynthOptions};
use crate::dataset::table::{parse_day_range, schema, TableReader, TableWriter};
use mmoe::Config;

use super::{open_options, CliResult, DeviceArgs};

#[derive(Args)]
pub struct SynthArgs {
    /// The Parquet file to write.
    #[arg(long)]
    out: PathBuf,
    /// Impressions (rows).
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Days of logs (rows spread evenly, in day order).
    #[arg(long, default_value_t = 65)]
    days: u32,
    /// Task relatedness: cosine of the task score directions, 0 to 1.
    #[arg(long, default_value_t = 0.7)]
    relatedness: f32,
    /// Drift of the user × ad cross term over the whole log, as an angle
    /// in radians (0: the same interaction every day).
    #[arg(long, default_value_t = 0.6)]
    drift: f32,
    /// A config (JSON) whose inputs and tasks to generate; default: the
    /// bundled benchmark model's (the demo model).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Or take the config of a packed model.
    #[arg(long, conflicts_with = "config")]
    model: Option<PathBuf>,
    #[arg(long, default_value_t = 20_000)]
    users: usize,
    #[arg(long, default_value_t = 50_000)]
    ads: usize,
}

#[derive(Args)]
pub struct ScoreArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Scoring threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
pub struct EvalArgs {
    /// One or two models (A, then B).
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    #[arg(long)]
    data: PathBuf,
    /// Where to write the JSON report.
    #[arg(long, default_value = "eval.json")]
    json: PathBuf,
    /// Where to draw ROC and calibration curves.
    #[arg(long, default_value = "eval.png")]
    plot: PathBuf,
    #[arg(long)]
    threads: Option<usize>,
    /// Bootstrap replicates for the AUC difference.
    #[arg(long, default_value_t = 200)]
    bootstrap: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Evaluate only the rows of these days, `A..B` (B excluded).
    #[arg(long)]
    days: Option<String>,
    #[command(flatten)]
    device: DeviceArgs,
}

/// `--threads`, at most the engine's `MAX_THREADS` (each is a thread
/// started); by default the CPUs available.
fn threads(requested: Option<usize>) -> Result<usize, String> {
    match requested {
        Some(n) if n > mmoe::MAX_THREADS => {
            Err(format!("--threads {n}: at most {}", mmoe::MAX_THREADS))
        }
        Some(n) => Ok(n.max(1)),
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

fn rows_bar(total: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} rows {{per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

pub fn synth(args: &SynthArgs) -> CliResult {
    let config = match (&args.config, &args.model) {
        (Some(path), _) => crate::read_config(path)?,
        (None, Some(path)) => mmoe::Model::open(path, &Default::default())
            .map_err(|e| e.to_string())?
            .config()
            .clone(),
        (None, None) => Config::parse(mmoe::demo::BENCH_MODEL_JSON).map_err(|e| e.to_string())?,
    };
    let options = SynthOptions {
        rows: args.rows,
        seed: args.seed,
        days: args.days,
        relatedness: args.relatedness,
        drift: args.drift,
        users: args.users,
        ads: args.ads,
    };
    let bar = rows_bar(args.rows, "synth");
    let start = std::time::Instant::now();
    let summary = synthesize(&config, &options, &args.out, &mut |done| {
        bar.set_position(done as u64)
    })
    .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "wrote {} ({} rows, {} requests, {} days, inputs and tasks of `{}`) in {seconds:.1} s ({:.0} rows/s)",
        args.out.display(),
        summary.rows,
        summary.requests,
        args.days,
        config.name,
        summary.rows as f64 / seconds
    );
    for (t, task) in config.tasks.iter().enumerate() {
        let rate =
            |v: usize| 100.0 * summary.positives[t][v] as f64 / summary.view_rows[v].max(1) as f64;
        println!(
            "  {:<12} positive rate: related_pins {:.2}%, search {:.2}%",
            task.name,
            rate(0),
            rate(1)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn score_dataset(args: &ScoreArgs) -> CliResult {
    super::refuse_out_among_inputs(&args.out, &[&args.model, &args.data])?;
    let model =
        mmoe::Model::open(&args.model, &open_options(&args.device)?).map_err(|e| e.to_string())?;
    let config = model.config().clone();
    let mut reader = TableReader::open(&args.data, &config, 65_536).map_err(|e| e.to_string())?;
    let new_columns: Vec<String> = config
        .tasks
        .iter()
        .map(|t| logit_column(&config.name, &t.name))
        .collect();
    // Carried score columns, then this model's (replacing any of the same name).
    let mut floats: Vec<String> = reader
        .float_columns
        .iter()
        .filter(|c| !new_columns.contains(c))
        .cloned()
        .collect();
    let carried = floats.len();
    floats.extend(new_columns.iter().cloned());
    let mut writer = TableWriter::create(&args.out, schema(&config, reader.has_labels, &floats))
        .map_err(|e| e.to_string())?;
    let bar = rows_bar(reader.total_rows, "scoring");
    let threads = threads(args.threads)?;
    let mut sink = |mut out: crate::dataset::table::Chunk, logits: Vec<Vec<Option<f32>>>| {
        out.floats
            .retain(|(name, _)| floats[..carried].contains(name));
        for (name, values) in new_columns.iter().zip(logits) {
            out.floats.push((name.clone(), values));
        }
        writer.write(&out)
    };
    let summary = score_table(&model, &mut reader, threads, &mut sink, &mut |done| {
        bar.set_position(done as u64)
    })
    .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    writer.finish().map_err(|e| e.to_string())?;
    println!(
        "scored {} of {} rows ({} requests) of {} with `{}` ({}) in {:.1} s: {:.0} rows/s, {threads} threads; wrote {} with columns {}",
        summary.scored_rows,
        summary.rows,
        summary.requests,
        args.data.display(),
        config.name,
        model.device_note(),
        summary.seconds,
        summary.rows as f64 / summary.seconds.max(1e-9),
        args.out.display(),
        new_columns.join(", ")
    );
    if summary.bad_row_count > 0 {
        eprintln!("{} rows not scored (null logits):", summary.bad_row_count);
        for bad in summary.bad_rows.iter().take(20) {
            eprintln!("  row {}: `{}`: {}", bad.row, bad.field, bad.reason);
        }
        if summary.bad_row_count > 20 {
            eprintln!(
                "  … and {} more{}",
                summary.bad_row_count - 20,
                if summary.bad_row_count > MAX_BAD_ROWS_KEPT {
                    " (first 1000 kept)"
                } else {
                    ""
                }
            );
        }
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn eval(args: &EvalArgs) -> CliResult {
    // Before the scoring, which can take minutes: the plot is drawn as PNG.
    let png = args
        .plot
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !png {
        return Err(format!(
            "--plot {}: the plot is a PNG image; give a file name ending in .png",
            args.plot.display()
        ));
    }
    let options = EvalOptions {
        threads: threads(args.threads)?,
        replicates: args.bootstrap,
        seed: args.seed,
        open: open_options(&args.device)?,
        days: args
            .days
            .as_deref()
            .map(|d| parse_day_range("--days", d))
            .transpose()?,
    };
    let bar = ProgressBar::new_spinner();
    let report = eval::run(&args.model, &args.data, &options, &mut |m, done| {
        bar.set_message(format!(
            "scoring with model {} : {done} rows",
            if m == 0 { "A" } else { "B" }
        ));
        bar.tick();
    })
    .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    print!("{}", report.text());
    let json = serde_json::to_string_pretty(&report.to_json()).map_err(|e| e.to_string())?;
    std::fs::write(&args.json, json + "\n").map_err(|e| format!("{}: {e}", args.json.display()))?;
    report.plot(&args.plot).map_err(|e| e.to_string())?;
    println!("wrote {} and {}", args.json.display(), args.plot.display());
    Ok(ExitCode::SUCCESS)
}
