//! `mmoe-train`: train a model of the MODEL.md contract on a Parquet
//! impression table, optionally distilling a teacher, and export it for
//! `mmoe pack` (or pack it directly with `--pack`).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use candle_core::Device;
use clap::Parser;
use mmoe::config::Config;
use mmoe::format::safetensors_source::SafetensorsSource;
use mmoe::format::writer;
use mmoe::DType;
use serde_json::json;

use mmoe_train::batch::compute_stats;
use mmoe_train::dataset::table::parse_day_range;
use mmoe_train::dataset::{self, Rows, Teacher};
use mmoe_train::network::Network;
use mmoe_train::train::{base_rates, train, Distill, EpochReport, TrainOptions, Trainer};
use mmoe_train::{Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "mmoe-train",
    about = "Train an mmoe model (per-task BCE, Adam) with optional knowledge distillation; writes model.safetensors + config.json for `mmoe pack`",
    version
)]
struct Args {
    /// The model config (MODEL.md). With --init, defaults to DIR/config.json.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The impression table (Parquet, docs/DATASETS.md).
    #[arg(long)]
    data: PathBuf,
    /// Output directory: model.safetensors, config.json, metrics.json.
    #[arg(long)]
    out: PathBuf,
    /// Train on rows of these days, `A..B` (B excluded). Default: every day,
    /// or with --eval-days A..B the days before A.
    #[arg(long)]
    days: Option<String>,
    /// Evaluate after each epoch on the rows of these days (`A..B`), which
    /// must not overlap --days (their scores would be of training rows).
    #[arg(long)]
    eval_days: Option<String>,
    /// `batch` trains on all of --days; `incremental` continues from --init
    /// one day at a time, evaluating each day's model on the next day.
    #[arg(long, default_value = "batch")]
    stage: String,
    /// Start from a checkpoint directory (model.safetensors + config.json).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Epochs (per day in the incremental stage). Default 2 (batch), 1 (incremental).
    #[arg(long)]
    epochs: Option<usize>,
    /// Rows per batch (whole requests).
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Teacher: a packed model scored on the fly through the engine.
    #[arg(long, conflicts_with = "teacher_column")]
    teacher: Option<PathBuf>,
    /// Teacher: the table's `logit.<NAME>.<task>` columns, which `mmoe score-dataset`
    /// writes for a model whose config names it NAME.
    #[arg(long)]
    teacher_column: Option<String>,
    /// Distillation loss: pointwise-bce, pointwise-mse or pairwise. Default
    /// pointwise-bce when a teacher is given.
    #[arg(long)]
    distill: Option<String>,
    /// Weight λ of the distillation loss.
    #[arg(long, default_value_t = 1.0)]
    lambda: f64,
    /// Pairwise: all pairs of a request with at most this many, else this many sampled.
    #[arg(long, default_value_t = 64)]
    pairs_per_request: usize,
    /// Keep distillation in the incremental stage (off by default, as in the published system).
    #[arg(long)]
    distill_incremental: bool,
    /// Also pack the final model into this file.
    #[arg(long)]
    pack: Option<PathBuf>,
    /// dtype of --pack: f16 (default) or f32.
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn parse_days(flag: &str, text: &str) -> Result<Range<i32>> {
    parse_day_range(flag, text).map_err(Error::new)
}

/// The batch stage's training days: `--days` as given, which must not
/// overlap `--eval-days` (an evaluation on training rows flatters the
/// model); without `--days`, the days before `--eval-days` when that is
/// given, else every day (`None`).
fn training_days(
    days: Option<Range<i32>>,
    eval: Option<&Range<i32>>,
) -> Result<Option<Range<i32>>> {
    match (days, eval) {
        (Some(days), Some(eval)) if days.start < eval.end && eval.start < days.end => {
            Err(Error::new(format!(
                "--days {}..{} and --eval-days {}..{} overlap (days {}..{}): the evaluation would score training rows",
                days.start,
                days.end,
                eval.start,
                eval.end,
                days.start.max(eval.start),
                days.end.min(eval.end)
            )))
        }
        (None, Some(eval)) => Ok(Some(i32::MIN..eval.start)),
        (days, _) => Ok(days),
    }
}

fn read_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::new(format!("cannot read {}: {e}", path.display())))?;
    Config::parse(&text).map_err(|e| Error::new(format!("{}: {e}", path.display())))
}

fn print_report(prefix: &str, r: &EpochReport) {
    let mut line = format!("{prefix}epoch {}: label loss {:.5}", r.epoch, r.label_loss);
    if let Some(d) = r.distill_loss {
        line += &format!(", distill loss {d:.5}");
    }
    line += &format!(" ({:.1} s, {:.0} rows/s)", r.seconds, r.rows_per_second);
    for m in &r.eval {
        line += &format!("; {} AUC {:.4} log loss {:.4}", m.task, m.auc, m.log_loss);
    }
    eprintln!("{line}");
}

fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let device = Device::Cpu;
    let config = match (&args.config, &args.init) {
        (Some(c), _) => read_config(c)?,
        (None, Some(dir)) => read_config(&dir.join("config.json"))?,
        (None, None) => return Err(Error::new("give --config (or --init DIR)")),
    };
    let incremental = match args.stage.as_str() {
        "batch" => false,
        "incremental" => true,
        other => {
            return Err(Error::new(format!(
                "--stage {other}: expected batch or incremental"
            )))
        }
    };
    let dtype = DType::parse(&args.dtype)
        .ok_or_else(|| Error::new(format!("--dtype {}: expected f16 or f32", args.dtype)))?;
    if incremental && args.eval_days.is_some() {
        return Err(Error::new(
            "--eval-days is for the batch stage; the incremental stage evaluates each day on the next",
        ));
    }
    if incremental && args.init.is_none() {
        return Err(Error::new(
            "--stage incremental continues a model: give --init DIR",
        ));
    }
    let mut teacher = match (&args.teacher, &args.teacher_column) {
        (Some(p), _) => Some(Teacher::Model(p.clone())),
        (None, Some(c)) => Some(Teacher::Column(c.clone())),
        (None, None) => None,
    };
    let mut distill = match &args.distill {
        Some(name) => Some(Distill::parse(name).ok_or_else(|| {
            Error::new(format!(
                "--distill {name}: expected pointwise-bce, pointwise-mse or pairwise"
            ))
        })?),
        None => teacher.as_ref().map(|_| Distill::PointwiseBce),
    };
    if distill.is_some() && teacher.is_none() {
        return Err(Error::new(
            "--distill needs a teacher: --teacher FILE.mmoe or --teacher-column NAME",
        ));
    }
    if incremental && teacher.is_some() && !args.distill_incremental {
        eprintln!("incremental stage: distillation off (as in the published system; --distill-incremental keeps it)");
        teacher = None;
        distill = None;
    }
    let options = TrainOptions {
        epochs: args.epochs.unwrap_or(if incremental { 1 } else { 2 }),
        batch_rows: args.batch.max(1),
        learning_rate: args.lr,
        seed: args.seed,
        distill,
        lambda: args.lambda,
        pairs_per_request: args.pairs_per_request.max(1),
        progress: !args.quiet,
    };
    let days = args
        .days
        .as_deref()
        .map(|d| parse_days("--days", d))
        .transpose()?;
    let eval_days = args
        .eval_days
        .as_deref()
        .map(|d| parse_days("--eval-days", d))
        .transpose()?;

    // The batch stage reads its rows once; the incremental stage reads a day at a time.
    let trained_days = training_days(days.clone(), eval_days.as_ref())?;
    let batch_rows: Option<Rows> = if incremental {
        None
    } else {
        Some(dataset::load(
            &args.data,
            &config,
            trained_days.clone(),
            teacher.as_ref(),
        )?)
    };
    let mut net = match (&args.init, &batch_rows) {
        (Some(dir), _) => Network::load(&config, &dir.join("model.safetensors"), &device)?,
        (None, None) => {
            return Err(Error::new(
                "--stage incremental continues a model: give --init DIR",
            ))
        }
        (None, Some(data)) => {
            // Fresh: statistics and base rates come from the training rows.
            let mut net =
                Network::init(&config, &compute_stats(&config, data), args.seed, &device)?;
            let tasks: Vec<String> = config.tasks.iter().map(|t| t.name.clone()).collect();
            net.set_base_rates(&base_rates(data, &tasks))?;
            net
        }
    };

    let mut log = Vec::new();
    if incremental {
        let days = days.ok_or_else(|| Error::new("--stage incremental needs --days A..B"))?;
        // One optimizer through the days: its moments carry over.
        let mut trainer = Trainer::new(&net, &options)?;
        for day in days.clone() {
            let data = dataset::load(&args.data, &config, Some(day..day + 1), teacher.as_ref())?;
            let next = dataset::load_if_any(&args.data, &config, Some(day + 1..day + 2), None)?;
            let reports = trainer.train(&mut net, &data, next.as_ref(), &options, &mut |r| {
                print_report(&format!("day {day} ({} rows), ", data.chunk.rows()), r)
            })?;
            net.save(&args.out.join(format!("day-{day}")))?;
            log.push(json!({"day": day, "rows": data.chunk.rows(), "eval_day": day + 1, "epochs": reports}));
        }
    } else {
        let data = batch_rows
            .as_ref()
            .ok_or_else(|| Error::new("no training rows"))?;
        let eval = eval_days
            .clone()
            .map(|d| dataset::load(&args.data, &config, Some(d), None))
            .transpose()?;
        eprintln!(
            "training `{}` on {} rows ({} requests){}",
            config.name,
            data.chunk.rows(),
            data.requests.len(),
            options
                .distill
                .map(|d| format!(", distilling ({d:?}, λ = {})", options.lambda))
                .unwrap_or_default()
        );
        let reports = train(&mut net, data, eval.as_ref(), &options, &mut |r| {
            print_report("", r)
        })?;
        // The days trained on: --days, or those before --eval-days.
        let trained_days = trained_days.map(|d| match d.start {
            i32::MIN => format!("..{}", d.end),
            start => format!("{start}..{}", d.end),
        });
        log.push(json!({"days": trained_days, "rows": data.chunk.rows(), "eval_days": args.eval_days, "epochs": reports}));
    }
    net.save(&args.out)?;
    let (mut embedding, mut dense) = (0usize, 0usize);
    for spec in &net.plan.tensors {
        match spec.role {
            mmoe::plan::TensorRole::Embedding => embedding += spec.numel(),
            _ => dense += spec.numel(),
        }
    }
    let metrics = json!({
        "model": config.name,
        "parameters": {"dense": dense, "embedding": embedding},
        "data": args.data,
        "stage": args.stage,
        "init": args.init,
        "options": options,
        "teacher": options.distill.and(args.teacher.as_ref().map(|p| p.display().to_string()).or(args.teacher_column.clone())),
        "runs": log,
        "seconds": start.elapsed().as_secs_f64(),
    });
    let metrics_path = args.out.join("metrics.json");
    std::fs::write(
        &metrics_path,
        serde_json::to_string_pretty(&metrics).unwrap_or_default(),
    )
    .map_err(|e| Error::new(format!("cannot write {}: {e}", metrics_path.display())))?;
    eprintln!(
        "wrote {}/{{model.safetensors, config.json, metrics.json}}",
        args.out.display()
    );
    if let Some(packed) = &args.pack {
        let source = SafetensorsSource::open(&args.out.join("model.safetensors"))?;
        writer::pack(&config, &source, dtype, packed, &mut |_, _| {})?;
        eprintln!("packed into {} ({})", packed.display(), dtype.name());
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mmoe-train: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::training_days;

    #[test]
    fn training_days_never_overlap_the_evaluation_days() {
        assert_eq!(
            training_days(Some(30..60), Some(&(60..65))).unwrap(),
            Some(30..60)
        );
        assert_eq!(
            training_days(Some(70..80), Some(&(60..65))).unwrap(),
            Some(70..80)
        );
        assert_eq!(training_days(Some(0..5), None).unwrap(), Some(0..5));
        assert_eq!(training_days(None, None).unwrap(), None);
        // Without --days: the days before the evaluation.
        assert_eq!(
            training_days(None, Some(&(60..65))).unwrap(),
            Some(i32::MIN..60)
        );
        let e = training_days(Some(0..62), Some(&(60..65))).unwrap_err();
        assert!(
            e.to_string()
                .contains("--days 0..62 and --eval-days 60..65 overlap (days 60..62)"),
            "{e}"
        );
        assert!(training_days(Some(64..70), Some(&(60..65))).is_err());
    }
}
