//! Losses: per-task binary cross-entropy on the labels, and the distillation
//! losses against a teacher's logits: pointwise (BCE against the teacher's
//! probability, or MSE on logits) and pairwise (within each request, a
//! logistic loss on pairs of candidates ordered by the teacher).

use std::ops::Range;

use candle_core::{Device, Tensor};
use mmoe::demo::Rng;

use crate::error::Result;

/// `mean(BCE(sigmoid(z), y))` for targets `y` in [0, 1], computed stably as
/// `relu(z) − z·y + ln(1 + e^−|z|)`.
pub fn bce_with_logits(z: &Tensor, y: &Tensor) -> Result<Tensor> {
    let soft = (z.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok(((z.relu()? - (z * y)?)? + soft)?.mean_all()?)
}

/// `mean((z − t)²)`.
pub fn mse(z: &Tensor, t: &Tensor) -> Result<Tensor> {
    Ok((z - t)?.sqr()?.mean_all()?)
}

/// `softplus(x) = ln(1 + e^x)`, stably.
fn softplus(x: &Tensor) -> Result<Tensor> {
    Ok((x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}

/// Pairs `(hi, lo)` of rows of one batch: the teacher ranks `hi` above `lo`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pairs {
    pub hi: Vec<u32>,
    pub lo: Vec<u32>,
}

impl Pairs {
    pub fn len(&self) -> usize {
        self.hi.len()
    }
    pub fn is_empty(&self) -> bool {
        self.hi.is_empty()
    }
}

/// The pairs of each request (row ranges) ordered by `teacher` (one logit per
/// row): every pair with distinct teacher logits when the request has at
/// most `per_request` of them, otherwise `per_request` pairs drawn at
/// random (without ties; a pair may repeat).
pub fn make_pairs(
    requests: &[Range<usize>],
    teacher: &[f32],
    per_request: usize,
    rng: &mut Rng,
) -> Pairs {
    let mut pairs = Pairs::default();
    let mut push = |i: usize, j: usize| {
        if teacher[i] > teacher[j] {
            pairs.hi.push(i as u32);
            pairs.lo.push(j as u32);
        } else if teacher[j] > teacher[i] {
            pairs.hi.push(j as u32);
            pairs.lo.push(i as u32);
        }
    };
    for request in requests {
        let n = request.len();
        if n < 2 {
            continue;
        }
        if n * (n - 1) / 2 <= per_request {
            for i in request.clone() {
                for j in i + 1..request.end {
                    push(i, j);
                }
            }
        } else {
            for _ in 0..per_request {
                let i = request.start + rng.below(n as u64) as usize;
                let mut j = request.start + rng.below(n as u64 - 1) as usize;
                if j >= i {
                    j += 1;
                }
                push(i, j);
            }
        }
    }
    pairs
}

/// `mean over pairs of ln(1 + e^−(s_hi − s_lo))` for scores `s` `[B]`: the
/// RankNet loss of the student on the teacher's order. `None` without pairs.
pub fn pairwise(s: &Tensor, pairs: &Pairs, device: &Device) -> Result<Option<Tensor>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let n = pairs.len();
    let hi = Tensor::from_vec(pairs.hi.clone(), n, device)?;
    let lo = Tensor::from_vec(pairs.lo.clone(), n, device)?;
    let margin = (s.index_select(&hi, 0)? - s.index_select(&lo, 0)?)?;
    Ok(Some(softplus(&margin.neg()?)?.mean_all()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};

    fn dev() -> Device {
        Device::Cpu
    }

    /// Central finite differences of `f` at `x` against its autodiff
    /// gradient, in f64.
    fn check_gradient(x: &[f64], f: &dyn Fn(&Tensor) -> Result<Tensor>) {
        let var = Var::from_vec(x.to_vec(), x.len(), &dev()).unwrap();
        let loss = f(var.as_tensor()).unwrap();
        let grads = loss.backward().unwrap();
        let grad: Vec<f64> = grads.get(&var).unwrap().to_vec1().unwrap();
        let h = 1e-6;
        for i in 0..x.len() {
            let at = |delta: f64| {
                let mut y = x.to_vec();
                y[i] += delta;
                let t = Tensor::from_vec(y, x.len(), &dev()).unwrap();
                f(&t).unwrap().to_scalar::<f64>().unwrap()
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (numeric - grad[i]).abs() < 1e-6 * (1.0 + numeric.abs()),
                "component {i}: autodiff {} vs finite difference {numeric}",
                grad[i]
            );
        }
    }

    fn t64(v: &[f64]) -> Tensor {
        Tensor::from_vec(v.to_vec(), v.len(), &dev()).unwrap()
    }

    const Z: [f64; 6] = [-3.0, -0.7, 0.05, 0.4, 2.5, 12.0];

    #[test]
    fn bce_matches_its_definition_and_its_gradient() {
        let y = [0.0, 1.0, 1.0, 0.0, 0.3, 1.0];
        let loss = bce_with_logits(&t64(&Z), &t64(&y))
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let expected: f64 = Z
            .iter()
            .zip(&y)
            .map(|(&z, &y)| {
                let p = 1.0 / (1.0 + (-z).exp());
                -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
            })
            .sum::<f64>()
            / 6.0;
        assert!((loss - expected).abs() < 1e-12, "{loss} vs {expected}");
        check_gradient(&Z, &|z| bce_with_logits(z, &t64(&y)));
        // The gradient is (sigmoid(z) − y) / n.
        let var = Var::from_vec(Z.to_vec(), 6, &dev()).unwrap();
        let grads = bce_with_logits(var.as_tensor(), &t64(&y))
            .unwrap()
            .backward()
            .unwrap();
        let g: Vec<f64> = grads.get(&var).unwrap().to_vec1().unwrap();
        for ((g, z), y) in g.iter().zip(Z).zip(y) {
            assert!((g - (1.0 / (1.0 + (-z).exp()) - y) / 6.0).abs() < 1e-12);
        }
    }

    #[test]
    fn pointwise_distillation_losses_have_correct_gradients() {
        let teacher = [-2.0, 0.3, 0.0, 1.5, -0.2, 4.0];
        let soft: Vec<f64> = teacher
            .iter()
            .map(|t: &f64| 1.0 / (1.0 + (-t).exp()))
            .collect();
        check_gradient(&Z, &|z| bce_with_logits(z, &t64(&soft)));
        check_gradient(&Z, &|z| mse(z, &t64(&teacher)));
        let loss = mse(&t64(&Z), &t64(&teacher))
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let expected = Z
            .iter()
            .zip(&teacher)
            .map(|(z, t)| (z - t) * (z - t))
            .sum::<f64>()
            / 6.0;
        assert!((loss - expected).abs() < 1e-12);
    }

    #[test]
    fn pairwise_loss_on_a_hand_computed_request() {
        // Teacher order: row 0 > row 2 > row 1. Student scores 2, 0, 1:
        // margins 2 (0 over 1), 1 (0 over 2), 1 (2 over 1).
        let pairs = make_pairs(
            std::slice::from_ref(&(0..3)),
            &[3.0, 1.0, 2.0],
            64,
            &mut Rng::new(1),
        );
        let mut got: Vec<(u32, u32)> = pairs
            .hi
            .iter()
            .copied()
            .zip(pairs.lo.iter().copied())
            .collect();
        got.sort();
        assert_eq!(got, vec![(0, 1), (0, 2), (2, 1)]);
        let s = Tensor::from_vec(vec![2.0f64, 0.0, 1.0], 3, &dev()).unwrap();
        let loss = pairwise(&s, &pairs, &dev())
            .unwrap()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        // (ln(1 + e^−2) + 2 ln(1 + e^−1)) / 3
        let expected = (0.126_928_011_042_973 + 2.0 * 0.313_261_687_518_223) / 3.0;
        assert!((loss - expected).abs() < 1e-12, "{loss} vs {expected}");
        // A student that reverses the teacher pays more.
        let reversed = Tensor::from_vec(vec![0.0f64, 2.0, 1.0], 3, &dev()).unwrap();
        let worse = pairwise(&reversed, &pairs, &dev())
            .unwrap()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(worse > loss);
    }

    #[test]
    fn pairwise_skips_ties_and_single_candidate_requests() {
        let pairs = make_pairs(
            &[0..1, 1..3, 3..5],
            &[0.5, 1.0, 1.0, 2.0, 1.0],
            64,
            &mut Rng::new(1),
        );
        assert_eq!(
            pairs,
            Pairs {
                hi: vec![3],
                lo: vec![4]
            }
        );
        let s = Tensor::zeros(5, DType::F64, &dev()).unwrap();
        assert!(pairwise(&s, &Pairs::default(), &dev()).unwrap().is_none());
    }

    #[test]
    fn pairwise_gradient_matches_finite_differences() {
        let teacher = [0.1, 2.0, -1.0, 0.7, 0.3, 1.1];
        let pairs = make_pairs(&[0..4, 4..6], &teacher, 64, &mut Rng::new(3));
        assert_eq!(pairs.len(), 6 + 1);
        check_gradient(&Z, &|s| Ok(pairwise(s, &pairs, &dev())?.unwrap()));
    }

    #[test]
    fn large_requests_are_sampled_to_the_budget_and_ordered() {
        let teacher: Vec<f32> = (0..40).map(|i| ((i * 7919) % 40) as f32).collect();
        let pairs = make_pairs(
            std::slice::from_ref(&(0..40)),
            &teacher,
            50,
            &mut Rng::new(9),
        );
        assert_eq!(pairs.len(), 50); // no ties among distinct values
        for (h, l) in pairs.hi.iter().zip(&pairs.lo) {
            assert!(teacher[*h as usize] > teacher[*l as usize]);
        }
        // Small requests are exhaustive: 4 candidates, 6 pairs ≤ 50.
        assert_eq!(
            make_pairs(
                std::slice::from_ref(&(0..4)),
                &teacher[..4],
                50,
                &mut Rng::new(9)
            )
            .len(),
            6
        );
    }
}
