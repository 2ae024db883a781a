//! Hot reload: 4 threads score without pause while another reloads between
//! two models 100 times. Zero failed calls; every result is exactly one of
//! the two models' scores; a failed reload leaves the old model serving;
//! several engines live side by side.

use crate::common;

use std::sync::Arc;

use common::pack;
use mmoe::{Config, DType, Engine, OpenOptions, Scores};

#[test]
fn reloads_under_load_are_atomic() {
    let run = common::reload_under_traffic(
        OpenOptions::default(),
        20,
        100,
        std::time::Duration::from_millis(1),
        0,
    );
    assert!(
        run.corrupt_error.message().contains("corrupt.mmoe"),
        "{}",
        run.corrupt_error
    );
    assert_eq!(run.engine.generation(), 100);
    println!(
        "{} calls during 100 reloads: model A {}, model B {}",
        run.calls, run.seen_a, run.seen_b
    );
    assert!(run.seen_a > 0 && run.seen_b > 0, "both models served");
}

#[test]
fn engines_live_side_by_side() {
    // A shared-bottom DCNv2 (one expert, no gate) beside an MMoE, as in an A/B test.
    let dcn = Config::parse(
        r#"{"name": "prod-dcn", "expert_dim": 8,
        "inputs": [{"name": "u", "kind": "dense", "scope": "request", "dim": 4},
                   {"name": "a", "kind": "dense", "scope": "candidate", "dim": 6, "missing": "zero"}],
        "experts": [{"name": "d", "type": "dcnv2", "cross_layers": 3, "rank": null, "structure": "stacked", "deep": [16, 8]}],
        "tasks": [{"name": "click", "tower": [4]}, {"name": "save", "tower": [4]}]}"#,
    )
    .unwrap();
    let mut dcn_tensors = mmoe::demo::synthetic_tensors(&dcn, 1).unwrap();
    for t in ["click", "save"] {
        dcn_tensors.remove(&format!("tasks.{t}.gate.0.weight"));
        dcn_tensors.remove(&format!("tasks.{t}.gate.0.bias"));
    }
    let mmoe_config = Config::parse(common::SMALL_CONFIG).unwrap();
    let p1 = pack(&dcn, &dcn_tensors, DType::F16);
    let p2 = pack(
        &mmoe_config,
        &mmoe::demo::synthetic_tensors(&mmoe_config, 1).unwrap(),
        DType::F16,
    );
    let e1 = Arc::new(Engine::open(&p1.path, OpenOptions::default()).unwrap());
    let e2 = Arc::new(Engine::open(&p2.path, OpenOptions::default()).unwrap());
    let r1 = mmoe::demo::synthetic_request(&dcn, 5, 1);
    let r2 = mmoe::demo::synthetic_request(&mmoe_config, 5, 1);
    let mut out = vec![0.0; 10];
    for _ in 0..3 {
        e1.session()
            .score(
                &r1.as_request(),
                &mut Scores {
                    logits: Some(&mut out),
                    probabilities: None,
                },
            )
            .unwrap();
        e2.session()
            .score(
                &r2.as_request(),
                &mut Scores {
                    logits: Some(&mut out),
                    probabilities: None,
                },
            )
            .unwrap();
    }
    assert_eq!(e1.model().name(), "prod-dcn");
    assert_eq!(e2.model().name(), "small");
}

/// The small model with weights of seeds 1 (A) and 2 (B), and an engine
/// serving A.
fn small_models_and_engine() -> (Config, common::Packed, common::Packed, Arc<Engine>) {
    let config = Config::parse(common::SMALL_CONFIG).unwrap();
    let packed = |seed| {
        pack(
            &config,
            &mmoe::demo::synthetic_tensors(&config, seed).unwrap(),
            DType::F16,
        )
    };
    let (a, b) = (packed(1), packed(2));
    let engine = Arc::new(Engine::open(&a.path, OpenOptions::default()).unwrap());
    (config, a, b, engine)
}

#[test]
fn warmed_reloads_prepare_a_session_for_each_session_that_served() {
    let (config, a, b, engine) = small_models_and_engine();
    let request = mmoe::demo::synthetic_request(&config, 6, 3);
    let score = |session: &mut mmoe::EngineSession| {
        let (model, logits) = common::engine_session_logits(session, &request);
        (model.content_hash(), logits)
    };
    let too_many = mmoe::MAX_WARM_UP_CANDIDATES + 1;
    assert!(engine
        .set_warm_up(too_many)
        .unwrap_err()
        .message()
        .contains("max_candidates 65537"));
    engine.set_warm_up(64).unwrap();
    // No session yet: the reload warms the new model up and keeps nothing.
    engine.reload(&a.path).unwrap();
    assert_eq!(engine.prepared_sessions(), 0);
    let mut first = engine.session();
    let mut second = engine.session();
    let mut not_yet = engine.session();
    first.set_threads(2);
    first.warm_up(64).unwrap();
    let (hash_a, on_a) = score(&mut first);
    score(&mut second);
    // One prepared session per live engine session; the reload hands one to
    // each session idle at that moment (all three here, the one that has
    // not scored yet too), which so let go of model A on the reloading
    // thread.
    engine.reload(&b.path).unwrap();
    assert_eq!(engine.prepared_sessions(), 0);
    assert!(!first.holds_an_old_model() && !second.holds_an_old_model());
    let (hash_b, on_b) = score(&mut first);
    assert_ne!(hash_a, hash_b);
    assert_ne!(on_a, on_b, "the prepared session scores on the new model");
    assert_eq!(hash_b, engine.model().content_hash());
    assert_eq!(score(&mut not_yet), (hash_b, on_b.clone()));
    // A session made after the reload makes its own session.
    let mut after = engine.session();
    assert_eq!(score(&mut after), (hash_b, on_b.clone()));
    // Reloads without warm-up prepare nothing.
    engine.set_warm_up(0).unwrap();
    assert_eq!(engine.prepared_sessions(), 0);
    engine.reload(&a.path).unwrap();
    engine.reload(&b.path).unwrap();
    assert_eq!(engine.prepared_sessions(), 0);
    assert_eq!(score(&mut second), (hash_b, on_b));
}

/// A session idle during a reload keeps nothing of the old model: the
/// reloading thread takes its old session, so the old model (its mapping,
/// on a GPU its weights and graphs) is freed by the reload itself, not at
/// the session's next call, which may never come.
#[test]
fn an_idle_session_lets_go_of_the_old_model_at_the_reload() {
    let (config, _a, b, engine) = small_models_and_engine();
    let request = mmoe::demo::synthetic_request(&config, 6, 3);
    let mut idle = engine.session();
    let (_, on_a) = common::engine_session_logits(&mut idle, &request);
    let model_a = Arc::downgrade(&engine.model());
    engine.reload(&b.path).unwrap();
    assert!(!idle.holds_an_old_model());
    assert!(
        model_a.upgrade().is_none(),
        "model A is still alive after the reload"
    );
    let (model, on_b) = common::engine_session_logits(&mut idle, &request);
    assert_eq!(model.content_hash(), engine.model().content_hash());
    assert_ne!(on_a, on_b);
}

#[test]
fn warmed_reloads_under_load_are_atomic() {
    // Each reload prepares a warmed-up session per scoring thread, built on
    // the reloading thread and taken by the scoring threads.
    let run = common::reload_under_traffic(
        OpenOptions::default(),
        20,
        50,
        std::time::Duration::from_millis(1),
        64,
    );
    assert_eq!(run.engine.generation(), 50);
    assert!(run.seen_a > 0 && run.seen_b > 0, "both models served");
    // Sessions busy during a visit left prepared ones behind; the scoring
    // threads' sessions are gone, and so are those.
    assert_eq!(run.engine.prepared_sessions(), 0);
}

/// A rolling upgrade of the file format: an engine serving a model packed
/// in layout version 1 reloads the same model packed in version 2 (its
/// FinalMLP bilinear sum now a Linear layer) and back, while a session
/// keeps scoring; the scores stay those of the model.
#[test]
fn a_reload_across_layout_versions_keeps_the_scores() {
    let config = Config::parse(include_str!("../common/small_config.json")).unwrap();
    let tensors = mmoe::demo::synthetic_tensors(&config, 3).unwrap();
    let files =
        [1, 2].map(|version| common::pack_for_layout(&config, &tensors, DType::F16, version));
    let paths = [&files[0].path, &files[1].path];
    let request = mmoe::demo::synthetic_request(&config, 40, 2);
    let engine = Arc::new(Engine::open(paths[0], OpenOptions::default()).unwrap());
    let mut session = engine.session();
    let mut score = || {
        let (model, logits) = common::engine_session_logits(&mut session, &request);
        (model.layout_version(), logits)
    };
    let (version, first) = score();
    assert_eq!(version, 1);
    for (path, expected) in [(paths[1], 2), (paths[0], 1), (paths[1], 2)] {
        engine.reload(path).unwrap();
        let (version, logits) = score();
        assert_eq!(
            version, expected,
            "the session scored with the reloaded model"
        );
        assert_eq!(engine.model().layout_version(), version);
        for (i, (a, b)) in first.iter().zip(&logits).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                "layout {version}, logit {i}: {b} against {a}"
            );
        }
    }
    assert_eq!(engine.generation(), 3);
}
