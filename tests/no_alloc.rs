//! Steady-state scoring allocates nothing: a counting global allocator sees
//! zero allocations on the second and later calls of the same shape, and on
//! the first call after a warm-up, on every thread of the process (the
//! helper threads that score parts of a request too).
//!
//! One `#[test]` runs every case in turn, so that nothing else runs in this
//! process while it counts (the harness's own thread waits on the test).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

mod common;

use mmoe::{Config, DType, Engine, Model, OpenOptions, Scores, Session};

struct Counting;

/// Allocations (and reallocations) on every thread since the start.
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::SeqCst)
}

fn count() {
    ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
}

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The benchmark model with weights of `seed`, packed into `dir`.
fn bench_model_file(dir: &std::path::Path, seed: u64) -> (Config, std::path::PathBuf) {
    let config = Config::parse(mmoe::demo::BENCH_MODEL_JSON).unwrap();
    let tensors = mmoe::demo::synthetic_tensors(&config, seed).unwrap();
    let path = dir.join(format!("m{seed}.mmoe"));
    mmoe::format::writer::pack(&config, &tensors, DType::F16, &path, &mut |_, _| {}).unwrap();
    (config, path)
}

fn bench_model() -> (Config, Arc<Model>) {
    let dir = test_support::tempdir().unwrap();
    let (config, path) = bench_model_file(dir.path(), 7);
    let model = Model::open(&path, &OpenOptions::default()).unwrap();
    (config, model)
}

#[test]
fn steady_state_scoring_allocates_nothing_on_any_thread() {
    let cases: [(&str, fn()); 5] = [
        (
            "second_call_of_the_same_shape_allocates_nothing",
            second_call_of_the_same_shape_allocates_nothing,
        ),
        (
            "after_warm_up_the_first_call_allocates_nothing",
            after_warm_up_the_first_call_allocates_nothing,
        ),
        (
            "after_a_warmed_reload_the_first_calls_allocate_nothing",
            after_a_warmed_reload_the_first_calls_allocate_nothing,
        ),
        (
            "after_warm_up_the_first_call_faults_in_no_page",
            after_warm_up_the_first_call_faults_in_no_page,
        ),
        (
            "a_c_abi_call_allocates_nothing_once_warm",
            a_c_abi_call_allocates_nothing_once_warm,
        ),
    ];
    for (name, case) in cases {
        println!("case {name}");
        case();
    }
}

fn second_call_of_the_same_shape_allocates_nothing() {
    let (config, model) = bench_model();
    // One thread; two (with AVX-512, 40 candidates cut 20 + 20 and 7 cut
    // 4 + 3), counted on the calling thread and the helper.
    for (threads, n) in [(1, 40), (2, 40), (2, 7)] {
        let mut session = Session::new(model.clone());
        session.set_threads(threads);
        let owned = mmoe::demo::synthetic_request(&config, n, 3);
        let request = owned.as_request();
        let mut logits = vec![0.0; n * 3];
        let mut probabilities = vec![0.0; n * 3];
        let mut run = |session: &mut Session| {
            session
                .score(
                    &request,
                    &mut Scores {
                        logits: Some(&mut logits),
                        probabilities: Some(&mut probabilities),
                    },
                )
                .unwrap();
        };
        run(&mut session);
        for _ in 0..3 {
            let before = allocations();
            run(&mut session);
            let after = allocations();
            assert_eq!(
                after - before,
                0,
                "a steady-state call ({threads} threads, {n} candidates) allocated {} time(s)",
                after - before
            );
        }
    }
    // The counter does count: building a request allocates.
    let before = allocations();
    let _another = mmoe::demo::synthetic_request(&config, 2, 4);
    assert!(allocations() > before);
}

/// One scoring call of `candidates` × 3 tasks through `score`: the
/// allocations it made on any thread, and its logits.
fn counted_call(candidates: usize, score: impl FnOnce(&mut Scores<'_>)) -> (usize, Vec<f32>) {
    let mut logits = vec![0.0; candidates * 3];
    let before = allocations();
    score(&mut Scores {
        logits: Some(&mut logits),
        probabilities: None,
    });
    (allocations() - before, logits)
}

fn after_warm_up_the_first_call_allocates_nothing() {
    let (config, model) = bench_model();
    let owned = mmoe::demo::synthetic_request(&config, 40, 3);
    let request = owned.as_request();
    let first_call =
        |session: &mut Session| counted_call(40, |scores| session.score(&request, scores).unwrap());
    // Without warm-up the first call allocates its scratch...
    let (cold_allocations, cold_logits) = first_call(&mut Session::new(model.clone()));
    assert!(
        cold_allocations > 0,
        "a cold session's first call allocated nothing"
    );
    // ...and after a warm-up for more candidates it allocates nothing, and
    // scores the same.
    let mut warm = Session::new(model.clone());
    warm.warm_up(64).unwrap();
    let (warm_allocations, warm_logits) = first_call(&mut warm);
    assert_eq!(
        warm_allocations, 0,
        "the first call after warm_up(64) allocated"
    );
    assert_eq!(warm_logits, cold_logits);
    // A warm-up for fewer candidates leaves the larger request to allocate.
    let mut small = Session::new(model.clone());
    small.warm_up(8).unwrap();
    assert!(first_call(&mut small).0 > 0);
    // With intra-request threads, a warm-up scores a tile per thread and
    // reserves what larger requests' parts need (here 100 + 100 rows).
    let mut threaded = Session::new(model);
    threaded.set_threads(2);
    threaded.warm_up(200).unwrap();
    let owned = mmoe::demo::synthetic_request(&config, 200, 3);
    let request = owned.as_request();
    let (allocated, _) = counted_call(200, |scores| threaded.score(&request, scores).unwrap());
    assert_eq!(
        allocated, 0,
        "the first call after warm_up(200) on 2 threads allocated"
    );
}

fn after_a_warmed_reload_the_first_calls_allocate_nothing() {
    let dir = test_support::tempdir().unwrap();
    let (config, a) = bench_model_file(dir.path(), 7);
    let (_, b) = bench_model_file(dir.path(), 8);
    let owned = mmoe::demo::synthetic_request(&config, 40, 3);
    let request = owned.as_request();
    let call = |session: &mut mmoe::EngineSession| {
        counted_call(40, |scores| {
            session.score(&request, scores).unwrap();
        })
    };
    for warm_up in [0, 64] {
        let engine = Arc::new(Engine::open(&a, OpenOptions::default()).unwrap());
        engine.set_warm_up(warm_up).unwrap();
        // One session scores on one thread, the other on two: each takes
        // a session warmed up for its own thread count.
        let mut sessions = [engine.session(), engine.session()];
        sessions[1].set_threads(2);
        for session in &mut sessions {
            call(session);
        }
        engine.reload(&b).unwrap();
        let cold = call(
            &mut Engine::open(&b, OpenOptions::default())
                .map(Arc::new)
                .unwrap()
                .session(),
        )
        .1;
        for session in &mut sessions {
            let (allocated, logits) = call(session);
            assert_eq!(logits, cold, "warm-up {warm_up}: the new model's scores");
            if warm_up == 0 {
                assert!(
                    allocated > 0,
                    "a cold session's first call on the new model allocated nothing"
                );
            } else {
                assert_eq!(
                    allocated, 0,
                    "the first call on a warmed-up reload allocated"
                );
            }
        }
    }
}

/// Page faults the process has taken so far (`getrusage`).
#[cfg(unix)]
fn page_faults() -> i64 {
    // SAFETY: getrusage writes the struct it is given; a zeroed rusage is a
    // valid value of that plain C struct.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    usage.ru_minflt + usage.ru_majflt
}

#[cfg(not(unix))]
fn after_warm_up_the_first_call_faults_in_no_page() {
    println!("skipped: no getrusage on this OS");
}

#[cfg(unix)]
fn after_warm_up_the_first_call_faults_in_no_page() {
    // Each model is mapped afresh, so its pages are not yet in this
    // process's page tables; the requests' bags gather embedding rows,
    // which the warm-up's empty bags do not.
    let dir = test_support::tempdir().unwrap();
    let (config, path) = bench_model_file(dir.path(), 7);
    let owned = mmoe::demo::synthetic_request(&config, 40, 3);
    let request = owned.as_request();
    let faults_of_call = |session: &mut Session| {
        let mut logits = vec![1.0; 40 * 3];
        let before = page_faults();
        session
            .score(
                &request,
                &mut Scores {
                    logits: Some(&mut logits),
                    probabilities: None,
                },
            )
            .unwrap();
        page_faults() - before
    };
    // The counter counts: a cold session on a fresh map faults pages in.
    let cold = Model::open(&path, &OpenOptions::default()).unwrap();
    let cold_faults = faults_of_call(&mut Session::new(cold));
    assert!(cold_faults > 0, "a cold first call took no page fault");
    let model = Model::open(&path, &OpenOptions::default()).unwrap();
    let mut warm = Session::new(model);
    warm.warm_up(64).unwrap();
    let warm_faults = faults_of_call(&mut warm);
    assert_eq!(
        warm_faults, 0,
        "the first call after warm_up(64) took {warm_faults} page faults (cold: {cold_faults})"
    );
}

/// The C ABI's scoring call (what C, C++ and Java hosts call) allocates
/// nothing either once warm: its request storage is kept in the session
/// handle and its error names are formatted only on errors.
fn a_c_abi_call_allocates_nothing_once_warm() {
    use mmoe::ffi::*;
    use std::ptr::{null, null_mut};
    let dir = test_support::tempdir().unwrap();
    let (config, path) = bench_model_file(dir.path(), 7);
    let path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut engine = null_mut();
    assert_eq!(
        mmoe_engine_open(path.as_ptr(), null(), &mut engine),
        mmoe_status::MMOE_STATUS_OK
    );
    let mut session = null_mut();
    assert_eq!(
        mmoe_session_new(engine, &mut session),
        mmoe_status::MMOE_STATUS_OK
    );
    let owned = mmoe::demo::synthetic_request(&config, 40, 3);
    let features: Vec<mmoe_feature> = owned
        .features
        .iter()
        .enumerate()
        .map(|(input, feature)| {
            let mut f = common::c_feature(input as u32);
            match feature {
                mmoe::request::OwnedFeature::Dense(values) => {
                    (f.dense, f.dense_len) = (values.as_ptr(), values.len());
                }
                mmoe::request::OwnedFeature::Sparse { ids, offsets } => {
                    (f.ids, f.ids_len) = (ids.as_ptr(), ids.len());
                    (f.offsets, f.offsets_len) = (offsets.as_ptr(), offsets.len());
                }
            }
            f
        })
        .collect();
    let mut logits = vec![0.0f32; 40 * 3];
    let mut call = || {
        mmoe_session_score(
            session,
            40,
            features.as_ptr(),
            features.len(),
            logits.as_mut_ptr(),
            logits.len(),
            null_mut(),
            0,
        )
    };
    assert_eq!(call(), mmoe_status::MMOE_STATUS_OK);
    for _ in 0..3 {
        let before = allocations();
        assert_eq!(call(), mmoe_status::MMOE_STATUS_OK);
        assert_eq!(allocations() - before, 0, "a warm C ABI call allocated");
    }
    // A refused call (its message allocates) keeps the storage: the next
    // good call allocates nothing either.
    let mut bad = features.clone();
    bad[0].input = 999;
    let refused = mmoe_session_score(
        session,
        40,
        bad.as_ptr(),
        bad.len(),
        null_mut(),
        0,
        null_mut(),
        0,
    );
    assert_eq!(refused, mmoe_status::MMOE_STATUS_REQUEST);
    let before = allocations();
    assert_eq!(call(), mmoe_status::MMOE_STATUS_OK);
    assert_eq!(
        allocations() - before,
        0,
        "a call after a refused one allocated"
    );
    mmoe_session_free(session);
    mmoe_engine_free(engine);
}
