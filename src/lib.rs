//! mmoe: an embedded ranking engine for multi-task Mixture-of-Experts models.
//!
//! A model (the contract is `MODEL.md`) is packed once into a file that the
//! engine memory-maps without copying ([`format`]); [`Model::open`] validates
//! it; a [`Session`] per thread scores [`Request`]s into caller-provided
//! [`Scores`]; an [`Engine`] swaps models while sessions score.
//!
//! Layers, each using only those below it: [`config`] (the contract) →
//! [`plan`] (layers and tensor names) → [`format`] (packed file) and
//! [`model`] (mapped, validated) → [`program`] (the plan lowered into steps,
//! request-level work split out) → backends: [`reference`] (scalar oracle),
//! [`exec`] + [`cpu`] (SIMD kernels), [`gpu`] (CUDA) → [`session`],
//! [`engine`] → faces: [`ffi`] (C ABI), the CLI, the JNI shim in `java/`.
//!
//! ```no_run
//! # fn main() -> mmoe::Result<()> {
//! let model = mmoe::Model::open("model.mmoe", &mmoe::OpenOptions::default())?;
//! let mut session = mmoe::Session::new(model.clone());
//! let user = vec![0.5f32; 64];
//! let mut request = mmoe::Request::new(1);
//! request.set_dense(model.input_index("user_dense")?, &user);
//! // … every input of the model …
//! let mut logits = vec![0.0; model.num_tasks()];
//! session.score(&request, &mut mmoe::Scores { logits: Some(&mut logits), probabilities: None })?;
//! # Ok(()) }
//! ```

// Lists of column ranges often hold a single range; that is their meaning.
#![allow(clippy::single_range_in_vec_init)]

pub mod config;
pub mod cpu;
pub mod demo;
pub mod engine;
pub mod error;
mod exec;
pub mod features;
pub mod ffi;
pub mod format;
pub mod gpu;
pub mod helper_threads;
pub mod jsonl;
pub mod model;
pub mod plan;
pub mod program;
pub mod reference;
pub mod request;
mod request_threads;
pub mod session;

pub use config::Config;
pub use cpu::CpuMode;
pub use engine::{Engine, EngineSession};
pub use error::{Error, ErrorKind, Result};
pub use format::DType;
pub use gpu::Device;
pub use model::{GpuPrecision, InputInfo, Model, OpenOptions};
pub use request::{Feature, Request, MAX_INPUTS};
pub use session::{Backend, Scores, Session, MAX_CANDIDATES, MAX_THREADS, MAX_WARM_UP_CANDIDATES};
