//! `mmoe eval`: one or two models scored on a labelled table, then per task
//! and view type AUC, log loss and calibration; for two models the AUC
//! difference with a paired bootstrap 95% interval, flagged when the
//! relative change reaches 0.1%. Writes a JSON report and a PNG.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};

use mmoe::{Error, ErrorKind, Result};
use mmoe::{Model, OpenOptions};

use super::metrics::{
    calibration_curve, evaluate, paired_bootstrap, roc_curve, AucDifference, Metrics,
};
use super::plot::{draw, Curves};
use super::score::score_table;
use super::table::{intern, TableReader};

#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub threads: usize,
    pub replicates: usize,
    pub seed: u64,
    pub open: OpenOptions,
    /// Evaluate only the rows of these days (`None`: every row).
    pub days: Option<std::ops::Range<i32>>,
}

/// Relative AUC change from which a comparison is flagged.
pub const FLAG_RELATIVE: f64 = 0.001;

pub struct ModelResult {
    pub name: String,
    pub path: PathBuf,
    /// `[task][view]`; the last view is "all".
    pub metrics: Vec<Vec<Metrics>>,
}

pub struct Report {
    pub data: PathBuf,
    pub rows: usize,
    pub evaluated_rows: usize,
    pub tasks: Vec<String>,
    /// View names; the last is "all".
    pub views: Vec<String>,
    pub models: Vec<ModelResult>,
    /// `[task][view]` for two models: B against A.
    pub comparison: Option<Vec<Vec<AucDifference>>>,
    /// Per model and task, for the plot.
    curves: Vec<Vec<Curves>>,
}

fn eval_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Argument, message)
}

/// What one pass over the table keeps per row.
struct Columns {
    labels: Vec<Vec<u8>>,
    views: Vec<u16>,
    requests: Vec<u32>,
    days: Vec<i32>,
}

pub fn run(
    models: &[PathBuf],
    data: &Path,
    options: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report> {
    if models.is_empty() || models.len() > 2 {
        return Err(eval_error(
            "eval takes one or two models (--model A [--model B])",
        ));
    }
    let opened: Vec<Arc<Model>> = models
        .iter()
        .map(|p| Model::open(p, &options.open))
        .collect::<Result<_>>()?;
    let tasks: Vec<String> = opened[0]
        .config()
        .tasks
        .iter()
        .map(|t| t.name.clone())
        .collect();
    for (m, p) in opened.iter().zip(models).skip(1) {
        let other: Vec<String> = m.config().tasks.iter().map(|t| t.name.clone()).collect();
        if other != tasks {
            return Err(eval_error(format!(
                "{}: tasks {other:?} differ from the first model's {tasks:?}",
                p.display()
            )));
        }
    }
    let mut view_names: Vec<String> = Vec::new();
    let mut columns: Option<Columns> = None;
    let mut logits: Vec<Vec<Vec<Option<f32>>>> = Vec::new();
    let mut rows = 0;
    for (index, model) in opened.iter().enumerate() {
        let mut reader = TableReader::open(data, model.config(), 65_536)?;
        if !reader.has_labels {
            return Err(eval_error(format!(
                "{}: no `label.<task>` column for every task of model `{}`",
                data.display(),
                model.config().name
            )));
        }
        rows = reader.total_rows;
        let first = index == 0;
        let mut kept = Columns {
            labels: vec![Vec::new(); tasks.len()],
            views: Vec::new(),
            requests: Vec::new(),
            days: Vec::new(),
        };
        let mut model_logits: Vec<Vec<Option<f32>>> = vec![Vec::new(); tasks.len()];
        let mut last_request: Option<u64> = None;
        let mut request_index = 0u32;
        let mut sink = |chunk: super::table::Chunk, out: Vec<Vec<Option<f32>>>| -> Result<()> {
            if first {
                for (t, task) in tasks.iter().enumerate() {
                    let labels = chunk
                        .labels_of(task)
                        .ok_or_else(|| eval_error(format!("no labels for task `{task}`")))?;
                    kept.labels[t].extend_from_slice(labels);
                }
                kept.days.extend_from_slice(&chunk.day);
                for (&v, &id) in chunk.view.iter().zip(&chunk.request_id) {
                    kept.views.push(
                        intern(&mut view_names, &chunk.view_names[v as usize])
                            .map_err(eval_error)?,
                    );
                    if last_request.is_some_and(|r| r != id) {
                        request_index += 1;
                    }
                    last_request = Some(id);
                    kept.requests.push(request_index);
                }
            }
            for (column, values) in model_logits.iter_mut().zip(out) {
                column.extend(values);
            }
            Ok(())
        };
        score_table(
            model,
            &mut reader,
            options.threads,
            &mut sink,
            &mut |done| progress(index, done),
        )?;
        if first {
            columns = Some(kept);
        }
        logits.push(model_logits);
    }
    let columns = columns.ok_or_else(|| eval_error("no rows"))?;
    // Rows of the days asked for that every model scored.
    let keep: Vec<usize> = (0..columns.views.len())
        .filter(|&r| {
            options
                .days
                .as_ref()
                .is_none_or(|d| d.contains(&columns.days[r]))
                && logits
                    .iter()
                    .all(|m| m[0].get(r).is_some_and(|v| v.is_some()))
        })
        .collect();
    let mut views = view_names.clone();
    views.push("all".into());
    let all = views.len() - 1;
    let rows_of_view: Vec<Vec<usize>> = (0..views.len())
        .map(|v| {
            keep.iter()
                .copied()
                .filter(|&r| v == all || columns.views[r] as usize == v)
                .collect()
        })
        .collect();
    let pick = |m: usize, t: usize, rows: &[usize]| -> Vec<f32> {
        rows.iter()
            .map(|&r| logits[m][t][r].unwrap_or(f32::NAN))
            .collect()
    };
    let labels_of = |t: usize, rows: &[usize]| -> Vec<u8> {
        rows.iter().map(|&r| columns.labels[t][r]).collect()
    };
    let mut results = Vec::new();
    let mut curves = Vec::new();
    for (m, path) in models.iter().enumerate() {
        let mut per_task = Vec::new();
        let mut model_curves = Vec::new();
        for t in 0..tasks.len() {
            per_task.push(
                rows_of_view
                    .iter()
                    .map(|rows| evaluate(&pick(m, t, rows), &labels_of(t, rows)))
                    .collect(),
            );
            let (scores, labels) = (
                pick(m, t, &rows_of_view[all]),
                labels_of(t, &rows_of_view[all]),
            );
            model_curves.push(Curves {
                roc: roc_curve(&scores, &labels, 200),
                calibration: calibration_curve(&scores, &labels, 20),
            });
        }
        results.push(ModelResult {
            name: opened[m].config().name.clone(),
            path: path.clone(),
            metrics: per_task,
        });
        curves.push(model_curves);
    }
    let comparison = (models.len() == 2).then(|| {
        (0..tasks.len())
            .map(|t| {
                rows_of_view
                    .iter()
                    .map(|rows| {
                        let requests: Vec<u32> =
                            rows.iter().map(|&r| columns.requests[r]).collect();
                        paired_bootstrap(
                            &pick(0, t, rows),
                            &pick(1, t, rows),
                            &labels_of(t, rows),
                            &requests,
                            options.replicates,
                            options.seed,
                        )
                    })
                    .collect()
            })
            .collect()
    });
    Ok(Report {
        data: data.to_path_buf(),
        rows,
        evaluated_rows: keep.len(),
        tasks,
        views,
        models: results,
        comparison,
        curves,
    })
}

fn number(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

impl Report {
    pub fn to_json(&self) -> Value {
        let metrics = |m: &Metrics| {
            json!({"rows": m.rows, "positives": m.positives, "auc": number(m.auc),
                   "log_loss": number(m.log_loss), "calibration": number(m.calibration)})
        };
        let models: Vec<Value> = self
            .models
            .iter()
            .map(|m| {
                let mut tasks = serde_json::Map::new();
                for (t, task) in self.tasks.iter().enumerate() {
                    let mut views = serde_json::Map::new();
                    for (v, view) in self.views.iter().enumerate() {
                        views.insert(view.clone(), metrics(&m.metrics[t][v]));
                    }
                    tasks.insert(task.clone(), Value::Object(views));
                }
                json!({"name": m.name, "path": m.path.display().to_string(), "metrics": tasks})
            })
            .collect();
        let comparison = self.comparison.as_ref().map(|c| {
            let mut tasks = serde_json::Map::new();
            for (t, task) in self.tasks.iter().enumerate() {
                let mut views = serde_json::Map::new();
                for (v, view) in self.views.iter().enumerate() {
                    let d = &c[t][v];
                    let relative = d.delta / d.auc_a;
                    views.insert(
                        view.clone(),
                        json!({"auc_a": number(d.auc_a), "auc_b": number(d.auc_b), "delta": number(d.delta),
                               "ci95": [number(d.low), number(d.high)], "relative": number(relative),
                               "replicates": d.replicates,
                               "flag": relative.abs() >= FLAG_RELATIVE}),
                    );
                }
                tasks.insert(task.clone(), Value::Object(views));
            }
            Value::Object(tasks)
        });
        json!({"data": self.data.display().to_string(), "rows": self.rows, "evaluated_rows": self.evaluated_rows,
               "models": models, "comparison": comparison, "flag_relative": FLAG_RELATIVE})
    }

    pub fn plot(&self, path: &Path) -> Result<()> {
        let names: Vec<String> = self
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| format!("{} ({})", m.name, if i == 0 { "A" } else { "B" }))
            .collect();
        draw(path, &self.tasks, &names, &self.curves)
    }

    /// A table for the terminal.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} rows, {} evaluated (scored by every model)\n",
            self.rows, self.evaluated_rows
        );
        out.push_str(&format!(
            "{:<12} {:<14} {:<7} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
            "task", "view", "model", "rows", "pos", "AUC", "logloss", "calib"
        ));
        for (t, task) in self.tasks.iter().enumerate() {
            for (v, view) in self.views.iter().enumerate() {
                for (i, m) in self.models.iter().enumerate() {
                    let x = &m.metrics[t][v];
                    out.push_str(&format!(
                        "{:<12} {:<14} {:<7} {:>9} {:>9} {:>9.5} {:>9.5} {:>7.3}\n",
                        task,
                        view,
                        if i == 0 { "A" } else { "B" },
                        x.rows,
                        x.positives,
                        x.auc,
                        x.log_loss,
                        x.calibration
                    ));
                }
                if let Some(c) = &self.comparison {
                    let d = &c[t][v];
                    let relative = d.delta / d.auc_a;
                    out.push_str(&format!(
                        "{:<12} {:<14} B − A   ΔAUC {:+.5} (95% CI {:+.5} … {:+.5}), {:+.3}%{}\n",
                        task,
                        view,
                        d.delta,
                        d.low,
                        d.high,
                        100.0 * relative,
                        if relative.abs() >= FLAG_RELATIVE {
                            "  ← ≥ 0.1%"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
        out
    }
}
