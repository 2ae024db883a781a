//! A scoring request: the features of one request and its candidates,
//! borrowed from the caller. Inputs are addressed by their index in the
//! model's config (see [`crate::Model::input_index`]).
//!
//! - A dense input of `scope: request` holds `dim` floats; of
//!   `scope: candidate`, `candidates × dim` floats, row-major. NaN (or any
//!   non-finite value) marks a missing value.
//! - A sparse input holds CSR bags: `ids` and `offsets`, bag `b` being
//!   `ids[offsets[b]..offsets[b + 1]]`. A request-scope input has one bag
//!   (`offsets.len() == 2`); a candidate-scope input one per candidate.
//!
//! The request is checked against the model when it is scored, so one request
//! may be scored by a model that was swapped in after it was built.

use crate::config::{Config, InputKind, Scope};
use crate::error::{Error, Result};

/// The value of one input.
#[derive(Clone, Copy, Debug, Default)]
pub enum Feature<'a> {
    #[default]
    Unset,
    Dense(&'a [f32]),
    Sparse {
        ids: &'a [u64],
        offsets: &'a [u32],
    },
}

#[derive(Clone, Debug, Default)]
pub struct Request<'a> {
    candidates: usize,
    features: Vec<Feature<'a>>,
    /// The first input index set beyond any model's inputs (kept out of
    /// `features`, so that a stray index does not size that vector).
    out_of_range: Option<usize>,
}

/// No model has more inputs than this: each input adds at least one column
/// to x0, whose width the config bounds.
pub const MAX_INPUTS: usize = crate::config::MAX_WIDTH;

impl<'a> Request<'a> {
    /// An empty request for `candidates` candidates.
    pub fn new(candidates: usize) -> Self {
        Request {
            candidates,
            features: Vec::new(),
            out_of_range: None,
        }
    }

    /// Clears every feature and sets the candidate count, keeping capacity.
    pub fn reset(&mut self, candidates: usize) {
        self.candidates = candidates;
        self.features.clear();
        self.out_of_range = None;
    }

    /// This request emptied, its storage kept for a next request that
    /// borrows for another lifetime (no allocation: the empty vector's
    /// buffer is reused in place).
    pub fn recycle(mut self) -> Request<'static> {
        self.features.clear();
        Request {
            candidates: 0,
            features: self.features.into_iter().map(|_| Feature::Unset).collect(),
            out_of_range: None,
        }
    }

    pub fn candidates(&self) -> usize {
        self.candidates
    }

    pub fn set_dense(&mut self, input: usize, values: &'a [f32]) -> &mut Self {
        self.set(input, Feature::Dense(values))
    }

    pub fn set_sparse(&mut self, input: usize, ids: &'a [u64], offsets: &'a [u32]) -> &mut Self {
        self.set(input, Feature::Sparse { ids, offsets })
    }

    fn set(&mut self, input: usize, feature: Feature<'a>) -> &mut Self {
        if input >= MAX_INPUTS {
            self.out_of_range.get_or_insert(input);
            return self;
        }
        if self.features.len() <= input {
            self.features.resize(input + 1, Feature::Unset);
        }
        self.features[input] = feature;
        self
    }

    pub fn feature(&self, input: usize) -> Feature<'a> {
        self.features.get(input).copied().unwrap_or_default()
    }

    /// Checks the request's shape against a model's config: every input set,
    /// of the right kind and length, CSR offsets well formed, request-scope
    /// values finite where the input allows no missing values. Candidate
    /// values (NaN policy) are checked while features are assembled.
    pub fn validate(&self, config: &Config) -> Result<()> {
        let n = self.candidates;
        let highest = self
            .out_of_range
            .or_else(|| self.features.len().checked_sub(1));
        if let Some(index) = highest.filter(|&index| index >= config.inputs.len()) {
            return Err(Error::request(format!(
                "input index {index} is set, but model `{}` has {} inputs",
                config.name,
                config.inputs.len()
            )));
        }
        for (index, input) in config.inputs.iter().enumerate() {
            let name = &input.name;
            let per_request = input.scope == Scope::Request;
            match (input.kind, self.feature(index)) {
                (_, Feature::Unset) => {
                    return Err(Error::request(format!("input `{name}` is not set")));
                }
                (InputKind::Dense, Feature::Dense(values)) => {
                    let want = if per_request {
                        Some(input.dim)
                    } else {
                        n.checked_mul(input.dim)
                    };
                    if want != Some(values.len()) {
                        let shape = if per_request {
                            format!("{}", input.dim)
                        } else {
                            format!("{n} candidates × {}", input.dim)
                        };
                        return Err(Error::request(format!(
                            "input `{name}`: {} values, expected {shape}",
                            values.len()
                        )));
                    }
                    // A request-scope value that is not finite is refused
                    // here, by every backend, even with no candidate to
                    // score (the transforms refuse candidate-scope ones as
                    // they read them, without a pass of their own).
                    if per_request && !input.missing_is_zero() {
                        if let Some(k) = values.iter().position(|v| !v.is_finite()) {
                            return Err(crate::features::not_finite(input, 0, k, values[k]));
                        }
                    }
                }
                (InputKind::Sparse, Feature::Sparse { ids, offsets }) => {
                    let bags = if per_request { 1 } else { n };
                    check_csr(name, bags, ids, offsets)?;
                }
                (InputKind::Dense, Feature::Sparse { .. }) => {
                    return Err(Error::request(format!(
                        "input `{name}` is dense but was given sparse ids"
                    )));
                }
                (InputKind::Sparse, Feature::Dense(_)) => {
                    return Err(Error::request(format!(
                        "input `{name}` is sparse but was given dense values"
                    )));
                }
            }
        }
        Ok(())
    }
}

fn check_csr(name: &str, bags: usize, ids: &[u64], offsets: &[u32]) -> Result<()> {
    // `bags` is the caller's candidate count: usize::MAX has no `+ 1`.
    if bags.checked_add(1) != Some(offsets.len()) {
        return Err(Error::request(format!(
            "input `{name}`: {} offsets, expected {} ({bags} bag(s) + 1)",
            offsets.len(),
            bags as u128 + 1
        )));
    }
    if offsets[0] != 0 {
        return Err(Error::request(format!(
            "input `{name}`: offsets must start at 0, got {}",
            offsets[0]
        )));
    }
    if let Some(b) = offsets.windows(2).position(|w| w[1] < w[0]) {
        return Err(Error::request(format!(
            "input `{name}`: offsets decrease at bag {b} ({} then {})",
            offsets[b],
            offsets[b + 1]
        )));
    }
    let last = offsets[bags] as usize;
    if last != ids.len() {
        return Err(Error::request(format!(
            "input `{name}`: last offset is {last} but there are {} ids",
            ids.len()
        )));
    }
    Ok(())
}

/// The value of one input, owned.
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedFeature {
    Dense(Vec<f32>),
    Sparse { ids: Vec<u64>, offsets: Vec<u32> },
}

/// A request that owns its features (parsed from JSON, or generated).
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedRequest {
    pub candidates: usize,
    /// By input index.
    pub features: Vec<OwnedFeature>,
}

impl OwnedRequest {
    /// A borrowed [`Request`] over these features.
    pub fn as_request(&self) -> Request<'_> {
        let mut request = Request::new(self.candidates);
        for (index, feature) in self.features.iter().enumerate() {
            match feature {
                OwnedFeature::Dense(values) => request.set_dense(index, values),
                OwnedFeature::Sparse { ids, offsets } => request.set_sparse(index, ids, offsets),
            };
        }
        request
    }
}
