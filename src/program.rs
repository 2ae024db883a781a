//! The plan lowered into a flat program of fused steps over activation
//! buffers: what the fast backends (CPU kernels, CUDA kernels) execute.
//!
//! Every buffer is `[rows, width]` f32. A buffer is either *per request* (one
//! row, the same for every candidate) or *per candidate* (one row per
//! candidate). Anything that depends only on request-scope inputs is computed
//! once per request: the lowering tracks which columns of a buffer are
//! request-constant and splits every Linear layer that reads such columns
//! into a request part (run once, on one row) and a candidate part (run per
//! candidate over the other columns, adding the request part as a bias).
//! In x0 the request-constant columns are those of `scope: request` inputs, so
//! the first layers of experts, DCN cross layer 0, MaskNet masks and gates pay
//! for request features once per request.
//!
//! Steps are listed in execution order; [`Program::request_steps`] run first,
//! once, then [`Program::candidate_steps`] for every tile of candidates.

use std::ops::Range;

use crate::config::{Config, Scope};
use crate::plan::{CrossLayer, ExpertPlan, FeatureGate, GateContext, Linear, Mlp, Plan, TensorId};

pub type BufId = usize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub width: usize,
    /// One row shared by all candidates.
    pub per_request: bool,
}

/// Columns `offset..offset + width` of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub buf: BufId,
    pub offset: usize,
    pub width: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    /// `2·sigmoid(v)`: FinalMLP's feature-selection gate.
    TwoSigmoid,
}

impl Act {
    /// The code the kernels use (`kernels/common.cuh`, `activate`).
    pub fn code(self) -> i32 {
        match self {
            Act::None => 0,
            Act::Relu => 1,
            Act::TwoSigmoid => 2,
        }
    }

    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Act::None => v,
            Act::Relu => v.max(0.0),
            Act::TwoSigmoid => two_sigmoid(v),
        }
    }
}

/// `2·sigmoid(v) = 2 / (1 + e^−v)`, with the exponential computed by
/// [`exp`] rather than libm: the same operations in scalar code and in the
/// kernels' vector epilogues (which the compiler vectorizes from a loop of
/// this), so every kernel gives the same bits.
#[inline(always)]
pub(crate) fn two_sigmoid(v: f32) -> f32 {
    2.0 / (1.0 + exp(-v))
}

/// `e^x` within 1 ulp of libm's on every float of [−87, 88] (checked once
/// over all 2.2 billion; the tests sweep 2 million): `x = n·ln 2 + r`, `e^r`
/// by Cephes' `expf` polynomial, `2^n` built in the exponent bits. `x` is clamped to
/// [−87, 88] (`e^x` stays a normal float; below, the result is
/// `e^−87` ≈ 1.6e−38 instead of a smaller one) and NaN stays NaN.
/// Branch-free and without calls, so a loop of it vectorizes.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts: LN2_HI is 355/512, so n·LN2_HI is exact for |n| ≤ 128.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = p * (r * r) + r + 1.0;
    // `t`'s low bits hold n (two's complement): 2^n without a float-to-int
    // conversion, which would not vectorize. NaN: `e_r` carries it.
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    e_r * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// A LayerNorm (γ, β, eps 1e-5) and an activation applied to a Linear
/// step's output rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Norm {
    pub gamma: TensorId,
    pub beta: TensorId,
    pub act: Act,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Request features into `x0_request` (request-scope columns only; the
    /// others stay zero). Runs once.
    RequestFeatures { out: BufId },
    /// Candidate features into `x0` (candidate-scope columns) and a copy of
    /// the request-scope columns from `request`.
    CandidateFeatures { request: BufId, out: BufId },
    /// `out = scale ⊙ act(W · input[k_ranges] + bias + add) + shift`, with
    /// `W [n, k]` read in the panel layout, restricted to the input columns
    /// `k_ranges` (in ascending order; all of them when `None`). `add` is a
    /// per-request buffer of width `n` (the request part of a split layer).
    /// `scale` and `shift` are per-candidate buffers of width `n`: the fused
    /// DCN cross combine (`x0 ⊙ (W x + b) + x`) and MaskNet mask
    /// (`mask ⊙ z`) epilogues.
    Linear {
        input: View,
        k_ranges: Option<Vec<Range<usize>>>,
        weight: TensorId,
        n: usize,
        bias: Option<TensorId>,
        add: Option<BufId>,
        act: Act,
        scale: Option<BufId>,
        shift: Option<BufId>,
        /// Then, per output row, `norm.act(LN(row))` (MaskNet blocks),
        /// while the tile is still in cache.
        norm: Option<Norm>,
        out: View,
    },
    /// `out = act(LN(input))` (γ = `gamma`, β = `beta`, eps 1e-5).
    LayerNorm {
        input: View,
        gamma: TensorId,
        beta: TensorId,
        act: Act,
        out: View,
    },
    /// `out = x0 ⊙ g`, `g` a request-level gate that is already
    /// `2·sigmoid(·)` (FinalMLP feature selection of a request context).
    FeatureGate { g: BufId, x0: BufId, out: BufId },
    /// `out` = the concatenation of `input`'s column ranges.
    Gather {
        input: BufId,
        ranges: Vec<Range<usize>>,
        out: BufId,
    },
    /// `out` = `input` (all columns), into a column range of another buffer.
    Copy { input: BufId, out: View },
    /// `out` (one row) = the vector tensor.
    Constant { tensor: TensorId, out: BufId },
    /// The heads' outer products of FinalMLP's two streams, the input of
    /// the bilinear sum as a Linear layer (`w_xy` in the bilinear layout):
    /// `out[j·hy + b] = o1[j] · o2[(j / hx)·hy + b]`, with `hx = |o1| / heads`
    /// and `hy = |o2| / heads`.
    OuterHeads {
        o1: BufId,
        o2: BufId,
        heads: usize,
        out: BufId,
    },
    /// FinalMLP aggregation: `out = wx + wy + bilinear(o1, o2)`, summed as
    /// MODEL.md writes it (files of layout version 1, whose `w_xy` is flat,
    /// and sums whose outer products would be wider than
    /// [`BILINEAR_LINEAR_MAX_K`]).
    Bilinear {
        o1: BufId,
        o2: BufId,
        wx: BufId,
        wy: BufId,
        w_xy: TensorId,
        heads: usize,
        out: BufId,
    },
    /// `out = Σ_i softmax(gate)_i · experts[i]` (`gate` absent: one expert).
    Mixture {
        gate: Option<BufId>,
        experts: Vec<BufId>,
        out: BufId,
    },
    /// The task's logit, column 0 of `input`, into the output column `task`.
    Output { input: BufId, task: usize },
}

impl Step {
    /// A short human label: what the step computes, with the tensor it reads
    /// (for profiles and diagnostics).
    pub fn label(&self, plan: &Plan) -> String {
        let name = |id: TensorId| {
            plan.tensors
                .get(id)
                .map_or_else(|| format!("tensor {id}"), |t| t.name.clone())
        };
        match self {
            Step::RequestFeatures { .. } => "request features".into(),
            Step::CandidateFeatures { .. } => "candidate features".into(),
            Step::Linear {
                input,
                k_ranges,
                weight,
                n,
                ..
            } => {
                let k = k_ranges
                    .as_ref()
                    .map_or(input.width, |r| r.iter().map(|r| r.len()).sum());
                let layer = name(*weight);
                let layer = layer.strip_suffix(".weight").unwrap_or(&layer);
                format!("linear {layer} ({k}→{n})")
            }
            Step::LayerNorm { gamma, .. } => format!("layer norm {}", name(*gamma)),
            Step::FeatureGate { .. } => "feature gate".into(),
            Step::Gather { .. } => "gather".into(),
            Step::Copy { .. } => "copy".into(),
            Step::Constant { tensor, .. } => format!("constant {}", name(*tensor)),
            Step::OuterHeads { heads, .. } => format!("outer products of {heads} heads"),
            Step::Bilinear { w_xy, .. } => format!("bilinear {}", name(*w_xy)),
            Step::Mixture { experts, .. } => format!("mixture of {} experts", experts.len()),
            Step::Output { task, .. } => format!("output of task {task}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Program {
    pub buffers: Vec<Buffer>,
    pub request_steps: Vec<Step>,
    pub candidate_steps: Vec<Step>,
    /// Width of x0.
    pub d: usize,
    pub tasks: usize,
}

/// The widest FinalMLP outer-product buffer (`d1·hy` columns) for which the
/// bilinear sum runs as a Linear layer; wider ones (a CPU tile of them
/// would pass 8 MiB) take the direct sum.
pub const BILINEAR_LINEAR_MAX_K: usize = 1 << 16;

/// Whether a bilinear weight of `k_total = d1·hy` rows, in a file of
/// `layout_version`, is read as a Linear weight (see [`Step::OuterHeads`]).
pub fn bilinear_is_linear(layout_version: u32, k_total: usize) -> bool {
    layout_version >= 2 && k_total <= BILINEAR_LINEAR_MAX_K
}

impl Program {
    /// Lowers a plan for a file of the newest layout version. `config` gives
    /// the scopes of the inputs.
    pub fn lower(config: &Config, plan: &Plan) -> Program {
        Program::lower_for_layout(config, plan, crate::format::LAYOUT_VERSION)
    }

    /// Lowers a plan for a file of `layout_version` (which decides how
    /// FinalMLP's bilinear sum can read its weight).
    pub fn lower_for_layout(config: &Config, plan: &Plan, layout_version: u32) -> Program {
        let request_cols: Vec<Range<usize>> = plan
            .inputs
            .iter()
            .zip(&config.inputs)
            .filter(|(_, input)| input.scope == Scope::Request)
            .map(|(p, _)| p.offset..p.offset + p.dim)
            .collect();
        let mut l = Lowering {
            layout_version,
            buffers: Vec::new(),
            request_steps: Vec::new(),
            candidate_steps: Vec::new(),
            request_cols: Vec::new(),
            request_twin: Vec::new(),
        };
        let x0_request = l.buffer(plan.d, true, Vec::new(), None);
        l.request_steps
            .push(Step::RequestFeatures { out: x0_request });
        let x0 = l.buffer(plan.d, false, merge(request_cols), Some(x0_request));
        l.candidate_steps.push(Step::CandidateFeatures {
            request: x0_request,
            out: x0,
        });

        let experts: Vec<BufId> = plan.experts.iter().map(|e| l.expert(e, x0)).collect();
        for (t, task) in plan.tasks.iter().enumerate() {
            let gate = task.gate.as_ref().map(|gate| {
                let input = match &task.gate_input {
                    None => x0,
                    Some(ranges) => l.gather(x0, ranges),
                };
                l.mlp(gate, input)
            });
            let mixture = l.buffer(plan.h, false, Vec::new(), None);
            l.candidate_steps.push(Step::Mixture {
                gate,
                experts: experts.clone(),
                out: mixture,
            });
            let logit = l.mlp(&task.tower, mixture);
            l.candidate_steps.push(Step::Output {
                input: logit,
                task: t,
            });
        }
        Program {
            buffers: l.buffers,
            request_steps: l.request_steps,
            candidate_steps: l.candidate_steps,
            d: plan.d,
            tasks: plan.tasks.len(),
        }
    }
}

impl Program {
    /// Multiply-add FLOPs (2 per weight use) of the Linear steps a candidate
    /// runs; request steps, run once per request, are not counted. (A
    /// FinalMLP bilinear sum counts where it is a Linear step, in files of
    /// layout version 2, and not as a direct sum.)
    pub fn flops_per_candidate(&self) -> u64 {
        self.candidate_steps
            .iter()
            .map(|step| match step {
                Step::Linear {
                    input, k_ranges, n, ..
                } => {
                    let k: usize = k_ranges
                        .as_ref()
                        .map_or(input.width, |r| r.iter().map(|r| r.len()).sum());
                    2 * (*n as u64) * k as u64
                }
                _ => 0,
            })
            .sum()
    }

    /// FLOPs of every Linear layer of the model per candidate, without
    /// request-level dedup (what a framework fed x0 computes).
    pub fn flops_without_dedup(&self) -> u64 {
        self.request_steps
            .iter()
            .chain(&self.candidate_steps)
            .map(|step| match step {
                // A split layer appears twice: its request part (column
                // subset, no `add`) counts 0, its candidate part the full width.
                Step::Linear {
                    k_ranges: Some(_),
                    add: None,
                    ..
                } => 0,
                Step::Linear { n, input, .. } => 2 * (*n as u64) * input.width as u64,
                _ => 0,
            })
            .sum()
    }
}

struct Lowering {
    layout_version: u32,
    buffers: Vec<Buffer>,
    request_steps: Vec<Step>,
    candidate_steps: Vec<Step>,
    /// Per buffer: its request-constant columns (per-candidate buffers only).
    request_cols: Vec<Vec<Range<usize>>>,
    /// Per buffer with request-constant columns: a one-row buffer holding
    /// them (other columns unspecified).
    request_twin: Vec<Option<BufId>>,
}

impl Lowering {
    fn buffer(
        &mut self,
        width: usize,
        per_request: bool,
        request_cols: Vec<Range<usize>>,
        twin: Option<BufId>,
    ) -> BufId {
        self.buffers.push(Buffer { width, per_request });
        self.request_cols.push(request_cols);
        self.request_twin.push(twin);
        self.buffers.len() - 1
    }

    fn per_request(&self, buf: BufId) -> bool {
        self.buffers[buf].per_request
    }

    fn push(&mut self, per_request: bool, step: Step) {
        if per_request {
            self.request_steps.push(step);
        } else {
            self.candidate_steps.push(step);
        }
    }

    fn whole(&self, buf: BufId) -> View {
        View {
            buf,
            offset: 0,
            width: self.buffers[buf].width,
        }
    }

    /// A Linear layer on `input` into a new buffer, split into request and
    /// candidate parts when `input` has request-constant columns.
    fn linear(&mut self, layer: &Linear, input: BufId, act: Act) -> BufId {
        self.linear_fused(layer, input, act, None, None)
    }

    /// A Linear layer with the epilogue `scale ⊙ act(·) + shift` fused in;
    /// the epilogue's buffers are per candidate, and so is the result.
    fn linear_fused(
        &mut self,
        layer: &Linear,
        input: BufId,
        act: Act,
        scale: Option<BufId>,
        shift: Option<BufId>,
    ) -> BufId {
        let fused = scale.is_some() || shift.is_some();
        let per_request = self.per_request(input) && !fused;
        // A per-request input with a per-candidate epilogue cannot occur:
        // the fused layers read x0 (split) or per-candidate activations.
        assert!(
            !(self.per_request(input) && fused),
            "fused epilogue on a per-request layer"
        );
        let out = self.buffer(layer.n_out, per_request, Vec::new(), None);
        let out_view = self.whole(out);
        self.linear_into(layer, input, act, scale, shift, None, out_view);
        out
    }

    /// A Linear layer followed by LayerNorm and an activation, in one step.
    fn linear_normed(&mut self, layer: &Linear, input: BufId, norm: Norm) -> BufId {
        assert!(
            !self.per_request(input),
            "normalized layer on a per-request input"
        );
        let out = self.buffer(layer.n_out, false, Vec::new(), None);
        let out_view = self.whole(out);
        self.linear_into(layer, input, Act::None, None, None, Some(norm), out_view);
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn linear_into(
        &mut self,
        layer: &Linear,
        input: BufId,
        act: Act,
        scale: Option<BufId>,
        shift: Option<BufId>,
        norm: Option<Norm>,
        out: View,
    ) {
        let per_request = self.per_request(input);
        let request_cols = self.request_cols[input].clone();
        let twin = self.request_twin[input];
        let input_view = self.whole(input);
        match twin {
            Some(twin) if !per_request && !request_cols.is_empty() => {
                let candidate_cols = complement(&request_cols, self.buffers[input].width);
                // Request part, once: W[:, request] · x_request + b.
                let partial = self.buffer(layer.n_out, true, Vec::new(), None);
                let twin_view = self.whole(twin);
                let partial_view = self.whole(partial);
                self.request_steps.push(Step::Linear {
                    input: twin_view,
                    k_ranges: Some(request_cols),
                    weight: layer.weight,
                    n: layer.n_out,
                    bias: layer.bias,
                    add: None,
                    act: Act::None,
                    scale: None,
                    shift: None,
                    norm: None,
                    out: partial_view,
                });
                // Candidate part: W[:, candidate] · x_candidate + partial.
                self.candidate_steps.push(Step::Linear {
                    input: input_view,
                    k_ranges: Some(candidate_cols),
                    weight: layer.weight,
                    n: layer.n_out,
                    bias: None,
                    add: Some(partial),
                    act,
                    scale,
                    shift,
                    norm,
                    out,
                });
            }
            _ => self.push(
                per_request,
                Step::Linear {
                    input: input_view,
                    k_ranges: None,
                    weight: layer.weight,
                    n: layer.n_out,
                    bias: layer.bias,
                    add: None,
                    act,
                    scale,
                    shift,
                    norm,
                    out,
                },
            ),
        }
    }

    fn mlp(&mut self, mlp: &Mlp, input: BufId) -> BufId {
        let count = mlp.layers.len();
        let mut x = input;
        for (j, layer) in mlp.layers.iter().enumerate() {
            let act = if j + 1 < count || mlp.relu_last {
                Act::Relu
            } else {
                Act::None
            };
            x = self.linear(layer, x, act);
        }
        x
    }

    /// The concatenation of `ranges` of `input` (x0), per request when every
    /// range is request-constant.
    fn gather(&mut self, input: BufId, ranges: &[Range<usize>]) -> BufId {
        let width = ranges.iter().map(|r| r.len()).sum();
        let input_request = &self.request_cols[input];
        let inside = |r: &Range<usize>| {
            input_request
                .iter()
                .any(|q| q.start <= r.start && r.end <= q.end)
        };
        let twin = self.request_twin[input];
        if let (Some(twin), true) = (twin, ranges.iter().all(inside)) {
            let out = self.buffer(width, true, Vec::new(), None);
            self.request_steps.push(Step::Gather {
                input: twin,
                ranges: ranges.to_vec(),
                out,
            });
            return out;
        }
        // Mixed: track which gathered columns are request-constant, and gather
        // the twin too so a following Linear can split.
        let mut request_cols = Vec::new();
        let mut at = 0;
        for r in ranges {
            if inside(r) {
                request_cols.push(at..at + r.len());
            }
            at += r.len();
        }
        let twin_out = match twin {
            Some(twin) if !request_cols.is_empty() => {
                let t = self.buffer(width, true, Vec::new(), None);
                self.request_steps.push(Step::Gather {
                    input: twin,
                    ranges: ranges.to_vec(),
                    out: t,
                });
                Some(t)
            }
            _ => None,
        };
        let request_cols = if twin_out.is_some() {
            merge(request_cols)
        } else {
            Vec::new()
        };
        let out = self.buffer(width, false, request_cols, twin_out);
        self.candidate_steps.push(Step::Gather {
            input,
            ranges: ranges.to_vec(),
            out,
        });
        out
    }

    fn expert(&mut self, expert: &ExpertPlan, x0: BufId) -> BufId {
        let d = self.buffers[x0].width;
        match expert {
            ExpertPlan::Mlp { mlp } => self.mlp(mlp, x0),
            ExpertPlan::Dcn { cross, deep, proj } => {
                let mut x = x0;
                for layer in cross {
                    // x_{l+1} = x0 ⊙ (W x_l + b) + x_l, the combine fused
                    // into the layer's epilogue.
                    x = match layer {
                        CrossLayer::Full(linear) => {
                            self.linear_fused(linear, x, Act::None, Some(x0), Some(x))
                        }
                        CrossLayer::LowRank { down, up, bias } => {
                            let v = self.linear(down, x, Act::None);
                            let with_bias = Linear {
                                bias: Some(*bias),
                                ..up.clone()
                            };
                            self.linear_fused(&with_bias, v, Act::None, Some(x0), Some(x))
                        }
                    };
                }
                match proj {
                    None => self.mlp(deep, x),
                    Some(proj) => {
                        let deep_out = self.mlp(deep, x0);
                        let joined = self.concat(&[x, deep_out]);
                        self.linear(proj, joined, Act::Relu)
                    }
                }
            }
            ExpertPlan::MaskNet {
                serial,
                emb_ln,
                blocks,
                head,
            } => {
                let v = self.buffer(d, false, Vec::new(), None);
                self.candidate_steps.push(Step::LayerNorm {
                    input: self.whole(x0),
                    gamma: emb_ln.weight,
                    beta: emb_ln.bias,
                    act: Act::None,
                    out: self.whole(v),
                });
                let mut z = v;
                let mut outs = Vec::new();
                for block in blocks {
                    let hidden = self.linear(&block.mask_in, x0, Act::Relu);
                    // mask ⊙ z, fused into the mask layer's epilogue.
                    let masked =
                        self.linear_fused(&block.mask_out, hidden, Act::None, Some(z), None);
                    let out = self.linear_normed(
                        &block.hidden,
                        masked,
                        Norm {
                            gamma: block.ln.weight,
                            beta: block.ln.bias,
                            act: Act::Relu,
                        },
                    );
                    if *serial {
                        z = out;
                    }
                    outs.push(out);
                }
                let result = if *serial {
                    outs[outs.len() - 1]
                } else {
                    self.concat(&outs)
                };
                self.mlp(head, result)
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
                    None => (x0, x0),
                    Some(gates) => (
                        self.feature_gate(&gates[0], x0),
                        self.feature_gate(&gates[1], x0),
                    ),
                };
                let o1 = self.mlp(mlp1, f1);
                let o2 = self.mlp(mlp2, f2);
                let wx = self.linear(w_x, o1, Act::None);
                let (d1, d2) = (self.buffers[o1].width, self.buffers[o2].width);
                let k_total = d1 * (d2 / heads);
                if bilinear_is_linear(self.layout_version, k_total) {
                    // e = W' z + (w_y o2 + b_y + wx): the sum is a Linear
                    // layer over the outer products z, wx + wy its shift.
                    let base = self.linear_fused(w_y, o2, Act::None, None, Some(wx));
                    let z = self.buffer(k_total, false, Vec::new(), None);
                    self.candidate_steps.push(Step::OuterHeads {
                        o1,
                        o2,
                        heads: *heads,
                        out: z,
                    });
                    let sum = Linear {
                        weight: *w_xy,
                        bias: None,
                        n_in: k_total,
                        n_out: w_x.n_out,
                    };
                    return self.linear_fused(&sum, z, Act::None, None, Some(base));
                }
                let wy = self.linear(w_y, o2, Act::None);
                let out = self.buffer(w_x.n_out, false, Vec::new(), None);
                self.candidate_steps.push(Step::Bilinear {
                    o1,
                    o2,
                    wx,
                    wy,
                    w_xy: *w_xy,
                    heads: *heads,
                    out,
                });
                out
            }
        }
    }

    fn feature_gate(&mut self, gate: &FeatureGate, x0: BufId) -> BufId {
        let context = match &gate.context {
            GateContext::Inputs(ranges) => self.gather(x0, ranges),
            GateContext::Learned { tensor, dim } => {
                let out = self.buffer(*dim, true, Vec::new(), None);
                self.request_steps.push(Step::Constant {
                    tensor: *tensor,
                    out,
                });
                out
            }
        };
        // All layers but the last, then the last with `x0 ⊙ 2·sigmoid(·)`
        // fused into its epilogue, when it runs per candidate.
        let (last, hidden) = match gate.mlp.layers.split_last() {
            Some(split) => split,
            None => unreachable!("a feature gate has at least its output layer"),
        };
        let mut h = context;
        for layer in hidden {
            h = self.linear(layer, h, Act::Relu);
        }
        if !self.per_request(h) {
            return self.linear_fused(last, h, Act::TwoSigmoid, Some(x0), None);
        }
        // A gate of request-level context: computed once, its 2·sigmoid
        // included, and applied per candidate.
        let g = self.linear(last, h, Act::TwoSigmoid);
        let out = self.buffer(self.buffers[x0].width, false, Vec::new(), None);
        self.candidate_steps.push(Step::FeatureGate { g, x0, out });
        out
    }

    /// A per-candidate buffer holding `parts` side by side.
    fn concat(&mut self, parts: &[BufId]) -> BufId {
        let width = parts.iter().map(|&p| self.buffers[p].width).sum();
        let out = self.buffer(width, false, Vec::new(), None);
        let mut offset = 0;
        for &part in parts {
            let width = self.buffers[part].width;
            self.candidate_steps.push(Step::Copy {
                input: part,
                out: View {
                    buf: out,
                    offset,
                    width,
                },
            });
            offset += width;
        }
        out
    }
}

/// Sorted, merged ranges.
fn merge(mut ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::new();
    for r in ranges.into_iter().filter(|r| !r.is_empty()) {
        match merged.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// The columns of `0..width` not in the (merged) `ranges`.
fn complement(ranges: &[Range<usize>], width: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    for r in ranges {
        if r.start > at {
            out.push(at..r.start);
        }
        at = r.end;
    }
    if at < width {
        out.push(at..width);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{exp, two_sigmoid};

    /// Distance in units in the last place between two finite floats of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_one_ulp_of_libm() {
        let mut worst = (0, 0.0f32);
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = -87.0 + 175.0 * i as f32 / steps as f32;
            let d = ulps(exp(x), x.exp());
            if d > worst.0 {
                worst = (d, x);
            }
        }
        assert!(worst.0 <= 1, "{} ulp at x = {}", worst.0, worst.1);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        // Clamped: +∞ gives e^88, −∞ e^−87 (both finite, normal).
        assert_eq!(exp(f32::INFINITY), exp(88.0));
        assert_eq!(exp(f32::NEG_INFINITY), exp(-87.0));
        assert!(exp(-87.0).is_normal() && exp(88.0).is_finite());
    }

    #[test]
    fn two_sigmoid_is_within_four_ulp_of_libm() {
        // 4 ulp: the division and 1 + e^−v add to exp's 1 (every float of
        // [−87, 88] checked once: 4 at most, 0 for 99.7% of them).
        let libm = |v: f32| 2.0 / (1.0 + (-v).exp());
        for i in 0..=400_000 {
            let v = -120.0 + 240.0 * i as f32 / 400_000.0;
            let (got, want) = (two_sigmoid(v), libm(v));
            if v >= -87.0 {
                assert!(ulps(got, want) <= 4, "v = {v}: {got:e} against {want:e}");
            } else {
                // Past the clamp: e^−v stops at e^88, so the tail stops at 2/e^88.
                assert!(
                    (got - want).abs() <= 2e-38,
                    "v = {v}: {got:e} against {want:e}"
                );
            }
        }
        assert_eq!(two_sigmoid(0.0), 1.0);
        assert_eq!(two_sigmoid(f32::INFINITY), 2.0);
        assert!(two_sigmoid(f32::NEG_INFINITY) < 2e-38);
        assert!(two_sigmoid(f32::NAN).is_nan());
    }
}
