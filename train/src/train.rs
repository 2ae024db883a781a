//! The training loop: requests shuffled by seed and packed into batches of
//! whole requests, per-task BCE on the labels plus λ times a distillation
//! loss against the teacher, Adam; per-epoch loss and, on an evaluation
//! set, AUC and log loss per task.

use std::ops::Range;
use std::time::Instant;

use candle_core::Tensor;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use indicatif::{ProgressBar, ProgressStyle};
use mmoe::demo::Rng;
use serde::Serialize;

use crate::batch::{Batch, Stats};
use crate::dataset::metrics;
use crate::dataset::Rows;
use crate::error::{Error, Result};
use crate::loss::{bce_with_logits, make_pairs, mse, pairwise};
use crate::network::Network;

/// The distillation loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distill {
    /// BCE against the teacher's probability.
    PointwiseBce,
    /// MSE on logits.
    PointwiseMse,
    /// Logistic loss on teacher-ordered pairs within each request.
    Pairwise,
}

impl Distill {
    pub fn parse(name: &str) -> Option<Distill> {
        match name {
            "pointwise-bce" | "pointwise" => Some(Distill::PointwiseBce),
            "pointwise-mse" => Some(Distill::PointwiseMse),
            "pairwise" => Some(Distill::Pairwise),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TrainOptions {
    pub epochs: usize,
    /// Rows per batch (whole requests: a batch ends at the first request
    /// that reaches it).
    pub batch_rows: usize,
    pub learning_rate: f64,
    pub seed: u64,
    /// Distillation loss and its weight λ; `None` trains on labels only.
    pub distill: Option<Distill>,
    pub lambda: f64,
    /// Pairwise: a request with at most this many pairs uses them all,
    /// a larger one this many drawn at random.
    pub pairs_per_request: usize,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 2,
            batch_rows: 512,
            learning_rate: 1e-3,
            seed: 1,
            distill: None,
            lambda: 1.0,
            pairs_per_request: 64,
            progress: true,
        }
    }
}

/// Per-task AUC and log loss on an evaluation set.
#[derive(Clone, Debug, Serialize)]
pub struct TaskMetrics {
    pub task: String,
    pub auc: f64,
    pub log_loss: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    /// Mean over batches of the label BCE summed over tasks.
    pub label_loss: f64,
    /// Mean over batches of the distillation loss (before λ).
    pub distill_loss: Option<f64>,
    pub seconds: f64,
    pub rows_per_second: f64,
    pub eval: Vec<TaskMetrics>,
}

/// Batches of whole requests, in a seeded random order.
pub fn batches(
    requests: &[Range<usize>],
    batch_rows: usize,
    rng: &mut Rng,
) -> Vec<Vec<Range<usize>>> {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let mut out = Vec::new();
    let (mut current, mut rows) = (Vec::new(), 0);
    for i in order {
        rows += requests[i].len();
        current.push(requests[i].clone());
        if rows >= batch_rows {
            out.push(std::mem::take(&mut current));
            rows = 0;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Fraction of positive labels per task.
pub fn base_rates(data: &Rows, tasks: &[String]) -> Vec<f64> {
    tasks
        .iter()
        .map(|t| {
            data.chunk.labels_of(t).map_or(0.5, |l| {
                l.iter().map(|&v| f64::from(v)).sum::<f64>() / l.len().max(1) as f64
            })
        })
        .collect()
}

/// Trains `net` on `data` for `options.epochs` epochs; after each, scores
/// `eval` (if any) and reports. A fresh optimizer: to go on training the
/// same network on more data (a day at a time), use one [`Trainer`].
pub fn train(
    net: &mut Network,
    data: &Rows,
    eval: Option<&Rows>,
    options: &TrainOptions,
    report: &mut dyn FnMut(&EpochReport),
) -> Result<Vec<EpochReport>> {
    Trainer::new(net, options)?.train(net, data, eval, options, report)
}

/// Adam's moments and step count, and the shuffle's random stream, kept
/// across [`Trainer::train`] calls on one network: the incremental stage
/// trains a day per call, and a new optimizer each day would start from
/// zero moments (its first step moving every weight by about the learning
/// rate, whatever its gradient) and replay the same shuffles.
pub struct Trainer {
    optimizer: AdamW,
    rng: Rng,
}

impl Trainer {
    pub fn new(net: &Network, options: &TrainOptions) -> Result<Trainer> {
        let params = ParamsAdamW {
            lr: options.learning_rate,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        Ok(Trainer {
            optimizer: AdamW::new(net.trainable(), params)?,
            rng: Rng::new(options.seed ^ 0x005E_ED0F_BA7C),
        })
    }

    /// [`train`] with this trainer's optimizer state, on the network it was
    /// made for.
    pub fn train(
        &mut self,
        net: &mut Network,
        data: &Rows,
        eval: Option<&Rows>,
        options: &TrainOptions,
        report: &mut dyn FnMut(&EpochReport),
    ) -> Result<Vec<EpochReport>> {
        let (optimizer, rng) = (&mut self.optimizer, &mut self.rng);
        if options.distill.is_some() && data.teacher.is_none() {
            return Err(Error::new(
                "a distillation loss needs a teacher (--teacher or --teacher-column)",
            ));
        }
        let stats = net.stats()?;
        let mut reports = Vec::new();
        for epoch in 1..=options.epochs {
            let start = Instant::now();
            let plan = batches(&data.requests, options.batch_rows, rng);
            let bar = if options.progress {
                ProgressBar::new(data.chunk.rows() as u64)
            } else {
                ProgressBar::hidden()
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "epoch {msg} {bar:30} {pos}/{len} rows {per_sec} eta {eta}",
                )
                .map_err(|e| Error::new(e.to_string()))?,
            );
            bar.set_message(format!("{epoch}/{}", options.epochs));
            let (mut label_sum, mut distill_sum, mut distill_batches) = (0.0, 0.0, 0usize);
            for requests in &plan {
                let batch = Batch::build(&net.config, &stats, data, requests, &net.device)?;
                let logits = net.forward(&batch)?;
                let label_loss = task_sum(&logits, &batch.labels, bce_with_logits)?;
                let mut loss = label_loss.clone();
                if let Some(distill) = distill_loss(&logits, &batch, options, rng)? {
                    distill_sum += distill.to_scalar::<f32>()? as f64;
                    distill_batches += 1;
                    loss = (loss + (distill * options.lambda)?)?;
                }
                label_sum += label_loss.to_scalar::<f32>()? as f64;
                let value = loss.to_scalar::<f32>()?;
                if !value.is_finite() {
                    return Err(Error::new(format!(
                        "epoch {epoch}: the loss became {value}; lower --lr"
                    )));
                }
                optimizer.backward_step(&loss)?;
                bar.inc(batch.rows as u64);
            }
            bar.finish_and_clear();
            let seconds = start.elapsed().as_secs_f64();
            let eval = match eval {
                Some(rows) => evaluate(net, &stats, rows)?,
                None => Vec::new(),
            };
            let r = EpochReport {
                epoch,
                label_loss: label_sum / plan.len().max(1) as f64,
                distill_loss: options
                    .distill
                    .map(|_| distill_sum / distill_batches.max(1) as f64),
                seconds,
                rows_per_second: data.chunk.rows() as f64 / seconds,
                eval,
            };
            report(&r);
            reports.push(r);
        }
        Ok(reports)
    }
}

/// Σ over tasks of `loss(logits[:, t], targets[:, t])`.
fn task_sum(
    logits: &Tensor,
    targets: &Tensor,
    loss: fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let tasks = logits.dim(1)?;
    let mut total: Option<Tensor> = None;
    for t in 0..tasks {
        let l = loss(&logits.narrow(1, t, 1)?, &targets.narrow(1, t, 1)?)?;
        total = Some(match total {
            None => l,
            Some(s) => (s + l)?,
        });
    }
    total.ok_or_else(|| Error::new("a model without tasks"))
}

fn distill_loss(
    logits: &Tensor,
    batch: &Batch,
    options: &TrainOptions,
    rng: &mut Rng,
) -> Result<Option<Tensor>> {
    let (Some(kind), Some(teacher), Some(host)) =
        (options.distill, &batch.teacher, &batch.teacher_host)
    else {
        return Ok(None);
    };
    Ok(Some(match kind {
        Distill::PointwiseBce => {
            let soft = candle_nn::ops::sigmoid(teacher)?;
            task_sum(logits, &soft, bce_with_logits)?
        }
        Distill::PointwiseMse => task_sum(logits, teacher, mse)?,
        Distill::Pairwise => {
            let mut total: Option<Tensor> = None;
            for (t, column) in host.iter().enumerate() {
                let pairs = make_pairs(&batch.requests, column, options.pairs_per_request, rng);
                let scores = logits.narrow(1, t, 1)?.squeeze(1)?.contiguous()?;
                if let Some(l) = pairwise(&scores, &pairs, &logits.device().clone())? {
                    total = Some(match total {
                        None => l,
                        Some(s) => (s + l)?,
                    });
                }
            }
            match total {
                Some(t) => t,
                None => return Ok(None),
            }
        }
    }))
}

/// Logits `[task][row]` of every row of `rows`, in batches.
pub fn predict(net: &Network, stats: &Stats, rows: &Rows) -> Result<Vec<Vec<f32>>> {
    let tasks = net.config.tasks.len();
    let mut out = vec![Vec::with_capacity(rows.chunk.rows()); tasks];
    let mut i = 0;
    while i < rows.requests.len() {
        let mut j = i;
        let mut n = 0;
        while j < rows.requests.len() && n < 4096 {
            n += rows.requests[j].len();
            j += 1;
        }
        let batch = Batch::build(&net.config, stats, rows, &rows.requests[i..j], &net.device)?;
        let logits = net.forward(&batch)?.to_vec2::<f32>()?;
        for row in logits {
            for (t, v) in row.into_iter().enumerate() {
                out[t].push(v);
            }
        }
        i = j;
    }
    Ok(out)
}

pub fn evaluate(net: &Network, stats: &Stats, rows: &Rows) -> Result<Vec<TaskMetrics>> {
    let logits = predict(net, stats, rows)?;
    net.config
        .tasks
        .iter()
        .zip(&logits)
        .map(|(task, l)| {
            let labels = rows
                .chunk
                .labels_of(&task.name)
                .ok_or_else(|| Error::new(format!("no label column `label.{}`", task.name)))?;
            let m = metrics::evaluate(l, labels);
            Ok(TaskMetrics {
                task: task.name.clone(),
                auc: m.auc,
                log_loss: m.log_loss,
            })
        })
        .collect()
}
