//! The fast CPU backend (the lowered program) against the scalar reference,
//! in process, on the small model of every expert type and on the
//! benchmark-shaped demo model (several tiles, a partial last tile).

use crate::common;

use std::sync::Arc;

use common::{pack, session_logits, small};
use mmoe::cpu::Isa;
use mmoe::{Backend, Config, DType, Model, Session};

fn logits(model: &Arc<Model>, backend: Backend, request: &mmoe::request::OwnedRequest) -> Vec<f32> {
    let mut session = Session::with_backend(model.clone(), backend);
    assert_eq!(session.backend(), backend);
    session_logits(&mut session, request)
}

fn assert_close(fast: &[f32], reference: &[f32]) -> f32 {
    let mut worst = 0.0f32;
    for (i, (a, b)) in fast.iter().zip(reference).enumerate() {
        let tolerance = 1e-4 * (1.0 + b.abs());
        assert!(
            (a - b).abs() <= tolerance,
            "logit {i}: cpu {a} vs reference {b}"
        );
        worst = worst.max((a - b).abs());
    }
    worst
}

#[test]
fn cpu_matches_reference_on_the_small_model() {
    for dtype in [DType::F32, DType::F16] {
        let (config, _, packed) = small(dtype);
        let model = packed.open();
        for (n, seed) in [(1, 1), (31, 2), (32, 3), (70, 4)] {
            let request = mmoe::demo::synthetic_request(&config, n, seed);
            assert_close(
                &logits(&model, Backend::Cpu, &request),
                &logits(&model, Backend::Reference, &request),
            );
        }
    }
}

#[test]
fn cpu_matches_reference_on_the_demo_model() {
    let config = Config::parse(mmoe::demo::BENCH_MODEL_JSON).unwrap();
    let tensors = mmoe::demo::synthetic_tensors(&config, 7).unwrap();
    let packed = pack(&config, &tensors, DType::F16);
    let model = packed.open();
    let request = mmoe::demo::synthetic_request(&config, 70, 11);
    let worst = assert_close(
        &logits(&model, Backend::Cpu, &request),
        &logits(&model, Backend::Reference, &request),
    );
    println!("demo model, 70 candidates: max |Δlogit| cpu vs reference = {worst:e}");
}

#[test]
fn request_level_work_runs_once() {
    // The benchmark model's program splits every layer that reads x0 into a
    // request part (run once) and a candidate part.
    let config = Config::parse(mmoe::demo::BENCH_MODEL_JSON).unwrap();
    let tensors = mmoe::demo::synthetic_tensors(&config, 7).unwrap();
    let packed = pack(&config, &tensors, DType::F16);
    let model = packed.open();
    let program = model.program();
    let request_linears = program
        .request_steps
        .iter()
        .filter(|s| matches!(s, mmoe::program::Step::Linear { .. }))
        .count();
    // Layers reading x0: each DCN's cross layer 0 (stacked deep MLPs read
    // x_L), each MLP expert's first layer, each task's gate.
    assert_eq!(request_linears, 4 + 2 + 3);
}

#[test]
fn intra_request_threads_give_the_same_scores() {
    // The benchmark model (DCNv2 and MLP experts) and the small one of
    // every expert type.
    let bench = Config::parse(mmoe::demo::BENCH_MODEL_JSON).unwrap();
    let tensors = mmoe::demo::synthetic_tensors(&bench, 7).unwrap();
    let (small_config, _, small_packed) = small(DType::F16);
    for (config, packed) in [
        (bench.clone(), pack(&bench, &tensors, DType::F16)),
        (small_config, small_packed),
    ] {
        let (exact, bf16) = (packed.open(), packed.open_bf16());
        // The threads cut a request evenly, anywhere: the same bits, on
        // every ISA this CPU runs, and in bf16 mode (exact here where the
        // CPU lacks AVX512-BF16).
        let isas = [Isa::Avx512, Isa::Avx2, Isa::Generic];
        let runs = isas
            .into_iter()
            .filter(|isa| isa.supported())
            .map(|isa| (isa, &exact))
            .chain([(Isa::best(), &bf16)]);
        for (isa, model) in runs {
            // A session per thread count, kept across the sizes (its parts
            // grow and shrink), and a fresh one per size.
            let session = |threads| {
                let mut session = Session::with_backend(model.clone(), Backend::Cpu);
                session.set_isa(isa).unwrap();
                session.set_threads(threads);
                assert_eq!(session.threads(), threads);
                session
            };
            let mut kept: Vec<Session> = [2, 3, 4].into_iter().map(session).collect();
            for n in [
                1, 2, 3, 5, 6, 7, 9, 12, 16, 20, 24, 28, 31, 32, 40, 100, 300, 4,
            ] {
                let request = mmoe::demo::synthetic_request(&config, n, 3);
                let one = session_logits(&mut session(1), &request);
                for kept in &mut kept {
                    let threads = kept.threads();
                    let (name, mode) = (&config.name, model.cpu_mode());
                    let context =
                        format!("{name}, {isa:?} {mode:?}, {threads} threads, {n} candidates");
                    assert_eq!(session_logits(kept, &request), one, "{context}");
                    let fresh = session_logits(&mut session(threads), &request);
                    assert_eq!(fresh, one, "{context}, fresh session");
                }
            }
        }
    }
}

#[test]
fn warm_up_scores_the_same_on_every_backend() {
    let (config, _, packed) = small(DType::F16);
    let model = packed.open();
    let request = mmoe::demo::synthetic_request(&config, 37, 5);
    for backend in [Backend::Reference, Backend::Cpu] {
        let cold = logits(&model, backend, &request);
        let mut session = Session::with_backend(model.clone(), backend);
        session.set_threads(3);
        session.warm_up(0).unwrap();
        session.warm_up(100).unwrap();
        assert_eq!(session_logits(&mut session, &request), cold, "{backend:?}");
    }
    // Sizes above the limit are refused up front, naming the argument.
    let mut cpu = Session::new(model.clone());
    let too_many = mmoe::MAX_WARM_UP_CANDIDATES + 1;
    let error = cpu.warm_up(too_many).unwrap_err();
    assert_eq!(error.kind(), mmoe::ErrorKind::Argument);
    assert!(
        error
            .message()
            .contains("max_candidates 65537 is above the warm-up limit of 65536 candidates"),
        "{error}"
    );
    cpu.warm_up(usize::MAX).unwrap_err();
    // A warm-up that cannot run says which model and size it was preparing.
    let mut gpu = Session::with_backend(model.clone(), Backend::Cuda);
    let error = gpu.warm_up(5).unwrap_err();
    assert!(
        error
            .message()
            .contains("warm-up of model `small` with 5 candidates"),
        "{error}"
    );
}

/// Sessions move between threads (a reload prepares them on its own thread)
/// and engines are shared, in every build (with or without `cuda`).
#[test]
fn sessions_are_send_and_engines_are_shared() {
    fn send<T: Send>() {}
    fn shared<T: Send + Sync>() {}
    send::<Session>();
    send::<mmoe::EngineSession>();
    shared::<mmoe::Engine>();
    shared::<Model>();
}
