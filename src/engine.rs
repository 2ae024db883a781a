//! A hot-swappable model: the engine owns the current model and replaces it
//! atomically. A reload opens and validates the new file beside the old one
//! (no lock held), then swaps a pointer under a write lock held for that
//! instant only. Calls in flight keep the model they started with (they hold
//! an `Arc` of it); a failed reload leaves the old model serving.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::error::Result;
use crate::model::{Model, OpenOptions};
use crate::request::Request;
use crate::session::{Scores, Session};

/// Thread-safe: share it (`Arc<Engine>`) between the threads that score.
#[derive(Debug)]
pub struct Engine {
    current: RwLock<Arc<Model>>,
    options: OpenOptions,
    /// Incremented by every successful reload.
    generation: AtomicU64,
}

impl Engine {
    /// Opens the first model. `options` apply to every reload too.
    pub fn open(path: impl AsRef<Path>, options: OpenOptions) -> Result<Engine> {
        let model = Model::open(path, &options)?;
        Ok(Engine {
            current: RwLock::new(model),
            options,
            generation: AtomicU64::new(0),
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
    /// the current model keeps serving and the error says why.
    pub fn reload(&self, path: impl AsRef<Path>) -> Result<()> {
        let model = Model::open(path, &self.options)?;
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = model;
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
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
        EngineSession {
            engine: self.clone(),
            session: None,
            threads: 1,
        }
    }
}

/// Per-thread scoring on an engine: each call scores on the model current
/// when it starts. The scratch is rebuilt only when the model changed.
pub struct EngineSession {
    engine: Arc<Engine>,
    session: Option<Session>,
    threads: usize,
}

impl EngineSession {
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Intra-request threads, as [`Session::set_threads`].
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
        if let Some(session) = self.session.as_mut() {
            session.set_threads(self.threads);
        }
    }

    /// Scores on the current model; returns the model that scored.
    pub fn score(&mut self, request: &Request<'_>, scores: &mut Scores<'_>) -> Result<Arc<Model>> {
        let model = self.engine.model();
        let stale = match &self.session {
            Some(session) => !Arc::ptr_eq(session.model(), &model),
            None => true,
        };
        if stale {
            let mut session = Session::new(model.clone());
            session.set_threads(self.threads);
            self.session = Some(session);
        }
        match self.session.as_mut() {
            Some(session) => session.score(request, scores).map(|()| model),
            None => unreachable!("a session was just created"),
        }
    }
}
