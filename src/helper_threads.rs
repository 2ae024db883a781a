//! Helper threads that share one call's work with the thread making it.
//!
//! Why: the GPU path packs a large request into its staging buffer on the
//! calling thread, at the rate one core reads the caller's features and
//! writes pinned memory (97–139 µs for 1,024 candidates of the benchmark
//! model on the H200 machine, 2026-11-27). Spawning threads per call costs
//! more than that (a scoped spawn and join: 69 µs on the development
//! machine), so the helpers are started once and park between calls.
//!
//! The caller never waits for a helper to arrive: it posts its job, wakes
//! the helpers and starts on the parts itself, each part taken by whoever
//! comes first. A helper that wakes late, or is busy with another caller's
//! job, finds fewer parts or none; so a call under load costs what it
//! costs alone, plus a lock and a wake. One job is posted at a time: a
//! caller that finds the helpers taken does all its parts itself.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A fixed set of parked threads; joined when dropped.
pub struct HelperThreads {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// The jobs posted so far: a helper joins each job at most once.
    /// Changed under the lock; read without it by helpers that spin.
    jobs: AtomicU64,
    /// Set under the lock when the pool is dropped.
    stopping: AtomicBool,
    /// Helpers wait here for a job, or for the shutdown.
    posted: Condvar,
    /// A caller waits here for the helpers still inside its job.
    left: Condvar,
}

struct State {
    job: Option<JobPtr>,
    /// Helpers inside the posted job, or inside the one just withdrawn.
    inside: usize,
}

/// A job on its caller's stack, its lifetime erased. It is valid while it
/// is posted and while any helper is inside it (see [`HelperThreads::run`]).
#[derive(Clone, Copy)]
struct JobPtr(*const Job<'static>);

// SAFETY: a `Job` is `Sync` (atomics and a `Sync` closure), so a pointer to
// it may go to another thread; when it may be dereferenced is `run`'s part.
unsafe impl Send for JobPtr {}

struct Job<'a> {
    parts: usize,
    next: AtomicUsize,
    work: &'a (dyn Fn(usize) + Sync),
    /// A helper's part panicked (the caller re-raises it).
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Runs parts until none is left untaken.
    fn take_parts(&self) {
        loop {
            let part = self.next.fetch_add(1, Ordering::Relaxed);
            if part >= self.parts {
                return;
            }
            (self.work)(part);
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Nothing panics while holding the lock; a poisoned one is still sound.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HelperThreads {
    /// Starts `count` helper threads named `{name}-{i}`. After each job a
    /// helper spins for up to `spin` watching for the next before it parks:
    /// a parked thread takes a while to wake (20–50 µs between the two
    /// vCPUs of the development machine), a spinning one does not, at the
    /// cost of a core busy for `spin` after each call.
    pub fn new(count: usize, name: &str, spin: Duration) -> std::io::Result<HelperThreads> {
        let shared = Arc::new(Shared {
            jobs: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            state: Mutex::new(State {
                job: None,
                inside: 0,
            }),
            posted: Condvar::new(),
            left: Condvar::new(),
        });
        let mut pool = HelperThreads {
            shared,
            threads: Vec::with_capacity(count),
        };
        for i in 0..count {
            let shared = pool.shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || help(&shared, spin))?;
            // On an error above, dropping `pool` stops the threads started.
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// How many helper threads there are.
    pub fn count(&self) -> usize {
        self.threads.len()
    }

    /// Runs `work(0)` to `work(parts - 1)`, each once, on this thread and on
    /// whichever helpers join in time; returns when all have run. A part
    /// that panics on a helper panics here, once every part has ended.
    pub fn run(&self, parts: usize, work: &(dyn Fn(usize) + Sync)) {
        let job = Job {
            parts,
            next: AtomicUsize::new(0),
            work,
            panicked: AtomicBool::new(false),
        };
        if parts < 2 || self.threads.is_empty() {
            job.take_parts();
            return;
        }
        {
            let mut state = lock(&self.shared.state);
            if state.job.is_some() || state.inside > 0 {
                // The helpers are another caller's: do it all here.
                drop(state);
                job.take_parts();
                return;
            }
            // SAFETY: only the lifetime changes. The pointer is dereferenced
            // by helpers that entered the job (`inside`) while it was posted,
            // and `Withdraw` below, which runs before `job` goes out of scope
            // (also when a part panics on this thread), takes the job down
            // and waits until no helper is inside it.
            let erased =
                unsafe { std::mem::transmute::<*const Job<'_>, *const Job<'static>>(&job) };
            state.job = Some(JobPtr(erased));
            self.shared.jobs.fetch_add(1, Ordering::Relaxed);
        }
        let withdraw = Withdraw(&self.shared, &job);
        for _ in 0..self.threads.len().min(parts - 1) {
            self.shared.posted.notify_one();
        }
        job.take_parts();
        drop(withdraw);
        if job.panicked.load(Ordering::Relaxed) {
            resume_unwind(Box::new(
                "a part of a job panicked on a helper thread".to_string(),
            ));
        }
    }
}

/// Takes the posted job down and waits for the helpers inside it. Its
/// parts left untaken (the caller's part panicked) are dropped first.
struct Withdraw<'a, 'j>(&'a Shared, &'a Job<'j>);

impl Drop for Withdraw<'_, '_> {
    fn drop(&mut self) {
        self.1.next.store(self.1.parts, Ordering::Relaxed);
        let mut state = lock(&self.0.state);
        state.job = None;
        while state.inside > 0 {
            state = self
                .0
                .left
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A helper's life: join each job posted once, spin for up to `spin` after
/// each, park in between.
fn help(shared: &Shared, spin: Duration) {
    let mut seen = 0;
    let mut state = lock(&shared.state);
    loop {
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let posted = shared.jobs.load(Ordering::Relaxed);
        match state.job {
            Some(job) if posted != seen => {
                seen = posted;
                // SAFETY: the job is posted and the lock held, so its caller
                // is before `Withdraw`; from `inside += 1` below on, its
                // caller does not return (nor unwind) past the job before
                // `inside` drops back to zero.
                let job = unsafe { &*job.0 };
                if job.next.load(Ordering::Relaxed) >= job.parts {
                    // Every part is taken: entering would only make the
                    // caller wait for this helper to leave.
                    continue;
                }
                state.inside += 1;
                drop(state);
                if catch_unwind(AssertUnwindSafe(|| job.take_parts())).is_err() {
                    job.panicked.store(true, Ordering::Relaxed);
                }
                state = lock(&shared.state);
                state.inside -= 1;
                if state.inside == 0 {
                    shared.left.notify_all();
                }
                if !spin.is_zero() {
                    drop(state);
                    let start = Instant::now();
                    while shared.jobs.load(Ordering::Relaxed) == seen
                        && !shared.stopping.load(Ordering::Relaxed)
                        && start.elapsed() < spin
                    {
                        std::hint::spin_loop();
                    }
                    state = lock(&shared.state);
                }
            }
            _ => {
                state = shared
                    .posted
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner)
            }
        }
    }
}

impl Drop for HelperThreads {
    fn drop(&mut self) {
        {
            // Under the lock: a helper about to wait sees it first.
            let _state = lock(&self.shared.state);
            self.shared.stopping.store(true, Ordering::Relaxed);
        }
        self.shared.posted.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_helper() -> bool {
        std::thread::current()
            .name()
            .is_some_and(|name| name.starts_with("test-helper"))
    }

    /// Every part runs exactly once, whatever the helpers and parts, and
    /// the work may borrow the caller's stack.
    #[test]
    fn each_part_runs_once() {
        for (helpers, spin) in [(0, 0), (1, 0), (3, 0), (2, 30)] {
            let spin = Duration::from_micros(spin);
            let pool = HelperThreads::new(helpers, "test-helper", spin).unwrap();
            assert_eq!(pool.count(), helpers);
            for parts in [0, 1, 2, 7, 300] {
                for _ in 0..20 {
                    let runs: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                    pool.run(parts, &|part| {
                        runs[part].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(
                        runs.iter().all(|r| r.load(Ordering::Relaxed) == 1),
                        "{helpers} helpers, {parts} parts"
                    );
                }
            }
        }
    }

    /// Helpers do take parts: with parts that take a while, some run on a
    /// helper (else the pool would be only overhead).
    #[test]
    fn helpers_take_parts() {
        let pool = HelperThreads::new(2, "test-helper", Duration::ZERO).unwrap();
        let on_helpers = AtomicUsize::new(0);
        for _ in 0..20 {
            pool.run(50, &|_| {
                std::thread::sleep(Duration::from_micros(100));
                if on_helper() {
                    on_helpers.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        assert!(on_helpers.load(Ordering::Relaxed) > 0);
    }

    /// `run` returns only once every part that started has ended, on the
    /// helpers too (their parts write into the caller's stack).
    #[test]
    fn run_returns_after_every_started_part_ended() {
        let pool = HelperThreads::new(3, "test-helper", Duration::ZERO).unwrap();
        for _ in 0..50 {
            let (started, ended) = (AtomicUsize::new(0), AtomicUsize::new(0));
            pool.run(8, &|_| {
                started.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(300));
                ended.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(started.load(Ordering::Relaxed), 8);
            assert_eq!(ended.load(Ordering::Relaxed), 8);
        }
    }

    /// Several callers at once on one pool: each call's parts all run, once,
    /// for that call (a caller that finds the helpers taken runs alone).
    #[test]
    fn concurrent_callers_each_get_their_parts() {
        let pool = HelperThreads::new(2, "test-helper", Duration::ZERO).unwrap();
        std::thread::scope(|scope| {
            for caller in 0..4usize {
                let pool = &pool;
                scope.spawn(move || {
                    for call in 0..200usize {
                        let parts = 1 + (caller * 7 + call) % 40;
                        let sums: Vec<AtomicUsize> =
                            (0..parts).map(|_| AtomicUsize::new(0)).collect();
                        pool.run(parts, &|part| {
                            sums[part].fetch_add(caller * 1000 + call, Ordering::Relaxed);
                        });
                        for sum in &sums {
                            assert_eq!(sum.load(Ordering::Relaxed), caller * 1000 + call);
                        }
                    }
                });
            }
        });
    }

    /// A part that panics, on a helper or on the caller, panics in `run`
    /// after the other parts ended; the pool works afterwards.
    #[test]
    fn a_panicking_part_reaches_the_caller_and_the_pool_goes_on() {
        let pool = HelperThreads::new(2, "test-helper", Duration::ZERO).unwrap();
        for panic_on_helper in [true, false] {
            let ran = AtomicUsize::new(0);
            let caught = catch_unwind(AssertUnwindSafe(|| {
                pool.run(200, &|_| {
                    std::thread::sleep(Duration::from_micros(50));
                    ran.fetch_add(1, Ordering::Relaxed);
                    if on_helper() == panic_on_helper {
                        panic!("part failed");
                    }
                })
            }));
            assert!(caught.is_err(), "panic on helper: {panic_on_helper}");
            // Nothing runs on after `run`; a panic on the caller drops the
            // parts no one took (its first part panics: few others ran).
            let after = ran.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
            assert_eq!(ran.load(Ordering::Relaxed), after);
            if !panic_on_helper {
                assert!(after < 200, "{after} parts ran after the caller's panicked");
            }
            let runs = AtomicUsize::new(0);
            pool.run(64, &|_| {
                runs.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(runs.load(Ordering::Relaxed), 64);
        }
    }
}
