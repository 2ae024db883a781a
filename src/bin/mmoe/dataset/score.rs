//! Teacher scoring of an impression table: rows are grouped into requests
//! (contiguous rows with one `request_id`), each request is scored through
//! the engine's fast path, spread over threads, and each row gets one logit
//! per task. Rows with bad features (a non-finite value where the input
//! allows none, a request-level input that differs from its request's first
//! row) are reported by row and field and get null logits; the other rows of
//! their request are scored.

use std::sync::Arc;
use std::time::Instant;

use mmoe::config::{Config, Scope};
use mmoe::Model;
use mmoe::Request;
use mmoe::Result;
use mmoe::{Scores, Session};

use super::table::{Chunk, FeatureColumn, TableReader};

/// A row that was not scored, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct BadRow {
    /// Row number in the table (from 0).
    pub row: usize,
    pub field: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default)]
pub struct ScoreSummary {
    pub rows: usize,
    pub requests: usize,
    pub scored_rows: usize,
    /// The first bad rows (at most [`MAX_BAD_ROWS_KEPT`]) and how many in all.
    pub bad_rows: Vec<BadRow>,
    pub bad_row_count: usize,
    pub seconds: f64,
}

pub const MAX_BAD_ROWS_KEPT: usize = 1000;

/// Receives each scored chunk (to keep or write; it is not used again) and
/// its logits, `[task][row]` (`None`: a bad row).
pub type ChunkSink<'a> = dyn FnMut(Chunk, Vec<Vec<Option<f32>>>) -> Result<()> + 'a;

/// The logit column of `task` for a model: `logit.<model>.<task>`.
pub fn logit_column(model: &str, task: &str) -> String {
    format!("logit.{model}.{task}")
}

/// Per-thread scratch: the gathered features of one request. (Sessions are
/// made in the scoring threads: a GPU session may not move between threads.)
struct Worker {
    dense: Vec<Vec<f32>>,
    ids: Vec<Vec<u64>>,
    offsets: Vec<Vec<u32>>,
    logits: Vec<f32>,
    good: Vec<usize>,
}

/// Contiguous runs of equal `request_id`: `(start, end)` row ranges.
fn runs(ids: &[u64]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=ids.len() {
        if i == ids.len() || ids[i] != ids[start] {
            out.push((start, i));
            start = i;
        }
    }
    out
}

/// Why row `r` of `chunk` cannot be scored as part of the request starting
/// at `first`, if it cannot.
fn check_row(config: &Config, chunk: &Chunk, first: usize, r: usize) -> Option<(String, String)> {
    for (input, (name, column)) in config.inputs.iter().zip(&chunk.features) {
        match column {
            FeatureColumn::Dense { dim, values } => {
                let row = &values[r * dim..(r + 1) * dim];
                if !input.missing_is_zero() {
                    if let Some(k) = row.iter().position(|v| !v.is_finite()) {
                        return Some((
                            name.clone(),
                            format!(
                                "element {k} is {} (the input allows no missing values)",
                                row[k]
                            ),
                        ));
                    }
                }
                if input.scope == Scope::Request && r != first {
                    let head = &values[first * dim..(first + 1) * dim];
                    if row
                        .iter()
                        .zip(head)
                        .any(|(a, b)| a.to_bits() != b.to_bits())
                    {
                        return Some((
                            name.clone(),
                            "request-level values differ from the request's first row".into(),
                        ));
                    }
                }
            }
            FeatureColumn::Sparse { offsets, ids } => {
                if input.scope == Scope::Request && r != first {
                    let bag = |i: usize| &ids[offsets[i] as usize..offsets[i + 1] as usize];
                    if bag(r) != bag(first) {
                        return Some((
                            name.clone(),
                            "request-level ids differ from the request's first row".into(),
                        ));
                    }
                }
            }
        }
    }
    None
}

impl Worker {
    /// Scores rows `start..end` (one request) into `out[task][row - base]`.
    #[allow(clippy::too_many_arguments)]
    fn score_request(
        &mut self,
        session: &mut Session,
        config: &Config,
        chunk: &Chunk,
        (start, end): (usize, usize),
        row_base: usize,
        out: &mut [Vec<Option<f32>>],
        out_offset: usize,
        bad: &mut Vec<BadRow>,
    ) {
        let tasks = config.tasks.len();
        self.good.clear();
        // The first good row carries the request-level features.
        let mut first = None;
        for r in start..end {
            let reference = first.unwrap_or(r);
            match check_row(config, chunk, reference, r) {
                None => {
                    first.get_or_insert(r);
                    self.good.push(r);
                }
                Some((field, reason)) => bad.push(BadRow {
                    row: row_base + r,
                    field,
                    reason,
                }),
            }
        }
        let Some(first) = first else { return };
        let n = self.good.len();
        for (i, (input, (_, column))) in config.inputs.iter().zip(&chunk.features).enumerate() {
            match column {
                FeatureColumn::Dense { dim, values } => {
                    let d = &mut self.dense[i];
                    d.clear();
                    if input.scope == Scope::Request {
                        d.extend_from_slice(&values[first * dim..(first + 1) * dim]);
                    } else {
                        for &r in &self.good {
                            d.extend_from_slice(&values[r * dim..(r + 1) * dim]);
                        }
                    }
                }
                FeatureColumn::Sparse { offsets, ids } => {
                    let (bag_ids, bag_offsets) = (&mut self.ids[i], &mut self.offsets[i]);
                    bag_ids.clear();
                    bag_offsets.clear();
                    bag_offsets.push(0);
                    let rows: &[usize] = if input.scope == Scope::Request {
                        std::slice::from_ref(&first)
                    } else {
                        &self.good
                    };
                    for &r in rows {
                        bag_ids
                            .extend_from_slice(&ids[offsets[r] as usize..offsets[r + 1] as usize]);
                        bag_offsets.push(bag_ids.len() as u32);
                    }
                }
            }
        }
        let mut request = Request::new(n);
        for (i, column) in chunk.features.iter().enumerate() {
            match column.1 {
                FeatureColumn::Dense { .. } => request.set_dense(i, &self.dense[i]),
                FeatureColumn::Sparse { .. } => {
                    request.set_sparse(i, &self.ids[i], &self.offsets[i])
                }
            };
        }
        self.logits.resize(n * tasks, 0.0);
        let result = session.score(
            &request,
            &mut Scores {
                logits: Some(&mut self.logits),
                probabilities: None,
            },
        );
        match result {
            Ok(()) => {
                for (j, &r) in self.good.iter().enumerate() {
                    for (t, column) in out.iter_mut().enumerate() {
                        column[r - out_offset] = Some(self.logits[j * tasks + t]);
                    }
                }
            }
            Err(e) => {
                for &r in &self.good {
                    bad.push(BadRow {
                        row: row_base + r,
                        field: "request".into(),
                        reason: e.message().to_string(),
                    });
                }
            }
        }
    }
}

/// Scores every row of the table at `reader` with `model`, `threads` ways,
/// handing each scored chunk and its logits (`[task][row]`, `None` for bad
/// rows) to `sink`.
pub fn score_table(
    model: &Arc<Model>,
    reader: &mut TableReader,
    threads: usize,
    sink: &mut ChunkSink<'_>,
    progress: &mut dyn FnMut(usize),
) -> Result<ScoreSummary> {
    let config = model.config().clone();
    let inputs = config.inputs.len();
    let threads = threads.max(1);
    let mut workers: Vec<Worker> = (0..threads)
        .map(|_| Worker {
            dense: vec![Vec::new(); inputs],
            ids: vec![Vec::new(); inputs],
            offsets: vec![Vec::new(); inputs],
            logits: Vec::new(),
            good: Vec::new(),
        })
        .collect();
    let start = Instant::now();
    let mut summary = ScoreSummary::default();
    let mut carry: Option<Chunk> = None;
    let mut row_base = 0usize;
    loop {
        let next = reader.next_chunk()?;
        let last = next.is_none();
        let mut chunk = match (carry.take(), next) {
            (Some(mut c), Some(n)) => {
                c.append(n)?;
                c
            }
            (Some(c), None) => c,
            (None, Some(n)) => n,
            (None, None) => break,
        };
        let mut requests = runs(&chunk.request_id);
        // The last request may continue in the next batch: keep it for then.
        if !last && requests.len() > 1 {
            let (tail_start, _) = requests.pop().unwrap_or((chunk.rows(), chunk.rows()));
            carry = Some(chunk.split_off(tail_start));
        } else if !last {
            carry = Some(chunk);
            continue;
        }
        let rows = chunk.rows();
        let tasks = config.tasks.len();
        let mut out: Vec<Vec<Option<f32>>> = vec![vec![None; rows]; tasks];
        // Split the requests into one contiguous share of rows per thread.
        let per = rows.div_ceil(threads);
        let mut shares: Vec<Vec<(usize, usize)>> = vec![Vec::new(); threads];
        for &(s, e) in &requests {
            shares[(s / per.max(1)).min(threads - 1)].push((s, e));
        }
        let mut bad_per_thread: Vec<Vec<BadRow>> = vec![Vec::new(); threads];
        // Each thread writes the rows of its own requests: split the output
        // columns at the share boundaries.
        let bounds: Vec<(usize, usize)> = shares
            .iter()
            .map(|s| (s.first().map_or(0, |r| r.0), s.last().map_or(0, |r| r.1)))
            .collect();
        let mut pieces: Vec<Vec<Vec<Option<f32>>>> = bounds
            .iter()
            .map(|&(s, e)| vec![vec![None; e.saturating_sub(s)]; tasks])
            .collect();
        std::thread::scope(|scope| {
            for (((worker, share), (piece, bad)), &(s, _)) in workers
                .iter_mut()
                .zip(&shares)
                .zip(pieces.iter_mut().zip(bad_per_thread.iter_mut()))
                .zip(&bounds)
            {
                let (config, chunk) = (&config, &chunk);
                if share.is_empty() {
                    continue;
                }
                scope.spawn(move || {
                    let mut session = Session::new(model.clone());
                    for &request in share {
                        worker.score_request(
                            &mut session,
                            config,
                            chunk,
                            request,
                            row_base,
                            piece,
                            s,
                            bad,
                        );
                    }
                });
            }
        });
        for (piece, &(s, _)) in pieces.into_iter().zip(&bounds) {
            for (column, values) in out.iter_mut().zip(piece) {
                column[s..s + values.len()].copy_from_slice(&values);
            }
        }
        for bad in bad_per_thread {
            summary.bad_row_count += bad.len();
            let room = MAX_BAD_ROWS_KEPT.saturating_sub(summary.bad_rows.len());
            summary.bad_rows.extend(bad.into_iter().take(room));
        }
        summary.rows += rows;
        summary.requests += requests.len();
        summary.scored_rows += out
            .first()
            .map_or(rows, |c| c.iter().filter(|v| v.is_some()).count());
        row_base += rows;
        sink(chunk, out)?;
        progress(summary.rows);
        if last {
            break;
        }
    }
    summary.bad_rows.sort_by_key(|b| b.row);
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}
