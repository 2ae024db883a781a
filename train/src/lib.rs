//! `mmoe-train`: trains models of the MODEL.md contract on Parquet impression
//! tables (per-task BCE, Adam), with knowledge distillation from a teacher
//! (pointwise or pairwise), and exports safetensors + config for `mmoe pack`.
//!
//! The network walks the engine's own [`mmoe::plan::Plan`] of the config, so
//! its tensor names, shapes and arithmetic are the ones the packer checks and
//! the engine executes.

pub mod batch;
pub mod dataset;
pub mod error;
pub mod loss;
pub mod network;
pub mod train;

pub use error::{Error, Result};
