//! A session scores requests on one model, on one thread at a time, and owns
//! the scratch memory for it. Create one per thread; they share the model.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::request::Request;
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
    /// One scratch per thread of intra-request parallelism (at least one).
    scratches: Vec<exec::Scratch>,
    isa: Option<crate::cpu::Isa>,
    /// Created at the first GPU call.
    #[cfg(feature = "cuda")]
    gpu: Option<crate::gpu::GpuSession>,
}

impl Session {
    #[cfg(feature = "cuda")]
    fn score_gpu(&mut self, request: &Request<'_>) -> Result<()> {
        let model = self.model.clone();
        let model = &*model;
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
        if self.gpu.is_none() {
            self.gpu = Some(crate::gpu::GpuSession::new(gpu_model.clone(), model)?);
        }
        match self.gpu.as_mut() {
            Some(gpu) => gpu.score(model, request, &mut self.logits),
            None => Err(Error::new(
                crate::ErrorKind::Device,
                "GPU session unavailable",
            )),
        }
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
            scratches: vec![exec::Scratch::default()],
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
    /// the default, scores on the caller's thread only). Each call then
    /// starts `threads - 1` threads: worth it for large requests only.
    pub fn set_threads(&mut self, threads: usize) {
        self.scratches
            .resize_with(threads.max(1), exec::Scratch::default);
    }

    pub fn threads(&self) -> usize {
        self.scratches.len()
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
        for scratch in &mut self.scratches {
            scratch.set_profiling(on);
        }
    }

    /// Per step of the CPU program (request steps first, then the candidate
    /// steps, which run once per tile of candidates): its label and the time
    /// spent in it, summed over calls and threads since profiling was switched
    /// on. Empty when profiling is off or nothing ran on the CPU backend.
    pub fn step_profile(&self) -> Vec<(String, std::time::Duration)> {
        let program = self.model.program();
        let plan = self.model.plan();
        let mut sums: Vec<u64> = Vec::new();
        for nanos in self.scratches.iter().filter_map(|s| s.step_nanos()) {
            if sums.len() < nanos.len() {
                sums.resize(nanos.len(), 0);
            }
            for (sum, n) in sums.iter_mut().zip(nanos) {
                *sum += n;
            }
        }
        program
            .request_steps
            .iter()
            .chain(&program.candidate_steps)
            .zip(sums)
            .map(|(step, nanos)| (step.label(plan), std::time::Duration::from_nanos(nanos)))
            .collect()
    }

    /// Prepares the session for requests of up to `max_candidates`
    /// candidates, so that the first real ones do not pay for it: it scores
    /// requests of zero features (dense inputs zero, bags empty) and throws
    /// the scores away. On the CPU, one request of `max_candidates` sizes
    /// the scratch of every thread. On a GPU, one request per batch bucket up
    /// to `max_candidates`'s captures each bucket's graph (and times its tile
    /// sizes, once per model). A larger request later still prepares what it
    /// needs at its first call; 0 does nothing.
    pub fn warm_up(&mut self, max_candidates: usize) -> Result<()> {
        let model = self.model.clone();
        let config = model.config();
        let zeros = ZeroFeatures::new(config, max_candidates);
        let mut logits = Vec::new();
        for candidates in warm_up_sizes(self.backend, max_candidates) {
            let request = zeros.request(config, candidates);
            logits.resize(candidates * model.num_tasks(), 0.0);
            let mut scores = Scores {
                logits: Some(&mut logits),
                probabilities: None,
            };
            self.score(&request, &mut scores).map_err(|e| {
                e.context(format_args!(
                    "warm-up of model `{}` with {candidates} candidates",
                    model.name()
                ))
            })?;
        }
        Ok(())
    }

    /// Scores a request. Output slices must hold `candidates × tasks` floats.
    pub fn score(&mut self, request: &Request<'_>, scores: &mut Scores<'_>) -> Result<()> {
        let model = self.model.clone();
        let model = &*model;
        let tasks = model.num_tasks();
        let n = request.candidates();
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
        self.logits.resize(want, 0.0);
        match self.backend {
            Backend::Reference => reference::score(model, request, &mut self.logits)?,
            Backend::Cpu => exec::score_parallel(
                model,
                model.program(),
                self.isa()?,
                &mut self.scratches,
                request,
                &mut self.logits,
            )?,
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

/// The request sizes [`Session::warm_up`] scores: `max_candidates` on the
/// CPU; on a GPU, every batch bucket below it and then `max_candidates`
/// itself (its own bucket).
fn warm_up_sizes(backend: Backend, max_candidates: usize) -> Vec<usize> {
    if max_candidates == 0 {
        return Vec::new();
    }
    let mut sizes = Vec::new();
    if backend == Backend::Cuda {
        let mut size = crate::gpu::launch_plan::bucket(1);
        while size < max_candidates {
            sizes.push(size);
            size = crate::gpu::launch_plan::bucket(size + 1);
        }
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
    /// Enough zeros for requests of up to `max_candidates` candidates.
    fn new(config: &crate::config::Config, max_candidates: usize) -> ZeroFeatures {
        let dense = config
            .inputs
            .iter()
            .map(|input| rows_of(input, max_candidates) * input.dim)
            .max()
            .unwrap_or(0);
        ZeroFeatures {
            dense: vec![0.0; dense],
            offsets: vec![0; max_candidates + 1],
        }
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

/// Rows of `input` in a request of `candidates` candidates.
fn rows_of(input: &crate::config::Input, candidates: usize) -> usize {
    match input.scope {
        crate::config::Scope::Request => 1,
        crate::config::Scope::Candidate => candidates,
    }
}
