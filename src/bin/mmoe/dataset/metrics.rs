//! Ranking and calibration metrics of logits against 0/1 labels: AUC (ties
//! count one half), log loss (natural log, probabilities clamped to
//! [1e-7, 1 − 1e-7]), calibration (mean predicted probability over mean
//! label), ROC and reliability curves, and a paired bootstrap of the AUC
//! difference of two models that resamples whole requests.

use mmoe::demo::Rng;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Metrics {
    pub rows: usize,
    pub positives: usize,
    pub auc: f64,
    pub log_loss: f64,
    pub calibration: f64,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Row indices in ascending score order.
pub fn order_of(scores: &[f32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| scores[a as usize].total_cmp(&scores[b as usize]));
    order
}

/// Weighted AUC from rows in ascending score order: each positive counts
/// the negatives below it, and half of those tied with it.
fn auc_sorted(order: &[u32], scores: &[f32], labels: &[u8], weight: &dyn Fn(usize) -> f64) -> f64 {
    let (mut neg_below, mut pos_total, mut area) = (0.0f64, 0.0f64, 0.0f64);
    let mut i = 0;
    while i < order.len() {
        let value = scores[order[i] as usize];
        let (mut pos, mut neg) = (0.0, 0.0);
        let mut j = i;
        while j < order.len() && scores[order[j] as usize] == value {
            let r = order[j] as usize;
            let w = weight(r);
            if labels[r] != 0 {
                pos += w;
            } else {
                neg += w;
            }
            j += 1;
        }
        area += pos * (neg_below + 0.5 * neg);
        neg_below += neg;
        pos_total += pos;
        i = j;
    }
    if pos_total == 0.0 || neg_below == 0.0 {
        return f64::NAN;
    }
    area / (pos_total * neg_below)
}

/// AUC of `scores` for `labels` (NaN when one class is absent).
pub fn auc(scores: &[f32], labels: &[u8]) -> f64 {
    auc_sorted(&order_of(scores), scores, labels, &|_| 1.0)
}

pub fn evaluate(logits: &[f32], labels: &[u8]) -> Metrics {
    let rows = labels.len();
    let positives = labels.iter().filter(|&&l| l != 0).count();
    let (mut loss, mut predicted) = (0.0f64, 0.0f64);
    for (&z, &y) in logits.iter().zip(labels) {
        let p = sigmoid(z as f64).clamp(1e-7, 1.0 - 1e-7);
        loss -= if y != 0 { p.ln() } else { (1.0 - p).ln() };
        predicted += p;
    }
    let n = rows.max(1) as f64;
    Metrics {
        rows,
        positives,
        auc: auc(logits, labels),
        log_loss: loss / n,
        calibration: if positives == 0 {
            f64::NAN
        } else {
            (predicted / n) / (positives as f64 / n)
        },
    }
}

/// About `points` points of the ROC curve: (false positive rate, true
/// positive rate), from (0, 0) to (1, 1).
pub fn roc_curve(logits: &[f32], labels: &[u8], points: usize) -> Vec<(f64, f64)> {
    let order = order_of(logits);
    let positives = labels.iter().filter(|&&l| l != 0).count().max(1) as f64;
    let negatives = (labels.len() as f64 - positives).max(1.0);
    let step = (order.len() / points.max(1)).max(1);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut curve = vec![(0.0, 0.0)];
    // From the highest score down.
    for (k, &r) in order.iter().rev().enumerate() {
        if labels[r as usize] != 0 {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        if (k + 1) % step == 0 {
            curve.push((fp / negatives, tp / positives));
        }
    }
    curve.push((1.0, 1.0));
    curve
}

/// Reliability diagram: `bins` groups of equal size by predicted
/// probability; (mean predicted, observed rate) of each.
pub fn calibration_curve(logits: &[f32], labels: &[u8], bins: usize) -> Vec<(f64, f64)> {
    let order = order_of(logits);
    let per = order.len().div_ceil(bins.max(1)).max(1);
    order
        .chunks(per)
        .map(|rows| {
            let n = rows.len() as f64;
            let p: f64 = rows
                .iter()
                .map(|&r| sigmoid(logits[r as usize] as f64))
                .sum();
            let y = rows.iter().filter(|&&r| labels[r as usize] != 0).count() as f64;
            (p / n, y / n)
        })
        .collect()
}

/// The AUC difference `b − a` with a paired bootstrap 95% interval:
/// `replicates` resamplings of whole requests (Poisson(1) weights per
/// request, the same for both models), each AUC in one pass over the rows
/// pre-sorted once per model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AucDifference {
    pub auc_a: f64,
    pub auc_b: f64,
    pub delta: f64,
    pub low: f64,
    pub high: f64,
    pub replicates: usize,
}

pub fn paired_bootstrap(
    a: &[f32],
    b: &[f32],
    labels: &[u8],
    request: &[u32],
    replicates: usize,
    seed: u64,
) -> AucDifference {
    let (order_a, order_b) = (order_of(a), order_of(b));
    let auc_a = auc_sorted(&order_a, a, labels, &|_| 1.0);
    let auc_b = auc_sorted(&order_b, b, labels, &|_| 1.0);
    let groups = request.iter().map(|&g| g as usize + 1).max().unwrap_or(0);
    let mut rng = Rng::new(seed);
    let mut weights = vec![0.0f64; groups];
    let limit = (-1.0f64).exp();
    let mut deltas = Vec::with_capacity(replicates);
    for _ in 0..replicates {
        for w in &mut weights {
            // Poisson(1) by Knuth's product of uniforms.
            let (mut k, mut p) = (0u32, 1.0f64);
            loop {
                p *= rng.unit() as f64;
                if p < limit {
                    break;
                }
                k += 1;
            }
            *w = k as f64;
        }
        let weight = |r: usize| weights[request[r] as usize];
        let da = auc_sorted(&order_a, a, labels, &weight);
        let db = auc_sorted(&order_b, b, labels, &weight);
        if da.is_finite() && db.is_finite() {
            deltas.push(db - da);
        }
    }
    deltas.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if deltas.is_empty() {
            f64::NAN
        } else {
            deltas[((deltas.len() - 1) as f64 * q).round() as usize]
        }
    };
    AucDifference {
        auc_a,
        auc_b,
        delta: auc_b - auc_a,
        low: at(0.025),
        high: at(0.975),
        replicates: deltas.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ties_as_half_and_matches_hand_computed_cases() {
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1]), 0.75);
        assert_eq!(auc(&[1.0, 1.0], &[0, 1]), 0.5);
        assert_eq!(auc(&[3.0, 2.0, 1.0], &[0, 0, 1]), 0.0);
        assert!(auc(&[1.0, 2.0], &[1, 1]).is_nan());
    }

    #[test]
    fn log_loss_and_calibration_of_a_known_case() {
        let m = evaluate(&[0.0, 0.0], &[0, 1]);
        assert!((m.log_loss - std::f64::consts::LN_2).abs() < 1e-12);
        assert!((m.calibration - 1.0).abs() < 1e-12);
        assert_eq!((m.rows, m.positives), (2, 1));
    }

    #[test]
    fn bootstrap_of_identical_models_is_zero_and_of_a_better_one_positive() {
        let mut rng = Rng::new(3);
        let n = 4000;
        let labels: Vec<u8> = (0..n).map(|_| (rng.unit() < 0.3) as u8).collect();
        let good: Vec<f32> = labels.iter().map(|&y| y as f32 + rng.normal()).collect();
        let noisy: Vec<f32> = good.iter().map(|&s| s + 2.0 * rng.normal()).collect();
        let request: Vec<u32> = (0..n as u32).map(|i| i / 10).collect();
        let same = paired_bootstrap(&good, &good, &labels, &request, 50, 1);
        assert_eq!((same.delta, same.low, same.high), (0.0, 0.0, 0.0));
        let better = paired_bootstrap(&noisy, &good, &labels, &request, 100, 1);
        assert!(better.delta > 0.0 && better.low > 0.0, "{better:?}");
        assert!(better.low <= better.delta && better.delta <= better.high);
    }
}
