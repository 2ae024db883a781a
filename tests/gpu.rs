//! The GPU path. Without a CUDA device (CI, the development machine) the
//! device options must fail cleanly and `auto` must fall back to the CPU; the
//! parity tests print "skipped: no CUDA device". On the GPU test machine they
//! compare the CUDA backend with the CPU exact path (`bench/gpu/check.sh`).

mod common;

use std::sync::Arc;

use common::{pack, small};
use mmoe::{
    Backend, Config, DType, Device, ErrorKind, GpuPrecision, Model, OpenOptions, Scores, Session,
};

fn open(
    path: &std::path::Path,
    device: Device,
    precision: GpuPrecision,
) -> mmoe::Result<Arc<Model>> {
    Model::open(
        path,
        &OpenOptions {
            device,
            gpu_precision: precision,
            ..OpenOptions::default()
        },
    )
}

fn has_gpu() -> bool {
    mmoe::gpu::check_device(0).is_ok()
}

#[test]
fn device_options_fail_cleanly_or_fall_back() {
    let (_, _, packed) = small(DType::F16);
    if has_gpu() {
        println!("a CUDA device is present: the no-device paths are not exercised here");
        return;
    }
    let err = open(&packed.path, Device::Cuda(0), GpuPrecision::F16).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Device);
    assert!(err.message().contains("model.mmoe"), "{err}");
    let model = open(&packed.path, Device::Auto, GpuPrecision::F16).unwrap();
    assert!(
        model.device_note().starts_with("cpu (auto: "),
        "{}",
        model.device_note()
    );
    let mut session = Session::new(model.clone());
    assert_eq!(session.backend(), Backend::Cpu);
    // Asking a CPU model for the CUDA backend is an error, not a crash.
    let mut cuda = Session::with_backend(model.clone(), Backend::Cuda);
    let request = mmoe::demo::synthetic_request(model.config(), 2, 1);
    let mut logits = vec![0.0; 4];
    let err = cuda
        .score(
            &request.as_request(),
            &mut Scores {
                logits: Some(&mut logits),
                probabilities: None,
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Device);
    session
        .score(
            &request.as_request(),
            &mut Scores {
                logits: Some(&mut logits),
                probabilities: None,
            },
        )
        .unwrap();
}

/// Max |Δlogit| of the CUDA backend against the CPU exact path.
fn gpu_vs_cpu(path: &std::path::Path, config: &Config, precision: GpuPrecision, n: usize) -> f32 {
    let cpu = logits(path, config, Device::Cpu, precision, n);
    let gpu = logits(path, config, Device::Cuda(0), precision, n);
    max_delta(&cpu, &gpu)
}

/// Max |a − b| over two sets of logits (NaN if any difference is NaN).
fn max_delta(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(
            0.0,
            |most: f32, d| if d.is_nan() || d > most { d } else { most },
        )
}

/// The logits of a synthetic request of `n` candidates on `device`.
fn logits(
    path: &std::path::Path,
    config: &Config,
    device: Device,
    precision: GpuPrecision,
    n: usize,
) -> Vec<f32> {
    let model = open(path, device, precision).unwrap();
    let backend = match device {
        Device::Cpu => Backend::Cpu,
        _ => Backend::Cuda,
    };
    let request = mmoe::demo::synthetic_request(config, n, 9);
    let tasks = config.tasks.len();
    let run = |model: &Arc<Model>, backend| {
        let mut session = Session::with_backend(model.clone(), backend);
        let mut logits = vec![0.0; n * tasks];
        session
            .score(
                &request.as_request(),
                &mut Scores {
                    logits: Some(&mut logits),
                    probabilities: None,
                },
            )
            .unwrap();
        // Twice: the second call replays the captured graph.
        let mut again = vec![0.0; n * tasks];
        session
            .score(
                &request.as_request(),
                &mut Scores {
                    logits: Some(&mut again),
                    probabilities: None,
                },
            )
            .unwrap();
        assert_eq!(logits, again, "graph replay gives the same scores");
        logits
    };
    run(&model, backend)
}

/// MaskNet's LayerNorm fused into the GEMM epilogue
/// (`MMOE_GPU_FUSED_NORM=1`) on MODEL.md's example model, whose serial
/// MaskNet blocks are 256 wide: several column tiles per band of rows, so
/// each band's last tile to finish reads the other tiles' stores and
/// statistics, the ordering between blocks that the host emulator (one
/// block at a time) cannot check. Against the CPU at 1, 300 and 1024
/// candidates (f16 and f32), against the separate LayerNorm launches
/// (another order of the statistics' sums: close, not identical), and at
/// three tile choices, 32 to 128 columns wide (identical).
#[test]
fn gpu_fused_layer_norms_match_cpu_across_column_tiles() {
    if !has_gpu() {
        println!("skipped: no CUDA device");
        return;
    }
    let config = Config::parse(include_str!("../models/example.json")).unwrap();
    let tensors = mmoe::demo::synthetic_tensors(&config, 5).unwrap();
    let packed = pack(&config, &tensors, DType::F16);
    let fused: Vars = &[("MMOE_GPU_FUSED_NORM", "1")];
    for n in [1, 300, 1024] {
        for (precision, bound) in [(GpuPrecision::F16, 2e-2), (GpuPrecision::F32, 1e-3)] {
            let delta = with_vars(fused, || gpu_vs_cpu(&packed.path, &config, precision, n));
            println!("fused LayerNorm, example model, {n} candidates, {precision:?}: max |Δlogit| {delta:e}");
            assert!(
                delta < bound,
                "{n} candidates, {precision:?}: off by {delta}"
            );
        }
        let run = |vars: Vars| {
            with_vars(vars, || {
                logits(&packed.path, &config, Device::Cuda(0), GpuPrecision::F16, n)
            })
        };
        let separate = run(&[("MMOE_GPU_TUNE", "0")]);
        let own = run(&[("MMOE_GPU_TUNE", "0"), ("MMOE_GPU_FUSED_NORM", "1")]);
        let apart = max_delta(&separate, &own);
        println!("fused against separate LayerNorm, {n} candidates: max |Δlogit| {apart:e}");
        assert!(apart < 2e-3, "{n} candidates: {apart}");
        // Tile choices 1, 7 (32×32) and 9 (128×128 in 8 warps).
        for choice in ["choice=1", "choice=7", "choice=9"] {
            let tiles = run(&[("MMOE_GPU_TUNE", choice), ("MMOE_GPU_FUSED_NORM", "1")]);
            assert_eq!(own, tiles, "{n} candidates, tile {choice}");
        }
    }
}

/// The benchmark model with the demo's weights, packed as fp16.
fn demo_model() -> (Config, common::Packed) {
    let config = Config::parse(mmoe::demo::BENCH_MODEL_JSON).unwrap();
    let tensors = mmoe::demo::synthetic_tensors(&config, 7).unwrap();
    let packed = pack(&config, &tensors, DType::F16);
    (config, packed)
}

#[test]
fn gpu_matches_cpu_on_the_small_model() {
    if !has_gpu() {
        println!("skipped: no CUDA device");
        return;
    }
    let (config, _, packed) = small(DType::F16);
    for n in [1, 33, 300] {
        let f32_delta = gpu_vs_cpu(&packed.path, &config, GpuPrecision::F32, n);
        let f16_delta = gpu_vs_cpu(&packed.path, &config, GpuPrecision::F16, n);
        println!("small model, {n} candidates: max |Δlogit| f32 {f32_delta:e}, f16 {f16_delta:e}");
        assert!(f32_delta < 1e-3, "f32 GPU path off by {f32_delta}");
        assert!(f16_delta < 2e-2, "f16 GPU path off by {f16_delta}");
    }
}

/// A request past 65,535 rows (bucket 65,536): the kernels that run a
/// block per row keep their rows on the grid's x axis, since CUDA allows
/// only 65,535 blocks along y; they had them on y, and such requests
/// failed at the mixture's launch.
#[test]
fn gpu_scores_requests_past_65535_rows() {
    if !has_gpu() {
        println!("skipped: no CUDA device");
        return;
    }
    let (config, _, packed) = small(DType::F16);
    let n = 40_000;
    let f16_delta = gpu_vs_cpu(&packed.path, &config, GpuPrecision::F16, n);
    println!("small model, {n} candidates: max |Δlogit| f16 {f16_delta:e}");
    assert!(f16_delta < 2e-2, "f16 GPU path off by {f16_delta}");
}

/// FinalMLP's bilinear sum on the device, against the CPU path of the same
/// file (the small model above has it as a Linear layer over `outer_heads`):
/// the direct kernel over a layout-version-1 file; the direct kernel over a
/// version-2 file too wide for the Linear form; and outer products past
/// fp16's range (activations around 400), whose fp16 copy is scaled.
#[test]
fn gpu_bilinear_sums_match_cpu_in_both_layout_versions() {
    if !has_gpu() {
        println!("skipped: no CUDA device");
        return;
    }
    let wide = include_str!("common/wide_bilinear_config.json");
    for (text, version, large) in [
        (common::SMALL_CONFIG, 1, false),
        (wide, 2, false),
        (common::SMALL_CONFIG, 2, true),
    ] {
        let config = common::config(text);
        let mut tensors = mmoe::demo::synthetic_tensors(&config, 3).unwrap();
        if large {
            for (name, factor) in [
                ("experts.f.mlp1.0.weight", 400.0),
                ("experts.f.mlp1.0.bias", 400.0),
                ("experts.f.mlp2.0.weight", 400.0),
                ("experts.f.mlp2.0.bias", 400.0),
                ("experts.f.agg.w_xy", 2e-3),
            ] {
                for v in tensors.get_mut(name).unwrap().iter_mut() {
                    *v *= factor;
                }
            }
        }
        let packed = common::pack_for_layout(&config, &tensors, DType::F16, version);
        let path = &packed.path;
        for (precision, bound) in [(GpuPrecision::F32, 1e-3), (GpuPrecision::F16, 2e-2)] {
            let cpu = logits(path, &config, Device::Cpu, precision, 33);
            let gpu = logits(path, &config, Device::Cuda(0), precision, 33);
            let worst = cpu
                .iter()
                .zip(&gpu)
                .map(|(c, g)| (c - g).abs() / (1.0 + c.abs()))
                .fold(
                    0.0f32,
                    |most, d| if d.is_nan() || d > most { d } else { most },
                );
            let label = format!(
                "{}, layout {version}, large {large}, {precision:?}",
                config.name
            );
            println!("{label}: max |Δlogit|/(1 + |logit|) {worst:e}");
            assert!(worst <= bound, "{label}: off by {worst}");
        }
    }
}

#[test]
fn gpu_matches_cpu_on_the_demo_model() {
    if !has_gpu() {
        println!("skipped: no CUDA device");
        return;
    }
    let (config, packed) = demo_model();
    for n in [1, 256, 1024] {
        let f32_delta = gpu_vs_cpu(&packed.path, &config, GpuPrecision::F32, n);
        let f16_delta = gpu_vs_cpu(&packed.path, &config, GpuPrecision::F16, n);
        println!("demo model, {n} candidates: max |Δlogit| f32 {f32_delta:e}, f16 {f16_delta:e}");
        assert!(f32_delta < 1e-3, "f32 GPU path off by {f32_delta}");
        assert!(f16_delta < 2e-2, "f16 GPU path off by {f16_delta}");
    }
}

/// Kernel-choice variables and their values.
type Vars<'a> = &'a [(&'a str, &'a str)];

/// `run` with the kernel-choice variables `vars` set (read when a model
/// opens), then unset.
fn with_vars<T>(vars: Vars, run: impl FnOnce() -> T) -> T {
    for (key, value) in vars {
        std::env::set_var(key, value);
    }
    let out = run();
    for (key, _) in vars {
        std::env::remove_var(key);
    }
    out
}

/// The small all-expert model and the demo model, fp16 files.
fn small_and_demo_models() -> ((Config, common::Packed), (Config, common::Packed)) {
    let (small_config, _, small) = small(DType::F16);
    ((small_config, small), demo_model())
}

/// The kernel choices besides the defaults (`MMOE_GPU_FUSED_HEADS=1`: the
/// gates, mixture, towers and logits of every task in one launch; `MMOE_GPU_TILES=wide`:
/// 128×128 tiles from 512-row buckets; `MMOE_GPU_HALF_X=0`: GEMMs that
/// convert f32 activations; `MMOE_GPU_STREAMS=1`: no graph branches;
/// `MMOE_GPU_TUNE=0`: the plan's tiles, not timed; `MMOE_GPU_FUSED_NORM=1`:
/// MaskNet's LayerNorm in the GEMM epilogue, whose tile timing runs each
/// GEMM many times, so a band counter left set would show;
/// `MMOE_GPU_FUSED_LOGIT=1`: each task's logit in its tower's last hidden
/// layer, by the same scheme), with the default's parity bounds.
/// The variables are read when a model opens; the check runs these tests on
/// one thread, and the other tests pass with any choice.
#[test]
fn gpu_kernel_variants_match_cpu() {
    if !has_gpu() {
        println!("skipped: no CUDA device");
        return;
    }
    let ((small_config, small), (demo_config, demo)) = small_and_demo_models();
    let variants: [(&str, Vars); 7] = [
        ("fused heads", &[("MMOE_GPU_FUSED_HEADS", "1")]),
        ("fused LayerNorm", &[("MMOE_GPU_FUSED_NORM", "1")]),
        ("fused logits", &[("MMOE_GPU_FUSED_LOGIT", "1")]),
        (
            "wide tiles, untuned",
            &[("MMOE_GPU_TILES", "wide"), ("MMOE_GPU_TUNE", "0")],
        ),
        ("f32 inputs", &[("MMOE_GPU_HALF_X", "0")]),
        ("one stream", &[("MMOE_GPU_STREAMS", "1")]),
        (
            "the launches of 277801c (unfused heads, f32 inputs, one stream, untuned)",
            &[
                ("MMOE_GPU_FUSED_HEADS", "0"),
                ("MMOE_GPU_HALF_X", "0"),
                ("MMOE_GPU_STREAMS", "1"),
                ("MMOE_GPU_TUNE", "0"),
            ],
        ),
    ];
    for (name, vars) in variants {
        let deltas = with_vars(vars, || {
            let mut deltas = Vec::new();
            for n in [1, 300, 600] {
                for precision in [GpuPrecision::F32, GpuPrecision::F16] {
                    let delta = gpu_vs_cpu(&small.path, &small_config, precision, n);
                    deltas.push(("small", n, precision, delta));
                }
            }
            for n in [1, 600, 1024] {
                let delta = gpu_vs_cpu(&demo.path, &demo_config, GpuPrecision::F16, n);
                deltas.push(("demo", n, GpuPrecision::F16, delta));
            }
            deltas
        });
        for (model, n, precision, delta) in deltas {
            println!(
                "{name}: {model} model, {n} candidates, {precision:?}: max |Δlogit| {delta:e}"
            );
            let bound = if precision == GpuPrecision::F32 {
                1e-3
            } else {
                2e-2
            };
            assert!(delta < bound, "{name}: {model} model off by {delta}");
        }
    }
}

/// Choices that must not change a single logit: GEMMs over the fp16 copies
/// of x (cp.async pipelines) give exactly the logits of the GEMMs that
/// convert the f32 activations (the same roundings, tiles and sums), at
/// each tile size; graph branches (concurrent launches on several streams)
/// exactly those of one stream, and so do launches that start early and
/// wait for their inputs (programmatic dependent launch); and every tile
/// size of every GEMM (forced
/// by `MMOE_GPU_TUNE=choice=K`), like the ones the runtime times and picks,
/// exactly those of the plan's own.
#[test]
fn gpu_equivalent_choices_give_identical_logits() {
    if !has_gpu() {
        println!("skipped: no CUDA device");
        return;
    }
    let ((small_config, small), (demo_config, demo)) = small_and_demo_models();
    let cases = [
        ("small", &small.path, &small_config, 1),
        ("small", &small.path, &small_config, 300),
        ("demo", &demo.path, &demo_config, 32),
        ("demo", &demo.path, &demo_config, 1024),
    ];
    let untuned: Vars = &[("MMOE_GPU_TUNE", "0")];
    // fp16 inputs: 17 choices per GEMM (the two wgmma tiles, 15 and 16,
    // are `gpu_wgmma_tiles_match_cpu`'s; here the plan's own first, then 32×64,
    // 64×64, 128×128 but that one, then 128×64, 64×128, 32×64 and 64×64
    // with 64-column stages, 32×32 with 32- and 64-column stages, and the
    // deep pipelines in dynamic shared memory: 128×128 of 8 and of 4
    // warps, 128×64; 32×32, 32×64 and 64×64 with 16, 12 and 8 stages).
    let choices: [(&str, Vars); 14] = [
        ("1", &[("MMOE_GPU_TUNE", "choice=1")]),
        ("2", &[("MMOE_GPU_TUNE", "choice=2")]),
        ("3 (128×64)", &[("MMOE_GPU_TUNE", "choice=3")]),
        ("4 (64×128)", &[("MMOE_GPU_TUNE", "choice=4")]),
        (
            "5 (32×64, 64-column stages)",
            &[("MMOE_GPU_TUNE", "choice=5")],
        ),
        (
            "6 (64×64, 64-column stages)",
            &[("MMOE_GPU_TUNE", "choice=6")],
        ),
        ("7 (32×32)", &[("MMOE_GPU_TUNE", "choice=7")]),
        (
            "8 (32×32, 64-column stages)",
            &[("MMOE_GPU_TUNE", "choice=8")],
        ),
        (
            "9 (128×128, 8 warps, 4 stages in dynamic shared memory)",
            &[("MMOE_GPU_TUNE", "choice=9")],
        ),
        (
            "10 (128×128, 4 warps of 64×64, 4 stages)",
            &[("MMOE_GPU_TUNE", "choice=10")],
        ),
        ("11 (128×64, 6 stages)", &[("MMOE_GPU_TUNE", "choice=11")]),
        ("12 (32×32, 16 stages)", &[("MMOE_GPU_TUNE", "choice=12")]),
        ("13 (32×64, 12 stages)", &[("MMOE_GPU_TUNE", "choice=13")]),
        ("14 (64×64, 8 stages)", &[("MMOE_GPU_TUNE", "choice=14")]),
    ];
    let mut pairs: Vec<(String, Vars, Vars)> = vec![
        (
            "fp16 inputs = f32 inputs".into(),
            untuned,
            &[("MMOE_GPU_TUNE", "0"), ("MMOE_GPU_HALF_X", "0")],
        ),
        (
            "wide tiles: fp16 inputs = f32 inputs".into(),
            &[("MMOE_GPU_TUNE", "0"), ("MMOE_GPU_TILES", "wide")],
            &[
                ("MMOE_GPU_TUNE", "0"),
                ("MMOE_GPU_TILES", "wide"),
                ("MMOE_GPU_HALF_X", "0"),
            ],
        ),
        (
            "buffers with only their fp16 copy = every f32 buffer kept".into(),
            untuned,
            &[("MMOE_GPU_TUNE", "0"), ("MMOE_GPU_HALF_ONLY", "0")],
        ),
        (
            "graph branches = one stream".into(),
            untuned,
            &[("MMOE_GPU_TUNE", "0"), ("MMOE_GPU_STREAMS", "1")],
        ),
        // The demo model's 1,024 candidates are past the size the packing
        // shares (its parts written by the helpers, one upload after).
        (
            "packing shared with 3 helper threads = packing alone".into(),
            &[
                ("MMOE_GPU_TUNE", "0"),
                ("MMOE_GPU_PACK_THREADS", "3"),
                ("MMOE_GPU_PACK_SPIN_US", "50"),
            ],
            untuned,
        ),
        (
            "the embedded cubin = the PTX compiled by the driver".into(),
            untuned,
            &[("MMOE_GPU_TUNE", "0"), ("MMOE_GPU_KERNELS", "ptx")],
        ),
        (
            "tiles timed on the device = the plan's tiles".into(),
            &[],
            untuned,
        ),
        // Each kernel waits for the one before it in its first
        // instruction: launched early, it must read what that one wrote.
        (
            "programmatic dependent launch = stream order".into(),
            &[("MMOE_GPU_TUNE", "0"), ("MMOE_GPU_PDL", "1")],
            untuned,
        ),
        (
            "programmatic dependent launch on one stream = stream order".into(),
            &[
                ("MMOE_GPU_TUNE", "0"),
                ("MMOE_GPU_PDL", "1"),
                ("MMOE_GPU_STREAMS", "1"),
            ],
            untuned,
        ),
    ];
    for (choice, vars) in choices {
        let label = format!("each GEMM's tile choice {choice} = the plan's tiles");
        pairs.push((label, vars, untuned));
    }
    // The fused LayerNorm sums its statistics in 16-column chunks, the
    // same at every tile size, whichever tile of a band finishes last.
    let fused_norm: Vars = &[("MMOE_GPU_TUNE", "0"), ("MMOE_GPU_FUSED_NORM", "1")];
    let fused_norm_choices: [(&str, Vars); 2] = [
        (
            "7 (32×32)",
            &[("MMOE_GPU_TUNE", "choice=7"), ("MMOE_GPU_FUSED_NORM", "1")],
        ),
        (
            "9 (128×128)",
            &[("MMOE_GPU_TUNE", "choice=9"), ("MMOE_GPU_FUSED_NORM", "1")],
        ),
    ];
    for (choice, vars) in fused_norm_choices {
        let label = format!("fused LayerNorm: each GEMM's tile choice {choice} = the plan's tiles");
        pairs.push((label, vars, fused_norm));
    }
    // So do the fused logits' dot products.
    let fused_logit: Vars = &[("MMOE_GPU_TUNE", "0"), ("MMOE_GPU_FUSED_LOGIT", "1")];
    let fused_logit_choices: [(&str, Vars); 2] = [
        (
            "7 (32×32)",
            &[("MMOE_GPU_TUNE", "choice=7"), ("MMOE_GPU_FUSED_LOGIT", "1")],
        ),
        (
            "9 (128×128)",
            &[("MMOE_GPU_TUNE", "choice=9"), ("MMOE_GPU_FUSED_LOGIT", "1")],
        ),
    ];
    for (choice, vars) in fused_logit_choices {
        let label = format!("fused logits: each GEMM's tile choice {choice} = the plan's tiles");
        pairs.push((label, vars, fused_logit));
    }
    // With the sm_90a cubin (an H100 or H200), the launches are dependent
    // ones indeed; on other devices the option does nothing.
    let note = with_vars(&[("MMOE_GPU_PDL", "1")], || {
        open(&small.path, Device::Cuda(0), GpuPrecision::F16).map(|m| m.device_note().to_string())
    })
    .expect("small model opens on the GPU");
    println!("with MMOE_GPU_PDL=1: {note}");
    assert_eq!(
        note.contains("F16, sm_90a cubin"),
        note.contains("programmatic dependent launch"),
        "{note}"
    );
    // Most pairs compare against the untuned plan: its logits once per case
    // (each run opens the model: the module load and the upload).
    let untuned_logits: Vec<_> = cases
        .iter()
        .map(|&(_, path, config, n)| {
            with_vars(untuned, || {
                logits(path, config, Device::Cuda(0), GpuPrecision::F16, n)
            })
        })
        .collect();
    for (label, vars, other) in pairs {
        for (case, &(name, path, config, n)) in cases.iter().enumerate() {
            let run_with = |vars: Vars| {
                if vars == untuned {
                    return untuned_logits[case].clone();
                }
                with_vars(vars, || {
                    logits(path, config, Device::Cuda(0), GpuPrecision::F16, n)
                })
            };
            assert_eq!(
                run_with(vars),
                run_with(other),
                "{label}: {name} model, {n} candidates"
            );
            println!("{label}: {name} model, {n} candidates: identical logits");
        }
    }
}

/// Hopper's warpgroup MMA (`MMOE_GPU_WGMMA=1`, the sm_90a cubin: an H100 or
/// H200; elsewhere the option does nothing): each of its two tile choices
/// (15: 128×128, 16: 64×128) forced on every GEMM keeps the CPU parity
/// bound, and the test prints whether its logits are exactly the mma.sync
/// tiles' (the same k16 steps in the same order: whether the tensor cores
/// add each step as mma.sync does decides whether the tuning may take these
/// by default, as it takes the others, without a logit changing).
#[test]
fn gpu_wgmma_tiles_match_cpu() {
    if !has_gpu() {
        println!("skipped: no CUDA device");
        return;
    }
    let ((small_config, small), (demo_config, demo)) = small_and_demo_models();
    let note = with_vars(&[("MMOE_GPU_WGMMA", "1")], || {
        open(&small.path, Device::Cuda(0), GpuPrecision::F16).map(|m| m.device_note().to_string())
    })
    .expect("small model opens on the GPU");
    if !note.contains("sm_90a cubin") {
        println!("skipped: no sm_90a cubin on this device ({note})");
        return;
    }
    let cases = [
        ("small", &small.path, &small_config, 1),
        ("small", &small.path, &small_config, 300),
        ("demo", &demo.path, &demo_config, 32),
        ("demo", &demo.path, &demo_config, 1024),
    ];
    let mut identical = true;
    for (name, path, config, n) in cases {
        let plan = with_vars(&[("MMOE_GPU_TUNE", "0")], || {
            logits(path, config, Device::Cuda(0), GpuPrecision::F16, n)
        });
        let cpu = logits(path, config, Device::Cpu, GpuPrecision::F16, n);
        for choice in ["15", "16"] {
            let forced = format!("choice={choice}");
            let vars: Vars = &[("MMOE_GPU_WGMMA", "1"), ("MMOE_GPU_TUNE", forced.as_str())];
            let wgmma = with_vars(vars, || {
                logits(path, config, Device::Cuda(0), GpuPrecision::F16, n)
            });
            let delta = max_delta(&wgmma, &cpu);
            let same = wgmma == plan;
            identical &= same;
            println!(
                "wgmma tile choice {choice}: {name} model, {n} candidates: max |Δlogit| against the CPU {delta:e}, \
                 {} the mma.sync tiles' logits",
                if same { "exactly" } else { "not exactly" }
            );
            assert!(
                delta < 2e-2,
                "wgmma choice {choice}: {name} model off by {delta}"
            );
        }
    }
    println!("wgmma tiles: logits identical to the mma.sync tiles' in every case: {identical}");
}

/// Hot reload on the GPU: 4 threads score through one CUDA engine while it
/// reloads between two models; every call succeeds and returns exactly one
/// model's GPU scores; a corrupt file is refused and the old model serves on.
#[test]
fn gpu_engine_reloads_under_traffic() {
    if !has_gpu() {
        println!("skipped: no CUDA device");
        return;
    }
    let options = OpenOptions {
        device: Device::Cuda(0),
        gpu_precision: GpuPrecision::F16,
        ..OpenOptions::default()
    };
    // Cold reloads, then reloads that prepare a warmed-up session for each
    // scoring thread (sessions built on the reloading thread, used on theirs).
    for warm_up in [0, 256] {
        let run = common::reload_under_traffic(
            options.clone(),
            50,
            30,
            std::time::Duration::from_millis(5),
            warm_up,
        );
        println!(
            "GPU reloads (warm-up {warm_up}): model A served {} calls, model B {}",
            run.seen_a, run.seen_b
        );
        assert!(run.seen_a > 0 && run.seen_b > 0, "both models served");
    }
}

/// A warmed-up CUDA session scores as cold sessions do, also when a request
/// with long bags grows its staging buffer under the captured graphs (which
/// read the buffer's address from a cell) and on the buckets captured by
/// the warm-up after that.
#[test]
fn gpu_warm_up_and_a_growing_staging_buffer_keep_the_scores() {
    if !has_gpu() {
        println!("skipped: no CUDA device");
        return;
    }
    let (config, demo) = demo_model();
    let model = open(&demo.path, Device::Cuda(0), GpuPrecision::F16).unwrap();
    let score = common::session_logits;
    // Every bag 64 ids long: several times the staging of the warm-up's
    // empty bags and of the synthetic requests' 1–4 ids.
    let long_bags = |n: usize, seed: u64| {
        let mut request = mmoe::demo::synthetic_request(&config, n, seed);
        for (feature, input) in request.features.iter_mut().zip(&config.inputs) {
            if let mmoe::request::OwnedFeature::Sparse { ids, offsets } = feature {
                let rows = offsets.len() - 1;
                let table = input.rows.unwrap_or(1);
                *ids = (0..rows as u64 * 64).map(|i| (i * 7919) % table).collect();
                *offsets = (0..=rows as u32).map(|b| 64 * b).collect();
            }
        }
        request
    };
    let requests = [
        mmoe::demo::synthetic_request(&config, 1024, 1),
        mmoe::demo::synthetic_request(&config, 40, 2),
        long_bags(100, 3),
        mmoe::demo::synthetic_request(&config, 1024, 4),
        long_bags(1000, 5),
        mmoe::demo::synthetic_request(&config, 7, 6),
    ];
    let mut warm = Session::new(model.clone());
    assert_eq!(warm.backend(), Backend::Cuda);
    warm.warm_up(1024).unwrap();
    for request in &requests {
        let cold = score(&mut Session::new(model.clone()), request);
        assert_eq!(
            score(&mut warm, request),
            cold,
            "{} candidates: the warmed-up session differs from a cold one",
            request.candidates
        );
    }
    println!(
        "warm-up to 1024, then {} requests (two with 64-id bags): identical to cold sessions",
        requests.len()
    );
}

/// The phase trace (`mmoe bench --phases`) records one entry per call up
/// to its capacity, each with every phase measured and the parts inside
/// the whole, and leaves the logits as they were.
#[cfg(feature = "cuda")]
#[test]
fn gpu_phase_trace_records_each_call() {
    if !has_gpu() {
        println!("skipped: no CUDA device");
        return;
    }
    let (config, demo) = demo_model();
    let model = open(&demo.path, Device::Cuda(0), GpuPrecision::F16).unwrap();
    let request = mmoe::demo::synthetic_request(&config, 300, 8);
    let plain = common::session_logits(&mut Session::new(model.clone()), &request);
    let mut session = Session::new(model.clone());
    session.trace_gpu_phases(3).unwrap();
    assert!(session.gpu_phases().is_empty());
    for _ in 0..5 {
        assert_eq!(common::session_logits(&mut session, &request), plain);
    }
    let calls = session.gpu_phases();
    assert_eq!(calls.len(), 3, "{calls:?}");
    for c in calls {
        assert!(
            c.pack_us > 0.0 && c.wait_us > 0.0 && c.device_graph_us > 0.0,
            "{c:?}"
        );
        assert!(c.device_upload_us >= 0.0 && c.launch_us >= 0.0, "{c:?}");
        assert!(c.pack_us + c.launch_us + c.wait_us <= c.total_us, "{c:?}");
        assert!(c.device_graph_us < c.total_us, "{c:?}");
    }
    println!("phases of a 300-candidate call: {:?}", calls[2]);
    // A CPU session has no GPU calls to trace.
    let cpu = open(&demo.path, Device::Cpu, GpuPrecision::F16).unwrap();
    let err = Session::new(cpu).trace_gpu_phases(3).unwrap_err();
    assert!(err.message().contains("does not run on a GPU"), "{err}");
}
