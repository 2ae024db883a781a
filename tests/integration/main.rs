//! The engine's integration tests, one module per concept, in one test
//! binary: each binary links the whole engine with the release profile's
//! LTO, so one binary instead of ten saves minutes of CI's build on two
//! cores. Run one concept with a filter, e.g.
//! `cargo test --release --test integration reload::`.
//!
//! Three test binaries stay apart because they need a process of their own:
//! `tests/no_alloc.rs` installs a counting global allocator,
//! `tests/zero_copy.rs` measures the process's resident memory, and
//! `tests/gpu.rs` sets environment variables and is the binary the GPU
//! check copies to the GPU machine.

#[path = "../common/mod.rs"]
mod common;

mod backends;
mod cli;
mod corruption_sweep;
mod cpu_paths;
mod error_cases;
mod ffi;
mod file_integrity;
mod packer;
mod reload;
mod requests;
