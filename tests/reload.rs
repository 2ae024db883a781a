//! Hot reload: 4 threads score without pause while another reloads between
//! two models 100 times. Zero failed calls; every result is exactly one of
//! the two models' scores; a failed reload leaves the old model serving;
//! several engines live side by side.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::pack;
use mmoe::{Config, DType, Engine, OpenOptions, Scores};

#[test]
fn reloads_under_load_are_atomic() {
    let config = Config::parse(common::SMALL_CONFIG).unwrap();
    let a = pack(
        &config,
        &mmoe::demo::synthetic_tensors(&config, 1).unwrap(),
        DType::F16,
    );
    let b = pack(
        &config,
        &mmoe::demo::synthetic_tensors(&config, 2).unwrap(),
        DType::F16,
    );
    let engine = Arc::new(Engine::open(&a.path, OpenOptions::default()).unwrap());
    let request = mmoe::demo::synthetic_request(&config, 20, 3);
    let expected: Vec<Vec<f32>> = [&a, &b]
        .iter()
        .map(|p| {
            let e = Arc::new(Engine::open(&p.path, OpenOptions::default()).unwrap());
            let mut out = vec![0.0; 40];
            e.session()
                .score(
                    &request.as_request(),
                    &mut Scores {
                        logits: Some(&mut out),
                        probabilities: None,
                    },
                )
                .unwrap();
            out
        })
        .collect();
    assert_ne!(expected[0], expected[1]);

    let stop = Arc::new(AtomicBool::new(false));
    let (calls, seen_a, seen_b) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let (engine, stop, request, expected) =
                (engine.clone(), stop.clone(), &request, &expected);
            let (calls, seen_a, seen_b) = (calls.clone(), seen_a.clone(), seen_b.clone());
            scope.spawn(move || {
                let mut session = engine.session();
                let mut out = vec![0.0; 40];
                while !stop.load(Ordering::Relaxed) {
                    let model = session
                        .score(
                            &request.as_request(),
                            &mut Scores {
                                logits: Some(&mut out),
                                probabilities: None,
                            },
                        )
                        .expect("no call fails during reloads");
                    calls.fetch_add(1, Ordering::Relaxed);
                    if out == expected[0] {
                        seen_a.fetch_add(1, Ordering::Relaxed);
                    } else if out == expected[1] {
                        seen_b.fetch_add(1, Ordering::Relaxed);
                    } else {
                        panic!("scores of neither model (model {:x})", model.content_hash());
                    }
                }
            });
        }
        for i in 0..100 {
            engine
                .reload(if i % 2 == 0 { &b.path } else { &a.path })
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // A failed reload (a corrupt file) leaves the current model serving.
        let corrupt = a.dir.path().join("corrupt.mmoe");
        let mut bytes = a.bytes();
        let n = bytes.len();
        bytes.truncate(n - 1);
        std::fs::write(&corrupt, bytes).unwrap();
        let before = engine.model().content_hash();
        let err = engine.reload(&corrupt).unwrap_err();
        assert!(err.message().contains("corrupt.mmoe"), "{err}");
        assert_eq!(engine.model().content_hash(), before);
        std::thread::sleep(std::time::Duration::from_millis(5));
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(engine.generation(), 100);
    let (a_count, b_count) = (
        seen_a.load(Ordering::Relaxed),
        seen_b.load(Ordering::Relaxed),
    );
    println!(
        "{} calls during 100 reloads: model A {a_count}, model B {b_count}",
        calls.load(Ordering::Relaxed)
    );
    assert!(a_count > 0 && b_count > 0, "both models served");
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
