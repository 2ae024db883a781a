//! Synthetic ads-engagement impression logs for any model config, following
//! the generative story of docs/SYNTHETIC.md: users and ads with latent
//! vectors, requests of many candidates in two view types, features that are
//! noisy projections of the latents, and click / good click / save labels
//! from task scores whose relatedness is a dial (as in the MMoE paper's
//! synthetic study), a user × ad cross term that drifts with the day, and
//! view-dependent rates. Deterministic by seed.

use std::path::Path;

use mmoe::config::{Config, InputKind, Scope};
use mmoe::demo::Rng;
use mmoe::{Error, ErrorKind, Result};

use super::table::{schema, Chunk, FeatureColumn, TableWriter, VIEWS};

/// Dimension of the user and ad latent vectors.
const LATENT: usize = 8;
/// Interest clusters shared by users and ads.
const CLUSTERS: u64 = 32;

/// The most users, and the most ads, a synthetic log draws from.
const MAX_ENTITIES: usize = 100_000_000;

#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub rows: usize,
    pub seed: u64,
    /// Days of logs; requests are spread evenly, in day order.
    pub days: u32,
    /// Cosine similarity of the tasks' score directions, in [0, 1].
    pub relatedness: f32,
    /// The cross term's drift angle at the end of the log, in radians.
    pub drift: f32,
    pub users: usize,
    pub ads: usize,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            rows: 100_000,
            seed: 1,
            days: 65,
            relatedness: 0.7,
            drift: 0.6,
            users: 20_000,
            ads: 50_000,
        }
    }
}

/// What was generated: rows, requests, and positives per task and view.
#[derive(Clone, Debug, Default)]
pub struct SynthSummary {
    pub rows: usize,
    pub requests: usize,
    /// `[task][view]` positives and `[view]` rows.
    pub positives: Vec<[usize; 2]>,
    pub view_rows: [usize; 2],
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A stable 64-bit mix (splitmix64) for ids.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn normal_vec(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

/// The hidden world: latents, projections and the true task scores.
struct World {
    users: Vec<[f32; LATENT]>,
    user_cluster: Vec<u64>,
    ads: Vec<[f32; LATENT]>,
    ad_cluster: Vec<u64>,
    ad_quality: Vec<f32>,
    ads_by_cluster: Vec<Vec<u32>>,
    /// The search view's shift of the user latent.
    search_shift: [f32; LATENT],
    /// Per dense input: projection `[dim × LATENT]`, and the affine map and
    /// transforms that turn a standardized value into the raw one.
    projections: Vec<Vec<f32>>,
    raw_scale: Vec<Vec<f32>>,
    raw_offset: Vec<Vec<f32>>,
    /// Task score directions over `[user latent; ad latent]`, and the fixed
    /// sine frequencies and phases of the MMoE-paper score.
    directions: Vec<Vec<f32>>,
    alphas: [f32; 3],
    betas: [f32; 3],
    /// The cross term's matrices at day 0 and at the end of the drift.
    cross0: Vec<f32>,
    cross1: Vec<f32>,
}

impl World {
    fn new(config: &Config, options: &SynthOptions) -> World {
        let mut rng = Rng::new(options.seed ^ 0x0005_eed0_fa11);
        let latent = |rng: &mut Rng| {
            let mut z = [0.0f32; LATENT];
            for v in &mut z {
                *v = rng.normal();
            }
            z
        };
        let users: Vec<_> = (0..options.users).map(|_| latent(&mut rng)).collect();
        let user_cluster = (0..options.users).map(|_| rng.below(CLUSTERS)).collect();
        let ads: Vec<_> = (0..options.ads).map(|_| latent(&mut rng)).collect();
        let ad_cluster: Vec<u64> = (0..options.ads).map(|_| rng.below(CLUSTERS)).collect();
        let ad_quality = (0..options.ads).map(|_| rng.normal() * 0.5).collect();
        let mut ads_by_cluster = vec![Vec::new(); CLUSTERS as usize];
        for (i, &c) in ad_cluster.iter().enumerate() {
            ads_by_cluster[c as usize].push(i as u32);
        }
        let search_shift = latent(&mut rng).map(|v| v * 0.7);
        let mut projections = Vec::new();
        let (mut raw_scale, mut raw_offset) = (Vec::new(), Vec::new());
        for input in &config.inputs {
            let mut r = Rng::new(
                mix(options.seed) ^ mix(input.name.bytes().fold(7u64, |h, b| mix(h ^ b as u64))),
            );
            if input.kind == InputKind::Dense {
                projections.push(normal_vec(
                    &mut r,
                    input.dim * LATENT,
                    1.0 / (LATENT as f32).sqrt(),
                ));
                raw_scale.push((0..input.dim).map(|_| 0.5 + 2.5 * r.unit()).collect());
                raw_offset.push((0..input.dim).map(|_| r.symmetric(2.0)).collect());
            } else {
                projections.push(Vec::new());
                raw_scale.push(Vec::new());
                raw_offset.push(Vec::new());
            }
        }
        // Task directions: unit w1, and w_t = ρ·w1 + √(1−ρ²)·o_t with o_t
        // orthonormal to w1 and to each other (Gram–Schmidt).
        let n = 2 * LATENT;
        let mut basis: Vec<Vec<f32>> = Vec::new();
        let tasks = config.tasks.len().max(1);
        while basis.len() < tasks.min(n) {
            let mut v = normal_vec(&mut rng, n, 1.0);
            for b in &basis {
                let d = dot(&v, b);
                for (x, y) in v.iter_mut().zip(b) {
                    *x -= d * y;
                }
            }
            let norm = dot(&v, &v).sqrt();
            if norm > 1e-3 {
                basis.push(v.iter().map(|x| x / norm).collect());
            }
        }
        let rho = options.relatedness.clamp(0.0, 1.0);
        let directions = (0..tasks)
            .map(|t| {
                if t == 0 {
                    basis[0].clone()
                } else {
                    let o = &basis[t % basis.len().max(1)];
                    basis[0]
                        .iter()
                        .zip(o)
                        .map(|(w, o)| rho * w + (1.0 - rho * rho).sqrt() * o)
                        .collect()
                }
            })
            .collect();
        let alphas = [rng.unit() + 0.5, rng.unit() + 0.5, rng.unit() + 0.5];
        let betas = [rng.symmetric(1.0), rng.symmetric(1.0), rng.symmetric(1.0)];
        World {
            users,
            user_cluster,
            ads,
            ad_cluster,
            ad_quality,
            ads_by_cluster,
            search_shift,
            projections,
            raw_scale,
            raw_offset,
            directions,
            alphas,
            betas,
            cross0: normal_vec(&mut rng, LATENT * LATENT, 1.0),
            cross1: normal_vec(&mut rng, LATENT * LATENT, 1.0),
        }
    }

    /// The MMoE-paper score of task t: w·x + Σ_j sin(α_j w·x + β_j).
    fn task_score(&self, t: usize, x: &[f32]) -> f32 {
        let s = dot(&self.directions[t], x);
        s + (0..3)
            .map(|j| (self.alphas[j] * s + self.betas[j]).sin())
            .sum::<f32>()
    }

    /// The user × ad cross term at drift angle θ: uᵀ(cos θ M0 + sin θ M1)a/L
    /// (unit variance or so).
    fn cross(&self, u: &[f32], a: &[f32], theta: f32) -> f32 {
        let (c, s) = (theta.cos(), theta.sin());
        let mut total = 0.0;
        for (i, ui) in u.iter().enumerate() {
            let (m0, m1) = (&self.cross0[i * LATENT..], &self.cross1[i * LATENT..]);
            for (j, aj) in a.iter().enumerate() {
                total += ui * (c * m0[j] + s * m1[j]) * aj;
            }
        }
        total / LATENT as f32
    }
}

/// The raw value of a dense feature whose model-side value (after the
/// input's transforms) should be `z`: inverts standardize and log1p.
fn raw_value(z: f32, scale: f32, offset: f32, log1p: bool, standardize: bool) -> f32 {
    let mut v = z;
    if standardize {
        v = v * scale + offset;
    }
    if log1p {
        v = v.signum() * v.abs().exp_m1();
    }
    v
}

/// Generates `options.rows` impressions for `config` into a Parquet file.
pub fn synthesize(
    config: &Config,
    options: &SynthOptions,
    out: &Path,
    progress: &mut dyn FnMut(usize),
) -> Result<SynthSummary> {
    if options.users == 0 || options.ads == 0 || options.days == 0 {
        return Err(Error::new(
            ErrorKind::Argument,
            "synth: users, ads and days must be at least 1",
        ));
    }
    // The table's day column is an i32; users and ads are held in memory
    // (a latent vector each).
    let limits = [
        ("--days", options.days as usize, i32::MAX as usize),
        ("--users", options.users, MAX_ENTITIES),
        ("--ads", options.ads, MAX_ENTITIES),
    ];
    for (flag, value, limit) in limits {
        if value > limit {
            return Err(Error::new(
                ErrorKind::Argument,
                format!("synth: {flag} {value} is above the limit of {limit}"),
            ));
        }
    }
    if !(0.0..=1.0).contains(&options.relatedness) {
        return Err(Error::new(
            ErrorKind::Argument,
            format!(
                "synth: --relatedness {} must be in [0, 1]",
                options.relatedness
            ),
        ));
    }
    if !options.drift.is_finite() {
        return Err(Error::new(
            ErrorKind::Argument,
            format!("synth: --drift {} must be a finite angle", options.drift),
        ));
    }
    let world = World::new(config, options);
    let mut writer = TableWriter::create(out, schema(config, true, &[]))?;
    let mut rng = Rng::new(options.seed);
    let tasks = config.tasks.len();
    let mut summary = SynthSummary {
        positives: vec![[0; 2]; tasks],
        ..SynthSummary::default()
    };
    let empty_chunk = || Chunk::empty(config, VIEWS.iter().map(|s| s.to_string()).collect());
    let mut chunk = empty_chunk();
    let mut request_id = mix(options.seed) >> 16;
    let mut x = vec![0.0f32; 2 * LATENT];
    let mut request_dense: Vec<Vec<f32>> = vec![Vec::new(); config.inputs.len()];
    let mut request_bags: Vec<Vec<u64>> = vec![Vec::new(); config.inputs.len()];
    while summary.rows < options.rows {
        // Requests in day order, the rows spread evenly over the days.
        let day = ((summary.rows as u64 * options.days as u64) / options.rows as u64) as u32;
        let search = rng.unit() < 0.35;
        let view = search as usize;
        let user = ((rng.unit() * rng.unit()) * options.users as f32) as usize % options.users;
        let cluster = world.user_cluster[user];
        let candidates = if search {
            4 + rng.below(28)
        } else {
            8 + rng.below(56)
        } as usize;
        let candidates = candidates.min(options.rows - summary.rows);
        let mut u = world.users[user];
        if search {
            for (v, s) in u.iter_mut().zip(&world.search_shift) {
                *v += s;
            }
        }
        let theta = options.drift * day as f32 / options.days as f32;
        let seasonal = 0.3 * (std::f32::consts::TAU * day as f32 / 30.0).sin();
        // Request-level features, shared by the request's rows.
        for (i, input) in config.inputs.iter().enumerate() {
            if input.scope != Scope::Request {
                continue;
            }
            match input.kind {
                InputKind::Dense => {
                    let p = &world.projections[i];
                    request_dense[i] = (0..input.dim)
                        .map(|k| {
                            let z = dot(&p[k * LATENT..(k + 1) * LATENT], &u) + 0.2 * rng.normal();
                            raw_value(
                                z,
                                world.raw_scale[i][k],
                                world.raw_offset[i][k],
                                input.log1p(),
                                input.standardize(),
                            )
                        })
                        .collect();
                }
                InputKind::Sparse => {
                    let n = 1 + rng.below(8) as usize;
                    request_bags[i] = (0..n)
                        .map(|_| {
                            if rng.unit() < 0.8 {
                                mix(mix(i as u64) ^ (cluster * 1000 + rng.below(50)))
                            } else {
                                rng.next_u64()
                            }
                        })
                        .collect();
                }
            }
        }
        for _ in 0..candidates {
            let relevant = rng.unit() < if search { 0.75 } else { 0.5 };
            let ad = if relevant && !world.ads_by_cluster[cluster as usize].is_empty() {
                let list = &world.ads_by_cluster[cluster as usize];
                list[rng.below(list.len() as u64) as usize] as usize
            } else {
                rng.below(options.ads as u64) as usize
            };
            let a = &world.ads[ad];
            chunk.request_id.push(request_id);
            chunk.day.push(day as i32);
            chunk.view.push(view as u16);
            for (i, input) in config.inputs.iter().enumerate() {
                let (_, column) = &mut chunk.features[i];
                match (column, input.scope) {
                    (FeatureColumn::Dense { values, .. }, Scope::Request) => {
                        values.extend(&request_dense[i])
                    }
                    (FeatureColumn::Dense { values, .. }, Scope::Candidate) => {
                        let p = &world.projections[i];
                        for k in 0..input.dim {
                            let missing = input.missing_is_zero() && rng.unit() < 0.03;
                            values.push(if missing {
                                f32::NAN
                            } else {
                                let z =
                                    dot(&p[k * LATENT..(k + 1) * LATENT], a) + 0.1 * rng.normal();
                                raw_value(
                                    z,
                                    world.raw_scale[i][k],
                                    world.raw_offset[i][k],
                                    input.log1p(),
                                    input.standardize(),
                                )
                            });
                        }
                    }
                    (FeatureColumn::Sparse { offsets, ids }, Scope::Request) => {
                        ids.extend(&request_bags[i]);
                        offsets.push(ids.len() as u32);
                    }
                    (FeatureColumn::Sparse { offsets, ids }, Scope::Candidate) => {
                        let salt = mix(i as u64 + 17);
                        match i % 3 {
                            0 => ids.push(mix(salt ^ ad as u64)),
                            1 => ids.push(mix(salt ^ world.ad_cluster[ad])),
                            _ => {
                                for _ in 0..1 + rng.below(3) {
                                    ids.push(mix(
                                        salt ^ (world.ad_cluster[ad] * 100 + rng.below(20))
                                    ));
                                }
                            }
                        }
                        offsets.push(ids.len() as u32);
                    }
                }
            }
            // Labels from the true scores.
            x[..LATENT].copy_from_slice(&u);
            x[LATENT..].copy_from_slice(a);
            let cross = world.cross(&u, a, theta);
            let quality = world.ad_quality[ad];
            let mut clicked = false;
            for t in 0..tasks {
                let g = world.task_score(t, &x);
                let logit = match t {
                    0 => {
                        -3.9 + 0.5 * view as f32 + 0.8 * quality + 0.6 * g + 1.2 * cross + seasonal
                    }
                    1 => -1.0 + 0.6 * g + (0.8 + 0.4 * view as f32) * cross,
                    _ => -5.3 + 0.7 * g + 0.8 * cross + 0.5 * quality + 0.2 * seasonal,
                };
                let mut positive = rng.unit() < sigmoid(logit);
                if t == 0 {
                    clicked = positive;
                } else if t == 1 {
                    // A good click is a long click: only after a click.
                    positive &= clicked;
                }
                chunk.labels[t].1.push(positive as u8);
                summary.positives[t][view] += positive as usize;
            }
            summary.view_rows[view] += 1;
            summary.rows += 1;
        }
        summary.requests += 1;
        request_id += 1;
        if chunk.rows() >= 32_768 {
            writer.write(&chunk)?;
            chunk = empty_chunk();
            progress(summary.rows);
        }
    }
    if chunk.rows() > 0 {
        writer.write(&chunk)?;
    }
    progress(summary.rows);
    writer.finish()?;
    Ok(summary)
}
