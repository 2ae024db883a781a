//! The scalar reference forward: MODEL.md written as plainly as possible, one
//! candidate at a time, fp32 arithmetic over the stored weights. It is the
//! in-engine oracle the fast paths are tested against, so clarity wins over
//! speed everywhere here.

use crate::error::Result;
use crate::features::assemble_x0;
use crate::format::{bilinear_index, Layout, PANEL};
use crate::model::Model;
use crate::plan::{
    CrossLayer, ExpertPlan, FeatureGate, GateContext, LayerNorm, Linear, Mlp, TaskPlan,
};
use crate::request::Request;

/// Scores every candidate of a validated request; `logits` is
/// `[candidates × tasks]`, row-major.
pub(crate) fn score(model: &Model, request: &Request<'_>, logits: &mut [f32]) -> Result<()> {
    let plan = model.plan();
    let tasks = plan.tasks.len();
    let mut x0 = vec![0.0; plan.d];
    for candidate in 0..request.candidates() {
        assemble_x0(model, request, candidate, &mut x0)?;
        let out = &mut logits[candidate * tasks..(candidate + 1) * tasks];
        forward(model, &x0, out);
    }
    Ok(())
}

/// The model on one x0: one logit per task.
pub(crate) fn forward(model: &Model, x0: &[f32], logits: &mut [f32]) {
    let plan = model.plan();
    let experts: Vec<Vec<f32>> = plan.experts.iter().map(|e| expert(model, e, x0)).collect();
    for (task, logit) in plan.tasks.iter().zip(logits.iter_mut()) {
        *logit = task_logit(model, task, x0, &experts);
    }
}

fn task_logit(model: &Model, task: &TaskPlan, x0: &[f32], experts: &[Vec<f32>]) -> f32 {
    let weights = match &task.gate {
        None => vec![1.0],
        Some(gate) => {
            let input = match &task.gate_input {
                None => x0.to_vec(),
                Some(ranges) => gather(x0, ranges),
            };
            softmax(&mlp(model, gate, &input))
        }
    };
    let h = experts[0].len();
    let mut mixture = vec![0.0; h];
    for (w, e) in weights.iter().zip(experts) {
        for (m, v) in mixture.iter_mut().zip(e) {
            *m += w * v;
        }
    }
    mlp(model, &task.tower, &mixture)[0]
}

fn expert(model: &Model, plan: &ExpertPlan, x0: &[f32]) -> Vec<f32> {
    match plan {
        ExpertPlan::Mlp { mlp: layers } => mlp(model, layers, x0),
        ExpertPlan::Dcn { cross, deep, proj } => {
            // x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l
            let mut x = x0.to_vec();
            for layer in cross {
                let wx = match layer {
                    CrossLayer::Full(linear_layer) => linear(model, linear_layer, &x),
                    CrossLayer::LowRank { down, up, bias } => {
                        let mut y = linear(model, up, &linear(model, down, &x));
                        add_vector(model, *bias, &mut y);
                        y
                    }
                };
                for ((xi, &x0i), wxi) in x.iter_mut().zip(x0).zip(wx) {
                    *xi += x0i * wxi;
                }
            }
            match proj {
                None => mlp(model, deep, &x),
                Some(proj) => {
                    let mut both = x;
                    both.extend(mlp(model, deep, x0));
                    relu(linear(model, proj, &both))
                }
            }
        }
        ExpertPlan::MaskNet {
            serial,
            emb_ln,
            blocks,
            head,
        } => {
            let v = layer_norm(model, emb_ln, x0);
            let mut z = v.clone();
            let mut outputs = Vec::new();
            for block in blocks {
                let mask = linear(
                    model,
                    &block.mask_out,
                    &relu(linear(model, &block.mask_in, x0)),
                );
                let masked: Vec<f32> = mask.iter().zip(&z).map(|(m, zi)| m * zi).collect();
                let out = relu(layer_norm(
                    model,
                    &block.ln,
                    &linear(model, &block.hidden, &masked),
                ));
                if *serial {
                    z = out.clone();
                } else {
                    z = v.clone();
                }
                outputs.push(out);
            }
            let result = if *serial {
                outputs.pop().unwrap_or_default()
            } else {
                outputs.concat()
            };
            mlp(model, head, &result)
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
                None => (x0.to_vec(), x0.to_vec()),
                Some(gates) => (
                    select_features(model, &gates[0], x0),
                    select_features(model, &gates[1], x0),
                ),
            };
            let o1 = mlp(model, mlp1, &f1);
            let o2 = mlp(model, mlp2, &f2);
            let mut e = linear(model, w_x, &o1);
            for (ei, yi) in e.iter_mut().zip(linear(model, w_y, &o2)) {
                *ei += yi;
            }
            // e_o += Σ_h Σ_a Σ_b o1[h·hx + a] · Wxy[(h·hx + a)·(hy·H) + o·hy + b] · o2[h·hy + b]
            // (read through the file's layout of w_xy: flat, or bilinear panels).
            let wxy = model.values(*w_xy);
            let layout = model.layout_of(*w_xy);
            let k = *heads;
            let (hx, hy, h_out) = (o1.len() / k, o2.len() / k, e.len());
            let k_total = o1.len() * hy;
            for (o, eo) in e.iter_mut().enumerate() {
                let mut sum = 0.0;
                for h in 0..k {
                    for a in 0..hx {
                        let row = (h * hx + a) * (hy * h_out) + o * hy;
                        let mut inner = 0.0;
                        for b in 0..hy {
                            let at = bilinear_index(layout, row + b, hy, h_out, k_total);
                            inner += wxy.get(at) * o2[h * hy + b];
                        }
                        sum += o1[h * hx + a] * inner;
                    }
                }
                *eo += sum;
            }
            e
        }
    }
}

/// `f = x0 ⊙ 2·sigmoid(MLP(context))`.
fn select_features(model: &Model, gate: &FeatureGate, x0: &[f32]) -> Vec<f32> {
    let context = match &gate.context {
        GateContext::Inputs(ranges) => gather(x0, ranges),
        GateContext::Learned { tensor, dim } => {
            let values = model.values(*tensor);
            (0..*dim).map(|i| values.get(i)).collect()
        }
    };
    let g = mlp(model, &gate.mlp, &context);
    x0.iter()
        .zip(g)
        .map(|(x, g)| x * 2.0 * sigmoid(g))
        .collect()
}

/// Linear layers, relu after each but the last, and after the last too when
/// the MLP says so.
fn mlp(model: &Model, plan: &Mlp, input: &[f32]) -> Vec<f32> {
    let mut x = input.to_vec();
    let count = plan.layers.len();
    for (j, layer) in plan.layers.iter().enumerate() {
        x = linear(model, layer, &x);
        if j + 1 < count || plan.relu_last {
            x = relu(x);
        }
    }
    x
}

/// `y = W x + b`, reading `W` in its stored layout. Each output is summed
/// over `k` in order, whatever the layout.
fn linear(model: &Model, layer: &Linear, x: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), layer.n_in, "linear layer input width");
    let w = model.values(layer.weight);
    let (n, k_total) = (layer.n_out, layer.n_in);
    let mut y = vec![0.0; n];
    match model.layout_of(layer.weight) {
        Layout::RowMajor => {
            let mut row = vec![0.0; k_total];
            for (i, yi) in y.iter_mut().enumerate() {
                w.read_into(i * k_total, &mut row);
                *yi = row.iter().zip(x).map(|(w, x)| w * x).sum();
            }
        }
        Layout::Panel | Layout::Bilinear => {
            // Panel p holds, for each k, W[p·PANEL + j, k] for j < PANEL.
            let mut column = [0.0; PANEL];
            for (p, y_panel) in y.chunks_mut(PANEL).enumerate() {
                for (k, &xk) in x.iter().enumerate() {
                    w.read_into((p * k_total + k) * PANEL, &mut column);
                    for (yi, wik) in y_panel.iter_mut().zip(&column) {
                        *yi += wik * xk;
                    }
                }
            }
        }
    }
    if let Some(bias) = layer.bias {
        add_vector(model, bias, &mut y);
    }
    y
}

fn add_vector(model: &Model, tensor: crate::plan::TensorId, y: &mut [f32]) {
    let b = model.values(tensor);
    for (i, yi) in y.iter_mut().enumerate() {
        *yi += b.get(i);
    }
}

/// `(x − mean) / sqrt(var + 1e-5) · γ + β`, biased variance.
fn layer_norm(model: &Model, plan: &LayerNorm, x: &[f32]) -> Vec<f32> {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + 1e-5).sqrt();
    let (gamma, beta) = (model.values(plan.weight), model.values(plan.bias));
    x.iter()
        .enumerate()
        .map(|(i, v)| (v - mean) * inv * gamma.get(i) + beta.get(i))
        .collect()
}

fn relu(mut x: Vec<f32>) -> Vec<f32> {
    for v in x.iter_mut() {
        *v = v.max(0.0);
    }
    x
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn softmax(z: &[f32]) -> Vec<f32> {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = z.iter().map(|v| (v - max).exp()).collect();
    let total: f32 = exp.iter().sum();
    exp.iter().map(|v| v / total).collect()
}

/// The concatenation of x0's slices `ranges`.
fn gather(x0: &[f32], ranges: &[std::ops::Range<usize>]) -> Vec<f32> {
    ranges
        .iter()
        .flat_map(|r| x0[r.clone()].iter().copied())
        .collect()
}
