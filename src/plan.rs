//! The config compiled into a plan: every layer of every expert, gate and
//! tower, with its widths resolved and its tensors named.
//!
//! The plan is built once from a config and the shapes of the tensors on
//! offer (for the two things the config leaves to the tensors: the width of a
//! learned FinalMLP context, and whether a one-expert model has a gate). Its
//! list of [`TensorSpec`]s is the exact tensor set of the model, in the order
//! the packed file stores them, so a [`TensorId`] is an index into the file's
//! tensor table. The packer checks a safetensors file against that list; the
//! loader checks a packed file against it; every backend executes the plan.

use std::ops::Range;

use crate::config::{Config, DcnStructure, ExpertKind, InputKind, MaskNetMode};
use crate::error::{Error, Result};

/// Index of a tensor in [`Plan::tensors`] (and in the packed file's table).
pub type TensorId = usize;

/// What a tensor is for; it decides how the packed file lays it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorRole {
    /// A Linear weight `[out, in]`, stored in the kernels' panel layout.
    LinearWeight,
    /// An embedding table `[rows, dim]`, row-major, page-aligned when large.
    Embedding,
    /// A vector (bias, LayerNorm γ/β, statistics, learned context), row-major.
    Vector,
    /// FinalMLP's `agg.w_xy` `[d1·hy, H]`, which MODEL.md reads as a flat
    /// array; `hy` is `d2 / heads` (the layout is in `format::Layout::Bilinear`).
    Bilinear { hy: usize },
}

/// One tensor the model must have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    /// The logical shape, as PyTorch has it (`[out, in]` for a Linear weight).
    pub shape: Vec<usize>,
    pub role: TensorRole,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// `(n, k)` when the program reads this tensor as a Linear weight
    /// `[n, k]` in the panel layout, in a file of `layout_version`: every
    /// Linear weight, and FinalMLP's `w_xy` where its bilinear sum is a
    /// Linear layer ([`crate::program::Step::OuterHeads`]).
    pub fn linear_shape(&self, layout_version: u32) -> Option<(usize, usize)> {
        match self.role {
            TensorRole::LinearWeight => Some((self.shape[0], self.shape[1])),
            TensorRole::Bilinear { .. }
                if crate::program::bilinear_is_linear(layout_version, self.shape[0]) =>
            {
                Some((self.shape[1], self.shape[0]))
            }
            _ => None,
        }
    }
}

/// `y = W x + b`, `W` of shape `[n_out, n_in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: TensorId,
    pub bias: Option<TensorId>,
    pub n_in: usize,
    pub n_out: usize,
}

/// Linear layers with relu after each hidden layer, and after the last one
/// when `relu_last`. An MLP with no layers is the identity.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
    pub relu_last: bool,
}

impl Mlp {
    pub fn out_dim(&self, n_in: usize) -> usize {
        self.layers.last().map_or(n_in, |l| l.n_out)
    }
}

#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: TensorId,
    pub bias: TensorId,
    pub dim: usize,
}

/// One DCNv2 cross layer: `x_{l+1} = x0 ⊙ (W x_l + b) + x_l`.
#[derive(Clone, Debug)]
pub enum CrossLayer {
    /// `W` is `[D, D]`, with its bias.
    Full(Linear),
    /// `W = U V` with `V = down [r, D]`, `U = up [D, r]`, no biases of their
    /// own, and the layer's bias `[D]`.
    LowRank {
        down: Linear,
        up: Linear,
        bias: TensorId,
    },
}

/// One MaskNet block.
#[derive(Clone, Debug)]
pub struct MaskBlock {
    /// `mask.0`: `[m, D]`, reads x0.
    pub mask_in: Linear,
    /// `mask.1`: `[i_b, m]`.
    pub mask_out: Linear,
    /// `hidden`: `[o_b, i_b]`, no bias.
    pub hidden: Linear,
    pub ln: LayerNorm,
}

/// Where a FinalMLP feature gate reads its context.
#[derive(Clone, Debug)]
pub enum GateContext {
    /// The concatenated x0 slices of the named inputs.
    Inputs(Vec<Range<usize>>),
    /// The learned vector `fs<s>.ctx_bias`.
    Learned { tensor: TensorId, dim: usize },
}

/// `g = 2·sigmoid(MLP(context))`, the MLP's last layer of width D, no relu.
#[derive(Clone, Debug)]
pub struct FeatureGate {
    pub context: GateContext,
    pub mlp: Mlp,
}

#[derive(Clone, Debug)]
pub enum ExpertPlan {
    Mlp {
        mlp: Mlp,
    },
    Dcn {
        cross: Vec<CrossLayer>,
        /// Stacked: reads x_L. Parallel: reads x0.
        deep: Mlp,
        /// Present in the parallel structure: `relu(P [x_L ; deep] + p)`.
        proj: Option<Linear>,
    },
    MaskNet {
        serial: bool,
        emb_ln: LayerNorm,
        blocks: Vec<MaskBlock>,
        /// May have no layers (serial mode only).
        head: Mlp,
    },
    FinalMlp {
        /// Streams 1 and 2, when feature selection is on.
        selection: Option<Box<[FeatureGate; 2]>>,
        mlp1: Mlp,
        mlp2: Mlp,
        heads: usize,
        w_x: Linear,
        w_y: Linear,
        /// `[k·hx·hy, H]`, read flat.
        w_xy: TensorId,
    },
}

#[derive(Clone, Debug)]
pub struct TaskPlan {
    /// Absent only in a one-expert model whose file has no gate (`w = [1]`).
    pub gate: Option<Mlp>,
    /// The x0 ranges the gate reads; `None` is all of x0.
    pub gate_input: Option<Vec<Range<usize>>>,
    pub tower: Mlp,
}

#[derive(Clone, Debug)]
pub struct InputPlan {
    /// Start of the input's slice in x0.
    pub offset: usize,
    pub dim: usize,
    /// Sparse inputs: the table `[rows, dim]`.
    pub embedding: Option<TensorId>,
    /// Dense inputs with `standardize`.
    pub mean: Option<TensorId>,
    pub std: Option<TensorId>,
}

/// The compiled model.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Width of x0.
    pub d: usize,
    /// `expert_dim`.
    pub h: usize,
    pub inputs: Vec<InputPlan>,
    pub experts: Vec<ExpertPlan>,
    pub tasks: Vec<TaskPlan>,
    pub tensors: Vec<TensorSpec>,
}

/// Returns the shape of a tensor on offer, or `None` when there is none.
pub type ShapeLookup<'a> = &'a dyn Fn(&str) -> Option<Vec<usize>>;

impl Plan {
    pub fn build(config: &Config, shapes: ShapeLookup<'_>) -> Result<Plan> {
        let mut b = Builder {
            tensors: Vec::new(),
        };
        let d = config.x0_dim();
        let h = config.expert_dim;

        let offsets = config.x0_offsets();
        let inputs = config
            .inputs
            .iter()
            .zip(offsets)
            .map(|(input, offset)| {
                let prefix = format!("inputs.{}", input.name);
                let mut plan = InputPlan {
                    offset,
                    dim: input.dim,
                    embedding: None,
                    mean: None,
                    std: None,
                };
                match input.kind {
                    InputKind::Sparse => {
                        // Validation guarantees `rows` for sparse inputs.
                        let rows = input.rows.unwrap_or(1) as usize;
                        plan.embedding = Some(b.add(
                            format!("{prefix}.embedding"),
                            vec![rows, input.dim],
                            TensorRole::Embedding,
                        ));
                    }
                    InputKind::Dense if input.standardize() => {
                        plan.mean = Some(b.vector(format!("{prefix}.mean"), input.dim));
                        plan.std = Some(b.vector(format!("{prefix}.std"), input.dim));
                    }
                    InputKind::Dense => {}
                }
                plan
            })
            .collect();

        let mut experts = Vec::with_capacity(config.experts.len());
        for expert in &config.experts {
            let p = format!("experts.{}", expert.name);
            let plan = match &expert.kind {
                ExpertKind::Mlp { hidden } => ExpertPlan::Mlp {
                    mlp: b.mlp(&format!("{p}.mlp"), d, hidden, true),
                },
                ExpertKind::Dcnv2 {
                    cross_layers,
                    rank,
                    structure,
                    deep,
                } => {
                    let cross = (0..*cross_layers)
                        .map(|l| {
                            let q = format!("{p}.cross.{l}");
                            match rank {
                                None => CrossLayer::Full(b.linear(&q, d, d, true)),
                                Some(r) => CrossLayer::LowRank {
                                    down: b.linear(&format!("{q}.down"), d, *r, false),
                                    up: b.linear(&format!("{q}.up"), *r, d, false),
                                    bias: b.vector(format!("{q}.bias"), d),
                                },
                            }
                        })
                        .collect();
                    let deep_mlp = b.mlp(&format!("{p}.deep"), d, deep, true);
                    let proj = match structure {
                        DcnStructure::Stacked => None,
                        DcnStructure::Parallel => {
                            let width = d + deep_mlp.out_dim(d);
                            Some(b.linear(&format!("{p}.proj"), width, h, true))
                        }
                    };
                    ExpertPlan::Dcn {
                        cross,
                        deep: deep_mlp,
                        proj,
                    }
                }
                ExpertKind::Masknet {
                    mode,
                    blocks,
                    mask_hidden,
                    head,
                } => {
                    let serial = *mode == MaskNetMode::Serial;
                    let emb_ln = b.layer_norm(&format!("{p}.emb_ln"), d);
                    let mut width_in = d;
                    let mut block_plans = Vec::with_capacity(blocks.len());
                    for (i, &width_out) in blocks.iter().enumerate() {
                        let q = format!("{p}.blocks.{i}");
                        block_plans.push(MaskBlock {
                            mask_in: b.linear(&format!("{q}.mask.0"), d, *mask_hidden, true),
                            mask_out: b.linear(
                                &format!("{q}.mask.1"),
                                *mask_hidden,
                                width_in,
                                true,
                            ),
                            hidden: b.linear(&format!("{q}.hidden"), width_in, width_out, false),
                            ln: b.layer_norm(&format!("{q}.ln"), width_out),
                        });
                        if serial {
                            width_in = width_out;
                        }
                    }
                    let result_width = if serial {
                        blocks[blocks.len() - 1]
                    } else {
                        blocks.iter().sum()
                    };
                    ExpertPlan::MaskNet {
                        serial,
                        emb_ln,
                        blocks: block_plans,
                        head: b.mlp(&format!("{p}.head"), result_width, head, true),
                    }
                }
                ExpertKind::Finalmlp {
                    mlp1,
                    mlp2,
                    heads,
                    feature_selection,
                    fs_hidden,
                    fs1_context,
                    fs2_context,
                } => {
                    let selection = if *feature_selection {
                        let mut gate = |s: usize, names: &[String]| -> Result<FeatureGate> {
                            let q = format!("{p}.fs{s}");
                            let context = if names.is_empty() {
                                let name = format!("{q}.ctx_bias");
                                let dim = learned_context_width(&name, shapes)?;
                                GateContext::Learned {
                                    tensor: b.vector(name, dim),
                                    dim,
                                }
                            } else {
                                GateContext::Inputs(config.input_ranges(names))
                            };
                            let width = match &context {
                                GateContext::Inputs(ranges) => ranges.iter().map(|r| r.len()).sum(),
                                GateContext::Learned { dim, .. } => *dim,
                            };
                            let mut widths = fs_hidden.clone();
                            widths.push(d);
                            let mlp = b.mlp(&format!("{q}.gate"), width, &widths, false);
                            Ok(FeatureGate { context, mlp })
                        };
                        let first = gate(1, fs1_context)?;
                        let second = gate(2, fs2_context)?;
                        Some(Box::new([first, second]))
                    } else {
                        None
                    };
                    let mlp1 = b.mlp(&format!("{p}.mlp1"), d, mlp1, true);
                    let mlp2 = b.mlp(&format!("{p}.mlp2"), d, mlp2, true);
                    let (d1, d2) = (mlp1.out_dim(d), mlp2.out_dim(d));
                    let w_x = b.linear(&format!("{p}.agg.w_x"), d1, h, true);
                    let w_y = b.linear(&format!("{p}.agg.w_y"), d2, h, true);
                    let rows = heads * (d1 / heads) * (d2 / heads);
                    let w_xy = b.add(
                        format!("{p}.agg.w_xy"),
                        vec![rows, h],
                        TensorRole::Bilinear { hy: d2 / heads },
                    );
                    ExpertPlan::FinalMlp {
                        selection,
                        mlp1,
                        mlp2,
                        heads: *heads,
                        w_x,
                        w_y,
                        w_xy,
                    }
                }
            };
            experts.push(plan);
        }

        let num_experts = config.experts.len();
        let mut tasks = Vec::with_capacity(config.tasks.len());
        for task in &config.tasks {
            let p = format!("tasks.{}", task.name);
            let gate_input = task
                .gate_inputs
                .as_ref()
                .map(|names| config.input_ranges(names));
            let gate_width = gate_input
                .as_ref()
                .map_or(d, |ranges| ranges.iter().map(|r| r.len()).sum());
            // With one expert, softmax gives w = [1] whatever the gate says, so
            // the gate may be left out of the file.
            let has_gate = num_experts > 1 || shapes(&format!("{p}.gate.0.weight")).is_some();
            let gate = has_gate.then(|| {
                let mut widths = task.gate_hidden.clone();
                widths.push(num_experts);
                b.mlp(&format!("{p}.gate"), gate_width, &widths, false)
            });
            let mut widths = task.tower.clone();
            widths.push(1);
            let tower = b.mlp(&format!("{p}.tower"), h, &widths, false);
            tasks.push(TaskPlan {
                gate,
                gate_input,
                tower,
            });
        }

        Ok(Plan {
            d,
            h,
            inputs,
            experts,
            tasks,
            tensors: b.tensors,
        })
    }

    /// The tensor with this name, if the model has it.
    pub fn tensor_id(&self, name: &str) -> Option<TensorId> {
        self.tensors.iter().position(|t| t.name == name)
    }
}

/// A learned context may be stored `[c]` or, as a PyTorch `Parameter(1, c)`,
/// `[1, c]`; its width `c` comes from the tensor.
fn learned_context_width(name: &str, shapes: ShapeLookup<'_>) -> Result<usize> {
    match shapes(name).as_deref() {
        Some([c]) | Some([1, c]) if *c >= 1 => Ok(*c),
        Some(other) => Err(Error::tensor(format!(
            "tensor `{name}` has shape {other:?}, expected [c] or [1, c] with c ≥ 1"
        ))),
        None => Err(Error::tensor(format!(
            "tensor `{name}` is missing (feature selection with an empty context list needs a learned context vector)"
        ))),
    }
}

struct Builder {
    tensors: Vec<TensorSpec>,
}

impl Builder {
    fn add(&mut self, name: String, shape: Vec<usize>, role: TensorRole) -> TensorId {
        self.tensors.push(TensorSpec { name, shape, role });
        self.tensors.len() - 1
    }

    fn vector(&mut self, name: String, dim: usize) -> TensorId {
        self.add(name, vec![dim], TensorRole::Vector)
    }

    fn linear(&mut self, prefix: &str, n_in: usize, n_out: usize, bias: bool) -> Linear {
        let weight = self.add(
            format!("{prefix}.weight"),
            vec![n_out, n_in],
            TensorRole::LinearWeight,
        );
        let bias = bias.then(|| self.vector(format!("{prefix}.bias"), n_out));
        Linear {
            weight,
            bias,
            n_in,
            n_out,
        }
    }

    fn mlp(&mut self, prefix: &str, n_in: usize, widths: &[usize], relu_last: bool) -> Mlp {
        let mut width = n_in;
        let layers = widths
            .iter()
            .enumerate()
            .map(|(j, &n_out)| {
                let layer = self.linear(&format!("{prefix}.{j}"), width, n_out, true);
                width = n_out;
                layer
            })
            .collect();
        Mlp { layers, relu_last }
    }

    fn layer_norm(&mut self, prefix: &str, dim: usize) -> LayerNorm {
        LayerNorm {
            weight: self.vector(format!("{prefix}.weight"), dim),
            bias: self.vector(format!("{prefix}.bias"), dim),
            dim,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_model_tensor_names() {
        let config = Config::parse(include_str!("../models/bench-model.json")).unwrap();
        let plan = Plan::build(&config, &|_| None).unwrap();
        let names: Vec<&str> = plan.tensors.iter().map(|t| t.name.as_str()).collect();
        assert!(names.contains(&"inputs.user_dense.mean"));
        assert!(names.contains(&"inputs.ad_sparse7.embedding"));
        assert!(names.contains(&"experts.dcn3.cross.1.weight"));
        assert!(names.contains(&"experts.mlp1.mlp.1.bias"));
        assert!(names.contains(&"tasks.save.gate.0.weight"));
        assert!(names.contains(&"tasks.save.tower.1.weight"));
        let gate = plan.tensor_id("tasks.click.gate.0.weight").unwrap();
        assert_eq!(plan.tensors[gate].shape, vec![6, 512]);
        let tower = plan.tensor_id("tasks.click.tower.1.weight").unwrap();
        assert_eq!(plan.tensors[tower].shape, vec![1, 128]);
        // Names are unique.
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
    }
}
