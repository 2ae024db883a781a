//! The network: every tensor of the engine's plan for the config as a
//! candle variable, and a batched forward pass that walks the same plan as
//! the engine's scalar reference (src/reference.rs), one batch at a time.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use mmoe::config::Config;
use mmoe::demo::Rng;
use mmoe::plan::{
    CrossLayer, ExpertPlan, FeatureGate, GateContext, LayerNorm, Linear, Mlp, Plan, TaskPlan,
    TensorRole,
};

use crate::batch::{Batch, InputBatch, Stats};
use crate::error::{Error, Result};

/// Width of a learned FinalMLP feature-selection context (`fs<s>.ctx_bias`).
pub const LEARNED_CONTEXT: usize = 16;

pub struct Network {
    pub config: Config,
    pub plan: Plan,
    /// By tensor id of the plan.
    pub tensors: Vec<Var>,
    pub device: Device,
}

/// Is the tensor learned (statistics are not)?
fn trainable(name: &str) -> bool {
    !(name.starts_with("inputs.") && (name.ends_with(".mean") || name.ends_with(".std")))
}

impl Network {
    /// A fresh network: Linear weights uniform in ±1/√fan_in (PyTorch's
    /// default), biases 0, LayerNorm γ = 1 and β = 0, embeddings and learned
    /// contexts N(0, 0.1²), FinalMLP's bilinear weights of variance
    /// 1/(k·hx·hy); statistics from `stats`. One-expert models get no gate.
    pub fn init(config: &Config, stats: &Stats, seed: u64, device: &Device) -> Result<Network> {
        config.validate()?;
        let plan = Plan::build(config, &|name| {
            name.ends_with(".ctx_bias").then(|| vec![LEARNED_CONTEXT])
        })?;
        let mut rng = Rng::new(seed);
        let mut values: Vec<Vec<f32>> = Vec::with_capacity(plan.tensors.len());
        for spec in &plan.tensors {
            let n = spec.numel();
            let name = spec.name.as_str();
            let v: Vec<f32> = match spec.role {
                TensorRole::LinearWeight => {
                    let a = 1.0 / (spec.shape[1] as f32).sqrt();
                    (0..n).map(|_| rng.symmetric(a)).collect()
                }
                TensorRole::Embedding => (0..n).map(|_| 0.1 * rng.normal()).collect(),
                TensorRole::Bilinear { .. } => {
                    let a = (3.0 * spec.shape[1] as f32 / n as f32).sqrt();
                    (0..n).map(|_| rng.symmetric(a)).collect()
                }
                TensorRole::Vector if name.ends_with(".ctx_bias") => {
                    (0..n).map(|_| 0.1 * rng.normal()).collect()
                }
                TensorRole::Vector if name.ends_with("ln.weight") => vec![1.0; n],
                TensorRole::Vector if name.ends_with(".std") => vec![1.0; n],
                TensorRole::Vector => vec![0.0; n],
            };
            values.push(v);
        }
        for (input, s) in plan.inputs.iter().zip(stats) {
            if let (Some(mean), Some(std), Some((m, s))) = (input.mean, input.std, s) {
                values[mean] = m.clone();
                values[std] = s.clone();
            }
        }
        let tensors = plan
            .tensors
            .iter()
            .zip(values)
            .map(|(spec, v)| Var::from_vec(v, spec.shape.as_slice(), device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Network {
            config: config.clone(),
            plan,
            tensors,
            device: device.clone(),
        })
    }

    /// A network from a safetensors file written by [`Network::save`] (or
    /// any file with the config's tensor set).
    pub fn load(config: &Config, weights: &Path, device: &Device) -> Result<Network> {
        config.validate()?;
        let loaded = candle_core::safetensors::load(weights, device)
            .map_err(|e| Error::new(format!("{}: {e}", weights.display())))?;
        let plan = Plan::build(config, &|name| loaded.get(name).map(|t| t.dims().to_vec()))?;
        let mut tensors = Vec::with_capacity(plan.tensors.len());
        for spec in &plan.tensors {
            let t = loaded.get(&spec.name).ok_or_else(|| {
                Error::new(format!("{}: no tensor `{}`", weights.display(), spec.name))
            })?;
            // A learned context may be stored [c] or, as a PyTorch Parameter, [1, c].
            let t = if spec.name.ends_with(".ctx_bias") && t.dims() == [1, spec.numel()] {
                t.flatten_all()?
            } else {
                t.clone()
            };
            if t.dims() != spec.shape.as_slice() {
                return Err(Error::new(format!(
                    "{}: tensor `{}` has shape {:?}, expected {:?}",
                    weights.display(),
                    spec.name,
                    t.dims(),
                    spec.shape
                )));
            }
            let t = t.to_dtype(DType::F32)?.reshape(spec.shape.as_slice())?;
            tensors.push(Var::from_tensor(&t)?);
        }
        if let Some(extra) = loaded.keys().find(|k| plan.tensor_id(k).is_none()) {
            return Err(Error::new(format!(
                "{}: tensor `{extra}` is not part of model `{}`",
                weights.display(),
                config.name
            )));
        }
        Ok(Network {
            config: config.clone(),
            plan,
            tensors,
            device: device.clone(),
        })
    }

    /// Writes `model.safetensors` and `config.json` into `dir`: what `mmoe
    /// pack --config DIR/config.json --weights DIR/model.safetensors` takes.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
        let map: HashMap<String, Tensor> = self
            .plan
            .tensors
            .iter()
            .zip(&self.tensors)
            .map(|(spec, v)| (spec.name.clone(), v.as_tensor().clone()))
            .collect();
        let weights = dir.join("model.safetensors");
        candle_core::safetensors::save(&map, &weights)
            .map_err(|e| Error::new(format!("cannot write {}: {e}", weights.display())))?;
        let config = dir.join("config.json");
        std::fs::write(&config, self.config.to_json())
            .map_err(|e| Error::new(format!("cannot write {}: {e}", config.display())))?;
        Ok(())
    }

    /// The learned tensors (for the optimizer).
    pub fn trainable(&self) -> Vec<Var> {
        self.plan
            .tensors
            .iter()
            .zip(&self.tensors)
            .filter(|(spec, _)| trainable(&spec.name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The standardize statistics the network holds, per input.
    pub fn stats(&self) -> Result<Stats> {
        self.plan
            .inputs
            .iter()
            .map(|input| match (input.mean, input.std) {
                (Some(m), Some(s)) => Ok(Some((
                    self.tensors[m].as_tensor().to_vec1::<f32>()?,
                    self.tensors[s].as_tensor().to_vec1::<f32>()?,
                ))),
                _ => Ok(None),
            })
            .collect()
    }

    /// Sets the last bias of each task's tower to the logit of its rate.
    pub fn set_base_rates(&mut self, rates: &[f64]) -> Result<()> {
        for (task, &rate) in self.config.tasks.iter().zip(rates) {
            let name = format!("tasks.{}.tower.{}.bias", task.name, task.tower.len());
            if let Some(id) = self.plan.tensor_id(&name) {
                let p = rate.clamp(1e-4, 1.0 - 1e-4);
                let logit = (p / (1.0 - p)).ln() as f32;
                self.tensors[id].set(&Tensor::from_vec(vec![logit], 1, &self.device)?)?;
            }
        }
        Ok(())
    }

    fn t(&self, id: usize) -> &Tensor {
        self.tensors[id].as_tensor()
    }

    /// Logits `[B, T]` of a batch.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let x0 = self.x0(batch)?;
        let experts = self
            .plan
            .experts
            .iter()
            .map(|e| self.expert(e, &x0))
            .collect::<Result<Vec<_>>>()?;
        let stacked = Tensor::stack(&experts, 1)?; // [B, E, H]
        let logits = self
            .plan
            .tasks
            .iter()
            .map(|task| self.task_logit(task, &x0, &stacked))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&logits, 1)?)
    }

    /// x0 `[B, D]`: the inputs' vectors in config order.
    fn x0(&self, batch: &Batch) -> Result<Tensor> {
        let mut parts = Vec::with_capacity(batch.inputs.len());
        for (k, (input, plan)) in batch.inputs.iter().zip(&self.plan.inputs).enumerate() {
            match input {
                InputBatch::Dense(t) => parts.push(t.clone()),
                InputBatch::Sparse(bag) => {
                    let zeros = Tensor::zeros((batch.rows, plan.dim), DType::F32, &self.device)?;
                    let table = plan.embedding.ok_or_else(|| {
                        Error::new(format!(
                            "sparse input `{}` has no embedding table in the plan",
                            self.config.inputs[k].name
                        ))
                    })?;
                    let pooled = if bag.count == 0 {
                        zeros
                    } else {
                        let looked_up = self.t(table).index_select(&bag.ids, 0)?;
                        zeros.index_add(&bag.rows, &looked_up, 0)?
                    };
                    parts.push(match &bag.scale {
                        Some(s) => pooled.broadcast_mul(s)?,
                        None => pooled,
                    });
                }
            }
        }
        Ok(Tensor::cat(&parts, 1)?)
    }

    fn expert(&self, plan: &ExpertPlan, x0: &Tensor) -> Result<Tensor> {
        match plan {
            ExpertPlan::Mlp { mlp } => self.mlp(mlp, x0),
            ExpertPlan::Dcn { cross, deep, proj } => {
                // x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l
                let mut x = x0.clone();
                for layer in cross {
                    let wx = match layer {
                        CrossLayer::Full(l) => self.linear(l, &x)?,
                        CrossLayer::LowRank { down, up, bias } => self
                            .linear(up, &self.linear(down, &x)?)?
                            .broadcast_add(self.t(*bias))?,
                    };
                    x = ((x0 * wx)? + x)?;
                }
                match proj {
                    None => self.mlp(deep, &x),
                    Some(proj) => {
                        let both = Tensor::cat(&[x, self.mlp(deep, x0)?], 1)?;
                        Ok(self.linear(proj, &both)?.relu()?)
                    }
                }
            }
            ExpertPlan::MaskNet {
                serial,
                emb_ln,
                blocks,
                head,
            } => {
                let v = self.layer_norm(emb_ln, x0)?;
                let mut z = v.clone();
                let mut outputs = Vec::with_capacity(blocks.len());
                for block in blocks {
                    let mask =
                        self.linear(&block.mask_out, &self.linear(&block.mask_in, x0)?.relu()?)?;
                    let out = self
                        .layer_norm(&block.ln, &self.linear(&block.hidden, &(mask * &z)?)?)?
                        .relu()?;
                    z = if *serial { out.clone() } else { v.clone() };
                    outputs.push(out);
                }
                let result = if *serial {
                    outputs
                        .pop()
                        .ok_or_else(|| Error::new("MaskNet without blocks"))?
                } else {
                    Tensor::cat(&outputs, 1)?
                };
                self.mlp(head, &result)
            }
            ExpertPlan::FinalMlp {
                selection,
                mlp1,
                mlp2,
                heads,
                w_x,
                w_y,
                w_xy,
            } => {
                let (f1, f2) = match selection {
                    None => (x0.clone(), x0.clone()),
                    Some(gates) => (
                        self.select_features(&gates[0], x0)?,
                        self.select_features(&gates[1], x0)?,
                    ),
                };
                let o1 = self.mlp(mlp1, &f1)?;
                let o2 = self.mlp(mlp2, &f2)?;
                let linear = (self.linear(w_x, &o1)? + self.linear(w_y, &o2)?)?;
                // Σ_h Σ_a Σ_b o1[h·hx + a] · Wxy[h, a, o·hy + b] · o2[h·hy + b]
                let (b, k) = (o1.dim(0)?, *heads);
                let (hx, hy) = (o1.dim(1)? / k, o2.dim(1)? / k);
                let h = linear.dim(1)?;
                let o1 = o1.reshape((b, k, hx))?.transpose(0, 1)?.contiguous()?; // [k, B, hx]
                let w = self.t(*w_xy).reshape((k, hx, hy * h))?;
                let t = o1.matmul(&w)?.reshape((k, b, h, hy))?;
                let o2 = o2.reshape((b, k, hy))?.transpose(0, 1)?.unsqueeze(2)?; // [k, B, 1, hy]
                let bilinear = t.broadcast_mul(&o2)?.sum(3)?.sum(0)?; // [B, H]
                Ok((linear + bilinear)?)
            }
        }
    }

    /// `f = x0 ⊙ 2·sigmoid(MLP(context))`.
    fn select_features(&self, gate: &FeatureGate, x0: &Tensor) -> Result<Tensor> {
        let context = match &gate.context {
            GateContext::Inputs(ranges) => gather(x0, ranges)?,
            GateContext::Learned { tensor, dim } => self.t(*tensor).reshape((1, *dim))?,
        };
        let g = (candle_nn::ops::sigmoid(&self.mlp(&gate.mlp, &context)?)? * 2.0)?;
        Ok(x0.broadcast_mul(&g)?)
    }

    fn task_logit(&self, task: &TaskPlan, x0: &Tensor, experts: &Tensor) -> Result<Tensor> {
        let mixture = match &task.gate {
            None => experts.sum(1)?,
            Some(gate) => {
                let input = match &task.gate_input {
                    None => x0.clone(),
                    Some(ranges) => gather(x0, ranges)?,
                };
                let w = candle_nn::ops::softmax(&self.mlp(gate, &input)?, 1)?; // [B, E]
                experts.broadcast_mul(&w.unsqueeze(2)?)?.sum(1)?
            }
        };
        self.mlp(&task.tower, &mixture)
    }

    fn mlp(&self, plan: &Mlp, input: &Tensor) -> Result<Tensor> {
        let mut x = input.clone();
        let count = plan.layers.len();
        for (j, layer) in plan.layers.iter().enumerate() {
            x = self.linear(layer, &x)?;
            if j + 1 < count || plan.relu_last {
                x = x.relu()?;
            }
        }
        Ok(x)
    }

    fn linear(&self, layer: &Linear, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.t(layer.weight).t()?)?;
        Ok(match layer.bias {
            Some(b) => y.broadcast_add(self.t(b))?,
            None => y,
        })
    }

    /// `(x − mean) / sqrt(var + 1e-5) · γ + β` over each row, biased variance.
    fn layer_norm(&self, plan: &LayerNorm, x: &Tensor) -> Result<Tensor> {
        let centered = x.broadcast_sub(&x.mean_keepdim(1)?)?;
        let var = centered.sqr()?.mean_keepdim(1)?;
        let normed = centered.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
        Ok(normed
            .broadcast_mul(self.t(plan.weight))?
            .broadcast_add(self.t(plan.bias))?)
    }
}

/// The concatenation of x0's column ranges.
fn gather(x0: &Tensor, ranges: &[Range<usize>]) -> Result<Tensor> {
    let parts = ranges
        .iter()
        .map(|r| x0.narrow(1, r.start, r.len()))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 1)?)
}
