//! Turns a request's raw features into x0 (MODEL.md §1): dense transforms and
//! the missing-value policy, sparse bags pooled from embedding tables.

use crate::config::{Input, InputKind, Pooling, Scope};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::request::{Feature, Request};

/// Writes input `index`'s vector for candidate `candidate` into `out`
/// (`dim` floats). For a request-scope input the candidate does not matter.
/// The request must have passed [`Request::validate`] for this model.
pub fn input_vector(
    model: &Model,
    request: &Request<'_>,
    index: usize,
    candidate: usize,
    out: &mut [f32],
) -> Result<()> {
    let input = &model.config().inputs[index];
    let plan = &model.plan().inputs[index];
    let row = if input.scope == Scope::Request {
        0
    } else {
        candidate
    };
    match (input.kind, request.feature(index)) {
        (InputKind::Dense, Feature::Dense(values)) => {
            let raw = &values[row * input.dim..(row + 1) * input.dim];
            let transform = DenseTransform::of(input);
            let stats = plan
                .mean
                .zip(plan.std)
                .map(|(m, s)| (model.values(m), model.values(s)));
            for (k, (o, &x)) in out.iter_mut().zip(raw).enumerate() {
                let stats = stats.as_ref().map(|(m, s)| (m.get(k), s.get(k)));
                *o = transform
                    .apply(x, stats)
                    .ok_or_else(|| not_finite(input, candidate, k, x))?;
            }
        }
        (InputKind::Sparse, Feature::Sparse { ids, offsets }) => {
            let bag = &ids[offsets[row] as usize..offsets[row + 1] as usize];
            pool(model, input, plan.embedding, bag, out);
        }
        _ => {
            return Err(Error::request(format!(
                "input `{}` does not match its kind (validate the request first)",
                input.name
            )))
        }
    }
    Ok(())
}

/// The error for a value that is not finite where `input` allows no
/// missing values (CPU and GPU paths alike); a request-scope value belongs
/// to no candidate.
pub fn not_finite(input: &Input, candidate: usize, element: usize, value: f32) -> Error {
    let whose = match input.scope {
        Scope::Request => "(request scope)".to_string(),
        _ => format!("candidate {candidate}"),
    };
    Error::request(format!(
        "input `{}` {whose} element {element}: value {value} is not finite (the input does not allow missing values)",
        input.name
    ))
}

/// One dense value through log1p, standardize and clip. `None` when the raw
/// value is not finite and the input does not allow missing values.
#[inline]
pub fn transform_dense(input: &Input, x: f32, stats: Option<(f32, f32)>) -> Option<f32> {
    DenseTransform::of(input).apply(x, stats)
}

/// A dense input's transform with its options read once (not per element:
/// they live in the config's vectors and options).
#[derive(Clone, Copy)]
struct DenseTransform {
    log1p: bool,
    clip: Option<f32>,
    missing_is_zero: bool,
}

impl DenseTransform {
    fn of(input: &Input) -> Self {
        DenseTransform {
            log1p: input.log1p(),
            clip: input.clip,
            missing_is_zero: input.missing_is_zero(),
        }
    }

    #[inline(always)]
    fn apply(self, x: f32, stats: Option<(f32, f32)>) -> Option<f32> {
        if !x.is_finite() {
            return self.missing_is_zero.then_some(0.0);
        }
        let mut v = x;
        if self.log1p {
            v = v.signum() * v.abs().ln_1p();
        }
        if let Some((mean, std)) = stats {
            v = (v - mean) / std;
        }
        if let Some(c) = self.clip {
            v = v.clamp(-c, c);
        }
        Some(v)
    }
}

/// Starts loading the embedding rows of candidate `candidate`'s bags (every
/// candidate-scope sparse input). Rows of large tables miss the caches; asking
/// for a later candidate's rows while pooling the current one overlaps those
/// misses instead of paying them one after another.
pub fn prefetch_bags(model: &Model, request: &Request<'_>, candidate: usize) {
    for (index, input, plan) in model.input_plans() {
        let (Scope::Candidate, Some(table), Feature::Sparse { ids, offsets }) =
            (input.scope, plan.embedding, request.feature(index))
        else {
            continue;
        };
        let (Some(&start), Some(&end)) = (offsets.get(candidate), offsets.get(candidate + 1))
        else {
            continue;
        };
        let values = model.values(table);
        for &id in ids.get(start as usize..end as usize).unwrap_or(&[]) {
            values.prefetch(embedding_row(input, id) * input.dim, input.dim);
        }
    }
}

/// Sums (or averages) the embedding rows of a bag; id `i` reads row
/// `i mod rows`; an empty bag gives zeros.
fn pool(
    model: &Model,
    input: &Input,
    table: Option<crate::plan::TensorId>,
    bag: &[u64],
    out: &mut [f32],
) {
    out.fill(0.0);
    let Some(table) = table else { return };
    let values = model.values(table);
    let dim = input.dim;
    // Rows are converted in bulk (F16C when the CPU has it), a chunk at a time.
    let mut chunk = [0.0f32; 64];
    for &id in bag {
        let row = embedding_row(input, id);
        for (c, out_chunk) in out.chunks_mut(chunk.len()).enumerate() {
            let converted = &mut chunk[..out_chunk.len()];
            values.read_into(row * dim + c * 64, converted);
            for (o, v) in out_chunk.iter_mut().zip(converted.iter()) {
                *o += v;
            }
        }
    }
    if input.pooling == Some(Pooling::Mean) && !bag.is_empty() {
        let count = bag.len() as f32;
        for o in out.iter_mut() {
            *o /= count;
        }
    }
}

/// The embedding row id `id` reads: `id mod rows` (a validated config has
/// `rows` ≥ 1).
#[inline]
fn embedding_row(input: &Input, id: u64) -> usize {
    (id % input.rows.unwrap_or(1).max(1)) as usize
}

/// Writes the whole x0 of one candidate.
pub fn assemble_x0(
    model: &Model,
    request: &Request<'_>,
    candidate: usize,
    x0: &mut [f32],
) -> Result<()> {
    for (index, input) in model.plan().inputs.iter().enumerate() {
        input_vector(
            model,
            request,
            index,
            candidate,
            &mut x0[input.offset..input.offset + input.dim],
        )?;
    }
    Ok(())
}
