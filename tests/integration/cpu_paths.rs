//! Every CPU kernel path against the scalar reference on models of every
//! expert type, with proof that the path ran: each forced ISA, and the bf16
//! mode with its accuracy cost measured and bounded.

use crate::common;

use std::process::Command;

use common::{pack, session_logits, small, SMALL_CONFIG};
use mmoe::cpu::{self, Isa};
use mmoe::{Backend, Config, CpuMode, DType, Session};

fn max_delta(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0,
            |most: f32, d| if d.is_nan() || d > most { d } else { most },
        )
}

/// Models of every expert type and mode: the small model, plus variants.
fn configs() -> Vec<Config> {
    use serde_json::{json, Value};
    type Edit = Box<dyn Fn(&mut Value)>;
    let variants: Vec<Edit> = vec![
        Box::new(|_| {}),
        // DCNv2 full rank, stacked.
        Box::new(|v| {
            v["experts"][0] = json!({"name": "d", "type": "dcnv2", "cross_layers": 3, "rank": null,
                "structure": "stacked", "deep": [12, 8]})
        }),
        // MaskNet serial without head.
        Box::new(|v| {
            v["experts"][2] = json!({"name": "k", "type": "masknet", "mode": "serial", "blocks": [5, 8],
                "mask_hidden": 7, "head": []})
        }),
        // FinalMLP without feature selection; a learned context on both streams.
        Box::new(|v| {
            v["experts"][3] = json!({"name": "f", "type": "finalmlp", "mlp1": [8, 8], "mlp2": [6], "heads": 2,
                "feature_selection": false})
        }),
        Box::new(|v| {
            v["experts"][3] = json!({"name": "f", "type": "finalmlp", "mlp1": [9], "mlp2": [6], "heads": 3,
                "feature_selection": true, "fs_hidden": [], "fs1_context": [], "fs2_context": []})
        }),
        // One expert (its gate present in synthetic tensors), MLP gates.
        Box::new(|v| {
            v["experts"] = json!([{"name": "m", "type": "mlp", "hidden": [8]}]);
            v["tasks"][0]["gate_hidden"] = json!([3]);
        }),
    ];
    variants
        .iter()
        .enumerate()
        .map(|(i, edit)| {
            let mut v: Value = serde_json::from_str(SMALL_CONFIG).unwrap();
            edit(&mut v);
            v["name"] = json!(format!("variant{i}"));
            Config::parse(&v.to_string()).unwrap_or_else(|e| panic!("variant {i}: {e}"))
        })
        .collect()
}

#[test]
fn every_supported_isa_matches_the_reference_and_runs() {
    let configs = configs();
    assert!(configs.len() >= 2, "variants parse");
    for config in &configs {
        let tensors = mmoe::demo::synthetic_tensors(config, 5).unwrap();
        for dtype in [DType::F16, DType::F32] {
            let packed = pack(config, &tensors, dtype);
            let model = packed.open();
            let request = mmoe::demo::synthetic_request(config, 45, 2);
            let reference = session_logits(
                &mut Session::with_backend(model.clone(), Backend::Reference),
                &request,
            );
            for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
                let mut session = Session::with_backend(model.clone(), Backend::Cpu);
                session.set_isa(isa).unwrap();
                let before = cpu::calls(isa);
                let fast = session_logits(&mut session, &request);
                assert!(
                    cpu::calls(isa) > before,
                    "the {} kernels did not run",
                    isa.name()
                );
                for (i, (a, b)) in fast.iter().zip(&reference).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{} logit {i}: {a} vs {b}",
                        isa.name()
                    );
                }
            }
        }
    }
    // An ISA the CPU lacks is refused, never emulated.
    for isa in Isa::ALL.into_iter().filter(|i| !i.supported()) {
        let (_, _, packed) = small(DType::F16);
        assert!(Session::new(packed.open()).set_isa(isa).is_err());
    }
}

#[test]
fn forcing_an_isa_through_the_environment_runs_it() {
    let (_, _, packed) = small(DType::F16);
    let line = serde_json::json!({
        "n": 3,
        "dense": {"u": [0.5, 1.0, -1.0, 2.0], "a": (0..3).map(|c| vec![c as f32; 6]).collect::<Vec<_>>()},
        "sparse": {"us": [[1, 2]], "as": [[1], [2, 3], []]}
    });
    let requests = packed.dir.path().join("r.jsonl");
    std::fs::write(&requests, line.to_string()).unwrap();
    for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
        let out = Command::new(env!("CARGO_BIN_EXE_mmoe"))
            .env("MMOE_ISA", isa.name())
            .args(["score", "--model"])
            .arg(&packed.path)
            .arg("--requests")
            .arg(&requests)
            .arg("--out")
            .arg(packed.dir.path().join("s.jsonl"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        for other in Isa::ALL {
            let calls = stderr
                .split(&format!("{} ", other.name()))
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no call count for {} in: {stderr}", other.name()));
            assert_eq!(calls > 0, other == isa, "MMOE_ISA={}: {stderr}", isa.name());
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_mmoe"))
        .env("MMOE_ISA", "sse9")
        .args(["score", "--model"])
        .arg(&packed.path)
        .arg("--requests")
        .arg(&requests)
        .arg("--out")
        .arg(packed.dir.path().join("s.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MMOE_ISA=sse9"));
}

/// Asked for bf16 without `bf16_even_if_slower`, a model runs it only
/// where this CPU's bf16 dot products are faster than its fp32 FMAs (Zen 4:
/// twice the FLOPs; Sapphire and Emerald Rapids: half), and otherwise runs
/// exact and says why, with both speeds.
#[test]
fn bf16_mode_runs_only_where_it_is_faster() {
    let (_, _, packed) = small(DType::F16);
    let options = mmoe::OpenOptions {
        cpu_mode: CpuMode::Bf16,
        ..mmoe::OpenOptions::default()
    };
    let model = mmoe::Model::open(&packed.path, &options).unwrap();
    let Some(speed) = cpu::bf16::dot_speed() else {
        assert_eq!(model.cpu_mode(), CpuMode::Exact);
        println!("skipped: this CPU lacks AVX512-BF16");
        return;
    };
    println!(
        "bf16 dot products {:.1} GFLOP/s, fp32 FMAs {:.1}: {}",
        speed.bf16,
        speed.fp32,
        model.cpu_mode_note()
    );
    assert!(speed.bf16 > 0.0 && speed.fp32 > 0.0, "{speed:?}");
    let forced = std::env::var("MMOE_CPU_BF16").is_ok_and(|v| v == "always");
    if speed.bf16_faster() || forced {
        assert_eq!(model.cpu_mode(), CpuMode::Bf16);
    } else {
        assert_eq!(model.cpu_mode(), CpuMode::Exact);
        let note = model.cpu_mode_note();
        assert!(
            note.contains("exact is faster") && note.contains("GFLOP/s"),
            "{note}"
        );
    }
    // Forced, it runs wherever the CPU has the instructions.
    assert_eq!(packed.open_bf16().cpu_mode(), CpuMode::Bf16);
}

/// Max |Δlogit| of the bf16 mode against exact, per model.
#[test]
fn bf16_mode_runs_and_its_cost_is_bounded() {
    if !cpu::bf16::supported() {
        let (_, _, packed) = small(DType::F16);
        let model = packed.open_bf16();
        assert_eq!(model.cpu_mode(), CpuMode::Exact);
        assert!(model.cpu_mode_note().contains("lacks AVX512-BF16"));
        println!("skipped: this CPU lacks AVX512-BF16 (fell back to exact, as it should)");
        return;
    }
    let mut models: Vec<(String, Config)> =
        configs().into_iter().map(|c| (c.name.clone(), c)).collect();
    models.push((
        "bench".into(),
        Config::parse(mmoe::demo::BENCH_MODEL_JSON).unwrap(),
    ));
    for (label, config) in models {
        let tensors = mmoe::demo::synthetic_tensors(&config, 7).unwrap();
        let packed = pack(&config, &tensors, DType::F16);
        let (exact, bf16) = (packed.open(), packed.open_bf16());
        assert_eq!(bf16.cpu_mode(), CpuMode::Bf16);
        let request = mmoe::demo::synthetic_request(&config, 200, 4);
        let before = cpu::bf16_calls();
        let a = session_logits(&mut Session::new(exact), &request);
        let b = session_logits(&mut Session::new(bf16), &request);
        assert!(cpu::bf16_calls() > before, "the bf16 kernel did not run");
        let delta = max_delta(&a, &b);
        println!(
            "bf16 vs exact, model {label}: max |Δlogit| {delta:.3e} over {} logits",
            a.len()
        );
        assert!(delta > 0.0, "bf16 changes the arithmetic");
        assert!(delta < 0.1, "bf16 moved a logit by {delta}");
    }
}
