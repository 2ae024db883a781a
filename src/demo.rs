//! Deterministic synthetic weights and requests for any config: the demo
//! model (`mmoe demo`), benchmarks and tests use them. Same seed, same bytes.

use crate::config::{Config, InputKind, Scope};
use crate::error::Result;
use crate::format::writer::MemorySource;
use crate::plan::{Plan, TensorRole};
use crate::request::{OwnedFeature, OwnedRequest};

/// The benchmark model's config (`MODEL.md`'s benchmark shape), embedded.
pub const BENCH_MODEL_JSON: &str = include_str!("../models/bench-model.json");

/// Width given to a learned FinalMLP context.
const LEARNED_CONTEXT: usize = 16;

/// A small, fast, seedable generator (SplitMix64): deterministic everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [-a, a).
    pub fn symmetric(&mut self, a: f32) -> f32 {
        (self.unit() * 2.0 - 1.0) * a
    }
    /// Roughly standard normal (sum of four uniforms).
    pub fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.unit()).sum::<f32>() * 1.732 - 3.464
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The most weights [`synthetic_tensors`] makes (held in memory as f32).
pub const MAX_SYNTHETIC_VALUES: u128 = 1 << 32;

/// Every tensor of `config`, deterministic in `seed`, initialized so that
/// activations stay of order one. One-expert models get a gate too; learned
/// FinalMLP contexts are [`LEARNED_CONTEXT`] wide.
pub fn synthetic_tensors(config: &Config, seed: u64) -> Result<MemorySource> {
    let plan = Plan::build(config, &|name| {
        name.ends_with(".ctx_bias")
            .then(|| vec![LEARNED_CONTEXT])
            .or_else(|| name.ends_with(".gate.0.weight").then(Vec::new))
    })?;
    // Synthetic weights are held in memory as f32: a config whose tables
    // would not fit is refused here, not aborted on by the allocator.
    let values: u128 = plan.tensors.iter().map(|t| t.numel() as u128).sum();
    if values > MAX_SYNTHETIC_VALUES {
        return Err(crate::Error::argument(format!(
            "model `{}` has {values} weights, above the {MAX_SYNTHETIC_VALUES} that synthetic weights are made for (16 GiB as f32)",
            config.name
        )));
    }
    let mut rng = Rng::new(seed);
    let mut source = MemorySource::new();
    for spec in &plan.tensors {
        let n = spec.numel();
        let name = spec.name.as_str();
        let values: Vec<f32> = match spec.role {
            TensorRole::LinearWeight => {
                // Variance 1/fan_in keeps each layer's output near its input's scale.
                let a = (3.0 / spec.shape[1] as f32).sqrt();
                (0..n).map(|_| rng.symmetric(a)).collect()
            }
            TensorRole::Embedding => (0..n).map(|_| rng.symmetric(0.5)).collect(),
            TensorRole::Bilinear { .. } => (0..n).map(|_| rng.symmetric(0.05)).collect(),
            TensorRole::Vector if name.ends_with(".std") => {
                (0..n).map(|_| 0.5 + rng.unit() * 1.5).collect()
            }
            TensorRole::Vector if name.ends_with(".mean") || name.ends_with(".ctx_bias") => {
                (0..n).map(|_| rng.symmetric(0.5)).collect()
            }
            TensorRole::Vector if name.ends_with("ln.weight") => {
                (0..n).map(|_| 1.0 + rng.symmetric(0.1)).collect()
            }
            TensorRole::Vector => (0..n).map(|_| rng.symmetric(0.05)).collect(),
        };
        source.insert(name, spec.shape.clone(), values);
    }
    // Towers end with a negative bias, so that probabilities look like
    // engagement rates (a few percent), rarer for later tasks.
    for (t, task) in config.tasks.iter().enumerate() {
        let name = format!("tasks.{}.tower.{}.bias", task.name, task.tower.len());
        if let Some(bias) = source.get_mut(&name) {
            bias[0] = -2.0 - 0.75 * t as f32;
        }
    }
    Ok(source)
}

/// A realistic request of `candidates` candidates: gaussian dense values (a
/// few missing where the input allows it), bags of 1–4 ids with a skewed
/// distribution over the table.
pub fn synthetic_request(config: &Config, candidates: usize, seed: u64) -> OwnedRequest {
    let mut rng = Rng::new(seed.wrapping_add(0x5EED));
    let features = config
        .inputs
        .iter()
        .map(|input| {
            let rows = if input.scope == Scope::Request {
                1
            } else {
                candidates
            };
            match input.kind {
                InputKind::Dense => OwnedFeature::Dense(
                    (0..rows * input.dim)
                        .map(|_| {
                            if input.missing_is_zero() && rng.unit() < 0.01 {
                                f32::NAN
                            } else {
                                rng.normal()
                            }
                        })
                        .collect(),
                ),
                InputKind::Sparse => {
                    let table = input.rows.unwrap_or(1);
                    let mut ids = Vec::new();
                    let mut offsets = vec![0u32];
                    for _ in 0..rows {
                        for _ in 0..1 + rng.below(4) {
                            // Skewed: small ids far more often (popular items).
                            let u = rng.unit();
                            ids.push(((table as f32).powf(u * u) as u64).min(table - 1));
                        }
                        offsets.push(ids.len() as u32);
                    }
                    OwnedFeature::Sparse { ids, offsets }
                }
            }
        })
        .collect();
    OwnedRequest {
        candidates,
        features,
    }
}
