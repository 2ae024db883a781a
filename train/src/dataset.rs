//! Impression tables for training. The Parquet reader, the engine scorer and
//! the metrics are the CLI's own source files, compiled into this crate too
//! (the CLI's dataset code lives in its binary, which a library cannot
//! depend on); this module adds what training needs: the rows of a day range
//! held in memory, grouped into requests, with the teacher's logits.

// Parts of these files are used by the CLI only.
#[allow(dead_code)]
#[path = "../../src/bin/mmoe/dataset/metrics.rs"]
pub mod metrics;
#[allow(dead_code)]
#[path = "../../src/bin/mmoe/dataset/score.rs"]
pub mod score;
#[allow(dead_code)]
#[path = "../../src/bin/mmoe/dataset/table.rs"]
pub mod table;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use mmoe::config::{Config, Scope};
use mmoe::{Model, OpenOptions};

use crate::error::{Error, Result};
use table::{Chunk, FeatureColumn, TableReader};

/// Rows read per Parquet batch.
const READ_ROWS: usize = 65_536;

/// The rows of a table whose day is in a range, in file order.
pub struct Rows {
    pub chunk: Chunk,
    /// Row ranges of the requests (contiguous rows with one `request_id`).
    pub requests: Vec<Range<usize>>,
    /// Teacher logits `[task][row]`, when a teacher is given.
    pub teacher: Option<Vec<Vec<f32>>>,
}

/// Where the teacher's logits come from.
#[derive(Clone, Debug)]
pub enum Teacher {
    /// A packed model, scored on the fly through the engine library.
    Model(std::path::PathBuf),
    /// The table's `logit.<name>.<task>` columns (written by `score-dataset`).
    Column(String),
}

fn in_days(days: &Option<Range<i32>>, day: i32) -> bool {
    days.as_ref().is_none_or(|d| d.contains(&day))
}

/// Reads the rows of `path` whose day is in `days` (all rows when `None`);
/// a range without rows is an error.
pub fn load(
    path: &Path,
    config: &Config,
    days: Option<Range<i32>>,
    teacher: Option<&Teacher>,
) -> Result<Rows> {
    let range = days.clone();
    load_if_any(path, config, days, teacher)?.ok_or_else(|| {
        Error::new(format!(
            "{}: no rows{}",
            path.display(),
            range
                .as_ref()
                .map(|d| match d.start {
                    // The days before --eval-days (`training_days`).
                    i32::MIN => format!(" before day {}", d.end),
                    start => format!(" on days {start}..{}", d.end),
                })
                .unwrap_or_default()
        ))
    })
}

/// [`load`], with `None` for a day range without rows. Labels must be 0 or
/// 1, and a request-level input must have one value per request (as the
/// engine scores it).
pub fn load_if_any(
    path: &Path,
    config: &Config,
    days: Option<Range<i32>>,
    teacher: Option<&Teacher>,
) -> Result<Option<Rows>> {
    let mut reader = TableReader::open(path, config, READ_ROWS)?;
    if !reader.has_labels {
        return Err(Error::new(format!(
            "{}: no label column for every task of model `{}` (expected {})",
            path.display(),
            config.name,
            config
                .tasks
                .iter()
                .map(|t| format!("`label.{}`", t.name))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut all = Chunk::default();
    while let Some(chunk) = reader.next_chunk()? {
        let keep: Vec<usize> = (0..chunk.rows())
            .filter(|&r| in_days(&days, chunk.day[r]))
            .collect();
        all.append(select(&chunk, &keep))?;
    }
    if all.rows() == 0 {
        return Ok(None);
    }
    let teacher = match teacher {
        None => None,
        Some(Teacher::Column(name)) => Some(teacher_columns(&all, config, name, path)?),
        Some(Teacher::Model(model)) => {
            Some(teacher_scores(model, config, path, &days, all.rows())?)
        }
    };
    let requests = request_runs(&all.request_id);
    check_rows(&all, config, &requests, path)?;
    Ok(Some(Rows {
        chunk: all,
        requests,
        teacher,
    }))
}

/// Labels are 0 or 1; request-level inputs are equal on every row of a request.
fn check_rows(
    chunk: &Chunk,
    config: &Config,
    requests: &[Range<usize>],
    path: &Path,
) -> Result<()> {
    let at = |r: usize| format!("request {} (day {})", chunk.request_id[r], chunk.day[r]);
    for (task, labels) in &chunk.labels {
        if let Some(r) = labels.iter().position(|&v| v > 1) {
            return Err(Error::new(format!(
                "{}: `label.{task}` is {} in a row of {}; labels are 0 or 1",
                path.display(),
                labels[r],
                at(r)
            )));
        }
    }
    for (input, (_, column)) in config.inputs.iter().zip(&chunk.features) {
        if input.scope != Scope::Request {
            continue;
        }
        for request in requests {
            let first = request.start;
            let differs = |r: usize| match column {
                FeatureColumn::Dense { dim, values } => values[r * dim..(r + 1) * dim]
                    .iter()
                    .zip(&values[first * dim..(first + 1) * dim])
                    .any(|(a, b)| a.to_bits() != b.to_bits()),
                FeatureColumn::Sparse { offsets, ids } => {
                    ids[offsets[r] as usize..offsets[r + 1] as usize]
                        != ids[offsets[first] as usize..offsets[first + 1] as usize]
                }
            };
            if let Some(r) = request.clone().find(|&r| differs(r)) {
                return Err(Error::new(format!(
                    "{}: request-level input `{}` differs between the rows of {} (a request has one value, as the engine scores it)",
                    path.display(),
                    input.name,
                    at(r)
                )));
            }
        }
    }
    Ok(())
}

/// Contiguous runs of equal `request_id`.
pub fn request_runs(ids: &[u64]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for r in 1..=ids.len() {
        if r == ids.len() || ids[r] != ids[start] {
            runs.push(start..r);
            start = r;
        }
    }
    runs
}

/// The rows `keep` of `chunk`, in that order.
pub fn select(chunk: &Chunk, keep: &[usize]) -> Chunk {
    let pick = |v: &[u8]| keep.iter().map(|&r| v[r]).collect::<Vec<u8>>();
    let features = chunk
        .features
        .iter()
        .map(|(name, column)| {
            let column = match column {
                FeatureColumn::Dense { dim, values } => FeatureColumn::Dense {
                    dim: *dim,
                    values: keep
                        .iter()
                        .flat_map(|&r| values[r * dim..(r + 1) * dim].iter().copied())
                        .collect(),
                },
                FeatureColumn::Sparse { offsets, ids } => {
                    let mut new_offsets = Vec::with_capacity(keep.len() + 1);
                    let mut new_ids = Vec::new();
                    new_offsets.push(0u32);
                    for &r in keep {
                        new_ids
                            .extend_from_slice(&ids[offsets[r] as usize..offsets[r + 1] as usize]);
                        new_offsets.push(new_ids.len() as u32);
                    }
                    FeatureColumn::Sparse {
                        offsets: new_offsets,
                        ids: new_ids,
                    }
                }
            };
            (name.clone(), column)
        })
        .collect();
    Chunk {
        request_id: keep.iter().map(|&r| chunk.request_id[r]).collect(),
        day: keep.iter().map(|&r| chunk.day[r]).collect(),
        view: keep.iter().map(|&r| chunk.view[r]).collect(),
        view_names: chunk.view_names.clone(),
        labels: chunk
            .labels
            .iter()
            .map(|(t, v)| (t.clone(), pick(v)))
            .collect(),
        features,
        floats: chunk
            .floats
            .iter()
            .map(|(n, v)| (n.clone(), keep.iter().map(|&r| v[r]).collect()))
            .collect(),
    }
}

fn teacher_columns(
    chunk: &Chunk,
    config: &Config,
    name: &str,
    path: &Path,
) -> Result<Vec<Vec<f32>>> {
    config
        .tasks
        .iter()
        .map(|task| {
            let column = score::logit_column(name, &task.name);
            let values = chunk
                .floats
                .iter()
                .find(|(n, _)| *n == column)
                .map(|(_, v)| v)
                .ok_or_else(|| {
                    Error::new(format!(
                        "{}: no teacher column `{column}` (write it with `mmoe score-dataset` and a model whose config is named `{name}`)",
                        path.display()
                    ))
                })?;
            values
                .iter()
                .enumerate()
                .map(|(r, v)| {
                    v.ok_or_else(|| {
                        Error::new(format!(
                            "{}: teacher column `{column}` is null at training row {r}",
                            path.display()
                        ))
                    })
                })
                .collect()
        })
        .collect()
}

/// Scores every row of the table through the engine and keeps the rows of
/// `days` (the same rows [`load`] keeps, in the same order).
fn teacher_scores(
    model_path: &Path,
    student: &Config,
    table: &Path,
    days: &Option<Range<i32>>,
    rows: usize,
) -> Result<Vec<Vec<f32>>> {
    let model: Arc<Model> = Model::open(model_path, &OpenOptions::default())?;
    // The student's task i learns from the teacher's task of the same name.
    let teacher_tasks = model.task_names();
    let task_map: Vec<usize> = student
        .tasks
        .iter()
        .map(|task| {
            teacher_tasks
                .iter()
                .position(|t| *t == task.name)
                .ok_or_else(|| {
                    Error::new(format!(
                        "teacher {} has no task `{}` (it has {})",
                        model_path.display(),
                        task.name,
                        teacher_tasks.join(", ")
                    ))
                })
        })
        .collect::<Result<_>>()?;
    let tasks = task_map.len();
    let mut reader = TableReader::open(table, model.config(), READ_ROWS)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out: Vec<Vec<f32>> = vec![Vec::with_capacity(rows); tasks];
    let mut row_base = 0usize;
    let mut missing: Option<usize> = None;
    let mut sink = |chunk: Chunk, logits: Vec<Vec<Option<f32>>>| -> mmoe::Result<()> {
        for (r, &day) in chunk.day.iter().enumerate() {
            if !in_days(days, day) {
                continue;
            }
            for (t, &from) in task_map.iter().enumerate() {
                match logits[from][r] {
                    Some(v) => out[t].push(v),
                    None => {
                        missing.get_or_insert(row_base + r);
                        out[t].push(0.0);
                    }
                }
            }
        }
        row_base += chunk.rows();
        Ok(())
    };
    score::score_table(&model, &mut reader, threads, &mut sink, &mut |_| {})?;
    if let Some(row) = missing {
        return Err(Error::new(format!(
            "teacher {} could not score row {row} of {} (bad features; `mmoe score-dataset` lists them)",
            model_path.display(),
            table.display()
        )));
    }
    if out.first().map_or(0, Vec::len) != rows {
        return Err(Error::new(format!(
            "teacher {} scored {} rows of {}, the training set has {rows}",
            model_path.display(),
            out.first().map_or(0, Vec::len),
            table.display()
        )));
    }
    Ok(out)
}
