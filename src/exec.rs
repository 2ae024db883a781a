//! Executes a [`Program`] on the CPU: request steps once on one row, then the
//! candidate steps on tiles of candidates, so that a tile's activations stay
//! in cache. The scratch is owned by the caller (a session) and reused: after
//! the first call, scoring allocates nothing.
//!
//! Linear layers run on the per-ISA kernels of [`crate::cpu`]; the other
//! steps are light element-wise work in portable Rust.

use crate::config::Scope;
use crate::cpu::{self, Isa, KernelScratch, LinearJob};
use crate::error::Result;
use crate::features::{input_vector, prefetch_bags};
use crate::format::{bilinear_index, Layout};
use crate::model::{Model, Values};
use crate::program::{BufId, Program, Step};
use crate::request::Request;

/// Candidates per tile.
pub const TILE: usize = 32;

/// While pooling a candidate's embedding rows, those of the candidate this
/// many rows later are requested (see [`prefetch_bags`]).
const BAG_PREFETCH_AHEAD: usize = 2;

/// Activation memory for one program: per-request buffers (one row) and
/// per-candidate buffers (one tile of rows).
#[derive(Debug, Default)]
pub struct Scratch {
    buffers: Vec<Vec<f32>>,
    kernel: KernelScratch,
    /// Softmax weights of a gate.
    gate: Vec<f32>,
    /// When profiling: nanoseconds spent in each step, request steps first
    /// (see [`Scratch::set_profiling`]).
    step_nanos: Option<Vec<u64>>,
}

impl Scratch {
    /// Starts or stops timing each step (off by default: the hot path then
    /// only tests an `Option`). Switching it on clears the sums.
    pub fn set_profiling(&mut self, on: bool) {
        self.step_nanos = on.then(Vec::new);
    }

    /// Nanoseconds per step of the program, request steps first, summed over
    /// the calls since profiling was switched on (`None` when off).
    pub fn step_nanos(&self) -> Option<&[u64]> {
        self.step_nanos.as_deref()
    }

    /// Adds `nanos` to step `index` when profiling.
    fn record(&mut self, index: usize, nanos: u64) {
        if let Some(sums) = &mut self.step_nanos {
            if sums.len() <= index {
                sums.resize(index + 1, 0);
            }
            sums[index] += nanos;
        }
    }

    /// Takes `from`'s request-level buffers of `program` (the results of
    /// its request steps), sizing this scratch first.
    pub fn copy_request_buffers(&mut self, program: &Program, from: &Scratch) {
        self.prepare(program);
        for (b, buffer) in program.buffers.iter().enumerate() {
            if buffer.per_request {
                self.buffers[b].copy_from_slice(&from.buffers[b]);
            }
        }
    }

    /// Sizes the buffers for `program` (allocates only the first time).
    fn prepare(&mut self, program: &Program) {
        let len = |b: &crate::program::Buffer| b.width * if b.per_request { 1 } else { TILE };
        if self.buffers.len() != program.buffers.len() {
            self.buffers = program.buffers.iter().map(|b| vec![0.0; len(b)]).collect();
            return;
        }
        // One a step took and a panic kept (`Tile::run` puts it back only
        // when the step returns), or one sized for another program with as
        // many buffers: sized again, else every later call would fail on it.
        for (values, buffer) in self.buffers.iter_mut().zip(&program.buffers) {
            if values.len() != len(buffer) {
                *values = vec![0.0; len(buffer)];
            }
        }
    }
}

/// Scores a validated request; `logits` is `[candidates × tasks]`.
pub fn score(
    model: &Model,
    program: &Program,
    isa: Isa,
    scratch: &mut Scratch,
    request: &Request<'_>,
    logits: &mut [f32],
) -> Result<()> {
    let mut tile = Tile::new(model, program, request, isa);
    tile.request_steps(scratch, logits)?;
    candidate_tiles(&mut tile, scratch, 0..request.candidates(), logits)
}

/// Runs the candidate steps on the tiles of `candidates`; `logits` holds
/// exactly those candidates' rows.
fn candidate_tiles(
    tile: &mut Tile<'_>,
    scratch: &mut Scratch,
    candidates: std::ops::Range<usize>,
    logits: &mut [f32],
) -> Result<()> {
    tile.first = candidates.start;
    tile.logits_base = candidates.start;
    while tile.first < candidates.end {
        tile.rows = TILE.min(candidates.end - tile.first);
        let first_index = tile.program.request_steps.len();
        for (i, step) in tile.program.candidate_steps.iter().enumerate() {
            tile.timed_run(scratch, first_index + i, step, logits)?;
        }
        tile.first += tile.rows;
    }
    Ok(())
}

/// The request steps of [`score`] alone, into `scratch` (the candidate
/// steps then run on it or on scratches given its request-level buffers,
/// [`Scratch::copy_request_buffers`]).
pub fn request_steps(
    model: &Model,
    program: &Program,
    isa: Isa,
    scratch: &mut Scratch,
    request: &Request<'_>,
    logits: &mut [f32],
) -> Result<()> {
    Tile::new(model, program, request, isa).request_steps(scratch, logits)
}

/// The candidate steps of [`score`] on `candidates` alone, after the
/// request steps; `logits` holds exactly those candidates' rows.
pub fn score_candidates(
    model: &Model,
    program: &Program,
    isa: Isa,
    scratch: &mut Scratch,
    request: &Request<'_>,
    candidates: std::ops::Range<usize>,
    logits: &mut [f32],
) -> Result<()> {
    let mut tile = Tile::new(model, program, request, isa);
    candidate_tiles(&mut tile, scratch, candidates, logits)
}

/// The candidates `first..first + rows` of a request, in flight.
struct Tile<'a> {
    model: &'a Model,
    isa: Isa,
    /// The candidate of `logits`' first row.
    logits_base: usize,
    program: &'a Program,
    request: &'a Request<'a>,
    first: usize,
    rows: usize,
}

impl<'a> Tile<'a> {
    fn new(model: &'a Model, program: &'a Program, request: &'a Request<'a>, isa: Isa) -> Self {
        Tile {
            model,
            isa,
            logits_base: 0,
            program,
            request,
            first: 0,
            rows: 1,
        }
    }

    /// The request steps, once, on one row (sizes the scratch first).
    fn request_steps(&self, scratch: &mut Scratch, logits: &mut [f32]) -> Result<()> {
        scratch.prepare(self.program);
        for (i, step) in self.program.request_steps.iter().enumerate() {
            self.timed_run(scratch, i, step, logits)?;
        }
        Ok(())
    }

    /// [`Tile::run`], timed as step `index` when the scratch is profiling.
    #[inline]
    fn timed_run(
        &self,
        scratch: &mut Scratch,
        index: usize,
        step: &Step,
        logits: &mut [f32],
    ) -> Result<()> {
        if scratch.step_nanos.is_none() {
            return self.run(scratch, step, logits);
        }
        let start = std::time::Instant::now();
        let result = self.run(scratch, step, logits);
        scratch.record(index, start.elapsed().as_nanos() as u64);
        result
    }

    fn width(&self, buf: BufId) -> usize {
        self.program.buffers[buf].width
    }

    /// Rows a step writing `buf` computes.
    fn rows_of(&self, buf: BufId) -> usize {
        if self.program.buffers[buf].per_request {
            1
        } else {
            self.rows
        }
    }

    /// Row `r` of `buf` (row 0 of a per-request buffer, for every `r`).
    fn row<'s>(&self, buffers: &'s [Vec<f32>], buf: BufId, r: usize) -> &'s [f32] {
        let b = &self.program.buffers[buf];
        let r = if b.per_request { 0 } else { r };
        &buffers[buf][r * b.width..(r + 1) * b.width]
    }

    fn run(&self, scratch: &mut Scratch, step: &Step, logits: &mut [f32]) -> Result<()> {
        // The written buffer is taken out of the scratch for the step, so the
        // others can be read meanwhile (taking a Vec does not allocate).
        let out_buf = match step {
            Step::Output { input, task } => {
                for r in 0..self.rows {
                    let tasks = self.program.tasks;
                    logits[(self.first + r - self.logits_base) * tasks + task] =
                        self.row(&scratch.buffers, *input, r)[0];
                }
                return Ok(());
            }
            Step::RequestFeatures { out }
            | Step::CandidateFeatures { out, .. }
            | Step::FeatureGate { out, .. }
            | Step::Gather { out, .. }
            | Step::Constant { out, .. }
            | Step::OuterHeads { out, .. }
            | Step::Bilinear { out, .. }
            | Step::Mixture { out, .. } => *out,
            Step::Linear { out, .. } | Step::LayerNorm { out, .. } | Step::Copy { out, .. } => {
                out.buf
            }
        };
        let mut out = std::mem::take(&mut scratch.buffers[out_buf]);
        let result = self.step(scratch, step, &mut out);
        scratch.buffers[out_buf] = out;
        result
    }

    fn step(&self, scratch: &mut Scratch, step: &Step, out: &mut [f32]) -> Result<()> {
        let model = self.model;
        let bufs = &scratch.buffers;
        match step {
            Step::RequestFeatures { .. } => {
                out.fill(0.0);
                for (index, input, plan) in model.input_plans() {
                    if input.scope == Scope::Request {
                        input_vector(
                            model,
                            self.request,
                            index,
                            0,
                            &mut out[plan.offset..plan.offset + plan.dim],
                        )?;
                    }
                }
            }
            Step::CandidateFeatures { request, out: x0 } => {
                let d = self.width(*x0);
                for r in 0..BAG_PREFETCH_AHEAD.min(self.rows) {
                    prefetch_bags(model, self.request, self.first + r);
                }
                for r in 0..self.rows {
                    if r + BAG_PREFETCH_AHEAD < self.rows {
                        prefetch_bags(model, self.request, self.first + r + BAG_PREFETCH_AHEAD);
                    }
                    let row = &mut out[r * d..(r + 1) * d];
                    for (index, input, plan) in model.input_plans() {
                        let cols = plan.offset..plan.offset + plan.dim;
                        if input.scope == Scope::Request {
                            row[cols.clone()].copy_from_slice(&bufs[*request][cols]);
                        } else {
                            input_vector(
                                model,
                                self.request,
                                index,
                                self.first + r,
                                &mut row[cols],
                            )?;
                        }
                    }
                }
            }
            Step::Linear {
                input,
                k_ranges,
                weight,
                n,
                bias,
                add,
                act,
                scale,
                shift,
                norm,
                out: view,
            } => {
                let rows = self.rows_of(view.buf);
                debug_assert!(rows == 1 || !self.program.buffers[input.buf].per_request);
                let whole = 0..input.width;
                let all = std::slice::from_ref(&whole);
                let mut job = LinearJob {
                    x: &bufs[input.buf],
                    ldx: self.width(input.buf),
                    in_off: input.offset,
                    rows,
                    k_ranges: k_ranges.as_deref().unwrap_or(all),
                    k_total: input.width,
                    w: model.values(*weight),
                    w_bf16: model.bf16_weight(*weight),
                    n: *n,
                    bias: bias.map(|b| model.values(b)),
                    add: add.map(|a| self.row(bufs, a, 0)),
                    act: *act,
                    scale: scale.map(|b| bufs[b].as_slice()),
                    ld_scale: scale.map_or(0, |b| self.width(b)),
                    shift: shift.map(|b| bufs[b].as_slice()),
                    ld_shift: shift.map_or(0, |b| self.width(b)),
                    y: out,
                    ldy: self.width(view.buf),
                    out_off: view.offset,
                };
                cpu::linear(self.isa, &mut job, &mut scratch.kernel);
                if let Some(norm) = norm {
                    // The tile's rows are still in cache: normalize in place.
                    let (gamma, beta) = (model.values(norm.gamma), model.values(norm.beta));
                    let rows = RowsView {
                        rows,
                        ld: self.width(view.buf),
                        offset: view.offset,
                        width: view.width,
                    };
                    layer_norm_rows(out, rows, &gamma, &beta, norm.act);
                }
            }
            Step::LayerNorm {
                input,
                gamma,
                beta,
                act,
                out: view,
            } => {
                let (gamma, beta) = (model.values(*gamma), model.values(*beta));
                let rows = RowsView {
                    rows: self.rows_of(view.buf),
                    ld: self.width(view.buf),
                    offset: view.offset,
                    width: view.width,
                };
                for r in 0..rows.rows {
                    let x = &self.row(bufs, input.buf, r)[input.offset..input.offset + input.width];
                    out[rows.range(r)].copy_from_slice(x);
                }
                layer_norm_rows(out, rows, &gamma, &beta, *act);
            }
            Step::FeatureGate { g, x0, out: o } => {
                let w = self.width(*o);
                for r in 0..self.rows_of(*o) {
                    let (gr, xr) = (self.row(bufs, *g, r), self.row(bufs, *x0, r));
                    for (i, v) in out[r * w..(r + 1) * w].iter_mut().enumerate() {
                        *v = xr[i] * gr[i];
                    }
                }
            }
            Step::Gather {
                input,
                ranges,
                out: o,
            } => {
                let w = self.width(*o);
                for r in 0..self.rows_of(*o) {
                    let x = self.row(bufs, *input, r);
                    let mut at = r * w;
                    for range in ranges {
                        out[at..at + range.len()].copy_from_slice(&x[range.clone()]);
                        at += range.len();
                    }
                }
            }
            Step::Copy { input, out: view } => {
                let w = self.width(view.buf);
                for r in 0..self.rows_of(view.buf) {
                    let at = r * w + view.offset;
                    out[at..at + view.width].copy_from_slice(self.row(bufs, *input, r));
                }
            }
            Step::Constant { tensor, .. } => {
                model.values(*tensor).read_into(0, out);
            }
            Step::OuterHeads {
                o1,
                o2,
                heads,
                out: z,
            } => {
                let width = self.width(*z);
                let (hx, hy) = (self.width(*o1) / heads, self.width(*o2) / heads);
                for r in 0..self.rows {
                    let (a, b) = (self.row(bufs, *o1, r), self.row(bufs, *o2, r));
                    let row = &mut out[r * width..(r + 1) * width];
                    outer_heads_row(a, b, hx, hy, row);
                }
            }
            Step::Bilinear {
                o1,
                o2,
                wx,
                wy,
                w_xy,
                heads,
                out: o,
            } => {
                let h_out = self.width(*o);
                let (hx, hy) = (self.width(*o1) / heads, self.width(*o2) / heads);
                let w = model.values(*w_xy);
                let layout = model.layout_of(*w_xy);
                for r in 0..self.rows_of(*o) {
                    let (a, b) = (self.row(bufs, *o1, r), self.row(bufs, *o2, r));
                    let (px, py) = (self.row(bufs, *wx, r), self.row(bufs, *wy, r));
                    let e = &mut out[r * h_out..(r + 1) * h_out];
                    for (i, ei) in e.iter_mut().enumerate() {
                        *ei = px[i] + py[i];
                    }
                    bilinear_row(&w, layout, *heads, hx, hy, a, b, e);
                }
            }
            Step::Mixture {
                gate,
                experts,
                out: o,
            } => {
                let h = self.width(*o);
                for r in 0..self.rows_of(*o) {
                    let weights = &mut scratch.gate;
                    weights.clear();
                    match gate {
                        None => weights.push(1.0),
                        Some(g) => {
                            let z = self.row(bufs, *g, r);
                            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                            weights.extend(z.iter().map(|v| (v - max).exp()));
                            let total: f32 = weights.iter().sum();
                            for w in weights.iter_mut() {
                                *w /= total;
                            }
                        }
                    }
                    let m = &mut out[r * h..(r + 1) * h];
                    m.fill(0.0);
                    for (w, &e) in weights.iter().zip(experts) {
                        for (mi, v) in m.iter_mut().zip(self.row(bufs, e, r)) {
                            *mi += w * v;
                        }
                    }
                }
            }
            Step::Output { .. } => unreachable!("handled in run"),
        }
        Ok(())
    }
}

/// Rows `0..rows` of a buffer of row stride `ld`, columns
/// `offset..offset + width` of each.
#[derive(Clone, Copy)]
struct RowsView {
    rows: usize,
    ld: usize,
    offset: usize,
    width: usize,
}

impl RowsView {
    fn range(&self, r: usize) -> std::ops::Range<usize> {
        let at = r * self.ld + self.offset;
        at..at + self.width
    }
}

/// `act((x − mean) / sqrt(var + 1e-5) · γ + β)` over each row of `rows`
/// in place, biased variance.
///
/// Written for the vectorizer: the sums keep 16 lanes (a fixed order, so the
/// same bits on every CPU), γ and β are converted 64 at a time, once for a
/// group of up to [`TILE`] rows (converting them per row took half the time
/// of a LayerNorm of 97 columns), and the activation is chosen per chunk,
/// not per element.
fn layer_norm_rows(
    out: &mut [f32],
    rows: RowsView,
    gamma: &Values<'_>,
    beta: &Values<'_>,
    act: crate::program::Act,
) {
    use crate::program::Act;
    let n = rows.width as f32;
    let (mut g, mut b) = ([0.0f32; 64], [0.0f32; 64]);
    for first in (0..rows.rows).step_by(TILE) {
        let group = first..rows.rows.min(first + TILE);
        // Each row's mean and 1 / sqrt(var + eps).
        let mut stats = [(0.0f32, 0.0f32); TILE];
        for (r, slot) in group.clone().zip(stats.iter_mut()) {
            let row = &out[rows.range(r)];
            let mean = lane_sum(row, |v| v) / n;
            let var = lane_sum(row, |v| (v - mean) * (v - mean)) / n;
            *slot = (mean, 1.0 / (var + 1e-5).sqrt());
        }
        for c in (0..rows.width).step_by(64) {
            let len = 64.min(rows.width - c);
            let (g, b) = (&mut g[..len], &mut b[..len]);
            gamma.read_into(c, g);
            beta.read_into(c, b);
            for (r, &(mean, inv)) in group.clone().zip(stats.iter()) {
                let at = rows.range(r).start + c;
                let chunk = &mut out[at..at + len];
                for ((v, &g), &b) in chunk.iter_mut().zip(g.iter()).zip(b.iter()) {
                    *v = (*v - mean) * inv * g + b;
                }
                match act {
                    Act::None => {}
                    Act::Relu => chunk.iter_mut().for_each(|v| *v = v.max(0.0)),
                    Act::TwoSigmoid => chunk.iter_mut().for_each(|v| *v = act.apply(*v)),
                }
            }
        }
    }
}

/// `Σ f(x[i])` in 16 lanes (lane `i mod 16`), then the lanes in a fixed tree.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for chunk in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l += f(v);
        }
    }
    for (l, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *l += f(v);
    }
    let mut width = 8;
    while width > 0 {
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
        width /= 2;
    }
    lanes[0]
}

/// `z[j·hy + b] = o1[j] · o2[(j / hx)·hy + b]`: each head's outer product,
/// in the order of the bilinear weight's rows.
fn outer_heads_row(o1: &[f32], o2: &[f32], hx: usize, hy: usize, z: &mut [f32]) {
    for (j, (&x, zj)) in o1.iter().zip(z.chunks_exact_mut(hy)).enumerate() {
        let head = &o2[(j / hx) * hy..(j / hx + 1) * hy];
        for (zb, &y) in zj.iter_mut().zip(head) {
            *zb = x * y;
        }
    }
}

/// `e_o += Σ_h Σ_a Σ_b o1[h·hx + a] · Wxy[(h·hx + a)·(hy·H) + o·hy + b] · o2[h·hy + b]`,
/// `Wxy` read through its layout.
#[allow(clippy::too_many_arguments)]
fn bilinear_row(
    w: &Values<'_>,
    layout: Layout,
    heads: usize,
    hx: usize,
    hy: usize,
    o1: &[f32],
    o2: &[f32],
    e: &mut [f32],
) {
    let (h_out, k_total) = (e.len(), o1.len() * hy);
    // One loop per layout, so that reading the flat array pays no index mapping.
    match layout {
        Layout::RowMajor => bilinear_sum(w, |f| f, heads, hx, hy, o1, o2, e),
        _ => {
            let at = |f| bilinear_index(layout, f, hy, h_out, k_total);
            bilinear_sum(w, at, heads, hx, hy, o1, o2, e)
        }
    }
}

/// [`bilinear_row`] with element `f` of the flat array at `at(f)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bilinear_sum(
    w: &Values<'_>,
    at: impl Fn(usize) -> usize,
    heads: usize,
    hx: usize,
    hy: usize,
    o1: &[f32],
    o2: &[f32],
    e: &mut [f32],
) {
    let h_out = e.len();
    for (o, eo) in e.iter_mut().enumerate() {
        let mut sum = 0.0;
        for h in 0..heads {
            for a in 0..hx {
                let base = (h * hx + a) * (hy * h_out) + o * hy;
                let mut inner = 0.0;
                for b in 0..hy {
                    inner += w.get(at(base + b)) * o2[h * hy + b];
                }
                sum += o1[h * hx + a] * inner;
            }
        }
        *eo += sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, DType, OpenOptions};

    /// A scratch whose buffer a panicking step kept (left empty) scores the
    /// next request as a fresh one does.
    #[test]
    fn a_buffer_a_panic_kept_is_sized_again() {
        let dir = test_support::tempdir().expect("temp dir");
        let config = Config::parse(include_str!("../tests/common/small_config.json")).unwrap();
        let source = crate::demo::synthetic_tensors(&config, 1).unwrap();
        let path = dir.path().join("small.mmoe");
        crate::format::writer::pack(&config, &source, DType::F16, &path, &mut |_, _| {}).unwrap();
        let model = Model::open(&path, &OpenOptions::default()).unwrap();
        let request = crate::demo::synthetic_request(&config, 5, 7);
        let isa = Isa::best();
        let score_with = |scratch: &mut Scratch| {
            let mut logits = vec![0.0; 5 * config.tasks.len()];
            score(
                &model,
                model.program(),
                isa,
                scratch,
                &request.as_request(),
                &mut logits,
            )
            .map(|()| logits)
        };
        let mut scratch = Scratch::default();
        let want = score_with(&mut scratch).unwrap();
        for b in 0..scratch.buffers.len() {
            scratch.buffers[b] = Vec::new();
            assert_eq!(score_with(&mut scratch).unwrap(), want, "buffer {b}");
        }
    }
}
