//! The packer: tensor-set errors name the tensor; safetensors of every dtype
//! PyTorch writes are read; the layout is the one the format promises.

use crate::common;

use std::collections::HashMap;

use common::{
    config, pack, pack_for_layout, session_logits, small, write_safetensors, SMALL_CONFIG,
};
use mmoe::format::safetensors_source::SafetensorsSource;
use mmoe::format::writer::{self, MemorySource};
use mmoe::format::{Layout, PANEL};
use mmoe::{DType, ErrorKind, Model, OpenOptions, Scores, Session};

fn pack_error(edit: impl FnOnce(&mut MemorySource), dtype: DType) -> mmoe::Error {
    let config = config(SMALL_CONFIG);
    let mut source = mmoe::demo::synthetic_tensors(&config, 3).unwrap();
    edit(&mut source);
    let dir = test_support::tempdir().unwrap();
    let out = dir.path().join("m.mmoe");
    let err =
        writer::pack(&config, &source, dtype, &out, &mut |_, _| {}).expect_err("pack must fail");
    assert!(!out.exists(), "a failed pack leaves no file");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "a failed pack leaves no temporary file"
    );
    err
}

#[test]
fn missing_extra_and_misshaped_tensors_are_named() {
    let e = pack_error(|s| s.remove("experts.d.cross.1.up.weight"), DType::F16);
    assert_eq!(e.kind(), ErrorKind::Tensor);
    assert!(
        e.message()
            .contains("missing tensor `experts.d.cross.1.up.weight`"),
        "{e}"
    );

    let e = pack_error(
        |s| s.insert("experts.d.cross.9.bias", vec![3], vec![0.0; 3]),
        DType::F16,
    );
    assert!(
        e.message()
            .contains("extra tensor `experts.d.cross.9.bias`"),
        "{e}"
    );

    let e = pack_error(
        |s| s.insert("tasks.click.tower.0.weight", vec![8, 4], vec![0.0; 32]),
        DType::F16,
    );
    assert!(
        e.message()
            .contains("tensor `tasks.click.tower.0.weight` has shape [8, 4], expected [4, 8]"),
        "{e}"
    );

    // Several problems are all reported.
    let e = pack_error(
        |s| {
            s.remove("inputs.us.embedding");
            s.remove("experts.k.emb_ln.bias");
        },
        DType::F16,
    );
    assert!(e.message().starts_with("2 tensor problem(s)"), "{e}");
}

#[test]
fn values_that_do_not_fit_are_refused_with_their_index() {
    let e = pack_error(
        |s| s.get_mut("experts.m.mlp.1.weight").unwrap()[13] = 70000.0,
        DType::F16,
    );
    assert!(
        e.message().contains(
            "tensor `experts.m.mlp.1.weight` element [1, 3] = 70000 does not fit in fp16"
        ),
        "{e}"
    );
    // f32 packing keeps it.
    let config = config(SMALL_CONFIG);
    let mut source = mmoe::demo::synthetic_tensors(&config, 3).unwrap();
    source.get_mut("experts.m.mlp.1.weight").unwrap()[13] = 70000.0;
    pack(&config, &source, DType::F32);

    let e = pack_error(
        |s| s.get_mut("inputs.u.std").unwrap()[2] = f32::NAN,
        DType::F32,
    );
    assert!(
        e.message()
            .contains("tensor `inputs.u.std` element [2] = NaN is not finite"),
        "{e}"
    );
}

#[test]
fn learned_context_accepts_row_vector_shape() {
    let config = config(SMALL_CONFIG);
    let mut source = mmoe::demo::synthetic_tensors(&config, 3).unwrap();
    let values = source.get_mut("experts.f.fs1.ctx_bias").unwrap().clone();
    let width = values.len();
    source.insert("experts.f.fs1.ctx_bias", vec![1, width], values);
    let packed = pack(&config, &source, DType::F16);
    let model = packed.open();
    let id = model.plan().tensor_id("experts.f.fs1.ctx_bias").unwrap();
    assert_eq!(model.tensors()[id].shape, vec![width]);
}

/// Only the learned context may come as a row `[1, n]`: a bias, a LayerNorm
/// γ or a standardize statistic of that shape is misshaped (MODEL.md gives
/// them `[n]`), and the error names it.
#[test]
fn other_vectors_as_rows_are_misshaped() {
    for name in [
        "experts.m.mlp.0.bias",
        "experts.k.emb_ln.weight",
        "inputs.u.mean",
        "tasks.click.tower.0.bias",
    ] {
        let mut n = 0;
        let e = pack_error(
            |s| {
                let values = s.get_mut(name).unwrap_or_else(|| panic!("{name}")).clone();
                n = values.len();
                s.insert(name, vec![1, n], values);
            },
            DType::F16,
        );
        assert!(
            e.message().contains(&format!(
                "tensor `{name}` has shape [1, {n}], expected [{n}]"
            )),
            "{e}"
        );
    }
}

#[test]
fn linear_weights_are_stored_in_panels() {
    let (_config, source, packed) = small(DType::F32);
    let model = packed.open();
    let name = "experts.m.mlp.0.weight"; // [10, 16]
    let id = model.plan().tensor_id(name).unwrap();
    assert_eq!(model.layout_of(id), Layout::Panel);
    let values = model.values(id);
    assert_eq!(
        values.len(),
        PANEL * 16,
        "10 rows padded to one panel of {PANEL}"
    );
    let mut original = vec![0.0; 160];
    mmoe::format::writer::TensorSource::read(&source, name, 0, &mut original).unwrap();
    for i in 0..10 {
        for k in 0..16 {
            assert_eq!(
                values.get(k * PANEL + i),
                original[i * 16 + k],
                "W[{i}, {k}]"
            );
        }
    }
    for k in 0..16 {
        for i in 10..PANEL {
            assert_eq!(values.get(k * PANEL + i), 0.0, "padding is zero");
        }
    }
    // Every tensor is 64-byte aligned.
    for t in model.tensors() {
        assert_eq!(t.bytes.start % 64, 0, "{}", t.name);
    }
}

#[test]
fn safetensors_of_f32_f16_and_bf16_pack_to_the_same_model() {
    let config = config(SMALL_CONFIG);
    let mut source = mmoe::demo::synthetic_tensors(&config, 3).unwrap();
    // Round every value to bf16 first, so that all three dtypes hold it exactly
    // (bf16 values with small exponents are exact in f16 too).
    let names = mmoe::format::writer::TensorSource::names(&source);
    for name in &names {
        for v in source.get_mut(name).unwrap().iter_mut() {
            *v = half::bf16::from_f32(*v).to_f32();
            if half::f16::from_f32(*v).to_f32() != *v {
                *v = 0.25;
            }
        }
    }
    let dir = test_support::tempdir().unwrap();
    let mut hashes = HashMap::new();
    for (label, dtype_of) in [
        (
            "f32",
            Box::new(|_: &str| "F32") as Box<dyn Fn(&str) -> &'static str>,
        ),
        ("f16", Box::new(|_: &str| "F16")),
        ("bf16", Box::new(|_: &str| "BF16")),
        (
            "mixed",
            Box::new(|n: &str| if n.contains("weight") { "BF16" } else { "F16" }),
        ),
    ] {
        let st = dir.path().join(format!("{label}.safetensors"));
        write_safetensors(&st, &source, dtype_of);
        let from_file = SafetensorsSource::open(&st).unwrap();
        let out = dir.path().join(format!("{label}.mmoe"));
        writer::pack(&config, &from_file, DType::F16, &out, &mut |_, _| {}).unwrap();
        let model = Model::open(
            &out,
            &OpenOptions {
                verify_checksums: true,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        hashes.insert(label, model.content_hash());
    }
    let first = hashes["f32"];
    assert!(hashes.values().all(|&h| h == first), "{hashes:?}");
}

#[test]
fn safetensors_with_unsupported_dtype_is_refused() {
    let dir = test_support::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let header = br#"{"x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[0u8; 8]);
    std::fs::write(&path, file).unwrap();
    let err = SafetensorsSource::open(&path).err().expect("I64 refused");
    assert!(err.message().contains("tensor `x` has dtype I64"), "{err}");
}

#[test]
fn fp16_packing_scores_close_to_f32_packing() {
    let (config, _source, packed32) = small(DType::F32);
    let (_, _, packed16) = small(DType::F16);
    let request = mmoe::demo::synthetic_request(&config, 7, 5);
    let score = |model| {
        let mut session = Session::new(model);
        let mut logits = vec![0.0; 14];
        session
            .score(
                &request.as_request(),
                &mut Scores {
                    logits: Some(&mut logits),
                    probabilities: None,
                },
            )
            .unwrap();
        logits
    };
    let (a, b) = (score(packed32.open()), score(packed16.open()));
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0,
            |most: f32, d| if d.is_nan() || d > most { d } else { most },
        );
    assert!(max > 0.0, "fp16 rounding changes something");
    assert!(max < 2e-2, "fp16 packing moved a logit by {max}");
}

/// Layout version 2 stores FinalMLP's `agg.w_xy` as the panels of the
/// Linear layer its bilinear sum becomes; version 1 (still read, and written
/// on request for older engines) stored it row-major. Each element lands
/// where `bilinear_index` says, and both files score alike, on the CPU path
/// (a Linear layer over the heads' outer products against the direct sum)
/// and on the reference. The small model's H = 8 fills part of one panel;
/// the medium one's H = 40 two.
#[test]
fn bilinear_weights_of_both_layout_versions_score_alike() {
    use mmoe::format::{bilinear_index, LAYOUT_VERSION};
    use mmoe::plan::TensorRole;
    use mmoe::program::Step;
    use mmoe::Backend;

    assert_eq!(LAYOUT_VERSION, 2);
    let medium = include_str!("../../gpu-emu/tests/models/medium.json");
    for text in [SMALL_CONFIG, medium] {
        let config = config(text);
        let source = mmoe::demo::synthetic_tensors(&config, 3).unwrap();
        let name = "experts.f.agg.w_xy";
        let request = mmoe::demo::synthetic_request(&config, 37, 5);
        for dtype in [DType::F32, DType::F16] {
            let (old, new) = (
                pack_for_layout(&config, &source, dtype, 1),
                pack(&config, &source, dtype),
            );
            let (old, new) = (old.open(), new.open());
            let id = new.plan().tensor_id(name).unwrap();
            let spec = &new.plan().tensors[id];
            let TensorRole::Bilinear { hy } = spec.role else {
                panic!("{name} is a bilinear weight");
            };
            let (k_total, h) = (spec.shape[0], spec.shape[1]);
            let mut flat = vec![0.0; k_total * h];
            writer::TensorSource::read(&source, name, 0, &mut flat).unwrap();
            assert_eq!(old.layout_of(id), Layout::RowMajor);
            assert_eq!(new.layout_of(id), Layout::Bilinear);
            let panels = h.div_ceil(PANEL);
            assert_eq!(
                new.values(id).len(),
                panels * PANEL * k_total,
                "{} outputs in panels",
                h
            );
            let rounded = |v: f32| match dtype {
                DType::F16 => half::f16::from_f32(v).to_f32(),
                DType::F32 => v,
            };
            let mut seen = vec![false; new.values(id).len()];
            for (f, &v) in flat.iter().enumerate() {
                let at = bilinear_index(Layout::Bilinear, f, hy, h, k_total);
                assert!(!seen[at], "flat element {f} shares its place");
                seen[at] = true;
                assert_eq!(new.values(id).get(at), rounded(v), "flat element {f}");
                assert_eq!(old.values(id).get(f), rounded(v), "flat element {f}");
            }
            for (at, used) in seen.iter().enumerate() {
                assert!(
                    *used || new.values(id).get(at) == 0.0,
                    "padding at {at} is zero"
                );
            }
            let steps = |m: &Model, outer: bool| {
                m.program().candidate_steps.iter().any(|s| match s {
                    Step::OuterHeads { .. } => outer,
                    Step::Bilinear { .. } => !outer,
                    _ => false,
                })
            };
            assert!(
                steps(&new, true) && !steps(&new, false),
                "version 2: a Linear layer"
            );
            assert!(
                steps(&old, false) && !steps(&old, true),
                "version 1: the direct sum"
            );

            for backend in [Backend::Cpu, Backend::Reference] {
                let a = session_logits(&mut Session::with_backend(old.clone(), backend), &request);
                let b = session_logits(&mut Session::with_backend(new.clone(), backend), &request);
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                        "{} {dtype:?} {backend:?} logit {i}: {x} (v1) against {y} (v2)",
                        config.name
                    );
                }
            }
        }
    }
}

/// Layout versions outside those the engine knows are refused by name.
#[test]
fn unknown_layout_versions_are_refused() {
    let config = config(SMALL_CONFIG);
    let source = mmoe::demo::synthetic_tensors(&config, 3).unwrap();
    let dir = test_support::tempdir().unwrap();
    for version in [0, 3] {
        let out = dir.path().join("m.mmoe");
        let e =
            writer::pack_for_layout(&config, &source, DType::F16, &out, &mut |_, _| {}, version)
                .expect_err("no such layout version");
        assert!(
            e.message().contains(&format!("layout version {version}")),
            "{e}"
        );
    }
    // A file claiming version 3 is refused at open.
    let packed = pack(&config, &source, DType::F16);
    let mut bytes = packed.bytes();
    bytes[16..20].copy_from_slice(&3u32.to_le_bytes());
    let path = dir.path().join("v3.mmoe");
    std::fs::write(&path, bytes).unwrap();
    let e = Model::open(&path, &OpenOptions::default()).expect_err("version 3");
    assert!(
        e.message().contains("layout version 3 is not supported"),
        "{e}"
    );
}

/// A bilinear sum whose outer products would be wider than
/// `BILINEAR_LINEAR_MAX_K` (d1·hy = 520·129) stays a direct sum, reading the
/// version 2 layout through `bilinear_index`: the same sums in the same
/// order as over version 1's flat array, so the same logits bit for bit.
#[test]
fn wide_bilinear_sums_stay_direct_in_both_layout_versions() {
    use mmoe::program::{Step, BILINEAR_LINEAR_MAX_K};
    use mmoe::Backend;

    let config = config(include_str!("../common/wide_bilinear_config.json"));
    const { assert!(520 * 129 > BILINEAR_LINEAR_MAX_K) };
    let source = mmoe::demo::synthetic_tensors(&config, 4).unwrap();
    let old = pack_for_layout(&config, &source, DType::F16, 1).open();
    let new = pack(&config, &source, DType::F16).open();
    let id = new.plan().tensor_id("experts.f.agg.w_xy").unwrap();
    assert_eq!(new.layout_of(id), Layout::Bilinear);
    for model in [&old, &new] {
        let direct = model.program().candidate_steps.iter();
        assert!(direct.clone().any(|s| matches!(s, Step::Bilinear { .. })));
        assert!(!direct.clone().any(|s| matches!(s, Step::OuterHeads { .. })));
    }
    let request = mmoe::demo::synthetic_request(&config, 5, 6);
    for backend in [Backend::Cpu, Backend::Reference] {
        let a = session_logits(&mut Session::with_backend(old.clone(), backend), &request);
        let b = session_logits(&mut Session::with_backend(new.clone(), backend), &request);
        assert_eq!(a, b, "{backend:?}");
        assert!(a.iter().any(|&v| v != a[0]), "the candidates differ: {a:?}");
    }
}
