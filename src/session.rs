//! A session scores requests on one model, on one thread at a time, and owns
//! the scratch memory for it. Create one per thread; they share the model.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::request::Request;
use crate::request_threads::RequestThreads;
use crate::{exec, reference};

/// Where the scores go: `[candidates × tasks]` row-major, each optional.
/// Nothing is written unless scoring succeeds.
#[derive(Debug, Default)]
pub struct Scores<'a> {
    pub logits: Option<&'a mut [f32]>,
    pub probabilities: Option<&'a mut [f32]>,
}

/// Which implementation computes the scores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// The scalar reference of MODEL.md (the oracle).
    Reference,
    /// The lowered program on the CPU: request-level work once, tiles of
    /// candidates, no allocation in steady state.
    #[default]
    Cpu,
    /// The lowered program as CUDA kernels; needs a model opened on a GPU.
    Cuda,
}

impl Backend {
    pub fn parse(name: &str) -> Option<Backend> {
        match name {
            "reference" => Some(Backend::Reference),
            "cpu" => Some(Backend::Cpu),
            "cuda" => Some(Backend::Cuda),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Backend::Reference => "reference",
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        }
    }
}

pub struct Session {
    model: Arc<Model>,
    backend: Backend,
    /// Logits of the request in flight, copied out only on success.
    logits: Vec<f32>,
    /// The CPU scratch of each intra-request thread, and the helpers.
    threads: RequestThreads,
    isa: Option<crate::cpu::Isa>,
    /// Created at the first GPU call.
    #[cfg(feature = "cuda")]
    gpu: Option<crate::gpu::GpuSession>,
}

impl Session {
    /// This session's GPU state, created at its first use.
    #[cfg(feature = "cuda")]
    fn gpu_session<'a>(
        gpu: &'a mut Option<crate::gpu::GpuSession>,
        model: &Model,
    ) -> Result<&'a mut crate::gpu::GpuSession> {
        let Some(gpu_model) = model.gpu() else {
            return Err(Error::new(
                crate::ErrorKind::Device,
                format!(
                    "model `{}` was not opened on a GPU ({})",
                    model.name(),
                    model.device_note()
                ),
            ));
        };
        if gpu.is_none() {
            *gpu = Some(crate::gpu::GpuSession::new(gpu_model.clone(), model)?);
        }
        gpu.as_mut()
            .ok_or_else(|| Error::new(crate::ErrorKind::Device, "GPU session unavailable"))
    }

    #[cfg(feature = "cuda")]
    fn score_gpu(&mut self, request: &Request<'_>) -> Result<()> {
        let model = self.model.clone();
        let scored =
            Self::gpu_session(&mut self.gpu, &model)?.score(&model, request, &mut self.logits);
        let stuck = scored.is_err() && self.gpu.as_ref().is_some_and(|gpu| gpu.stuck_in_capture());
        if stuck {
            // A capture that failed half-way leaves the session's stream in
            // capture mode, where every later call would fail: the next
            // call starts from a new GPU session. (Other errors leave the
            // session whole: a failed staging growth keeps the old buffers.)
            self.gpu = None;
        }
        scored
    }

    /// Benchmarks only (`mmoe bench --phases`): records where the time of
    /// each of the next `calls` GPU calls goes. An error on a session that
    /// does not run on a GPU.
    #[cfg(feature = "cuda")]
    #[doc(hidden)]
    pub fn trace_gpu_phases(&mut self, calls: usize) -> Result<()> {
        let model = self.model.clone();
        if self.backend != Backend::Cuda || model.gpu().is_none() {
            return Err(Error::new(
                crate::ErrorKind::Device,
                format!("session of model `{}` does not run on a GPU", model.name()),
            ));
        }
        Self::gpu_session(&mut self.gpu, &model)?.trace_phases(calls)
    }

    /// The GPU calls traced since `trace_gpu_phases`.
    #[cfg(feature = "cuda")]
    #[doc(hidden)]
    pub fn gpu_phases(&self) -> &[crate::gpu::CallPhases] {
        self.gpu.as_ref().map_or(&[], |gpu| gpu.phases())
    }

    #[cfg(not(feature = "cuda"))]
    fn score_gpu(&mut self, _request: &Request<'_>) -> Result<()> {
        Err(Error::new(
            crate::ErrorKind::Device,
            "this build of mmoe has no GPU support (cargo feature `cuda`)",
        ))
    }

    /// A session on the model's device: CUDA for a model opened on a GPU,
    /// else the CPU.
    pub fn new(model: Arc<Model>) -> Session {
        #[cfg(feature = "cuda")]
        let backend = if model.gpu().is_some() {
            Backend::Cuda
        } else {
            Backend::Cpu
        };
        #[cfg(not(feature = "cuda"))]
        let backend = Backend::Cpu;
        Self::with_backend(model, backend)
    }

    pub fn with_backend(model: Arc<Model>, backend: Backend) -> Session {
        Session {
            model,
            backend,
            logits: Vec::new(),
            threads: RequestThreads::default(),
            isa: None,
            #[cfg(feature = "cuda")]
            gpu: None,
        }
    }

    /// The CPU kernels this session runs (`MMOE_ISA` or the best supported),
    /// unless set with [`Session::set_isa`].
    pub fn isa(&self) -> Result<crate::cpu::Isa> {
        match self.isa {
            Some(isa) => Ok(isa),
            None => crate::cpu::Isa::detected(),
        }
    }

    /// Splits the candidates of each request across `threads` threads (1,
    /// the default, scores on the caller's thread only; at most
    /// [`MAX_THREADS`], a larger number counts as that), in parts as even
    /// as can be, down to one row; every kernel adds a row's products in
    /// one order whatever rows share its block, so the scores are the same
    /// to the bit with any number of threads. The session starts
    /// `threads - 1` helper threads here; they park between calls (or spin for
    /// `MMOE_CPU_SPIN_US` first) and stop when the session is dropped. On
    /// the development machine 2 threads scored 3 to 7 candidates of the
    /// benchmark model 1.2–1.5× faster than one, 9 and more 1.5–2.0×
    /// faster (`bench/RESULTS.md`, row blocks of any size).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads.set_threads(threads.clamp(1, MAX_THREADS));
    }

    pub fn threads(&self) -> usize {
        self.threads.threads()
    }

    /// Forces the CPU kernels of this session; an ISA the CPU lacks is refused.
    pub fn set_isa(&mut self, isa: crate::cpu::Isa) -> Result<()> {
        if !isa.supported() {
            return Err(Error::argument(format!(
                "this CPU cannot run the {} kernels",
                isa.name()
            )));
        }
        self.isa = Some(isa);
        Ok(())
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts (or stops) timing each step of the CPU program, to see where a
    /// call's time goes. Off by default; switching it on clears the sums.
    /// Timing costs two clock reads per step.
    pub fn set_step_profiling(&mut self, on: bool) {
        self.threads.set_profiling(on);
    }

    /// Per step of the CPU program (request steps first, then the candidate
    /// steps, which run once per tile of candidates): its label and the time
    /// spent in it, summed over calls and threads since profiling was switched
    /// on. Empty when profiling is off or nothing ran on the CPU backend.
    pub fn step_profile(&self) -> Vec<(String, std::time::Duration)> {
        let program = self.model.program();
        let plan = self.model.plan();
        let sums = self.threads.step_nanos();
        program
            .request_steps
            .iter()
            .chain(&program.candidate_steps)
            .zip(sums)
            .map(|(step, nanos)| (step.label(plan), std::time::Duration::from_nanos(nanos)))
            .collect()
    }

    /// Prepares the session for requests of up to `max_candidates`
    /// candidates (at most [`MAX_WARM_UP_CANDIDATES`]), so that the first
    /// real ones do not pay for it: off the GPU it reads every page of the
    /// model file when it fits in half the available memory (once per
    /// model, [`Model::touch_pages`]), then scores requests of zero features
    /// (dense inputs zero, bags empty) and throws the scores away. On the
    /// CPU, where scratch is per tile of candidates, one request of up to a
    /// tile per thread sizes the scratch of every thread and touches the
    /// model's weights, and the output buffer is reserved for
    /// `max_candidates`. On a GPU, one request per batch bucket up to
    /// `max_candidates`'s captures each bucket's graph (and times its tile
    /// sizes, once per model); a later request whose ids need more staging
    /// than any before still grows that buffer (no graph is captured
    /// again). A larger request later prepares what it needs at its first
    /// call; 0 does nothing.
    pub fn warm_up(&mut self, max_candidates: usize) -> Result<()> {
        check_warm_up(max_candidates)?;
        let model = self.model.clone();
        let config = model.config();
        let tasks = model.num_tasks();
        let sizes = warm_up_sizes(self.backend, max_candidates, self.threads());
        let Some(&largest) = sizes.iter().max() else {
            return Ok(());
        };
        let context = |e: Error, candidates: usize| {
            e.context(format_args!(
                "warm-up of model `{}` with {candidates} candidates",
                model.name()
            ))
        };
        // The zero request's bags are empty: it gathers no embedding rows.
        // (On a GPU the tables are on the device; the host's pages idle.)
        if self.backend != Backend::Cuda {
            model.touch_pages();
        }
        let zeros = ZeroFeatures::new(config, largest).map_err(|e| context(e, largest))?;
        let mut logits = Vec::new();
        for candidates in sizes {
            let request = zeros.request(config, candidates);
            logits.resize(candidates * tasks, 0.0);
            let mut scores = Scores {
                logits: Some(&mut logits),
                probabilities: None,
            };
            // The context names the model already.
            self.score_unnamed(&request, &mut scores)
                .map_err(|e| context(e, candidates))?;
        }
        if self.backend == Backend::Cpu {
            self.threads
                .reserve(max_candidates, tasks)
                .map_err(|e| context(e, max_candidates))?;
        }
        // The session's own logits, for requests of up to max_candidates.
        let want = max_candidates * tasks;
        self.logits
            .try_reserve(want.saturating_sub(self.logits.len()))
            .map_err(|e| {
                context(
                    Error::argument(format!("no memory for the logits: {e}")),
                    max_candidates,
                )
            })?;
        Ok(())
    }

    /// Scores a request. Output slices must hold `candidates × tasks` floats.
    /// An error names the model (after a reload, which one refused).
    pub fn score(&mut self, request: &Request<'_>, scores: &mut Scores<'_>) -> Result<()> {
        self.score_unnamed(request, scores)
            .map_err(|e| e.context(format_args!("model `{}`", self.model.name())))
    }

    /// [`Session::score`] without the model's name in errors.
    fn score_unnamed(&mut self, request: &Request<'_>, scores: &mut Scores<'_>) -> Result<()> {
        let model = self.model.clone();
        let model = &*model;
        let tasks = model.num_tasks();
        let n = request.candidates();
        if n > MAX_CANDIDATES {
            return Err(Error::request(format!(
                "{n} candidates, above the limit of {MAX_CANDIDATES} per request"
            )));
        }
        let want = n
            .checked_mul(tasks)
            .ok_or_else(|| Error::argument("candidate count overflows"))?;
        for (what, out) in [
            ("logits", scores.logits.as_deref()),
            ("probabilities", scores.probabilities.as_deref()),
        ] {
            if let Some(out) = out {
                if out.len() != want {
                    return Err(Error::argument(format!(
                        "{what} output holds {} floats, expected {n} candidates × {tasks} tasks = {want}",
                        out.len()
                    )));
                }
            }
        }
        request.validate(model.config())?;
        if want > self.logits.capacity() {
            self.logits
                .try_reserve_exact(want - self.logits.len())
                .map_err(|e| {
                    Error::argument(format!("no memory for the logits of {n} candidates: {e}"))
                })?;
        }
        self.logits.resize(want, 0.0);
        match self.backend {
            Backend::Reference => reference::score(model, request, &mut self.logits)?,
            Backend::Cpu => {
                let isa = self.isa()?;
                self.threads
                    .score(model, model.program(), isa, request, &mut self.logits)?
            }
            Backend::Cuda => self.score_gpu(request)?,
        }
        if let Some(out) = scores.logits.as_deref_mut() {
            out.copy_from_slice(&self.logits);
        }
        if let Some(out) = scores.probabilities.as_deref_mut() {
            for (p, &l) in out.iter_mut().zip(&self.logits) {
                *p = reference::sigmoid(l);
            }
        }
        Ok(())
    }
}

/// The most candidates a request may have: far above what a ranking call
/// scores, low enough that no size computed from it overflows (tasks and
/// widths are bounded by the config) and that GPU row counts fit an `i32`.
pub const MAX_CANDIDATES: usize = 1 << 24;

/// The most threads a session splits a request over
/// ([`Session::set_threads`]).
pub const MAX_THREADS: usize = 256;

/// The largest `max_candidates` a warm-up ([`Session::warm_up`],
/// [`crate::Engine::set_warm_up`]) accepts. Larger requests are scored all
/// the same; their first call prepares what they need.
pub const MAX_WARM_UP_CANDIDATES: usize = 1 << 16;

/// Refuses a warm-up size above [`MAX_WARM_UP_CANDIDATES`].
pub(crate) fn check_warm_up(max_candidates: usize) -> Result<()> {
    if max_candidates > MAX_WARM_UP_CANDIDATES {
        return Err(Error::argument(format!(
            "max_candidates {max_candidates} is above the warm-up limit of {MAX_WARM_UP_CANDIDATES} candidates"
        )));
    }
    Ok(())
}

/// The request sizes [`Session::warm_up`] scores: on a GPU, every batch
/// bucket below `max_candidates` and then `max_candidates` itself (its own
/// bucket); on the CPU, enough candidates to give each of `threads` threads
/// a tile (scratch does not grow with the request).
fn warm_up_sizes(backend: Backend, max_candidates: usize, threads: usize) -> Vec<usize> {
    if max_candidates == 0 {
        return Vec::new();
    }
    if backend != Backend::Cuda {
        return vec![max_candidates.min(threads.max(1) * exec::TILE)];
    }
    let mut sizes = Vec::new();
    let mut size = crate::gpu::launch_plan::bucket(1);
    while size < max_candidates {
        sizes.push(size);
        size = crate::gpu::launch_plan::bucket(size + 1);
    }
    sizes.push(max_candidates);
    sizes
}

/// Zero features for warm-up requests: every dense input zero, every bag
/// empty (which pools to zeros), valid for any model.
struct ZeroFeatures {
    dense: Vec<f32>,
    offsets: Vec<u32>,
}

impl ZeroFeatures {
    /// Enough zeros for requests of up to `max_candidates` candidates
    /// (at most [`MAX_WARM_UP_CANDIDATES`]); an allocation that fails is an
    /// error, not an abort.
    fn new(config: &crate::config::Config, max_candidates: usize) -> Result<ZeroFeatures> {
        let dense = config
            .inputs
            .iter()
            .filter(|input| input.kind == crate::config::InputKind::Dense)
            .map(|input| rows_of(input, max_candidates).checked_mul(input.dim))
            .try_fold(0usize, |most, len| len.map(|len| most.max(len)))
            .ok_or_else(|| Error::argument("warm-up request size overflows"))?;
        Ok(ZeroFeatures {
            dense: zeros(dense)?,
            offsets: zeros(max_candidates + 1)?,
        })
    }

    fn request(&self, config: &crate::config::Config, candidates: usize) -> Request<'_> {
        let mut request = Request::new(candidates);
        for (index, input) in config.inputs.iter().enumerate() {
            let rows = rows_of(input, candidates);
            match input.kind {
                crate::config::InputKind::Dense => {
                    request.set_dense(index, &self.dense[..rows * input.dim]);
                }
                crate::config::InputKind::Sparse => {
                    request.set_sparse(index, &[], &self.offsets[..rows + 1]);
                }
            }
        }
        request
    }
}

/// `len` zeros, or an error when the memory is not there.
fn zeros<T: Clone + Default>(len: usize) -> Result<Vec<T>> {
    let mut values = Vec::new();
    values.try_reserve_exact(len).map_err(|e| {
        Error::argument(format!(
            "no memory for a warm-up request of {len} values: {e}"
        ))
    })?;
    values.resize(len, T::default());
    Ok(values)
}

/// Rows of `input` in a request of `candidates` candidates.
fn rows_of(input: &crate::config::Input, candidates: usize) -> usize {
    match input.scope {
        crate::config::Scope::Request => 1,
        crate::config::Scope::Candidate => candidates,
    }
}
