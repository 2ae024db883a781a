//! The GPU path (launch plan + kernels/mmoe.cu), run on the host, against
//! the CPU exact path: every kernel variant the plan can choose.

use std::sync::Arc;

use mmoe::format::writer;
use mmoe::gpu::launch_plan::{bucket, Kernel, PlanOptions, Precision, Tiles};
use mmoe::{Config, DType, Model, OpenOptions, Scores, Session};
use mmoe_gpu_emu::EmuModel;

/// Every expert type at a few widths, in dimensions of a few dozen.
const SMALL_CONFIG: &str = include_str!("../../tests/common/small_config.json");
/// Every expert type again with layers wider than one 32-column stage of the
/// tensor-core kernel and widths that are not multiples of 16 (padding,
/// ranges, several K stages); three tasks.
const MEDIUM_CONFIG: &str = include_str!("models/medium.json");

fn packed(config: &Config, seed: u64) -> (tempfile::TempDir, Arc<Model>) {
    let tensors = mmoe::demo::synthetic_tensors(config, seed).expect("synthetic tensors");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.mmoe");
    writer::pack(config, &tensors, DType::F16, &path, &mut |_, _| {}).expect("pack");
    let model = Model::open(&path, &OpenOptions::default()).expect("open");
    (dir, model)
}

/// A kernel variant: precision and plan options, and the kernel that shows
/// the variant is really in the plan.
struct Variant {
    name: &'static str,
    precision: Precision,
    options: PlanOptions,
    uses: Option<Kernel>,
    bound: f32,
}

/// Tiles of 128×128 from 64-row buckets, so requests of a few dozen
/// candidates run them.
const WIDE: Tiles = Tiles::Wide { from_rows: 64 };

fn variants() -> Vec<Variant> {
    // The defaults: fused task heads, standard tiles.
    let fused = PlanOptions::default();
    let plain = PlanOptions {
        fused_heads: false,
        ..fused
    };
    vec![
        Variant {
            name: "f32",
            precision: Precision::F32,
            options: fused,
            uses: Some(Kernel::TaskHeadsF32),
            bound: 1e-4,
        },
        Variant {
            name: "f16",
            precision: Precision::F16,
            options: fused,
            uses: Some(Kernel::TaskHeadsF16),
            bound: 2e-2,
        },
        Variant {
            name: "f16 wide tiles",
            precision: Precision::F16,
            options: PlanOptions {
                tiles: WIDE,
                ..fused
            },
            uses: Some(Kernel::LinearMma128),
            bound: 2e-2,
        },
        Variant {
            name: "f16 unfused heads",
            precision: Precision::F16,
            options: plain,
            uses: Some(Kernel::Mixture),
            bound: 2e-2,
        },
        Variant {
            name: "f32 unfused heads",
            precision: Precision::F32,
            options: plain,
            uses: Some(Kernel::Mixture),
            bound: 1e-4,
        },
    ]
}

/// Max |Δlogit| of the emulated GPU path against the CPU exact path.
fn emu_vs_cpu(model: &Arc<Model>, variant: &Variant, n: usize, seed: u64) -> f32 {
    let request = mmoe::demo::synthetic_request(model.config(), n, seed);
    let mut cpu = vec![0.0; n * model.num_tasks()];
    Session::new(model.clone())
        .score(
            &request.as_request(),
            &mut Scores {
                logits: Some(&mut cpu),
                probabilities: None,
            },
        )
        .expect("cpu scores");
    let emu = EmuModel::new(model.clone(), variant.precision, variant.options);
    if let Some(kernel) = variant.uses {
        let plan = emu.plan(bucket(n));
        let used = plan.launches.iter().any(|l| l.kernel == kernel);
        // Wide tiles start at 64-row buckets.
        assert!(
            used || (kernel == Kernel::LinearMma128 && bucket(n) < 64),
            "{}: no {kernel:?} launch for {n} candidates",
            variant.name
        );
    }
    let scores = emu
        .score(&request.as_request())
        .expect("emulated GPU scores");
    assert_eq!(scores.len(), cpu.len());
    assert!(scores.iter().all(|v| v.is_finite()), "{scores:?}");
    cpu.iter()
        .zip(&scores)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn check(label: &str, model: &Arc<Model>, variants: &[Variant], candidates: &[usize], seed: u64) {
    for &n in candidates {
        for variant in variants {
            let delta = emu_vs_cpu(model, variant, n, seed);
            println!(
                "{label}, {n} candidates, {}: max |Δlogit| {delta:e}",
                variant.name
            );
            assert!(
                delta < variant.bound,
                "{label}, {n} candidates, {}: off by {delta}",
                variant.name
            );
        }
    }
}

#[test]
fn small_model_matches_cpu() {
    let config = Config::parse(SMALL_CONFIG).unwrap();
    let (_dir, model) = packed(&config, 3);
    check("small model", &model, &variants(), &[1, 33], 5);
}

/// 1 candidate → the 32-row tile kernel; 40 and 70 → the 64-row kernel over
/// buckets of 64 and 128 rows (and the 128×128 one), the last tile partly
/// past the request.
#[test]
fn medium_model_matches_cpu() {
    let config = Config::parse(MEDIUM_CONFIG).unwrap();
    let (_dir, model) = packed(&config, 11);
    check("medium model", &model, &variants(), &[1, 40, 70], 6);
}

/// The benchmark model (512-wide x0, 512×512 layers: sixteen K stages per
/// tile), f16 with each variant.
#[test]
fn demo_model_matches_cpu() {
    let config = Config::parse(mmoe::demo::BENCH_MODEL_JSON).unwrap();
    let (_dir, model) = packed(&config, 7);
    let f16: Vec<Variant> = variants()
        .into_iter()
        .filter(|v| v.precision == Precision::F16)
        .collect();
    check("demo model", &model, &f16[..1], &[1], 8);
    check("demo model", &model, &f16, &[33], 8);
}
