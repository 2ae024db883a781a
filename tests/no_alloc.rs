//! Steady-state scoring allocates nothing: a counting global allocator sees
//! zero allocations on the second and later calls of the same shape.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use mmoe::{Config, DType, Model, OpenOptions, Scores, Session};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn second_call_of_the_same_shape_allocates_nothing() {
    let config = Config::parse(mmoe::demo::BENCH_MODEL_JSON).unwrap();
    let tensors = mmoe::demo::synthetic_tensors(&config, 7).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.mmoe");
    mmoe::format::writer::pack(&config, &tensors, DType::F16, &path, &mut |_, _| {}).unwrap();
    let model = Model::open(&path, &OpenOptions::default()).unwrap();
    let mut session = Session::new(model.clone());
    let owned = mmoe::demo::synthetic_request(&config, 40, 3);
    let request = owned.as_request();
    let mut logits = vec![0.0; 40 * 3];
    let mut probabilities = vec![0.0; 40 * 3];
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
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        run(&mut session);
        let after = ALLOCATIONS.load(Ordering::SeqCst);
        assert_eq!(
            after - before,
            0,
            "a steady-state call allocated {} time(s)",
            after - before
        );
    }
    // The counter does count: building a request allocates.
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let _another = mmoe::demo::synthetic_request(&config, 2, 4);
    assert!(ALLOCATIONS.load(Ordering::SeqCst) > before);
}
