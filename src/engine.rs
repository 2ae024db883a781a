//! A hot-swappable model: the engine owns the current model and replaces it
//! atomically. A reload opens and validates the new file beside the old one
//! (no lock held), then swaps a pointer under a write lock held for that
//! instant only. Calls in flight keep the model they started with (they hold
//! an `Arc` of it); a failed reload leaves the old model serving.
//!
//! With [`Engine::set_warm_up`], a reload also prepares the new model before
//! the swap: the reloading thread warms up one session per live engine
//! session, and each engine session that scored on the old model takes one
//! at its first call on the new model, so no call on the serving threads
//! pays for the new model's first touch (page faults of the mapped weights;
//! on a GPU, the graphs and the tile timing).
//!
//! After the swap the reloading thread also visits every engine session:
//! it takes the session's old-model session (to drop it there, not on a
//! serving thread) and gives it a prepared one. Idle sessions first, then
//! each busy one when its call in flight ends, polled for up to 100 ms
//! (`BUSY_WAIT`). Such sessions so hold no old model after `reload`
//! returns, whose memory (on a GPU, weights and graphs) would otherwise
//! stay until their next call, which would then pay for its unmapping. A
//! session still busy at the deadline (one scoring back to back) switches
//! at its next call.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use crate::error::Result;
use crate::model::{Model, OpenOptions};
use crate::request::Request;
use crate::session::{Scores, Session};

/// Thread-safe: share it (`Arc<Engine>`) between the threads that score.
pub struct Engine {
    current: RwLock<Arc<Model>>,
    options: OpenOptions,
    /// Incremented by every successful reload.
    generation: AtomicU64,
    /// Candidates a reload warms up for (0: reloads do not warm up).
    warm_up: AtomicUsize,
    /// Engine sessions alive: how many sessions a reload prepares.
    live_sessions: AtomicUsize,
    /// Sessions a reload prepared, for engine sessions to take at their
    /// first call on its model.
    prepared: Mutex<Vec<Session>>,
    /// Every engine session's slot, for a reload to visit (dropped
    /// sessions' entries are pruned when sessions are made).
    slots: Mutex<Vec<SlotEntry>>,
    /// Held through a reload: two at once would each hand out sessions for
    /// its own model, the later visit taking the other's.
    reloading: Mutex<()>,
}

/// An engine session as its engine sees it: the slot a reload switches,
/// and its thread count, which a reload reads (to warm up a session for
/// it) even while a call holds the slot.
struct SlotEntry {
    slot: Weak<Mutex<Slot>>,
    threads: Arc<AtomicUsize>,
}

/// What an engine session scores with, shared with its engine so that a
/// reload can swap it while the session is idle.
struct Slot {
    /// The session on the model of the last call (or prepared by a reload).
    session: Option<Session>,
    /// Whether it has scored: only a session that served the old model
    /// takes a prepared one (a session's first session is its own).
    served: bool,
    /// Intra-request threads ([`EngineSession::set_threads`]; the engine's
    /// `SlotEntry` shares it).
    threads: Arc<AtomicUsize>,
}

impl Slot {
    /// The session on `model` (taking a prepared one, or a new one, when the
    /// model changed); the replaced session is dropped here.
    fn current(&mut self, engine: &Engine, model: &Arc<Model>) -> &mut Session {
        let session = match self.session.take() {
            Some(session) if Arc::ptr_eq(session.model(), model) => session,
            old => {
                let threads = self.threads.load(Ordering::Acquire);
                let prepared = match self.served {
                    true => engine.take_prepared(model, threads),
                    false => None,
                };
                drop(old);
                let mut session = prepared.unwrap_or_else(|| Session::new(model.clone()));
                session.set_threads(threads);
                session
            }
        };
        self.served = true;
        self.session.insert(session)
    }
}

impl Engine {
    /// Opens the first model. `options` apply to every reload too.
    pub fn open(path: impl AsRef<Path>, options: OpenOptions) -> Result<Engine> {
        let model = Model::open(path, &options)?;
        Ok(Engine {
            current: RwLock::new(model),
            options,
            generation: AtomicU64::new(0),
            warm_up: AtomicUsize::new(0),
            live_sessions: AtomicUsize::new(0),
            prepared: Mutex::new(Vec::new()),
            slots: Mutex::new(Vec::new()),
            reloading: Mutex::new(()),
        })
    }

    /// The model serving now.
    pub fn model(&self) -> Arc<Model> {
        // A poisoned lock only means a thread panicked while holding it; the
        // Arc inside is always a complete model.
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Opens and validates `path`, then makes it the serving model. On error
    /// the current model keeps serving and the error says why. With
    /// [`Engine::set_warm_up`], the new model is warmed up first, in this
    /// thread; a warm-up that fails fails the reload.
    pub fn reload(&self, path: impl AsRef<Path>) -> Result<()> {
        let _one_at_a_time = lock(&self.reloading);
        let path = path.as_ref();
        let model = Model::open(path, &self.options)?;
        let warm_up = self.warm_up.load(Ordering::Acquire);
        let mut sessions = Vec::new();
        if warm_up > 0 {
            // At least one warm-up, kept only for live sessions: it also
            // does the model's own first work (the weights' first touch,
            // the GPU's tile timing). Each for the thread count of a live
            // session (a session of one thread takes no helpers' scratch).
            let live = self.live_sessions.load(Ordering::Acquire);
            let threads = self.live_thread_counts();
            for i in 0..live.max(1) {
                let mut session = Session::new(model.clone());
                session.set_threads(threads.get(i).copied().unwrap_or(1));
                session
                    .warm_up(warm_up)
                    .map_err(|e| e.context(format_args!("reload of {}", path.display())))?;
                if i < live {
                    sessions.push(session);
                }
            }
        }
        // The prepared sessions go in before the model, so that a session
        // seeing the new model finds them; the old ones are dropped after
        // both locks are released.
        let mut prepared = lock(&self.prepared);
        let stale = std::mem::replace(&mut *prepared, sessions);
        let old = {
            let mut guard = match self.current.write() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            self.generation.fetch_add(1, Ordering::Release);
            std::mem::replace(&mut *guard, model.clone())
        };
        drop(prepared);
        let released = self.switch_sessions(&model);
        // The old model may be its last reference: its unmapping and GPU
        // frees run here, on this thread, with no lock held.
        drop(released);
        drop(old);
        drop(stale);
        Ok(())
    }

    /// Moves every engine session onto `model`: its old session, if any, is
    /// returned (for the caller to drop outside the locks) and a prepared
    /// one, if any is left, takes its place. Idle sessions first; then each
    /// session busy in a call, once that call ends (it holds its slot for
    /// one call, polled up to `BUSY_WAIT`): left to its next call, it would
    /// drop the old session there, and a serving call would pay for
    /// unmapping the old model (on a GPU, freeing its graphs) whenever it
    /// held the last reference.
    fn switch_sessions(&self, model: &Arc<Model>) -> Vec<Session> {
        let slots: Vec<Arc<Mutex<Slot>>> = lock(&self.slots)
            .iter()
            .filter_map(|entry| entry.slot.upgrade())
            .collect();
        let mut released = Vec::new();
        let mut busy = Vec::new();
        for shared in slots {
            if !self.try_switch(&shared, model, &mut released) {
                busy.push(shared);
            }
        }
        // Polled, not waited for: a thread scoring back to back takes its
        // slot again at once, and a blocked `lock` could wait seconds (seen
        // in the soak test). What is still busy at the deadline switches at
        // its next call, as before.
        let deadline = std::time::Instant::now() + BUSY_WAIT;
        for shared in busy {
            while !self.try_switch(&shared, model, &mut released)
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
        released
    }

    /// Switches the slot unless a call holds it (then `false`). A slot
    /// poisoned by a panic in a call (which the C boundary survives) loses
    /// that call's session, as at its own next lock (`lock_slot`).
    fn try_switch(
        &self,
        shared: &Mutex<Slot>,
        model: &Arc<Model>,
        released: &mut Vec<Session>,
    ) -> bool {
        let mut slot = match shared.try_lock() {
            Ok(slot) => slot,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                let mut slot = poisoned.into_inner();
                released.extend(slot.session.take());
                shared.clear_poison();
                slot
            }
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        self.switch_slot(&mut slot, model, released);
        true
    }

    /// Puts `slot` on `model` unless it is there: its old session into
    /// `released`, a prepared one (if any is left) in its place.
    fn switch_slot(&self, slot: &mut Slot, model: &Arc<Model>, released: &mut Vec<Session>) {
        // A session on an old model, or none yet (a session made before
        // the reload counts among those it prepared for).
        if let Some(session) = &slot.session {
            if Arc::ptr_eq(session.model(), model) {
                return;
            }
        }
        released.extend(slot.session.take());
        let threads = slot.threads.load(Ordering::Acquire);
        if let Some(mut prepared) = self.take_prepared(model, threads) {
            prepared.set_threads(threads);
            slot.session = Some(prepared);
        }
    }

    /// The thread counts of the live engine sessions, most first.
    fn live_thread_counts(&self) -> Vec<usize> {
        let mut counts: Vec<usize> = lock(&self.slots)
            .iter()
            .filter(|entry| entry.slot.strong_count() > 0)
            .map(|entry| entry.threads.load(Ordering::Acquire))
            .collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        counts
    }

    /// Makes every later reload warm up the new model for requests of up to
    /// `max_candidates` candidates (at most
    /// [`crate::MAX_WARM_UP_CANDIDATES`]) before it serves: one warmed-up
    /// session per live engine session, built on the reloading thread (0,
    /// the default: no warm-up; it also drops sessions prepared and not yet
    /// taken). Sessions on the current model warm up with
    /// [`EngineSession::warm_up`].
    pub fn set_warm_up(&self, max_candidates: usize) -> Result<()> {
        crate::session::check_warm_up(max_candidates)?;
        self.warm_up.store(max_candidates, Ordering::Release);
        if max_candidates == 0 {
            let unused = std::mem::take(&mut *lock(&self.prepared));
            drop(unused);
        }
        Ok(())
    }

    /// Sessions the last reload prepared and no engine session has taken
    /// yet (for tests and monitoring).
    #[doc(hidden)]
    pub fn prepared_sessions(&self) -> usize {
        lock(&self.prepared).len()
    }

    /// A session a reload prepared on `model`, if one is left: one warmed
    /// up for `threads` threads if there is one.
    fn take_prepared(&self, model: &Arc<Model>, threads: usize) -> Option<Session> {
        let mut prepared = lock(&self.prepared);
        let on_model = |s: &Session| Arc::ptr_eq(s.model(), model);
        let at = prepared
            .iter()
            .position(|s| on_model(s) && s.threads() == threads)
            .or_else(|| prepared.iter().position(on_model))?;
        Some(prepared.swap_remove(at))
    }

    /// How many reloads have succeeded.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn options(&self) -> &OpenOptions {
        &self.options
    }

    /// A session that follows the engine's current model.
    pub fn session(self: &Arc<Self>) -> EngineSession {
        self.live_sessions.fetch_add(1, Ordering::AcqRel);
        let threads = Arc::new(AtomicUsize::new(1));
        let slot = Arc::new(Mutex::new(Slot {
            session: None,
            served: false,
            threads: threads.clone(),
        }));
        {
            let mut slots = lock(&self.slots);
            slots.retain(|entry| entry.slot.strong_count() > 0);
            slots.push(SlotEntry {
                slot: Arc::downgrade(&slot),
                threads,
            });
        }
        EngineSession {
            engine: self.clone(),
            slot,
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model().name())
            .field("generation", &self.generation())
            .field("options", &self.options)
            .field("warm_up", &self.warm_up.load(Ordering::Acquire))
            .field("live_sessions", &self.live_sessions.load(Ordering::Acquire))
            .field("prepared", &lock(&self.prepared).len())
            .finish()
    }
}

/// Per-thread scoring on an engine: each call scores on the model current
/// when it starts. The scratch is rebuilt only when the model changed.
pub struct EngineSession {
    engine: Arc<Engine>,
    /// Locked for each call (uncontended, but by a reload's visit).
    slot: Arc<Mutex<Slot>>,
}

impl EngineSession {
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Intra-request threads, as [`Session::set_threads`].
    pub fn set_threads(&mut self, threads: usize) {
        let threads = threads.clamp(1, crate::session::MAX_THREADS);
        let mut slot = lock_slot(&self.slot);
        slot.threads.store(threads, Ordering::Release);
        if let Some(session) = slot.session.as_mut() {
            session.set_threads(threads);
        }
    }

    /// Scores on the current model; returns the model that scored.
    pub fn score(&mut self, request: &Request<'_>, scores: &mut Scores<'_>) -> Result<Arc<Model>> {
        // The slot first, then the model: a model read before the lock
        // could predate a reload's visit and undo the session it installed.
        let mut slot = lock_slot(&self.slot);
        let model = self.engine.model();
        slot.current(&self.engine, &model)
            .score(request, scores)
            .map(|()| model)
    }

    /// Prepares this session on the current model for requests of up to
    /// `max_candidates` candidates ([`Session::warm_up`]). After a reload,
    /// the session takes a session the reload prepared
    /// ([`Engine::set_warm_up`]), or prepares the new model at its first
    /// calls.
    pub fn warm_up(&mut self, max_candidates: usize) -> Result<()> {
        let mut slot = lock_slot(&self.slot);
        let model = self.engine.model();
        slot.current(&self.engine, &model).warm_up(max_candidates)
    }

    /// Whether this session holds a session on a model other than the
    /// engine's current one (for tests: a reload releases idle sessions').
    #[doc(hidden)]
    pub fn holds_an_old_model(&self) -> bool {
        let model = self.engine.model();
        let slot = lock_slot(&self.slot);
        slot.session
            .as_ref()
            .is_some_and(|session| !Arc::ptr_eq(session.model(), &model))
    }
}

impl Drop for EngineSession {
    fn drop(&mut self) {
        let live = self.engine.live_sessions.fetch_sub(1, Ordering::AcqRel) - 1;
        let threads = lock_slot(&self.slot).threads.load(Ordering::Acquire);
        // One fewer session to take the prepared ones: drop any beyond the
        // sessions still alive, one of this session's thread count if there
        // is one (outside the lock).
        let unused = {
            let mut prepared = lock(&self.engine.prepared);
            match prepared.len() > live {
                true => {
                    let at = prepared
                        .iter()
                        .position(|s| s.threads() == threads)
                        .unwrap_or(prepared.len() - 1);
                    Some(prepared.swap_remove(at))
                }
                false => None,
            }
        };
        drop(unused);
    }
}

/// How long a reload polls the sessions busy in a call, all together, to
/// switch them when their call ends (`Engine::switch_sessions`).
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Locks an engine session's slot. After a panic in a call of that session
/// (the C boundary survives it), the call's session is dropped, not reused:
/// its scratch, staging or stream may be half-way through the call. The
/// next call makes a new one (a reload visiting the slot first puts a
/// prepared one in its place: `switch_sessions`).
fn lock_slot(slot: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    match slot.lock() {
        Ok(guard) => guard,
        Err(poisoned) => {
            let mut guard = poisoned.into_inner();
            guard.session = None;
            // Its next session is its own to build: a session a reload
            // prepared is another engine session's.
            guard.served = false;
            slot.clear_poison();
            guard
        }
    }
}

/// Locks `mutex`, also after a panic of another holder (a `Vec` of
/// complete sessions is never left half-changed).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod panic_tests {
    use super::*;
    use crate::format::writer;
    use crate::{Config, DType};

    const CONFIG: &str = include_str!("../tests/common/small_config.json");

    /// The small test model with weights of `seed`, packed into `dir`.
    fn packed(dir: &Path, seed: u64) -> std::path::PathBuf {
        let config = Config::parse(CONFIG).expect("test config is valid");
        let source = crate::demo::synthetic_tensors(&config, seed).expect("synthetic tensors");
        let path = dir.join(format!("model-{seed}.mmoe"));
        writer::pack(&config, &source, DType::F16, &path, &mut |_, _| {}).expect("pack");
        path
    }

    fn logits(session: &mut EngineSession) -> Vec<f32> {
        let config = Config::parse(CONFIG).expect("test config is valid");
        let request = crate::demo::synthetic_request(&config, 5, 7);
        let mut out = vec![0.0; 5 * config.tasks.len()];
        let scores = &mut Scores {
            logits: Some(&mut out),
            probabilities: None,
        };
        session
            .score(&request.as_request(), scores)
            .expect("scoring succeeds");
        out
    }

    /// What a panic inside a call does to the slot (as a bug in a kernel
    /// would, caught by the C boundary's catch_unwind).
    fn panic_inside_a_call(session: &EngineSession) {
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = session.slot.lock();
            panic!("injected: a panic while the slot is held");
        }));
        assert!(panicked.is_err());
        assert!(session.slot.is_poisoned());
    }

    #[test]
    fn a_call_after_a_panic_gets_a_new_session() {
        let dir = test_support::tempdir().expect("temp dir");
        let engine =
            Arc::new(Engine::open(packed(dir.path(), 1), OpenOptions::default()).expect("opens"));
        let mut session = engine.session();
        let before = logits(&mut session);
        panic_inside_a_call(&session);
        // The panicked call's session is not reused...
        assert!(lock_slot(&session.slot).session.is_none());
        assert!(!session.slot.is_poisoned());
        // ...and the next call scores on a new one, as before.
        assert_eq!(logits(&mut session), before);
        assert!(lock_slot(&session.slot).session.is_some());
    }

    /// A session busy in a call during a reload is switched when that call
    /// ends, by the reloading thread: the old model is gone when `reload`
    /// returns, and no serving call drops it (before, the busy session kept
    /// it, and its next call unmapped the old model).
    #[test]
    fn a_reload_switches_a_busy_session_when_its_call_ends() {
        let dir = test_support::tempdir().expect("temp dir");
        let (a, b) = (packed(dir.path(), 1), packed(dir.path(), 2));
        let engine = Arc::new(Engine::open(&a, OpenOptions::default()).expect("opens"));
        let mut session = engine.session();
        logits(&mut session);
        let old = Arc::downgrade(&engine.model());
        let reloaded = {
            // A call in flight: the slot is held while the reload runs.
            let held = session.slot.lock();
            let reloader = {
                let engine = engine.clone();
                std::thread::spawn(move || engine.reload(&b))
            };
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(held);
            reloader.join().expect("reload thread")
        };
        reloaded.expect("reload to B");
        assert!(old.upgrade().is_none(), "the old model outlived the reload");
        assert!(lock_slot(&session.slot).session.is_none());
        logits(&mut session);
    }

    /// A warmed reload prepares, for each live session, a session of that
    /// session's thread count (before: every one of the most threads any
    /// session had), and a session takes the one of its own count.
    #[test]
    fn a_warmed_reload_prepares_each_session_for_its_thread_count() {
        let dir = test_support::tempdir().expect("temp dir");
        let (a, b) = (packed(dir.path(), 1), packed(dir.path(), 2));
        let engine = Arc::new(Engine::open(&a, OpenOptions::default()).expect("opens"));
        engine.set_warm_up(8).expect("warm-up size");
        let mut sessions = [engine.session(), engine.session()];
        sessions[0].set_threads(3);
        for session in &mut sessions {
            logits(session);
        }
        assert_eq!(engine.live_thread_counts(), [3, 1]);
        {
            // Both busy in a call through the reload: the prepared sessions
            // stay for their next calls to take.
            let held: Vec<_> = sessions.iter().map(|s| s.slot.lock()).collect();
            let engine = engine.clone();
            std::thread::spawn(move || engine.reload(&b))
                .join()
                .expect("reload thread")
                .expect("reload to B");
            drop(held);
        }
        let mut prepared: Vec<usize> = lock(&engine.prepared).iter().map(|s| s.threads()).collect();
        prepared.sort_unstable();
        assert_eq!(prepared, [1, 3]);
        for (session, threads) in sessions.iter_mut().zip([3, 1]) {
            logits(session);
            let slot = lock_slot(&session.slot);
            assert_eq!(slot.session.as_ref().map(|s| s.threads()), Some(threads));
        }
        assert_eq!(engine.prepared_sessions(), 0);
    }

    #[test]
    fn a_reload_replaces_the_session_of_a_panicked_call() {
        let dir = test_support::tempdir().expect("temp dir");
        let (a, b) = (packed(dir.path(), 1), packed(dir.path(), 2));
        let engine = Arc::new(Engine::open(&b, OpenOptions::default()).expect("opens"));
        let want_b = logits(&mut engine.session());
        engine.reload(&a).expect("reload to A");
        engine.set_warm_up(8).expect("warm-up size");
        let mut session = engine.session();
        let want_a = logits(&mut session);
        assert_ne!(want_a, want_b);
        panic_inside_a_call(&session);
        // The reload visits the poisoned slot: the panicked call's session
        // goes, a session prepared on B takes its place.
        engine.reload(&b).expect("reload to B");
        assert!(!session.slot.is_poisoned());
        assert_eq!(engine.prepared_sessions(), 0);
        assert!(lock_slot(&session.slot)
            .session
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s.model(), &engine.model())));
        assert_eq!(logits(&mut session), want_b);
    }
}
