//! The GPU path (launch plan + kernels/mmoe.cu), run on the host, against
//! the CPU exact path: every kernel variant the plan can choose.

use std::sync::Arc;

use mmoe::format::writer;
use mmoe::gpu::launch_plan::{bucket, Kernel, Loc, PlanOptions, Precision, Tiles};
use mmoe::request::{OwnedFeature, OwnedRequest};
use mmoe::{Config, DType, Model, OpenOptions, Scores, Session};
use mmoe_gpu_emu::EmuModel;

/// Every expert type at a few widths, in dimensions of a few dozen.
const SMALL_CONFIG: &str = include_str!("../../tests/common/small_config.json");
/// Every expert type again with layers wider than one 32-column stage of the
/// tensor-core kernel and widths that are not multiples of 16 (padding,
/// ranges, several K stages); three tasks.
const MEDIUM_CONFIG: &str = include_str!("models/medium.json");

fn packed(config: &Config, seed: u64) -> (test_support::TempDir, Arc<Model>) {
    packed_for_layout(config, seed, mmoe::format::LAYOUT_VERSION)
}

/// [`packed`] in a given tensor layout version.
fn packed_for_layout(
    config: &Config,
    seed: u64,
    layout_version: u32,
) -> (test_support::TempDir, Arc<Model>) {
    let tensors = mmoe::demo::synthetic_tensors(config, seed).expect("synthetic tensors");
    let dir = test_support::tempdir().expect("temp dir");
    let path = dir.path().join("model.mmoe");
    let f16 = DType::F16;
    writer::pack_for_layout(config, &tensors, f16, &path, &mut |_, _| {}, layout_version)
        .expect("pack");
    let model = Model::open(&path, &OpenOptions::default()).expect("open");
    (dir, model)
}

/// A kernel variant: precision and plan options, and the kernels (one of
/// them, depending on the bucket) that show the variant is really in the
/// plan.
struct Variant {
    name: &'static str,
    precision: Precision,
    options: PlanOptions,
    uses: &'static [Kernel],
    bound: f32,
}

/// Tiles of 128×128 from 64-row buckets, so requests of a few dozen
/// candidates run them.
const WIDE: Tiles = Tiles::Wide { from_rows: 64 };

fn variants() -> Vec<Variant> {
    // The defaults: unfused task heads, standard tiles, fp16 GEMM inputs.
    let plain = PlanOptions::default();
    let fused = PlanOptions {
        fused_heads: true,
        ..plain
    };
    let fused_norm = PlanOptions {
        fused_norm: true,
        ..plain
    };
    let fused_logit = PlanOptions {
        fused_logit: true,
        ..plain
    };
    vec![
        Variant {
            name: "f32 fused heads",
            precision: Precision::F32,
            options: fused,
            uses: &[Kernel::TaskHeadsF32],
            bound: 1e-4,
        },
        Variant {
            name: "f16",
            precision: Precision::F16,
            options: plain,
            uses: &[Kernel::LinearMma32H, Kernel::LinearMma64H],
            bound: 2e-2,
        },
        Variant {
            name: "f16 f32 values",
            precision: Precision::F16,
            options: PlanOptions {
                half_values: false,
                ..plain
            },
            uses: &[Kernel::LinearMma32H, Kernel::LinearMma64H],
            bound: 2e-2,
        },
        Variant {
            name: "f16 wide tiles",
            precision: Precision::F16,
            options: PlanOptions {
                tiles: WIDE,
                ..plain
            },
            uses: &[Kernel::LinearMma32H, Kernel::LinearMma128H],
            bound: 2e-2,
        },
        Variant {
            name: "f16 fused heads",
            precision: Precision::F16,
            options: fused,
            uses: &[Kernel::TaskHeadsF16],
            bound: 2e-2,
        },
        Variant {
            name: "f32",
            precision: Precision::F32,
            options: plain,
            uses: &[Kernel::Mixture],
            bound: 1e-4,
        },
        Variant {
            name: "f16 fused norm",
            precision: Precision::F16,
            options: fused_norm,
            uses: &[Kernel::LinearMma32H, Kernel::LinearMma64H],
            bound: 2e-2,
        },
        Variant {
            name: "f32 fused norm",
            precision: Precision::F32,
            options: fused_norm,
            uses: &[Kernel::LinearSimtF32],
            bound: 1e-4,
        },
        Variant {
            name: "f16 fused logit",
            precision: Precision::F16,
            options: fused_logit,
            uses: &[Kernel::LinearMma32H, Kernel::LinearMma64H],
            bound: 2e-2,
        },
        Variant {
            name: "f32 fused logit",
            precision: Precision::F32,
            options: fused_logit,
            uses: &[Kernel::LinearSimtF32],
            bound: 1e-4,
        },
    ]
}

/// The CPU exact path's logits for `request`.
fn cpu_logits(model: &Arc<Model>, request: &OwnedRequest) -> Vec<f32> {
    let mut cpu = vec![0.0; request.candidates * model.num_tasks()];
    Session::new(model.clone())
        .score(
            &request.as_request(),
            &mut Scores {
                logits: Some(&mut cpu),
                probabilities: None,
            },
        )
        .expect("cpu scores");
    cpu
}

/// Max |a − b| over two sets of logits.
fn max_delta(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(
            0.0,
            |most: f32, d| if d.is_nan() || d > most { d } else { most },
        )
}

/// Max |Δlogit| of the emulated GPU path against the CPU exact path.
fn emu_vs_cpu(model: &Arc<Model>, variant: &Variant, n: usize, seed: u64) -> f32 {
    let request = mmoe::demo::synthetic_request(model.config(), n, seed);
    let cpu = cpu_logits(model, &request);
    let scores = emu_scores(
        model,
        variant.precision,
        variant.options,
        variant.uses,
        n,
        seed,
    );
    assert_eq!(scores.len(), cpu.len());
    assert!(scores.iter().all(|v| v.is_finite()), "{scores:?}");
    max_delta(&cpu, &scores)
}

/// The emulated GPU path's logits for `n` candidates; one of `uses` must
/// be in the plan.
fn emu_scores(
    model: &Arc<Model>,
    precision: Precision,
    options: PlanOptions,
    uses: &[Kernel],
    n: usize,
    seed: u64,
) -> Vec<f32> {
    let request = mmoe::demo::synthetic_request(model.config(), n, seed);
    let emu = EmuModel::new(model.clone(), precision, options);
    let plan = emu.plan(bucket(n));
    assert!(
        plan.launches.iter().any(|l| uses.contains(&l.kernel)),
        "no launch of {uses:?} for {n} candidates"
    );
    emu.score(&request.as_request())
        .expect("emulated GPU scores")
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

/// FinalMLP's bilinear sum three ways on the GPU path, each against the CPU
/// path of the same file: a tensor-core Linear layer over `outer_heads`
/// (layout version 2), the direct `bilinear` kernel over version 1's flat
/// array, and the direct kernel over version 2's layout where the outer
/// products would be too wide (the upload turns it back into the flat
/// array).
#[test]
fn bilinear_sums_of_both_layout_versions_match_cpu() {
    let wide = include_str!("../../tests/common/wide_bilinear_config.json");
    for (config, layout_version, kernel) in [
        (SMALL_CONFIG, 2, Kernel::OuterHeads),
        (SMALL_CONFIG, 1, Kernel::Bilinear),
        (wide, 2, Kernel::Bilinear),
    ] {
        let config = Config::parse(config).unwrap();
        let (_dir, model) = packed_for_layout(&config, 3, layout_version);
        for (precision, bound) in [(Precision::F32, 1e-4), (Precision::F16, 2e-2)] {
            let n = 9;
            let request = mmoe::demo::synthetic_request(model.config(), n, 4);
            let cpu = cpu_logits(&model, &request);
            let options = PlanOptions::default();
            let scores = emu_scores(&model, precision, options, &[kernel], n, 4);
            let delta = max_delta(&cpu, &scores);
            let label = format!("{}, version {layout_version}, {precision:?}", config.name);
            println!("{label}: max |Δlogit| {delta:e}");
            assert!(delta < bound, "{label}: off by {delta}");
        }
    }
}

/// The outer products of a bilinear sum are products of two activations:
/// with activations in the hundreds they pass fp16's range (65504) where
/// the activations do not. Their fp16 copy is scaled by 2^-6
/// (`OUTER_HEADS_X16_EXP`) and the GEMM's sums scaled back, so fp16 compute
/// scores such a model like the CPU (unscaled, the products were inf).
#[test]
fn outer_products_past_fp16_range_are_scaled() {
    let config = Config::parse(SMALL_CONFIG).unwrap();
    let mut tensors = mmoe::demo::synthetic_tensors(&config, 3).unwrap();
    let scaled = [
        ("experts.f.mlp1.0.weight", 400.0),
        ("experts.f.mlp1.0.bias", 400.0),
        ("experts.f.mlp2.0.weight", 400.0),
        ("experts.f.mlp2.0.bias", 400.0),
        ("experts.f.agg.w_xy", 2e-3),
    ];
    for (name, factor) in scaled {
        for v in tensors.get_mut(name).unwrap().iter_mut() {
            *v *= factor;
        }
    }
    let dir = test_support::tempdir().unwrap();
    let path = dir.path().join("model.mmoe");
    writer::pack(&config, &tensors, DType::F16, &path, &mut |_, _| {}).unwrap();
    let model = Model::open(&path, &OpenOptions::default()).unwrap();
    let request = mmoe::demo::synthetic_request(model.config(), 33, 4);
    let cpu = cpu_logits(&model, &request);
    // 33 candidates: the 64-row bucket; x from the fp16 copies or from f32.
    for (tiles, half_x, uses) in [
        (Tiles::Standard, true, Kernel::LinearMma64H),
        (Tiles::Standard, false, Kernel::LinearMma64),
        (WIDE, true, Kernel::LinearMma128H),
        (WIDE, false, Kernel::LinearMma128),
    ] {
        {
            let options = PlanOptions {
                tiles,
                half_x,
                ..PlanOptions::default()
            };
            let scores = emu_scores(&model, Precision::F16, options, &[uses], 33, 4);
            for (i, (c, g)) in cpu.iter().zip(&scores).enumerate() {
                assert!(
                    (c - g).abs() <= 2e-2 * (1.0 + c.abs()),
                    "{tiles:?}, fp16 x copies {half_x}, logit {i}: {g} against the CPU's {c}"
                );
            }
        }
    }
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
    // Without the fused LayerNorm: the model has no MaskNet expert.
    let f16: Vec<Variant> = variants()
        .into_iter()
        .filter(|v| v.precision == Precision::F16 && !v.options.fused_norm)
        .collect();
    check("demo model", &model, &f16[..1], &[1], 8);
    check("demo model", &model, &f16, &[33], 8);
}

/// The mixture kernel computes a row's softmax weights once per block, a
/// thread per task, for up to 64 experts (`MIX_EXPERTS`) and 8 tasks
/// (`MIX_TASKS`), and per thread beyond: both forms, with 64 and 65 small
/// experts and two tasks, 3 experts and 8 or 9 tasks, and one expert (no
/// gates), against the CPU.
#[test]
fn mixtures_of_many_experts_and_tasks_match_cpu() {
    for (count, tasks) in [(64, 2), (65, 2), (3, 8), (3, 9), (1, 2)] {
        let experts: Vec<String> = (0..count)
            .map(|i| format!(r#"{{"name": "e{i}", "type": "mlp", "hidden": [8]}}"#))
            .collect();
        // Towers on even tasks, a light gate's hidden layer on odd ones.
        let tasks_json: Vec<String> = (0..tasks)
            .map(|t| match t % 2 {
                0 => format!(r#"{{"name": "t{t}", "tower": [8]}}"#),
                _ => format!(r#"{{"name": "t{t}", "gate_hidden": [4]}}"#),
            })
            .collect();
        let config = Config::parse(&format!(
            r#"{{"name": "many", "expert_dim": 8,
            "inputs": [{{"name": "a", "kind": "dense", "scope": "candidate", "dim": 16}}],
            "experts": [{}],
            "tasks": [{}]}}"#,
            experts.join(", "),
            tasks_json.join(", ")
        ))
        .unwrap();
        let (_dir, model) = packed(&config, 13);
        let plain: Vec<Variant> = variants()
            .into_iter()
            .filter(|v| v.name == "f32" || v.name == "f16")
            .collect();
        check(
            &format!("{count} experts, {tasks} tasks"),
            &model,
            &plain,
            &[1, 33],
            9,
        );
    }
}

/// Long bags: the feature kernels sum a bag four ids at a time and then the
/// rest (a request bag split over a warp's 32 lanes, a candidate bag in one
/// thread). A request bag of 301 ids, candidate bags of 0 to 13 (none, the
/// rest only, exactly four, four and a rest), ids below and far past the
/// rows, f32 and f16 precision, against the CPU.
#[test]
fn long_bags_match_cpu() {
    let config = Config::parse(
        r#"{"name": "bags", "expert_dim": 8,
        "inputs": [
            {"name": "history", "kind": "sparse", "scope": "request", "rows": 1000, "dim": 16, "pooling": "mean"},
            {"name": "ad", "kind": "sparse", "scope": "candidate", "rows": 500, "dim": 8, "pooling": "sum"},
            {"name": "price", "kind": "dense", "scope": "candidate", "dim": 4}
        ],
        "experts": [{"name": "e0", "type": "mlp", "hidden": [16, 8]}, {"name": "e1", "type": "mlp", "hidden": [8]}],
        "tasks": [{"name": "click", "tower": [8]}]}"#,
    )
    .unwrap();
    let (_dir, model) = packed(&config, 21);
    let lengths = [0usize, 1, 4, 7, 13];
    let mut request = mmoe::demo::synthetic_request(model.config(), lengths.len(), 3);
    // Every third id past 2³²: the host reduces ids modulo the rows before
    // it narrows them to u32 (`staging::ids_as_u32`).
    let ids = |count: usize, salt: u64| -> Vec<u64> {
        (0..count as u64)
            .map(|j| (j * 7919 + salt * 104_729) % 100_000 + if j % 3 == 0 { 5 << 32 } else { 0 })
            .collect()
    };
    request.features[0] = OwnedFeature::Sparse {
        ids: ids(301, 1),
        offsets: vec![0, 301],
    };
    let mut offsets = vec![0u32];
    for &n in &lengths {
        offsets.push(offsets.last().unwrap() + n as u32);
    }
    request.features[1] = OwnedFeature::Sparse {
        ids: ids(lengths.iter().sum(), 2),
        offsets,
    };
    let cpu = cpu_logits(&model, &request);
    for (precision, bound) in [(Precision::F32, 1e-4), (Precision::F16, 2e-2)] {
        let emu = EmuModel::new(model.clone(), precision, PlanOptions::default());
        let scores = emu.score(&request.as_request()).expect("emulated scores");
        let delta = max_delta(&cpu, &scores);
        println!("long bags, {precision:?}: max |Δlogit| {delta:e}");
        assert!(delta < bound, "{precision:?}: {cpu:?} against {scores:?}");
        // The candidate bags' ids as u64 (a table of 2³² rows or more),
        // after the request bag's 301 u32 ids (an odd count: the u64 ids
        // start at the next 8-byte boundary): the same sums.
        let wide =
            EmuModel::new(model.clone(), precision, PlanOptions::default()).with_u64_ids(&[1]);
        let wide_scores = wide.score(&request.as_request()).expect("emulated scores");
        assert_eq!(
            wide_scores, scores,
            "{precision:?}: u64 ids against u32 ids"
        );
    }
}

/// Candidate values uploaded as fp16 (`PlanOptions::half_values`, the
/// default with fp16 compute) give the logits of f32 values bit for bit
/// where every value is exact in fp16: among them finite values beyond
/// fp16's range under a clip (±inf on the device, clipped to the same
/// bound) and missing values (NaN, ±inf: zero), with a DCN expert (x0 in
/// the cross combine) and MaskNet (x0's LayerNorm). Values not exact in
/// fp16 change the logits: the option is really in effect.
#[test]
fn half_values_give_the_logits_of_f32_values_when_exact_in_fp16() {
    let config = Config::parse(
        r#"{"name": "values", "expert_dim": 8,
        "inputs": [
            {"name": "u", "kind": "dense", "scope": "request", "dim": 3, "transform": ["standardize"]},
            {"name": "a", "kind": "dense", "scope": "candidate", "dim": 7, "clip": 2.5, "missing": "zero"},
            {"name": "b", "kind": "dense", "scope": "candidate", "dim": 9, "missing": "zero"},
            {"name": "l", "kind": "dense", "scope": "candidate", "dim": 2, "transform": ["log1p"]},
            {"name": "s", "kind": "sparse", "scope": "candidate", "rows": 50, "dim": 4, "pooling": "sum"}
        ],
        "experts": [
            {"name": "d", "type": "dcnv2", "cross_layers": 2, "rank": 4, "structure": "stacked", "deep": [16, 8]},
            {"name": "k", "type": "masknet", "mode": "serial", "blocks": [16], "mask_hidden": 8, "head": [8]},
            {"name": "m", "type": "mlp", "hidden": [16, 8]}
        ],
        "tasks": [{"name": "click", "tower": [8]}, {"name": "save"}]}"#,
    )
    .unwrap();
    let (_dir, model) = packed(&config, 17);
    let n = 37;
    let raw = mmoe::demo::synthetic_request(model.config(), n, 4);
    let mut exact = raw.clone();
    let to_f16 = |v: f32| half::f16::from_bits(mmoe::cpu::to_f16::value_to_f16(v)).to_f32();
    for input in [1, 2] {
        let OwnedFeature::Dense(values) = &mut exact.features[input] else {
            panic!("input {input} is dense");
        };
        for v in values.iter_mut() {
            *v = to_f16(*v);
        }
        values[3] = f32::NAN;
        values[10] = f32::INFINITY;
        values[11] = f32::NEG_INFINITY;
        if input == 1 {
            values[5] = 1e5;
            values[12] = -3e7;
            values[20] = 70000.0;
        }
    }
    let options = PlanOptions::default();
    assert!(options.half_values);
    let f32_values = PlanOptions {
        half_values: false,
        ..options
    };
    let uses = [Kernel::LinearMma64H];
    let half = emu_scores_of(&model, options, &uses, &exact);
    let f32 = emu_scores_of(&model, f32_values, &uses, &exact);
    assert!(half.iter().all(|v| v.is_finite()), "{half:?}");
    assert_eq!(half, f32, "fp16 against f32 values, exact in fp16");
    let cpu = cpu_logits(&model, &exact);
    let delta = max_delta(&cpu, &half);
    println!("values exact in fp16: identical logits; against the CPU max |Δlogit| {delta:e}");
    assert!(delta < 2e-2, "{cpu:?} against {half:?}");
    let half = emu_scores_of(&model, options, &uses, &raw);
    let f32 = emu_scores_of(&model, f32_values, &uses, &raw);
    assert_ne!(half, f32, "values not exact in fp16 gave identical logits");
    let cpu = cpu_logits(&model, &raw);
    let (d_half, d_f32) = (max_delta(&cpu, &half), max_delta(&cpu, &f32));
    println!("values not exact in fp16: max |Δlogit| against the CPU {d_half:e} (fp16 values), {d_f32:e} (f32)");
    assert!(d_half < 2e-2 && d_f32 < 2e-2, "{d_half} {d_f32}");
}

/// The emulated fp16 GPU path's logits for `request`; one of `uses` must be
/// in the plan.
fn emu_scores_of(
    model: &Arc<Model>,
    options: PlanOptions,
    uses: &[Kernel],
    request: &OwnedRequest,
) -> Vec<f32> {
    let emu = EmuModel::new(model.clone(), Precision::F16, options);
    let plan = emu.plan(bucket(request.candidates));
    assert!(plan.launches.iter().any(|l| uses.contains(&l.kernel)));
    emu.score(&request.as_request())
        .expect("emulated GPU scores")
}

/// The fp16 copies of x (the `…h` kernels: cp.async pipelines) give exactly
/// the logits of the kernels that convert the f32 activations themselves:
/// the same roundings, tiles and order of sums. Each tile size, on the
/// medium model (partial tiles, ranges, several buckets) and the demo model.
#[test]
fn half_inputs_give_the_same_logits_as_f32_inputs() {
    let medium = Config::parse(MEDIUM_CONFIG).unwrap();
    let demo = Config::parse(mmoe::demo::BENCH_MODEL_JSON).unwrap();
    let (_medium_dir, medium) = packed(&medium, 11);
    let (_demo_dir, demo) = packed(&demo, 7);
    let standard = PlanOptions::default();
    let wide = PlanOptions {
        tiles: WIDE,
        ..standard
    };
    let cases = [
        (
            "medium",
            &medium,
            standard,
            1,
            Kernel::LinearMma32H,
            Kernel::LinearMma32,
        ),
        (
            "medium",
            &medium,
            standard,
            70,
            Kernel::LinearMma64H,
            Kernel::LinearMma64,
        ),
        (
            "medium",
            &medium,
            wide,
            40,
            Kernel::LinearMma128H,
            Kernel::LinearMma128,
        ),
        (
            "demo",
            &demo,
            standard,
            33,
            Kernel::LinearMma64H,
            Kernel::LinearMma64,
        ),
        (
            "demo",
            &demo,
            wide,
            3,
            Kernel::LinearMma32H,
            Kernel::LinearMma32,
        ),
    ];
    for (label, model, options, n, half_kernel, f32_kernel) in cases {
        let f32_options = PlanOptions {
            half_x: false,
            ..options
        };
        let half = emu_scores(model, Precision::F16, options, &[half_kernel], n, 9);
        let f32_x = emu_scores(model, Precision::F16, f32_options, &[f32_kernel], n, 9);
        assert_eq!(half, f32_x, "{label} model, {n} candidates, {options:?}");
        println!("{label} model, {n} candidates, {options:?}: identical logits");
    }
}

/// Buffers that only tensor-core GEMMs read keep only their fp16 copy
/// (`PlanOptions::half_only`, the default): the logits of the plan that
/// keeps every f32 buffer, bit for bit, with some buffers dropped indeed.
#[test]
fn fp16_only_buffers_give_the_logits_of_kept_f32_buffers() {
    let small = Config::parse(SMALL_CONFIG).unwrap();
    let medium = Config::parse(MEDIUM_CONFIG).unwrap();
    let (_small_dir, small) = packed(&small, 3);
    let (_medium_dir, medium) = packed(&medium, 11);
    let half_only = PlanOptions::default();
    let kept = PlanOptions {
        half_only: false,
        ..half_only
    };
    for (label, model, n) in [("small", &small, 33), ("medium", &medium, 40)] {
        let request = mmoe::demo::synthetic_request(model.config(), n, 9);
        let only = EmuModel::new(model.clone(), Precision::F16, half_only);
        let dropped = only
            .plan(bucket(n))
            .f32_unread
            .iter()
            .filter(|&&u| u)
            .count();
        assert!(dropped > 0, "{label}: no buffer without f32 values");
        let all = EmuModel::new(model.clone(), Precision::F16, kept);
        assert!(all.plan(bucket(n)).f32_unread.iter().all(|&u| !u));
        let (a, b) = (
            only.score(&request.as_request()).expect("scores"),
            all.score(&request.as_request()).expect("scores"),
        );
        assert_eq!(a, b, "{label} model");
        println!(
            "{label} model, {n} candidates: {dropped} buffers without f32 values, identical logits"
        );
    }
}

/// The runtime may run each grouped GEMM with any of its tile sizes
/// (`LaunchPlan::tile_choices`, timed on the device): every choice gives
/// exactly the plan's own logits, since the order of the sums over K is the
/// same at every tile size. Each launch rotated through its choices, fp16
/// and f32 inputs, on the medium model (partial tiles, ranges) and the demo
/// model.
#[test]
fn every_tile_choice_gives_the_same_logits() {
    let medium = Config::parse(MEDIUM_CONFIG).unwrap();
    let demo = Config::parse(mmoe::demo::BENCH_MODEL_JSON).unwrap();
    let (_medium_dir, medium) = packed(&medium, 11);
    let (_demo_dir, demo) = packed(&demo, 7);
    let f32_inputs = PlanOptions {
        half_x: false,
        ..PlanOptions::default()
    };
    for (label, model, n) in [("medium", &medium, 100), ("demo", &demo, 5)] {
        // f32 inputs on the medium model only: the demo model is slow here.
        let options = if label == "demo" {
            &[PlanOptions::default()][..]
        } else {
            &[PlanOptions::default(), f32_inputs][..]
        };
        for &options in options {
            let request = mmoe::demo::synthetic_request(model.config(), n, 9);
            let emu = EmuModel::new(model.clone(), Precision::F16, options);
            let plan = emu.plan(bucket(n));
            let tuned = plan.tile_choices.iter().filter(|c| c.len() >= 3).count();
            assert!(tuned >= 3, "{label}: {tuned} launches with tile choices");
            let most = plan.tile_choices.iter().map(Vec::len).max().unwrap_or(0);
            assert_eq!(most, if options.half_x { 17 } else { 3 });
            let own = emu.score(&request.as_request()).expect("scores");
            // The demo model is slow here: every other shift (each launch
            // still meets several choices, and the medium model all).
            let step = if label == "demo" { 2 } else { 1 };
            for shift in (1..most).step_by(step) {
                let pick = move |i: usize, _: usize| i + shift;
                let other = emu
                    .score_with_tiles(&request.as_request(), &pick)
                    .expect("scores");
                assert_eq!(
                    own, other,
                    "{label} model, choices shifted by {shift}, {options:?}"
                );
            }
            println!(
                "{label} model, {n} candidates, half_x {}: identical logits with the choices shifted by {:?}",
                options.half_x,
                (1..most).step_by(step).collect::<Vec<_>>()
            );
        }
    }
}

/// The logits of `options` with an epilogue left to the last tile of each
/// band of rows (`fused_norm`, `fused_logit`), checked to be the same
/// whichever end of a launch's blocks runs first (two calls: the emulator
/// runs them ascending in one and descending in the other), for another
/// request on the same arena as on a new one (a counter left set would
/// show), with every GEMM run twice in a row (as the device's tile timing
/// runs them), and at every tile choice. Returns them and the most tile
/// choices of a launch.
fn band_epilogue_logits(
    label: &str,
    model: &Arc<Model>,
    precision: Precision,
    options: PlanOptions,
    request: &OwnedRequest,
) -> (Vec<f32>, usize) {
    let emu = EmuModel::new(model.clone(), precision, options);
    let one = emu.score(&request.as_request()).expect("scores");
    let other = emu.score(&request.as_request()).expect("scores");
    assert_eq!(one, other, "{label} {precision:?}: block orders");
    let next = mmoe::demo::synthetic_request(model.config(), request.candidates, 10);
    let next_logits = emu.score(&next.as_request()).expect("scores");
    let first = EmuModel::new(model.clone(), precision, options);
    let first = first.score(&next.as_request()).expect("scores");
    assert_eq!(next_logits, first, "{label} {precision:?}: another request");
    let repeated = EmuModel::new(model.clone(), precision, options).with_repeated_gemms();
    let twice = repeated.score(&request.as_request()).expect("scores");
    assert_eq!(one, twice, "{label} {precision:?}: GEMMs run twice");
    let plan = emu.plan(bucket(request.candidates));
    let most = plan.tile_choices.iter().map(Vec::len).max().unwrap_or(0);
    for shift in 1..most {
        let pick = move |i: usize, _: usize| i + shift;
        let tiles = emu
            .score_with_tiles(&request.as_request(), &pick)
            .expect("scores");
        assert_eq!(
            one, tiles,
            "{label} {precision:?}: choices shifted by {shift}"
        );
    }
    (one, most)
}

/// Each task's logit fused into its tower's last hidden layer
/// (`fused_logit`): no logit layer is left but those of towers without
/// hidden layers (they read the mixture), and the logits are those of the
/// separate layers but for the order of the sums (and, in f16, for the
/// hidden values, which the epilogue reads in f32 where the logit layer
/// read their fp16 copy); the same at every tile size, whichever tile of a
/// band of rows finishes last (two calls, the blocks run ascending and
/// descending), and with every GEMM run twice in a row, as the tile timing
/// does. Last hidden layers below, at and past one 16-column chunk, ending
/// mid-chunk, and one of 130 columns over several column tiles; a tower of
/// two hidden layers (the first stays as it is); f16 and f32 (the SIMT
/// kernel).
#[test]
fn fused_logits_match_separate_logit_layers_at_every_tile_size() {
    let small = Config::parse(SMALL_CONFIG).unwrap();
    let medium = Config::parse(MEDIUM_CONFIG).unwrap();
    let mut wide: serde_json::Value = serde_json::from_str(SMALL_CONFIG).unwrap();
    wide["tasks"][0]["tower"] = serde_json::json!([130]);
    let wide = Config::parse(&wide.to_string()).unwrap();
    let (_small_dir, small) = packed(&small, 3);
    let (_medium_dir, medium) = packed(&medium, 11);
    let (_wide_dir, wide) = packed(&wide, 7);
    let separate = PlanOptions::default();
    let fused = PlanOptions {
        fused_logit: true,
        ..separate
    };
    let models = [
        ("small", &small, 33),
        ("medium", &medium, 40),
        ("wide tower", &wide, 20),
    ];
    for (label, model, n) in models {
        let tasks = model.num_tasks();
        let towers = model.config().tasks.iter();
        let towers = towers.filter(|t| !t.tower.is_empty()).count();
        assert!(towers > 0 && towers < tasks, "{label}: {towers} towers");
        let request = mmoe::demo::synthetic_request(model.config(), n, 9);
        let cpu = cpu_logits(model, &request);
        for (precision, bound) in [(Precision::F16, 2e-3), (Precision::F32, 1e-5)] {
            // (logit layers writing the logits, epilogues writing them)
            let writers = |options: PlanOptions| {
                let plan = EmuModel::new(model.clone(), precision, options).plan(bucket(n));
                let problems = plan.problems.iter();
                let layers = problems.clone().filter(|p| p.y == Loc::Logits).count();
                (layers, problems.filter(|p| p.logits == Loc::Logits).count())
            };
            assert_eq!(writers(separate), (tasks, 0), "{label}");
            assert_eq!(writers(fused), (tasks - towers, towers), "{label}");
            let (one, most) = band_epilogue_logits(label, model, precision, fused, &request);
            let apart = EmuModel::new(model.clone(), precision, separate)
                .score(&request.as_request())
                .expect("scores");
            let (to_separate, to_cpu) = (max_delta(&one, &apart), max_delta(&one, &cpu));
            println!(
                "{label} model, {n} candidates, {precision:?}: fused against separate logit layers \
                 {to_separate:e}, against the CPU {to_cpu:e}; identical at {} tile choices",
                most.max(1)
            );
            assert!(to_separate < bound, "{label} {precision:?}: {to_separate}");
            assert!(to_cpu < bound, "{label} {precision:?}: {to_cpu}");
        }
    }
}

/// MaskNet's LayerNorm fused into the GEMM epilogue (`fused_norm`): no
/// `layer_norm` launch is left but those of `v = LN(x0)`, and the logits
/// are those of the separate launches but for the order of the statistics'
/// sums; the same at every tile size, whichever tile of a band of rows
/// finishes last (two calls: the emulator runs each launch's blocks
/// ascending in one and descending in the other), and with every GEMM run
/// twice in a row, as the tile timing does on the device (the band
/// counters go back to zero). Widths below, at and past one 16-column
/// chunk, ending mid-chunk; f16 and f32 (the SIMT kernel's 16×16 tiles).
#[test]
fn fused_layer_norms_match_separate_ones_at_every_tile_size() {
    let small = Config::parse(SMALL_CONFIG).unwrap();
    let medium = Config::parse(MEDIUM_CONFIG).unwrap();
    // A serial MaskNet with a head, whose first layer reads the last
    // block's output through the fp16 copy the fused LayerNorm writes.
    let mut headed: serde_json::Value = serde_json::from_str(SMALL_CONFIG).unwrap();
    headed["experts"] = serde_json::json!([
        {"name": "k", "type": "masknet", "mode": "serial", "blocks": [24, 40],
         "mask_hidden": 16, "head": [32, 8]},
        {"name": "m", "type": "mlp", "hidden": [8]}
    ]);
    let headed = Config::parse(&headed.to_string()).unwrap();
    let (_small_dir, small) = packed(&small, 3);
    let (_medium_dir, medium) = packed(&medium, 11);
    let (_headed_dir, headed) = packed(&headed, 5);
    let separate = PlanOptions::default();
    let fused = PlanOptions {
        fused_norm: true,
        ..separate
    };
    let models = [
        ("small", &small, 33),
        ("medium", &medium, 40),
        ("serial MaskNet with a head", &headed, 20),
    ];
    for (label, model, n) in models {
        let block_counts = model.config().experts.iter().filter_map(|e| match &e.kind {
            mmoe::config::ExpertKind::Masknet { blocks, .. } => Some(blocks.len()),
            _ => None,
        });
        let (masknets, blocks) = (block_counts.clone().count(), block_counts.sum::<usize>());
        assert!(
            masknets > 0 && blocks > masknets,
            "{label}: {masknets} MaskNets"
        );
        let request = mmoe::demo::synthetic_request(model.config(), n, 9);
        let cpu = cpu_logits(model, &request);
        for (precision, bound) in [(Precision::F16, 2e-3), (Precision::F32, 1e-5)] {
            let norms = |options: PlanOptions| {
                let emu = EmuModel::new(model.clone(), precision, options);
                let plan = emu.plan(bucket(n));
                let launches = plan.launches.iter();
                launches.filter(|l| l.kernel == Kernel::LayerNorm).count()
            };
            assert_eq!(norms(separate), masknets + blocks, "{label}");
            assert_eq!(norms(fused), masknets, "{label}");
            let (one, most) = band_epilogue_logits(label, model, precision, fused, &request);
            let apart = EmuModel::new(model.clone(), precision, separate)
                .score(&request.as_request())
                .expect("scores");
            let (to_separate, to_cpu) = (max_delta(&one, &apart), max_delta(&one, &cpu));
            println!(
                "{label} model, {n} candidates, {precision:?}: fused against separate LayerNorm \
                 {to_separate:e}, against the CPU {to_cpu:e}; identical at {} tile choices",
                most.max(1)
            );
            assert!(to_separate < bound, "{label} {precision:?}: {to_separate}");
        }
    }
}
