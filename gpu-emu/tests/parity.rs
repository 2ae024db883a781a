//! The GPU path (launch plan + kernels/mmoe.cu), run on the host, against
//! the CPU exact path.

use std::sync::Arc;

use mmoe::format::writer;
use mmoe::gpu::launch_plan::{Kernel, Precision, Tiles};
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

/// Max |Δlogit| of the emulated GPU path against the CPU exact path.
fn emu_vs_cpu(model: &Arc<Model>, precision: Precision, tiles: Tiles, n: usize, seed: u64) -> f32 {
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
    let emu = EmuModel::new(model.clone(), precision, tiles)
        .score(&request.as_request())
        .expect("emulated GPU scores");
    assert_eq!(emu.len(), cpu.len());
    assert!(emu.iter().all(|v| v.is_finite()), "{emu:?}");
    cpu.iter()
        .zip(&emu)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn small_model_matches_cpu() {
    let config = Config::parse(SMALL_CONFIG).unwrap();
    let (_dir, model) = packed(&config, 3);
    for n in [1, 33] {
        let f32_delta = emu_vs_cpu(&model, Precision::F32, Tiles::Standard, n, 5);
        let f16_delta = emu_vs_cpu(&model, Precision::F16, Tiles::Standard, n, 5);
        println!("small model, {n} candidates: max |Δlogit| f32 {f32_delta:e}, f16 {f16_delta:e}");
        assert!(f32_delta < 1e-4, "f32 path off by {f32_delta}");
        assert!(f16_delta < 2e-2, "f16 path off by {f16_delta}");
    }
}

#[test]
fn medium_model_matches_cpu() {
    let config = Config::parse(MEDIUM_CONFIG).unwrap();
    let (_dir, model) = packed(&config, 11);
    // 1 → the 32-row tile kernel; 40 and 70 → the 64-row kernel over buckets
    // of 64 and 128 rows, the last tile partly past the request.
    for n in [1, 40, 70] {
        let f32_delta = emu_vs_cpu(&model, Precision::F32, Tiles::Standard, n, 6);
        let f16_delta = emu_vs_cpu(&model, Precision::F16, Tiles::Standard, n, 6);
        // 128×128 tiles from 64-row buckets: the 70-candidate request runs
        // one tile partly past its rows, the layers narrower than a tile.
        let wide_delta = emu_vs_cpu(&model, Precision::F16, Tiles::Wide { from_rows: 64 }, n, 6);
        println!(
            "medium model, {n} candidates: max |Δlogit| f32 {f32_delta:e}, f16 {f16_delta:e}, f16 wide tiles {wide_delta:e}"
        );
        assert!(f32_delta < 1e-4, "f32 path off by {f32_delta}");
        assert!(f16_delta < 2e-2, "f16 path off by {f16_delta}");
        assert!(
            wide_delta < 2e-2,
            "f16 path with wide tiles off by {wide_delta}"
        );
    }
}

/// The benchmark model (512-wide x0, 512×512 layers: sixteen K stages per
/// tile) at one candidate, and at 33 across two buckets' worth of rows.
#[test]
fn demo_model_matches_cpu() {
    let config = Config::parse(mmoe::demo::BENCH_MODEL_JSON).unwrap();
    let (_dir, model) = packed(&config, 7);
    for n in [1, 33] {
        let f16_delta = emu_vs_cpu(&model, Precision::F16, Tiles::Standard, n, 8);
        println!("demo model, {n} candidates: max |Δlogit| f16 {f16_delta:e}");
        assert!(f16_delta < 2e-2, "f16 path off by {f16_delta}");
    }
    let wide = Tiles::Wide { from_rows: 64 };
    let kernels = EmuModel::new(model.clone(), Precision::F16, wide).plan(64);
    assert!(kernels.launches.iter().any(|l| l.kernel == Kernel::LinearMma128));
    let wide_delta = emu_vs_cpu(&model, Precision::F16, wide, 33, 8);
    println!("demo model, 33 candidates, wide tiles: max |Δlogit| f16 {wide_delta:e}");
    assert!(wide_delta < 2e-2, "f16 path with wide tiles off by {wide_delta}");
}
