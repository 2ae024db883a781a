//! A training batch: whole requests' rows turned into tensors. Dense inputs
//! are transformed here, on the host (log1p, standardize with the model's
//! statistics, clip, missing → 0), exactly as MODEL.md says; sparse bags
//! become index lists for the embedding lookup and pooling.

use std::ops::Range;

use candle_core::{Device, Tensor};
use mmoe::config::{Config, InputKind, Pooling};

use crate::dataset::table::FeatureColumn;
use crate::dataset::Rows;
use crate::error::{Error, Result};

/// Per dense input with `standardize`: `(mean, std)`, each `[dim]`.
pub type Stats = Vec<Option<(Vec<f32>, Vec<f32>)>>;

/// One sparse input of a batch: `pooled[row[i]] += table[id[i]]` (then
/// scaled by `scale` for mean pooling).
pub struct Bag {
    pub ids: Tensor,
    pub rows: Tensor,
    pub count: usize,
    /// `[B, 1]`: 1 / bag length (0 for an empty bag), for mean pooling.
    pub scale: Option<Tensor>,
}

pub enum InputBatch {
    Dense(Tensor),
    Sparse(Bag),
}

pub struct Batch {
    pub rows: usize,
    /// In config input order.
    pub inputs: Vec<InputBatch>,
    /// `[B, T]` 0/1.
    pub labels: Tensor,
    /// `[B, T]` teacher logits.
    pub teacher: Option<Tensor>,
    /// The teacher logits on the host, `[task][row]` (for pair sampling).
    pub teacher_host: Option<Vec<Vec<f32>>>,
    /// The requests, as row ranges of the batch.
    pub requests: Vec<Range<usize>>,
}

/// The value of element `i` of one dense feature after MODEL.md's
/// transforms (the engine's own function); `None` when it is non-finite and
/// the input does not allow missing values.
pub fn transform(
    input: &mmoe::config::Input,
    stats: Option<&(Vec<f32>, Vec<f32>)>,
    i: usize,
    raw: f32,
) -> Option<f32> {
    mmoe::features::transform_dense(input, raw, stats.map(|(mean, std)| (mean[i], std[i])))
}

impl Batch {
    /// The rows of `requests` (row ranges of `data`), in order.
    pub fn build(
        config: &Config,
        stats: &Stats,
        data: &Rows,
        requests: &[Range<usize>],
        device: &Device,
    ) -> Result<Batch> {
        let chunk = &data.chunk;
        let order: Vec<usize> = requests.iter().flat_map(|r| r.clone()).collect();
        let b = order.len();
        let mut inputs = Vec::with_capacity(config.inputs.len());
        for (k, (input, (_, column))) in config.inputs.iter().zip(&chunk.features).enumerate() {
            match (input.kind, column) {
                (InputKind::Dense, FeatureColumn::Dense { dim, values }) => {
                    let mut out = Vec::with_capacity(b * dim);
                    for &r in &order {
                        for i in 0..*dim {
                            let v = transform(input, stats[k].as_ref(), i, values[r * dim + i])
                                .ok_or_else(|| {
                                    Error::new(format!(
                                        "input `{}`: element {i} is {} in the row of request {} (day {}), and the input has no `\"missing\": \"zero\"`",
                                        input.name,
                                        values[r * dim + i],
                                        chunk.request_id[r],
                                        chunk.day[r]
                                    ))
                                })?;
                            out.push(v);
                        }
                    }
                    inputs.push(InputBatch::Dense(Tensor::from_vec(out, (b, *dim), device)?));
                }
                (InputKind::Sparse, FeatureColumn::Sparse { offsets, ids }) => {
                    let rows = input.rows.unwrap_or(1);
                    if rows > u32::MAX as u64 {
                        return Err(Error::new(format!(
                            "input `{}`: {rows} embedding rows; the trainer takes at most {}",
                            input.name,
                            u32::MAX
                        )));
                    }
                    let (mut bag_ids, mut bag_rows, mut scale) =
                        (Vec::new(), Vec::new(), Vec::new());
                    for (j, &r) in order.iter().enumerate() {
                        let bag = &ids[offsets[r] as usize..offsets[r + 1] as usize];
                        bag_ids.extend(bag.iter().map(|&id| (id % rows) as u32));
                        bag_rows.extend(std::iter::repeat_n(j as u32, bag.len()));
                        scale.push(if bag.is_empty() {
                            0.0
                        } else {
                            1.0 / bag.len() as f32
                        });
                    }
                    let count = bag_ids.len();
                    let scale = match input.pooling {
                        Some(Pooling::Mean) => Some(Tensor::from_vec(scale, (b, 1), device)?),
                        _ => None,
                    };
                    inputs.push(InputBatch::Sparse(Bag {
                        ids: Tensor::from_vec(bag_ids, count, device)?,
                        rows: Tensor::from_vec(bag_rows, count, device)?,
                        count,
                        scale,
                    }));
                }
                _ => {
                    return Err(Error::new(format!(
                        "input `{}`: the table's column is not of the input's kind",
                        input.name
                    )))
                }
            }
        }
        let tasks = config.tasks.len();
        let columns = config
            .tasks
            .iter()
            .map(|task| {
                chunk
                    .labels_of(&task.name)
                    .ok_or_else(|| Error::new(format!("no label column `label.{}`", task.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut labels = Vec::with_capacity(b * tasks);
        for &r in &order {
            labels.extend(columns.iter().map(|column| f32::from(column[r])));
        }
        let (teacher, teacher_host) = match &data.teacher {
            None => (None, None),
            Some(t) => {
                let host: Vec<Vec<f32>> = t
                    .iter()
                    .map(|column| order.iter().map(|&r| column[r]).collect())
                    .collect();
                let mut flat = Vec::with_capacity(b * tasks);
                for r in 0..b {
                    flat.extend(host.iter().map(|column| column[r]));
                }
                (
                    Some(Tensor::from_vec(flat, (b, tasks), device)?),
                    Some(host),
                )
            }
        };
        let mut batch_requests = Vec::with_capacity(requests.len());
        let mut start = 0;
        for r in requests {
            batch_requests.push(start..start + r.len());
            start += r.len();
        }
        Ok(Batch {
            rows: b,
            inputs,
            labels: Tensor::from_vec(labels, (b, tasks), device)?,
            teacher,
            teacher_host,
            requests: batch_requests,
        })
    }
}

/// Mean and standard deviation (biased) of each standardized dense input's
/// transformed-so-far values (after log1p) over `data`; a constant
/// dimension gets std 1.
pub fn compute_stats(config: &Config, data: &Rows) -> Stats {
    config
        .inputs
        .iter()
        .zip(&data.chunk.features)
        .map(|(input, (_, column))| {
            let FeatureColumn::Dense { dim, values } = column else {
                return None;
            };
            if !input.standardize() {
                return None;
            }
            let (mut sum, mut sq, mut n) = (vec![0f64; *dim], vec![0f64; *dim], vec![0u64; *dim]);
            for row in values.chunks_exact(*dim) {
                for (i, &raw) in row.iter().enumerate() {
                    if !raw.is_finite() {
                        continue;
                    }
                    let v = if input.log1p() {
                        raw.signum() * raw.abs().ln_1p()
                    } else {
                        raw
                    } as f64;
                    sum[i] += v;
                    sq[i] += v * v;
                    n[i] += 1;
                }
            }
            let mut mean = vec![0f32; *dim];
            let mut std = vec![1f32; *dim];
            for i in 0..*dim {
                if n[i] > 0 {
                    let m = sum[i] / n[i] as f64;
                    let var = (sq[i] / n[i] as f64 - m * m).max(0.0);
                    mean[i] = m as f32;
                    if var > 1e-12 {
                        std[i] = var.sqrt() as f32;
                    }
                }
            }
            Some((mean, std))
        })
        .collect()
}
