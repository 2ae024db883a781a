//! Corruption sweep: every single-byte change (all 255 other values) of the
//! header, config, tensor table, names and the padding before the data;
//! truncation at every 4 KiB boundary; single-bit flips sampled over the
//! tensor data. Each change must be refused at open with an error message,
//! or, in tensor data, be caught by `verify` naming the tensor. Counts by
//! outcome are printed.
//!
//! CI sweeps the small model of every expert type. The demo model (45 MiB)
//! sweep is `--ignored`; run it under AddressSanitizer with
//!   RUSTFLAGS=-Zsanitizer=address cargo +nightly test --release \
//!     --target x86_64-unknown-linux-gnu --test integration corruption_sweep:: -- --ignored --nocapture
//! (docs/RELIABILITY.md has the figures).

use crate::common;

use std::collections::BTreeMap;

use mmoe::format::reader::{parse, verify_checksums};
use mmoe::{Config, DType, Model, OpenOptions};

/// An error message reduced to its kind: digits and quoted names dropped,
/// so "tensor `x` checksum" and "tensor `y` checksum" count together.
fn category(message: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in message.chars() {
        match c {
            '`' => {
                quoted = !quoted;
                if quoted {
                    out.push_str("`…`");
                }
            }
            _ if quoted => {}
            '0'..='9' => {
                if !out.ends_with('#') {
                    out.push('#')
                }
            }
            _ => out.push(c),
        }
    }
    out.chars().take(90).collect()
}

#[derive(Default)]
struct Report {
    meta_bytes: usize,
    byte_changes: usize,
    truncations: usize,
    data_flips: usize,
    /// Error kinds at open, and how many changes gave each.
    refused: BTreeMap<String, usize>,
    /// Changes that opened: (offset, value).
    accepted: Vec<(usize, u8)>,
    /// Data flips that `verify` missed.
    missed_flips: Vec<usize>,
}

impl Report {
    fn print(&self, name: &str) {
        println!(
            "{name}: {} bytes before the tensor data; {} byte changes, {} truncations, {} data bit flips",
            self.meta_bytes, self.byte_changes, self.truncations, self.data_flips
        );
        for (kind, count) in &self.refused {
            println!("  {count:>9}  refused: {kind}");
        }
        println!(
            "  {:>9}  opened after a change; {} data flips missed by verify",
            self.accepted.len(),
            self.missed_flips.len()
        );
    }
}

/// A small deterministic generator for the flip positions.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn sweep(bytes: &mut [u8], flips: usize) -> Report {
    let layout = parse(bytes).expect("the pristine file parses");
    verify_checksums(bytes, &layout).expect("the pristine file verifies");
    let data_start = layout
        .tensors
        .first()
        .map_or(bytes.len(), |t| t.bytes.start);
    let mut report = Report {
        meta_bytes: data_start,
        ..Report::default()
    };
    let refuse = |report: &mut Report, message: String| {
        assert!(!message.trim().is_empty(), "an error without a message");
        *report.refused.entry(category(&message)).or_insert(0) += 1;
    };

    // Every byte before the tensor data, every other value.
    for at in 0..data_start {
        let original = bytes[at];
        for value in (0..=255u8).filter(|&v| v != original) {
            bytes[at] = value;
            report.byte_changes += 1;
            match parse(bytes) {
                Err(e) => refuse(&mut report, e.message().to_string()),
                Ok(layout) => {
                    // Whatever opens must still be usable: lowering works.
                    let _ = mmoe::program::Program::lower(&layout.config, &layout.plan);
                    report.accepted.push((at, value));
                }
            }
        }
        bytes[at] = original;
    }

    // Truncation at every 4 KiB boundary (and to nothing).
    for len in (0..bytes.len()).step_by(4096) {
        report.truncations += 1;
        match parse(&bytes[..len]) {
            Err(e) => refuse(&mut report, e.message().to_string()),
            Ok(_) => panic!("a file truncated to {len} bytes opened"),
        }
    }

    // Single-bit flips in the tensor data: opening does not read the data;
    // verify must name the tensor.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let data_len = bytes.len() - data_start;
    for _ in 0..flips.min(data_len * 8) {
        let at = data_start + rng.below(data_len);
        let bit = 1u8 << rng.below(8);
        bytes[at] ^= bit;
        report.data_flips += 1;
        let layout = parse(bytes).expect("a data flip does not change the layout");
        match verify_checksums(bytes, &layout) {
            Err(e) => {
                let tensor = layout
                    .tensors
                    .iter()
                    .find(|t| t.bytes.contains(&at))
                    .map(|t| t.name.as_str());
                if let Some(name) = tensor {
                    assert!(
                        e.message().contains(name),
                        "verify names another tensor than `{name}`: {e}"
                    );
                }
                refuse(&mut report, format!("verify: {}", e.message()));
            }
            Ok(()) => report.missed_flips.push(at),
        }
        bytes[at] ^= bit;
    }
    report
}

fn check(report: &Report) {
    assert!(
        report.accepted.is_empty(),
        "changes that opened: {:?}",
        &report.accepted[..report.accepted.len().min(20)]
    );
    assert!(
        report.missed_flips.is_empty(),
        "data flips verify missed at {:?}",
        report.missed_flips
    );
}

#[test]
fn every_corruption_of_the_small_model_is_refused_or_caught() {
    let (_, _, packed) = common::small(DType::F16);
    let mut bytes = packed.bytes();
    let report = sweep(&mut bytes, 300);
    report.print("small model (f16)");
    check(&report);
    // The same through the file path: a sample of changes, opened from disk.
    let path = packed.dir.path().join("changed.mmoe");
    let pristine = packed.bytes();
    for at in (0..report.meta_bytes).step_by(97) {
        let mut changed = pristine.clone();
        changed[at] ^= 0x5a;
        std::fs::write(&path, &changed).unwrap();
        let err = Model::open(&path, &OpenOptions::default()).unwrap_err();
        assert!(err.message().contains("changed.mmoe"), "{err}");
    }
}

#[test]
#[ignore = "the 45 MiB demo model: about a minute in release, several under ASan"]
fn every_corruption_of_the_demo_model_is_refused_or_caught() {
    let config = Config::parse(mmoe::demo::BENCH_MODEL_JSON).unwrap();
    let tensors = mmoe::demo::synthetic_tensors(&config, 7).unwrap();
    let packed = common::pack(&config, &tensors, DType::F16);
    let mut bytes = packed.bytes();
    let report = sweep(&mut bytes, 1000);
    report.print("demo model (f16)");
    check(&report);
}
