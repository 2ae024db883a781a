//! The dataset side of the CLI (cargo feature `datasets`; in the binary, not
//! the library, so the engine library links no Parquet or plotting code):
//! synthetic ads-engagement
//! logs ([`synth`]), Parquet impression tables ([`table`]), teacher scoring
//! of a table through the engine ([`score`]), and evaluation per task and
//! view type with plots ([`metrics`], [`plot`]). docs/DATASETS.md has the
//! schema; docs/SYNTHETIC.md the generative story.

pub mod eval;
pub mod metrics;
pub mod plot;
pub mod score;
pub mod synth;
pub mod table;

#[cfg(test)]
mod tests;
